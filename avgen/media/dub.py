"""Dubbing: a generated soundtrack put under an input video, and long inputs generated in overlapping windows.

The media half of VTA-LDM's ``sample`` command (video → audio; Xu et al., "Video-to-Audio Generation
with Latent Diffusion Model"; avgen issue 15). The model generates a fixed training length; a longer
input is split into windows that overlap (:func:`crossfade_windows`, 1 s in VTA-LDM), each window's
audio is generated on its own and the chunks are joined with an equal-power crossfade
(:func:`equal_power_crossfade`). The result goes under the *input* video (:func:`dub_video`): its
packets are copied unchanged when mp4 can carry the codec, so the picture the user gave is the
picture they get back.

Time axis: the one of :mod:`avgen.media`, origin at the video stream's first frame. The audio the
caller generates must last :func:`video_stream_duration` seconds: ``frame_count(duration, sample_rate)``
samples (:func:`avgen.media.core.frame_count`, the rounding every part of avgen uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from avgen._lazy import lazy_module
from avgen.media.core import AUDIO_CODEC_MP4, VIDEO_CODEC, MediaError, frame_count
from avgen.media.decode import _FrameConverter, _open_input, _rotation_degrees, _stream_rate, check_finite
from avgen.media.encode import _encode_audio_stream, yuv420p_frame
from avgen.media.files import atomic_write

av = lazy_module("av", "muxing sounding videos")

# codecs the mp4 muxer takes as they are: their packets are copied, never re-encoded
MP4_COPY_CODECS = frozenset({"h264", "hevc", "mpeg4", "av1", "vp9"})
# re-encoded video (mjpeg, vp8, ffv1, prores, ...): one generation of h264 at crf 18 is visually lossless
DUB_VIDEO_CRF = 18
# the caller's sample count may be off by this much (floor vs round of duration · rate); more is a mismatch
AUDIO_LENGTH_SLACK = 1


# ------------------------------------------------------------------------------------- video duration
def _video_stream(container, path):
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    return container.streams.video[0]


def _read_span(path: str | Path) -> tuple[int, int, Fraction]:
    """``(first pts, end pts, time base)`` of the first video stream's decoded frames; end is the last
    frame's pts plus its duration (the container's, else one period of the average rate)."""
    with _open_input(path, "video") as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        time_base = Fraction(stream.time_base)
        first, last, last_duration = None, None, None
        for frame in container.decode(stream):
            if frame.pts is None:
                raise MediaError(f"{path}: a video frame has no timestamp; remux it (ffmpeg -i IN -c copy OUT.mkv)")
            first = frame.pts if first is None else min(first, frame.pts)
            if last is None or frame.pts >= last:
                last, last_duration = frame.pts, frame.duration
        rate = stream.average_rate or _stream_rate(stream)
    if first is None:
        raise MediaError(f"{path}: video stream has no decodable frame")
    if not last_duration:
        if not rate:
            raise MediaError(f"{path}: the last video frame has no duration and the stream no frame rate")
        last_duration = 1 / (Fraction(rate) * time_base)
    return first, last + last_duration, time_base


def video_stream_duration(path: str | Path) -> Fraction:
    """Exact duration in seconds of the first video stream of ``path``: last frame's pts + that frame's
    duration − first frame's pts, in the stream's time base. A frame's duration is the one the container
    stores (mp4 ``stts``, mkv block duration), else ``1 / average rate``. Every frame is decoded: the
    container's duration field counts the audio too, and B-frames and edit lists make packet order an
    unreliable guide to the first and last frame.

    Raises:
        MediaError: unreadable file, no video stream, or no decodable frame (names the file).
    """
    first, end, time_base = _read_span(path)
    return (end - first) * time_base


# ------------------------------------------------------------------------------------- dubbing
@dataclass(frozen=True)
class DubInfo:
    """What :func:`dub_video` wrote: whether the input's video packets were ``"copied"`` or ``"reencoded"``
    (to h264), the input and output video codecs, and the audio's duration in seconds (the video
    stream's duration, rounded to a sample)."""

    path: str
    video: Literal["copied", "reencoded"]
    input_codec: str
    output_codec: str
    audio_seconds: float
    sample_rate: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "video": self.video, "input_codec": self.input_codec,
                "output_codec": self.output_codec, "audio_seconds": self.audio_seconds,
                "sample_rate": self.sample_rate}


