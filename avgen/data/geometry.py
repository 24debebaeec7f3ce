"""Clip geometry: the duration, frame rate, frame size and sample rate every clip of a run shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Mapping

from avgen.media import as_fps, fps_label, fps_text, frame_count


def fps_json(fps) -> int | str:
    """A frame rate as manifests and clip records store it: a whole rate as a JSON number (``8``),
    any other as its exact ``"num/den"`` text (``"30000/1001"``); :func:`avgen.media.as_fps` reads
    both back exactly."""
    rate = as_fps(fps)
    return rate.numerator if rate.denominator == 1 else fps_text(rate)


def _shown(fps: Fraction) -> str:
    """A rate for messages: ``8``, or ``29.97 (30000/1001)`` when the decimal is not exact."""
    label, text = fps_label(fps), fps_text(fps)
    return label if label == text else f"{label} ({text})"


@dataclass(frozen=True)
class ClipGeometry:
    """Geometry of one clip. Video ``(F, H, W)`` with ``F = frame_count(seconds, fps)`` (``round(seconds · fps)``,
    exact); audio ``S = round(seconds · sample_rate)`` samples.

    ``fps`` is an exact rational: the constructor takes anything :func:`avgen.media.as_fps` reads
    (``8``, ``29.97``, ``"30000/1001"``, a Fraction) and stores the Fraction (29.97 → 30000/1001).
    """

    seconds: float = 4.0
    fps: Fraction = Fraction(8)
    height: int = 256
    width: int = 256
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        try:
            rate = as_fps(self.fps)
        except ValueError as exc:
            raise ValueError(f"data.clip.fps: {exc}; give a positive rate such as 8, 29.97 or 30000/1001") from exc
        object.__setattr__(self, "fps", rate)

    @property
    def num_frames(self) -> int:
        return frame_count(self.seconds, self.fps)

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | "ClipGeometry") -> "ClipGeometry":
        if isinstance(cfg, ClipGeometry):
            return cfg
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"data.clip has unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(seconds=float(cfg.get("seconds", cls.seconds)), fps=cfg.get("fps", cls.fps),
                   height=int(cfg.get("height", cls.height)), width=int(cfg.get("width", cls.width)),
                   sample_rate=int(cfg.get("sample_rate", cls.sample_rate)))

    def to_dict(self) -> dict:
        """Plain JSON-able fields; ``fps`` as :func:`fps_json` writes it (``8``, ``"30000/1001"``)."""
        return {**asdict(self), "fps": fps_json(self.fps)}

    def incompatibilities(self, stored: "ClipGeometry") -> list[str]:
        """Why clips stored with geometry ``stored`` cannot serve this (requested) geometry.

        The requested frame rate may be the stored one or lower (frames are then taken by timestamp,
        as FFmpeg's ``fps`` filter does: :func:`avgen.media.decode_video`); the sample rate must be
        equal (audio is never resampled by the loader); the requested duration must fit inside the
        stored one (a shorter window is cut from it). Frame size may differ: frames are resized
        keeping the aspect ratio, then cropped.
        """
        problems = []
        if self.fps > stored.fps:
            problems.append(f"fps: shards have {_shown(stored.fps)}, config asks for {_shown(self.fps)} (a rate up to "
                            f"the stored one can be served)")
        if stored.sample_rate != self.sample_rate:
            problems.append(f"sample_rate: shards have {stored.sample_rate}, config asks for {self.sample_rate}")
        if Fraction(self.num_frames) / self.fps > Fraction(stored.num_frames) / stored.fps:
            problems.append(f"seconds: shards hold {stored.seconds} s clips, config asks for {self.seconds} s")
        return problems
