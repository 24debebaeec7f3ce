"""Reading and writing media: any container FFmpeg reads; mp4 (video, optionally with audio), flac and wav out.

Conventions used everywhere in avgen:
- frames are ``uint8`` arrays ``(F, H, W, 3)`` RGB, time on axis 0, upright (the display rotation of
  the file is applied, as players do);
- audio is ``float32`` mono ``(S,)`` in [-1, 1];
- frame rates are exact rationals (:class:`fractions.Fraction`): 29.97 fps is ``30000/1001``
  (:func:`as_fps`), and a clip of ``seconds`` holds ``round(seconds · fps)`` frames (:func:`frame_count`);
- one time axis per file, whose origin is the start of its video stream (of its audio stream when
  it has no video). Frame ``k`` of a clip decoded at ``fps`` from ``start`` shows the file at
  ``start + k / fps`` s: frames are placed by their presentation timestamps, never by index, so
  variable-frame-rate files come out at a constant rate (:func:`decode_video`). Audio sample
  ``n`` is at ``start + n / sample_rate`` s on the same axis: an audio stream that starts later
  than the video is padded with silence, one that starts earlier loses its leading samples
  (:func:`decode_audio`).

Everything goes through PyAV (FFmpeg) and soundfile; nothing shells out to an ``ffmpeg`` binary.
Files are written atomically (temporary name, then rename) and never replace an existing file
unless ``overwrite=True`` is passed. Non-finite samples are refused before any encoder sees them.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Literal

import av
import numpy as np
import soundfile as sf

VIDEO_CODEC = "h264"
# crf 17 is visually lossless for h264; shards store clips once and decode them many times.
VIDEO_CRF = 17
AUDIO_CODEC_MP4 = "aac"
# seeking costs a demuxer reset; below this start time decoding from the first frame is as cheap
SEEK_AFTER_SECONDS = 2.0


class MediaError(RuntimeError):
    """A media file or buffer could not be decoded, or holds unusable samples (names the source and the reason)."""


# ------------------------------------------------------------------------------------- frame rates
def as_fps(value: int | float | str | Fraction) -> Fraction:
    """A frame rate as an exact rational.

    Accepts an int, a :class:`~fractions.Fraction`, a ``"num/den"`` string (``"30000/1001"``) or a
    decimal (``29.97``, ``"23.976"``). A non-integer decimal within 0.01 of ``n · 1000 / 1001`` for
    an integer ``n`` is the NTSC rate ``n·1000/1001`` (29.97 → 30000/1001, 23.976 → 24000/1001,
    59.94 → 60000/1001); any other decimal is taken exactly as written (12.5 → 25/2).

    Raises:
        ValueError: not a positive finite rate.
    """
    if isinstance(value, Fraction):
        rate = value
    elif isinstance(value, bool):
        raise ValueError(f"frame rate must be a number, got {value!r}")
    elif isinstance(value, int):
        rate = Fraction(value)
    else:
        text = str(value).strip()
        try:
            rate = Fraction(text)
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"frame rate {value!r} is not a number or num/den") from exc
        if "/" not in text and rate.denominator != 1:
            n = round(rate * Fraction(1001, 1000))
            if n > 0 and abs(rate - Fraction(n * 1000, 1001)) <= Fraction(1, 100):
                rate = Fraction(n * 1000, 1001)
    if not rate > 0:
        raise ValueError(f"frame rate must be positive, got {value!r}")
    return rate


def fps_text(fps) -> str:
    """Exact text of a rate, as manifests store it: ``"8"``, ``"30000/1001"``."""
    rate = as_fps(fps)
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def fps_label(fps) -> str:
    """A rate as a decimal for folder and file names (never a ``/``): ``8``, ``29.97``, ``23.976``, ``12.5``."""
    rate = as_fps(fps)
    if rate.denominator == 1:
        return str(rate.numerator)
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")


def _exact(seconds) -> Fraction:
    return seconds if isinstance(seconds, Fraction) else Fraction(repr(float(seconds)))


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def frame_count(seconds: float, fps) -> int:
    """Frames in ``seconds`` of video at ``fps``: ``round(seconds · fps)`` in exact arithmetic, halves
    rounded up (1 s at 29.97 fps → 30 frames; 4 s → 120). The one definition every part of avgen uses."""
    return _round_half_up(_exact(seconds) * as_fps(fps))


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


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float audio in [-1, 1] → 16-bit flac bytes (lossless at that depth).

    Raises:
        MediaError: the audio holds NaN or inf.
    """
    audio = np.asarray(audio, dtype=np.float32)
    check_finite(audio, "flac")
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


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


def _has_audio_stream(path: Path) -> bool:
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
        if _has_audio_stream(path):
            source = path
        else:
            source = audio_companion(path)
            if source is None:
                raise MediaError(f"{path}: no audio stream and no {path.stem}.wav (or .flac, ...) beside it; give "
                                 f"a video with sound, or a video + audio pair with the same stem")
    wave, sr = read_audio(source)
    check_finite(wave, str(source))
    return Clip(frames=frames, fps=rate, audio=wave, sample_rate=sr, audio_source=str(source))


# ------------------------------------------------------------------------------------- folders
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".flv", ".wmv", ".3gp", ".ogv"}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aif", ".aiff",
                  ".caf", ".ac3", ".amr"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".svg", ".pdf"}
# what avgen writes beside a clip (prompt, sample metadata): not inputs, never reported as skipped
SIDECAR_SUFFIXES = {".txt", ".json"}


