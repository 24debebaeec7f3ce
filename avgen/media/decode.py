"""Decoding: probing files, frames by timestamp (:func:`decode_video`), audio on the video's time axis
(:func:`decode_audio`), flac/wav bytes and files, and whole clips (:func:`read_clip`)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from avgen._lazy import lazy_module
from avgen.media.core import AUDIO_SUFFIXES, SEEK_AFTER_SECONDS, MediaError, _exact, _round_half_up, as_fps, fps_label

av = lazy_module("av", "decoding video")
sf = lazy_module("soundfile", "reading audio files")


# ------------------------------------------------------------------------------------- opening files
def _source_name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"<{len(source)} bytes>"


@contextlib.contextmanager
def _open_input(source, what: str):
    """Open ``source`` (path or bytes) for reading; FFmpeg/IO failures become a ``MediaError`` naming it."""
    try:
        with av.open(str(source) if isinstance(source, (str, Path)) else io.BytesIO(source), mode="r") as container:
            yield container
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise MediaError(f"{_source_name(source)}: cannot decode {what} ({exc})") from exc


def _stream_start(stream) -> Fraction | None:
    """Start of a stream in seconds (its first presentation timestamp), None when the container does not say."""
    if stream.start_time is None or stream.time_base is None:
        return None
    return Fraction(stream.start_time) * Fraction(stream.time_base)


def _frame_time(frame, fallback: Fraction) -> Fraction:
    if frame.pts is None or frame.time_base is None:
        return fallback
    return Fraction(frame.pts) * Fraction(frame.time_base)


def _stream_rate(stream) -> Fraction | None:
    """The stream's nominal frame rate: FFmpeg's guess (``r_frame_rate``: for variable-rate files the
    rate that represents every timestamp), else the average rate."""
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _origin(container) -> Fraction:
    """The file's time origin: the start of its first video stream, else of its first audio stream."""
    streams = list(container.streams.video) or list(container.streams.audio)
    start = _stream_start(streams[0]) if streams else None
    return start if start is not None else Fraction(0)


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds, without decoding it (:func:`probe`). Video sizes are as displayed (after rotation)."""

    source: str
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    rotation: int = 0              # degrees counter-clockwise applied to the stored frames (0, 90, 180, 270)
    fps: Fraction | None = None    # nominal video rate
    sample_rate: int | None = None
    duration: float | None = None  # seconds, as the container reports it


def probe(source: bytes | str | Path) -> MediaInfo:
    """Streams, display size, rotation and frame rate of a media file (headers, and the first video
    frame, which carries the display rotation).

    Raises:
        MediaError: FFmpeg cannot open the file.
    """
    with _open_input(source, "media") as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = float(container.duration / av.time_base) if container.duration else None
        info: dict = dict(source=_source_name(source), has_video=video is not None, has_audio=audio is not None,
                          duration=duration)
        if audio is not None:
            info["sample_rate"] = int(audio.rate or audio.codec_context.sample_rate or 0) or None
        if video is not None:
            rotation = _display_rotation(container, video)
            w, h = video.codec_context.width, video.codec_context.height
            info.update(width=h if rotation % 180 else w, height=w if rotation % 180 else h, rotation=rotation,
                        fps=_stream_rate(video))
    return MediaInfo(**info)


def _rotation_degrees(angle: float) -> int:
    """A display-matrix angle (counter-clockwise degrees, any sign) → 0, 90, 180 or 270."""
    return int(round(float(angle) / 90.0)) % 4 * 90


def _display_rotation(container, stream) -> int:
    """Rotation of the stream's display matrix; FFmpeg attaches it to every decoded frame."""
    for frame in container.decode(stream):
        return _rotation_degrees(getattr(frame, "rotation", 0) or 0)
    return 0


# ------------------------------------------------------------------------------------- video
def cover_size(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int]:
    """Smallest size with the source's aspect ratio that covers ``dst_hw`` (resize-then-crop)."""
    (sh, sw), (dh, dw) = src_hw, dst_hw
    scale = max(dh / sh, dw / sw)
    return max(dh, round(sh * scale)), max(dw, round(sw * scale))