def fit_audio_length(audio: np.ndarray, num_samples: int, name: str) -> np.ndarray:
    """``audio`` (float32 ``(S,)``) zero-padded or trimmed at the end to ``num_samples`` when ``S`` is
    within :data:`AUDIO_LENGTH_SLACK` (one sample) of it: a caller that floors where avgen rounds.

    Raises:
        MediaError: not 1-D, NaN/inf samples, or off by more than one sample (a wrong sample rate, a
            generator of the wrong length); the message gives both lengths.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise MediaError(f"{name}: audio must be mono (S,), got shape {audio.shape}")
    check_finite(audio, name)
    if abs(len(audio) - num_samples) > AUDIO_LENGTH_SLACK:
        raise MediaError(f"{name}: audio has {len(audio)} samples, the video stream needs {num_samples} "
                         f"(frame_count(video_stream_duration(video), sample_rate)); generate that many, or "
                         f"check the sample rate")
    return np.pad(audio, (0, max(num_samples - len(audio), 0)))[:num_samples]


def dub_video(video_in: str | Path, audio: np.ndarray, sample_rate: int, out_path: str | Path, *,
              overwrite: bool = False) -> DubInfo:
    """Write ``out_path`` (mp4): the video stream of ``video_in`` with ``audio`` as its soundtrack (AAC).

    Video: when the input codec is in :data:`MP4_COPY_CODECS` its packets are copied unchanged, their
    timestamps shifted so the first frame is at 0 (codec parameters and stream side data such as the
    display rotation come along; mp4 derives frame durations from decode-timestamp steps, so a copy of a
    millisecond-rounded mkv/webm can end up to a tick longer: tests/data/cases gen.mkv 3 s → 3.001 s,
    web.webm 3 s → 3.0003 s, mp4 inputs exact); otherwise every frame is re-encoded as h264 yuv420p at crf
    :data:`DUB_VIDEO_CRF` at its own timestamp (a variable rate stays variable), upright, odd sizes
    padded by one edge row/column. Audio: float32 mono ``(S,)`` in [-1, 1] at ``sample_rate`` Hz; its
    sample 0 plays with the first frame. It must last the video stream's duration,
    ``frame_count(video_stream_duration(video_in), sample_rate)`` samples; one sample more or less is
    padded (zero) or trimmed (:func:`fit_audio_length`), anything else refused. The file is written
    atomically; an existing ``out_path`` is refused unless ``overwrite``.

    Raises:
        FileExistsError: ``out_path`` exists and ``overwrite`` is false (checked first).
        MediaError: no video stream or no decodable frame in ``video_in``, or audio of the wrong length
            or with NaN/inf (checked before anything is encoded).
    """
    sample_rate = int(sample_rate)
    with atomic_write(out_path, "wb", overwrite=overwrite) as f:
        first, end, time_base = _read_span(video_in)
        audio = fit_audio_length(audio, frame_count((end - first) * time_base, sample_rate), str(video_in))
        with _open_input(video_in, "video") as src, av.open(f, mode="w", format="mp4") as dst:
            stream = _video_stream(src, video_in)
            codec = stream.codec_context.name
            copied = codec in MP4_COPY_CODECS
            out_video = dst.add_stream_from_template(stream) if copied else _h264_stream(dst, stream)
            out_audio = dst.add_stream(AUDIO_CODEC_MP4, rate=sample_rate)
            out_audio.layout = "mono"
            (_copy_packets if copied else _reencode_frames)(src, stream, dst, out_video, first)
            _encode_audio_stream(dst, out_audio, audio, sample_rate)
    return DubInfo(path=str(out_path), video="copied" if copied else "reencoded", input_codec=codec,
                   output_codec=codec if copied else VIDEO_CODEC, audio_seconds=len(audio) / sample_rate,
                   sample_rate=sample_rate)


def _shifted(ts: int | None, by: int) -> int | None:
    return None if ts is None else ts - by


def _copy_packets(src, stream, dst, out_video, first: int) -> None:
    """Every packet of ``stream`` into ``out_video`` as it is, timestamps less ``first`` (stream time base)."""
    for packet in src.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker, not data
            continue
        packet.pts, packet.dts = _shifted(packet.pts, first), _shifted(packet.dts, first)
        packet.stream = out_video
        dst.mux(packet)


def _h264_stream(dst, stream):
    """An h264 stream for re-encoded frames, on the input's time base (each frame keeps its timestamp)."""
    out = dst.add_stream(VIDEO_CODEC, rate=_stream_rate(stream))
    out.pix_fmt = "yuv420p"
    out.time_base = out.codec_context.time_base = stream.time_base
    out.options = {"crf": str(DUB_VIDEO_CRF), "preset": "fast"}
    return out


