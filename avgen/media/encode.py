"""Encoding: mp4 (h264 video, optionally with aac audio), flac and wav, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from avgen._lazy import lazy_module
from avgen.media.core import AUDIO_CODEC_MP4, VIDEO_CODEC, VIDEO_CRF, as_fps
from avgen.media.decode import check_finite
from avgen.media.files import write_bytes_atomic

av = lazy_module("av", "encoding video")
sf = lazy_module("soundfile", "writing audio files")


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
    1: its worker processes already use every core, and the bytes then do not depend on the machine. The same frames
    always give the same bytes (each frame is converted to yuv420p before x264 sees it).

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
            for packet in vs.encode(yuv420p_frame(frame)):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        if astream is not None:
            _encode_audio_stream(container, astream, audio, int(sample_rate))
    return buf.getvalue()


def yuv420p_frame(rgb: np.ndarray):
    """An ``av.VideoFrame`` in yuv420p (what avgen's h264 streams take) of one ``(H, W, 3)`` uint8 RGB frame (H, W
    even), converted by swscale (``VideoFrame.reformat``) before the encoder sees it. Handing x264 the RGB frame for
    PyAV's ``encode`` to convert made the same frames encode to other bytes about once in 300 encodes, once the process
    had decoded and freed other videos (benchmarks/README.md, "Deterministic h264"); converted here, 7,500 of 7,500
    encodes were alike, with the same bytes as the old path's usual ones."""
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")


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