def centre_origin(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    return (size[0] - crop[0]) // 2, (size[1] - crop[1]) // 2


class _FrameConverter:
    """One decoded frame → upright RGB ``(h, w, 3)`` uint8, resized to cover ``fit_to`` and cropped.

    The display rotation is applied after swscale's resize (which then works in the stored
    orientation, with the width and height swapped for 90° and 270°), so the crop is taken from the
    upright picture."""

    def __init__(self, stored_hw: tuple[int, int], rotation: int, fit_to, crop_origin):
        self.k = rotation // 90
        shown = (stored_hw[1], stored_hw[0]) if self.k % 2 else stored_hw
        if callable(fit_to):
            fit_to = tuple(fit_to(shown))
        self.size = cover_size(shown, fit_to) if fit_to else shown
        self.crop = fit_to or self.size
        self.y, self.x = crop_origin(self.size, fit_to) if fit_to else (0, 0)
        self.scaled = (self.size[1], self.size[0]) if self.k % 2 else self.size  # swscale's (h, w)

    def __call__(self, frame) -> np.ndarray:
        # threads=1: PyAV otherwise starts a pool of swscale threads for every single frame
        rgb = frame.to_ndarray(format="rgb24", height=self.scaled[0], width=self.scaled[1],
                               interpolation="BILINEAR", threads=1)
        if self.k:
            rgb = np.rot90(rgb, self.k)
        h, w = self.crop
        return rgb[self.y:self.y + h, self.x:self.x + w]


def decode_video(
    source: bytes | str | Path,
    *,
    fps=None,
    start: float = 0.0,
    num_frames: int | None = None,
    fit_to: tuple[int, int] | None = None,
    crop_origin: Callable[[tuple[int, int], tuple[int, int]], tuple[int, int]] = centre_origin,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Fraction]:
    """Decode the first video stream to ``(F, H, W, 3)`` uint8 upright frames at a constant rate.

    Frames are placed by their presentation timestamps, the way FFmpeg's ``fps`` filter does it:
    output frame ``k`` (time ``start + k / fps`` after the video stream's start) shows the last
    decoded frame whose timestamp rounds (to the nearest output slot, halves up) to ``k`` or
    earlier; frames sharing a slot keep the later one, slots between two frames repeat the earlier
    one. A constant-rate file decoded at its own rate gives its frames one to one; a
    variable-rate file comes out at ``fps`` with its motion at the right instants.

    Args:
        source: a path, or the bytes of a file (any container FFmpeg reads).
        fps: output rate (number, ``"num/den"`` or Fraction; see :func:`as_fps`); ``None``: the
            stream's nominal rate (FFmpeg's ``r_frame_rate``).
        start: seconds after the video stream's start where frame 0 is taken.
        num_frames: frames to return; ``None``: up to the end of the stream (the last frame's
            timestamp plus its duration).
        fit_to: ``(h, w)``: each upright frame is scaled, keeping the aspect ratio, to the smallest
            size that covers ``(h, w)`` (swscale resizes and converts colours in one pass), then
            cropped to ``(h, w)`` at ``crop_origin(scaled_size, (h, w))`` (default: centred). Or a
            callable that maps the upright source size ``(h, w)`` to that ``(h, w)`` (e.g.
            :meth:`avgen.data.geometry.StoreGeometry.frame_size`: short side to a fixed length).
        out: ``(F, h, w, 3)`` uint8 array to decode into (e.g. a slot of a batch tensor); ``F`` is
            then the number of frames.

    Returns:
        (frames, fps): the frames (``out`` when given) and the output rate as a Fraction.

    Raises:
        MediaError: undecodable input, no video stream, no frame, or fewer frames than ``out`` /
            ``num_frames`` ask for (the message gives both counts).
    """
    want = len(out) if out is not None else num_frames
    with _open_input(source, "video") as container:
        if not container.streams.video:
            raise MediaError(f"{_source_name(source)}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        rate = as_fps(fps) if fps is not None else _stream_rate(stream)
        if rate is None:
            raise MediaError(f"{_source_name(source)}: the video stream has no frame rate; pass fps=")
        origin = _stream_start(stream)
        start = _exact(start)
        if origin is not None and start > SEEK_AFTER_SECONDS:
            # land on the key frame at or before the window; the frames before it only fill slot 0
            container.seek(int((origin + start) / Fraction(stream.time_base)), stream=stream, backward=True)
        frames: list[np.ndarray] = []
        convert = None
        pending, pending_slot, end_time, filled = None, None, None, 0
        step = 1 / rate

        def emit(frame, upto: int) -> None:
            nonlocal filled, convert
            if convert is None:
                rotation = _rotation_degrees(getattr(frame, "rotation", 0) or 0)
                convert = _FrameConverter((frame.height, frame.width), rotation, fit_to, crop_origin)
            rgb = None
            while filled < upto and (want is None or filled < want):
                if rgb is None:
                    rgb = convert(frame)
                if out is not None:
                    out[filled] = rgb
                else:
                    frames.append(rgb)
                filled += 1

        last_time = None
        for frame in container.decode(stream):
            if origin is None:
                origin = _frame_time(frame, Fraction(0))
            t = _frame_time(frame, (last_time + step) if last_time is not None else origin) - origin
            duration = (Fraction(frame.duration) * Fraction(frame.time_base)
                        if frame.duration and frame.time_base is not None else None)
            if duration is None and last_time is not None:
                duration = t - last_time
            end_time = t + (duration if duration and duration > 0 else step)
            last_time = t
            slot = _round_half_up((t - start) * rate)
            if pending is not None and slot > max(pending_slot, 0):
                emit(pending, slot)
            if want is not None and filled >= want:
                break
            if pending is None or slot >= pending_slot:
                pending, pending_slot = frame, slot
        else:
            if pending is not None:
                total = _round_half_up((end_time - start) * rate)
                emit(pending, total if want is None else min(total, want))
    name = _source_name(source)
    if filled == 0:
        raise MediaError(f"{name}: video stream has no frames" + (f" after {float(start):.3f} s" if start else ""))
    if want is not None and filled < want:
        raise MediaError(f"{name}: {filled} frames from {float(start):.3f} s at {fps_label(rate)} fps, need {want}")
    return (out if out is not None else np.stack(frames)), rate


# ------------------------------------------------------------------------------------- audio
def decode_audio(source: bytes | str | Path, sample_rate: int | None = None, *, start: float = 0.0,
                 num_samples: int | None = None) -> np.ndarray:
    """Decode the first audio stream of any container to mono float32 at ``sample_rate`` (``None``: its own).

    The samples are placed on the file's time axis (origin: the video stream's start, or the audio's
    own start in a file without video): when the audio stream starts later than the video, its
    first sample lands at that offset and silence comes before it; when it starts earlier (mkv
    files keep the AAC encoder's priming samples before the video's start), the leading samples
    are dropped. The mp4 demuxer already applies edit lists. Sample 0 of the result is at
    ``start`` seconds; ``num_samples`` crops (and pads with silence at the end) to that length,
    otherwise the audio runs to the end of the stream (AAC may add up to one codec frame of
    trailing padding, so callers that expect a length pass it). Resampling and down-mixing are
    FFmpeg's swresample.

    Raises:
        MediaError: undecodable input, no audio stream, or no samples.
    """
    with _open_input(source, "audio") as container:
        if not container.streams.audio:
            raise MediaError(f"{_source_name(source)}: no audio stream")
        origin = _origin(container)
        stream = container.streams.audio[0]
        rate = int(sample_rate or stream.rate or stream.codec_context.sample_rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks, first = [], None
        for frame in container.decode(stream):
            if first is None:
                first = _frame_time(frame, _stream_start(stream) or origin)
            for converted in resampler.resample(frame):
                chunks.append(converted.to_ndarray().reshape(-1))
        for converted in resampler.resample(None):
            chunks.append(converted.to_ndarray().reshape(-1))
    if not chunks:
        raise MediaError(f"{_source_name(source)}: audio stream has no samples")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    lead = _round_half_up((first - origin - _exact(start)) * rate)  # > 0: silence first; < 0: samples dropped
    audio = np.concatenate([np.zeros(lead, np.float32), audio]) if lead > 0 else audio[-lead:]
    if num_samples is not None:
        audio = audio[:num_samples]
        if audio.shape[0] < num_samples:
            audio = np.pad(audio, (0, num_samples - audio.shape[0]))
    return audio


def check_finite(array: np.ndarray, name: str, what: str = "audio") -> None:
    """Raise :class:`MediaError` naming ``name`` when ``array`` holds NaN or ±inf (e.g. a diverged model's output).

    The message counts the NaN and infinite values, so a user sees at once whether the whole
    signal or a burst is broken."""
    values = np.asarray(array)
    if values.dtype.kind != "f":
        return
    finite = np.isfinite(values)
    if finite.all():
        return
    nan = int(np.isnan(values).sum())
    inf = int(values.size - finite.sum() - nan)
    parts = [f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n]
    raise MediaError(f"{name}: {what} has non-finite values ({' and '.join(parts)} of {values.size})")



def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """flac (or wav) bytes → (mono float32 audio, sample rate); channels are averaged."""
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise MediaError(f"<{len(data)} bytes>: cannot decode audio ({exc})") from exc
    return audio.mean(axis=1), int(sr)


# soundfile reads these straight (fast, exact); anything else goes through FFmpeg
_SOUNDFILE_SUFFIXES = {".wav", ".flac"}


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """(mono float32 audio, its sample rate) of any audio or video file: wav/flac through soundfile,
    everything else through FFmpeg (:func:`decode_audio`, on the file's own time axis). With
    ``sample_rate`` the audio is resampled to it (FFmpeg's swresample).

    Raises:
        MediaError: unreadable file or no audio.
    """
    path = Path(path)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            audio, sr = decode_flac(path.read_bytes())
        except OSError as exc:
            raise MediaError(f"{path}: cannot read audio ({exc})") from exc
        except MediaError:
            audio, sr = None, None  # a codec soundfile does not know: FFmpeg may
        if audio is not None and sample_rate in (None, sr):
            return audio, sr
    if sample_rate is None:
        sample_rate = probe(path).sample_rate
    audio = decode_audio(path, sample_rate)
    return audio, int(sample_rate)


# ------------------------------------------------------------------------------------- clips
@dataclass
class Clip:
    """A sounding clip read from files: upright frames at a constant rate and mono audio on the same time axis."""

    frames: np.ndarray   # (F, H, W, 3) uint8
    fps: Fraction
    audio: np.ndarray    # (S,) float32
    sample_rate: int
    audio_source: str    # the file the audio came from (the clip itself or its companion)

    @property
    def video_seconds(self) -> float:
        return len(self.frames) / float(self.fps)

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def duration_mismatch(self) -> str | None:
        """A note when video and audio durations differ by more than one frame, else None."""
        if abs(self.video_seconds - self.audio_seconds) <= 1 / float(self.fps) + 1e-9:
            return None
        return (f"video {self.video_seconds:.3f} s and audio {self.audio_seconds:.3f} s differ by more than one "
                f"frame ({1 / float(self.fps):.3f} s)")


def has_audio_stream(path: Path) -> bool:
    """Whether the container lists an audio stream (headers only: no frame is decoded, unlike :func:`probe`)."""
    with _open_input(path, "media") as container:
        return bool(container.streams.audio)


def audio_companion(video: Path) -> Path | None:
    """The audio file beside a (silent) video with the same stem: ``<stem>.wav``, ``.flac``, ... (any case)."""
    video = Path(video)
    try:
        siblings = sorted(p for p in video.parent.iterdir() if p.stem == video.stem and p != video)
    except OSError:
        return None
    for p in siblings:
        if p.suffix.lower() in AUDIO_SUFFIXES:
            return p
    return None


def read_clip(path: str | Path, *, fps=None, audio: str | Path | None = None) -> Clip:
    """A sounding clip: the video of ``path`` at ``fps`` (default its nominal rate; see :func:`decode_video`)
    and its audio from ``audio`` when given, else from ``path``'s own audio stream (at its native
    rate, on the video's time axis), else from the audio file of the same stem beside it
    (``<stem>.wav``, ``.flac``, ...: the layout of generated-sample folders and of the official
    AV-Align script).

    Raises:
        MediaError: unreadable file, no audio anywhere, or audio with NaN/inf samples.
    """
    path = Path(path)
    frames, rate = decode_video(path, fps=fps)
    source = Path(audio) if audio is not None else None
    if source is None:
        if has_audio_stream(path):
            source = path
        else:
            source = audio_companion(path)
            if source is None:
                raise MediaError(f"{path}: no audio stream and no {path.stem}.wav (or .flac, ...) beside it; give "
                                 f"a video with sound, or a video + audio pair with the same stem")
    wave, sr = read_audio(source)
    check_finite(wave, str(source))
    return Clip(frames=frames, fps=rate, audio=wave, sample_rate=sr, audio_source=str(source))