def _reencode_frames(src, stream, dst, out_video, first: int) -> None:
    """Every decoded frame of ``stream``, upright and padded to even sizes, into the h264 ``out_video``."""
    stream.thread_type = "AUTO"
    convert = None
    for frame in src.decode(stream):
        if convert is None:
            rotation = _rotation_degrees(getattr(frame, "rotation", 0) or 0)
            convert = _FrameConverter((frame.height, frame.width), rotation, None, None)
            h, w = convert.size
            out_video.height, out_video.width = h + h % 2, w + w % 2
        rgb = convert(frame)
        rgb = np.pad(rgb, ((0, out_video.height - rgb.shape[0]), (0, out_video.width - rgb.shape[1]), (0, 0)),
                     mode="edge")
        upright = yuv420p_frame(rgb)
        upright.pts, upright.time_base = frame.pts - first, stream.time_base
        for packet in out_video.encode(upright):
            dst.mux(packet)
    for packet in out_video.encode():
        dst.mux(packet)


# ------------------------------------------------------------------------------------- long inputs
def crossfade_windows(num_samples: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` sample offsets of the windows an input of ``num_samples`` is generated in:
    ``window`` samples each (the training length), window ``i`` at ``i · (window − overlap)``, the last
    one aligned to the end (so it overlaps the one before by ``overlap`` or more). An input no longer
    than ``window`` is one window ``(0, num_samples)``. VTA-LDM sampling (avgen issue 15): 1 s overlap.

    The windows cover ``[0, num_samples)`` with no gap; near a multiple of the hop the end-aligned
    window can reach back into the window two before it (:func:`equal_power_crossfade` joins that).

    Raises:
        ValueError: ``num_samples`` or ``window`` < 1, or ``overlap`` outside ``[0, window)``.
    """
    if num_samples < 1 or window < 1:
        raise ValueError(f"num_samples and window must be positive, got {num_samples} and {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window={window}) samples, got {overlap}")
    if num_samples <= window:
        return [(0, num_samples)]
    hop = window - overlap
    count = math.ceil((num_samples - window) / hop)  # windows before the end-aligned one
    return [(i * hop, i * hop + window) for i in range(count)] + [(num_samples - window, num_samples)]


def equal_power_gains(length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(g_in, g_out)`` float64 ``(length,)``: the equal-power crossfade over ``length`` samples,
    ``g_in = sin θ``, ``g_out = cos θ`` with ``θ = π/2 · (n + ½) / length`` (sample centres, so the curves
    mirror each other and never reach 0 or 1); ``g_in² + g_out² = 1``: uncorrelated signals keep their
    power through the fade."""
    theta = (np.arange(length, dtype=np.float64) + 0.5) * (np.pi / 2 / length)
    return np.sin(theta), np.cos(theta)


def equal_power_crossfade(chunks: Sequence[np.ndarray], starts: Sequence[int], total: int) -> np.ndarray:
    """Join generated chunks (mono ``(S_i,)``, chunk ``i`` placed at sample ``starts[i]``) into float32
    ``(total,)``: each chunk fades in (:func:`equal_power_gains`) against everything before it over the
    samples it shares with the previous chunk, ``[starts[i], starts[i−1] + S_{i−1})``, and alone after
    that. Windows from :func:`crossfade_windows` qualify; a single chunk comes back unchanged.
    VTA-LDM sampling (avgen issue 15).

    Raises:
        ValueError: counts differ, the first chunk is not at 0, a chunk starts after the previous one
            ends (a gap) or does not reach past it, or the last one does not end at ``total``.
    """
    if len(chunks) != len(starts) or not chunks:
        raise ValueError(f"need one start per chunk, got {len(chunks)} chunks and {len(starts)} starts")
    if starts[0] != 0:
        raise ValueError(f"the first chunk must start at sample 0, got {starts[0]}")
    out = np.asarray(chunks[0], dtype=np.float64)
    for chunk, start in zip(chunks[1:], starts[1:]):
        chunk = np.asarray(chunk, dtype=np.float64)
        shared = len(out) - start
        if not 0 <= shared < len(chunk):
            raise ValueError(f"a chunk of {len(chunk)} samples at {start} must start inside the audio joined "
                             f"so far ({len(out)} samples) and reach past its end")
        g_in, g_out = equal_power_gains(shared)
        faded = out[start:] * g_out + chunk[:shared] * g_in
        out = np.concatenate([out[:start], faded, chunk[shared:]])
    if len(out) != total:
        raise ValueError(f"the chunks end at sample {len(out)}, expected total={total}")
    return out.astype(np.float32)