@dataclass
class MediaFolder:
    """The inputs found in a folder (:func:`scan_media`): ``files`` to process, in name order, and
    ``skipped``: ``(path, reason)`` for every other file, so nothing disappears without a word."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def skipped_json(self) -> list[dict[str, str]]:
        return [{"file": p.name, "reason": r} for p, r in self.skipped]


def scan_media(folder: str | Path, kind: Literal["video", "audio"]) -> MediaFolder:
    """Every file of ``folder`` (not recursive) that holds a ``kind`` stream, whatever its container,
    codec, extension case (``.MP4``) or name (spaces, non-ASCII letters).

    ``kind="video"``: files with a video stream; an audio file with the stem of a video is that
    video's sound (see :func:`read_clip`) and is not listed. ``kind="audio"``: files with an audio
    stream (audio files, and videos with sound). Files with a known media extension are taken on
    their name (a broken one then fails, with its reason, when it is decoded); files with another
    extension are probed with FFmpeg. ``.txt``/``.json`` sidecars are ignored; everything else not
    taken is in ``skipped`` with the reason (sub-folders, hidden files, images, audio-only or silent
    files, files FFmpeg cannot open).
    """
    folder = Path(folder)
    found = MediaFolder(skipped=[(p, "a folder: sub-folders are not searched") for p in sorted(folder.iterdir())
                                 if p.is_dir()])
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    video_stems = {p.stem for p in entries if p.suffix.lower() in VIDEO_SUFFIXES}
    for path in entries:
        suffix = path.suffix.lower()
        if suffix in SIDECAR_SUFFIXES:
            continue
        if path.name.startswith("."):
            found.skipped.append((path, "hidden file"))
        elif suffix in IMAGE_SUFFIXES:
            found.skipped.append((path, "an image or document, not a clip"))
        elif kind == "video" and suffix in VIDEO_SUFFIXES:
            found.files.append(path)
        elif kind == "video" and suffix in AUDIO_SUFFIXES:
            if path.stem not in video_stems:
                found.skipped.append((path, "audio only: no video of the same stem to pair it with"))
        elif kind == "audio" and suffix in AUDIO_SUFFIXES:
            found.files.append(path)
        else:
            reason = _probe_reason(path, kind)
            if reason is None:
                found.files.append(path)
            else:
                found.skipped.append((path, reason))
    return found


def _probe_reason(path: Path, kind: str) -> str | None:
    """Why ``path`` is not a ``kind`` input (None when it is one), from FFmpeg's view of the file."""
    try:
        info = probe(path)
    except MediaError as exc:
        return f"not a media file FFmpeg can read ({str(exc.__cause__ or exc)})"
    if kind == "video" and not info.has_video:
        return "no video stream" + (" (audio only)" if info.has_audio else "")
    if kind == "audio" and not info.has_audio:
        return "no audio stream"
    return None


# ------------------------------------------------------------------------------------- writing
def encode_mp4(
    frames: np.ndarray,
    fps,
    *,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = VIDEO_CRF,
    threads: int = 0,
) -> bytes:
    """Encode ``(F, H, W, 3)`` uint8 frames (and optional mono float audio) as mp4 bytes.

    ``threads``: x264 threads (0: x264's own choice, from the core count). Dataset preparation passes
    1: its worker processes already use every core, and the bytes then do not depend on the machine.

    Video is h264 yuv420p at the constant rate ``fps`` (exact: ``"30000/1001"``, 29.97, 8; see
    :func:`as_fps`); odd sizes are padded by one pixel row/column (h264 needs even dimensions) and
    the decoder crops nothing, so keep shard sizes even.

    Raises:
        ValueError: frames that are not uint8 (F, H, W, 3), or audio without ``sample_rate``.
        MediaError: audio with NaN or inf samples (checked before the encoder sees them).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if audio is not None:
        if not sample_rate:
            raise ValueError("sample_rate is required when audio is given")
        audio = np.asarray(audio, dtype=np.float32)
        check_finite(audio, "mp4 audio")
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = frames.shape[1:3]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        vs = container.add_stream(VIDEO_CODEC, rate=as_fps(fps))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": str(crf), "preset": "fast"}
        if threads:
            vs.codec_context.thread_count = int(threads)
        astream = None
        if audio is not None:
            astream = container.add_stream(AUDIO_CODEC_MP4, rate=int(sample_rate))
            astream.layout = "mono"
        for frame in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        if astream is not None:
            _encode_audio_stream(container, astream, audio, int(sample_rate))
    return buf.getvalue()


def _encode_audio_stream(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    frame_size = stream.codec_context.frame_size or 1024
    pts = 0
    for start in range(0, len(audio), frame_size):
        chunk = np.ascontiguousarray(audio[start:start + frame_size], dtype=np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, pts
        pts += chunk.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_bytes_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or choose another output folder) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_mp4(path, frames, fps, *, audio=None, sample_rate=None, overwrite: bool = False) -> Path:
    """Write a sounding (or silent) mp4; see :func:`encode_mp4`."""
    return write_bytes_atomic(path, encode_mp4(frames, fps, audio=audio, sample_rate=sample_rate), overwrite=overwrite)


def write_wav(path, audio: np.ndarray, sample_rate: int, *, overwrite: bool = False) -> Path:
    """Write mono float audio as 16-bit PCM wav.

    Raises:
        MediaError: the audio holds NaN or inf.
    """
    audio = np.asarray(audio, dtype=np.float32)
    check_finite(audio, str(path))
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return write_bytes_atomic(path, buf.getvalue(), overwrite=overwrite)

