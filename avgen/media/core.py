"""Media constants, the media error, and exact frame rates (:func:`as_fps`, :func:`frame_count`)."""

from __future__ import annotations

import math
from fractions import Fraction

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


VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".flv", ".wmv", ".3gp", ".ogv"}
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aif", ".aiff",
                  ".caf", ".ac3", ".amr"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".svg", ".pdf"}
# what avgen writes beside a clip (prompt, sample metadata): not inputs, never reported as skipped
SIDECAR_SUFFIXES = {".txt", ".json"}
