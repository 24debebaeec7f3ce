"""Dataset-shaped source folders for the prepare tests, written with PyAV in any container."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CONTAINER = {  # suffix -> (format, video codec, audio codec)
    ".mp4": ("mp4", "libx264", "aac"),
    ".mkv": ("matroska", "libx264", "flac"),
    ".webm": ("webm", "libvpx", "libopus"),
    ".avi": ("avi", "mpeg4", "pcm_s16le"),
    ".mov": ("mov", "libx264", "pcm_s16le"),
}


def frames_for(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """(n, h, w, 3) uint8: a square moving across a coloured background (every frame differs)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    out = np.empty((n, h, w, 3), np.uint8)
    out[:] = base
    for i in range(n):
        x = (i * 3) % max(1, w - 8)
        out[i, h // 4:h // 4 + 8, x:x + 8] = 255 - base
    return out


def audio_for(seconds: float, sr: int, channels: int, seed: int, silent: bool = False) -> np.ndarray:
    """(channels, S) float32 noise bursts every 0.25 s (or zeros)."""
    n = int(round(seconds * sr))
    if silent:
        return np.zeros((channels, n), np.float32)
    rng = np.random.default_rng(seed)
    wave = np.zeros(n, np.float32)
    for start in range(0, n, sr // 4):
        wave[start:start + sr // 50] = rng.uniform(-0.5, 0.5, size=len(wave[start:start + sr // 50]))
    return np.repeat(wave[None], channels, axis=0)


def write_video(path: Path, seconds: float, *, fps=25, size=(48, 64), sr: int | None = 16000, channels: int = 1,
                seed: int = 0, silent: bool = False, times: list[float] | None = None) -> Path:
    """A sounding video in the container named by ``path``'s suffix. ``fps`` may be a Fraction
    (30000/1001); ``times`` (seconds) makes a variable-rate file with a frame at each time; ``sr=None``:
    no audio stream."""
    fmt, vcodec, acodec = CONTAINER[path.suffix]
    rate = Fraction(fps).limit_denominator(1001)
    h, w = size
    count = len(times) if times is not None else int(round(seconds * rate))
    frames = frames_for(count, h, w, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt) as c:
        vs = c.add_stream(vcodec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if times is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        as_ = None
        if sr is not None:
            as_ = c.add_stream(acodec, rate=sr)
            as_.layout = "stereo" if channels == 2 else "mono"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if as_ is not None:
            wave = audio_for(seconds, sr, channels, seed + 1, silent)
            fmt_name = "s16p" if acodec in ("flac", "pcm_s16le") else "fltp"
            data = (wave * 32767).astype(np.int16) if fmt_name == "s16p" else wave
            frame_size = as_.codec_context.frame_size or 1024
            for start in range(0, wave.shape[1], frame_size):
                chunk = np.ascontiguousarray(data[:, start:start + frame_size])
                if fmt_name == "s16p":
                    af = av.AudioFrame.from_ndarray(chunk, format="s16p", layout=as_.layout.name)
                else:
                    af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=as_.layout.name)
                af.sample_rate, af.pts = sr, start
                for p in as_.encode(af):
                    c.mux(p)
            for p in as_.encode():
                c.mux(p)
    return path
