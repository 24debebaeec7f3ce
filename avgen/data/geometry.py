"""Clip geometry: the duration, frame rate, frame size and sample rate every clip of a run shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ClipGeometry:
    """Geometry of one clip. Video ``(F, H, W)`` with ``F = seconds * fps``; audio ``S = seconds * sample_rate``."""

    seconds: float = 4.0
    fps: int = 8
    height: int = 256
    width: int = 256
    sample_rate: int = 16000

    @property
    def num_frames(self) -> int:
        return int(round(self.seconds * self.fps))

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
        return cls(seconds=float(cfg.get("seconds", cls.seconds)), fps=int(cfg.get("fps", cls.fps)),
                   height=int(cfg.get("height", cls.height)), width=int(cfg.get("width", cls.width)),
                   sample_rate=int(cfg.get("sample_rate", cls.sample_rate)))

    def to_dict(self) -> dict:
        return asdict(self)

    def incompatibilities(self, stored: "ClipGeometry") -> list[str]:
        """Why clips stored with geometry ``stored`` cannot serve this (requested) geometry.

        Frame rate and sample rate must be equal (the loader never resamples in time: that is
        the job of ``prepare``); the requested duration must fit inside the stored one (a shorter
        window is cut from it). Frame size may differ: frames are resized keeping the aspect
        ratio, then cropped.
        """
        problems = []
        if stored.fps != self.fps:
            problems.append(f"fps: shards have {stored.fps}, config asks for {self.fps}")
        if stored.sample_rate != self.sample_rate:
            problems.append(f"sample_rate: shards have {stored.sample_rate}, config asks for {self.sample_rate}")
        if self.num_frames > stored.num_frames:
            problems.append(f"seconds: shards hold {stored.seconds} s clips, config asks for {self.seconds} s")
        return problems
