"""Reading and writing media: mp4 (video, optionally with audio), flac and wav.

Conventions used everywhere in avgen:
- frames are ``uint8`` arrays ``(F, H, W, 3)`` RGB, time on axis 0;
- audio is ``float32`` mono ``(S,)`` in [-1, 1].

Everything goes through PyAV (FFmpeg) and soundfile; nothing shells out to an ``ffmpeg`` binary.
Files are written atomically (temporary name, then rename) and never replace an existing file
unless ``overwrite=True`` is passed.
"""

from __future__ import annotations

import contextlib
import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import soundfile as sf

VIDEO_CODEC = "h264"
# crf 17 is visually lossless for h264; shards store clips once and decode them many times.
VIDEO_CRF = 17
AUDIO_CODEC_MP4 = "aac"


class MediaError(RuntimeError):
    """A media file or buffer could not be decoded (names the source and the reason)."""


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
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{_source_name(source)}: cannot decode {what} ({exc})") from exc


def encode_mp4(
    frames: np.ndarray,
    fps: int,
    *,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = VIDEO_CRF,
) -> bytes:
    """Encode ``(F, H, W, 3)`` uint8 frames (and optional mono float audio) as mp4 bytes.

    Video is h264 yuv420p at a constant ``fps``; odd sizes are padded by one pixel row/column
    (h264 needs even dimensions) and the decoder crops nothing, so keep shard sizes even.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if audio is not None and not sample_rate:
        raise ValueError("sample_rate is required when audio is given")
    f, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = frames.shape[1:3]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        vs = container.add_stream(VIDEO_CODEC, rate=Fraction(int(fps)))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": str(crf), "preset": "fast"}
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
            _encode_audio_stream(container, astream, np.asarray(audio, dtype=np.float32), int(sample_rate))
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


def cover_size(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int]:
    """Smallest size with the source's aspect ratio that covers ``dst_hw`` (resize-then-crop)."""
    (sh, sw), (dh, dw) = src_hw, dst_hw
    scale = max(dh / sh, dw / sw)
    return max(dh, round(sh * scale)), max(dw, round(sw * scale))


def centre_origin(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    return (size[0] - crop[0]) // 2, (size[1] - crop[1]) // 2


def decode_video(
    source: bytes | str | Path,
    *,
    max_frames: int | None = None,
    start_frame: int = 0,
    fit_to: tuple[int, int] | None = None,
    crop_origin: Callable[[tuple[int, int], tuple[int, int]], tuple[int, int]] = centre_origin,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Decode an mp4's video stream to ``(F, H, W, 3)`` uint8 frames and its frame rate.

    ``fit_to=(h, w)``: each frame is scaled, keeping the aspect ratio, to the smallest size that
    covers ``(h, w)`` (swscale does the resize and the colour conversion in one pass), then cropped
    to ``(h, w)`` at ``crop_origin(scaled_size, (h, w))`` (default: centred). Frames are written
    into ``out`` when given (``(F, h, w, 3)`` uint8, e.g. a slot of a batch tensor), saving copies.
    Decoding stops after ``start_frame + max_frames`` frames; fewer frames than ``out`` holds is
    an error.
    """
    with _open_input(source, "video") as container:
        if not container.streams.video:
            raise MediaError(f"{_source_name(source)}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        fps = float(stream.average_rate or stream.base_rate or 0)
        size = cover_size((stream.height, stream.width), fit_to) if fit_to else (stream.height, stream.width)
        y, x = crop_origin(size, fit_to) if fit_to else (0, 0)
        h, w = fit_to or size
        stop = None if max_frames is None else start_frame + max_frames
        frames, n = [], 0
        for i, frame in enumerate(container.decode(stream)):
            if (stop is not None and i >= stop) or (out is not None and n >= len(out)):
                break
            if i < start_frame:
                continue
            # threads=1: PyAV otherwise starts a pool of swscale threads for every single frame
            rgb = frame.to_ndarray(format="rgb24", height=size[0], width=size[1], interpolation="BILINEAR",
                                   threads=1)[y:y + h, x:x + w]
            if out is not None:
                out[n] = rgb
            else:
                frames.append(rgb)
            n += 1
    if n == 0:
        raise MediaError(f"{_source_name(source)}: video stream has no frames")
    if out is None:
        return np.stack(frames), fps
    if n < len(out):
        raise MediaError(f"{_source_name(source)}: {n} frames, need {len(out)}")
    return out, fps


def decode_audio_stream(source: bytes | str | Path, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream of any container (mp4, flac, wav, ...) to mono float32 at ``sample_rate``.

    Resampling and down-mixing are done by FFmpeg's swresample. The mp4 demuxer applies the edit
    list, so AAC priming samples are dropped and sample 0 is time 0; the encoder's trailing padding
    may add up to one codec frame at the end, so callers crop to the length they expect.
    """
    with _open_input(source, "audio") as container:
        if not container.streams.audio:
            raise MediaError(f"{_source_name(source)}: no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise MediaError(f"{_source_name(source)}: audio stream has no samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float audio in [-1, 1] → 16-bit flac bytes (lossless at that depth)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate,
             format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """flac (or wav) bytes → (mono float32 audio, sample rate); channels are averaged."""
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise MediaError(f"<{len(data)} bytes>: cannot decode audio ({exc})") from exc
    return audio.mean(axis=1), int(sr)


def write_bytes_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or choose another output folder) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_mp4(path, frames, fps, *, audio=None, sample_rate=None, overwrite: bool = False) -> Path:
    """Write a sounding (or silent) mp4; see :func:`encode_mp4`."""
    return write_bytes_atomic(path, encode_mp4(frames, fps, audio=audio, sample_rate=sample_rate), overwrite=overwrite)


def write_wav(path, audio: np.ndarray, sample_rate: int, *, overwrite: bool = False) -> Path:
    """Write mono float audio as 16-bit PCM wav."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return write_bytes_atomic(path, buf.getvalue(), overwrite=overwrite)
