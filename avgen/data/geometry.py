"""Clip geometry (what a system consumes) and stored geometry (what ``prepare`` writes).

``data.clip`` (:class:`ClipGeometry`): duration, frame rate, frame size and sample rate of every
clip a run trains or evaluates on. ``data.store`` (:class:`StoreGeometry`): duration, frame rate,
short side and sample rate of the clips in a dataset's shards; it names ``data.root``. One stored
geometry serves every clip geometry with ``clip.fps <= store.fps`` (frames taken by timestamp),
``clip.seconds <= store.seconds`` (a window cut from the stored clip), the same sample rate, and
any frame size (resize keeping the aspect ratio, then crop).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Mapping

from avgen.errors import ConfigError
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


class _Counts:
    """Frame and sample counts of a geometry with ``seconds``, ``fps`` and ``sample_rate``."""

    seconds: float
    fps: Fraction
    sample_rate: int

    @property
    def num_frames(self) -> int:
        """``round(seconds · fps)`` frames (exact, halves up: :func:`avgen.media.frame_count`)."""
        return frame_count(self.seconds, self.fps)

    @property
    def num_samples(self) -> int:
        """``round(seconds · sample_rate)`` audio samples."""
        return int(round(self.seconds * self.sample_rate))


@dataclass(frozen=True)
class ClipGeometry(_Counts):
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

    def incompatibilities(self, stored: "ClipGeometry | StoreGeometry") -> list[str]:
        """Why clips stored with geometry ``stored`` (a :class:`StoreGeometry`, or the fixed
        :class:`ClipGeometry` of shards written before ``data.store`` existed) cannot serve this
        (requested) geometry; empty when they can.

        The requested frame rate may be the stored one or lower (frames are then taken by timestamp,
        as FFmpeg's ``fps`` filter does: :func:`avgen.media.decode_video`); the sample rate must be
        equal (audio is never resampled by the loader); the requested duration must fit inside the
        stored one (a shorter window is cut from it). Frame size may differ: frames are resized
        keeping the aspect ratio, then cropped. Only fields that differ are listed: a duration the same as the
        stored one whose whole frames at a higher rate outlast the stored ones is the ``fps`` problem alone.
        """
        return list(self._problems(stored).values())

    def _problems(self, stored: "ClipGeometry | StoreGeometry") -> dict[str, str]:
        """:meth:`incompatibilities` by cause: ``fps``, ``sample_rate``, ``seconds`` (a longer duration asked
        for) or ``frames`` (the same or a shorter duration whose whole frames outlast the stored clip's)."""
        problems = {}
        if self.fps > stored.fps:
            problems["fps"] = (f"fps: shards have {_shown(stored.fps)}, config asks for {_shown(self.fps)} (a rate up "
                               f"to the stored one can be served)")
        if stored.sample_rate != self.sample_rate:
            problems["sample_rate"] = (f"sample_rate: shards have {stored.sample_rate}, config asks for "
                                       f"{self.sample_rate}")
        span, stored_span = Fraction(self.num_frames) / self.fps, Fraction(stored.num_frames) / stored.fps
        if span > stored_span:
            if self.seconds > stored.seconds:
                problems["seconds"] = f"seconds: shards hold {stored.seconds} s clips, config asks for {self.seconds} s"
            elif "fps" not in problems:
                problems["frames"] = (f"seconds: {self.seconds} s at {_shown(self.fps)} fps is {self.num_frames} "
                                      f"whole frames lasting {float(span):.3f} s, longer than the shards' "
                                      f"{stored.num_frames} frames ({float(stored_span):.3f} s)")
        return problems


def _override_fps(fps: Fraction) -> str:
    """A rate as a command-line value that reads back exactly: ``29.97``, or ``10/3`` when no decimal does."""
    label = fps_label(fps)
    return label if as_fps(label) == fps else fps_text(fps)


def check_servable(clip: ClipGeometry, store: "StoreGeometry", dataset: str) -> None:
    """Refuse a served geometry (``data.clip``) that the stored one (``data.store``) cannot serve: the one check
    ``fit`` (:class:`~avgen.data.datamodule.AVDataModule`) and ``prepare`` make before any work.

    Raises:
        ConfigError: one line listing the fields that differ, ``data.store``, and the overrides that store what
            ``data.clip`` asks for (``data.clip.fps=29.97`` alone: ``data.store.fps=29.97 data.clip.fps=29.97``).
    """
    problems = clip._problems(store)
    if not problems:
        return
    wanted = {"fps": _override_fps(clip.fps), "sample_rate": clip.sample_rate, "seconds": clip.seconds}
    keys = [k for k in wanted if k in problems]
    fix = ("lower data.clip or raise data.store" if not keys else
           "set data.store too: " + " ".join([f"data.store.{k}={wanted[k]}" for k in keys]
                                             + [f"data.clip.{k}={wanted[k]}" for k in keys]) + ", or lower data.clip")
    raise ConfigError(f"data.clip cannot be served from data.store ({dataset}): " + "; ".join(problems.values())
                      + f". data.store = {store.to_dict()}; {fix} (and prepare the dataset at that stored geometry)")


def _even(x: float) -> int:
    """The nearest even integer (h264 4:2:0 needs even frame sizes), at least 2."""
    return max(2, 2 * int(round(x / 2)))


@dataclass(frozen=True)
class StoreGeometry(_Counts):
    """Geometry of the clips ``prepare`` writes into a dataset's shards (``data.store``).

    Video: ``F = frame_count(seconds, fps)`` frames, each scaled keeping its aspect ratio so its short
    side is ``short_side`` pixels (the long side rounded to an even number: h264 4:2:0), or, with
    ``square``, centre-cropped to ``short_side × short_side`` (the SVG code's Greatest Hits
    preparation). Audio: ``S = round(seconds · sample_rate)`` mono samples.

    Raises:
        ValueError: a non-positive or odd ``short_side``, a non-positive duration, rate or sample rate;
            the message names the ``data.store`` key.
    """

    seconds: float = 4.0
    fps: Fraction = Fraction(8)
    short_side: int = 256
    sample_rate: int = 16000
    square: bool = False

    def __post_init__(self) -> None:
        try:
            rate = as_fps(self.fps)
        except ValueError as exc:
            raise ValueError(f"data.store.fps: {exc}; give a positive rate such as 8, 25 or 30000/1001") from exc
        object.__setattr__(self, "fps", rate)
        if not self.seconds > 0:
            raise ValueError(f"data.store.seconds={self.seconds}: expected a duration > 0 (seconds)")
        if self.short_side < 2 or self.short_side % 2:
            raise ValueError(f"data.store.short_side={self.short_side}: expected an even number of pixels >= 2 "
                             f"(h264 4:2:0 needs even frame sizes)")
        if self.sample_rate < 1:
            raise ValueError(f"data.store.sample_rate={self.sample_rate}: expected a rate in Hz >= 1")
        if self.num_frames < 1:
            raise ValueError(f"data.store.seconds={self.seconds} at data.store.fps={fps_label(rate)} holds no whole "
                             f"frame; store clips of at least one frame ({float(1 / rate):.3f} s)")

    def frame_size(self, source_hw: tuple[int, int]) -> tuple[int, int]:
        """Stored ``(height, width)`` of a source whose upright frames are ``source_hw``."""
        if self.square:
            return self.short_side, self.short_side
        h, w = source_hw
        if h <= 0 or w <= 0:
            raise ValueError(f"frame size {source_hw} is not positive")
        scale = self.short_side / min(h, w)
        return (self.short_side, _even(w * scale)) if h <= w else (_even(h * scale), self.short_side)

    def default_clip(self) -> ClipGeometry:
        """The clip geometry a reader without a ``data.clip`` of its own serves: the whole stored clip,
        centre-cropped to ``short_side × short_side``."""
        return ClipGeometry(seconds=self.seconds, fps=self.fps, height=self.short_side, width=self.short_side,
                            sample_rate=self.sample_rate)

    @classmethod
    def from_config(cls, cfg: "Mapping[str, Any] | StoreGeometry | ClipGeometry") -> "StoreGeometry":
        """From ``data.store`` (or a :class:`ClipGeometry`: the fixed frames of shards written before
        ``data.store`` existed; square when height = width).

        Raises:
            ValueError: unknown keys or bad values, naming the ``data.store`` key.
        """
        if isinstance(cfg, StoreGeometry):
            return cfg
        if isinstance(cfg, ClipGeometry):
            return cls(seconds=cfg.seconds, fps=cfg.fps, short_side=_even(min(cfg.height, cfg.width)) if
                       min(cfg.height, cfg.width) % 2 else min(cfg.height, cfg.width),
                       sample_rate=cfg.sample_rate, square=cfg.height == cfg.width)
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"data.store has unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(seconds=float(cfg.get("seconds", cls.seconds)), fps=cfg.get("fps", cls.fps),
                   short_side=int(cfg.get("short_side", cls.short_side)),
                   sample_rate=int(cfg.get("sample_rate", cls.sample_rate)), square=bool(cfg.get("square", False)))

    def to_dict(self) -> dict:
        """Plain JSON-able fields; ``fps`` as :func:`fps_json` writes it."""
        return {**asdict(self), "fps": fps_json(self.fps)}

    def differences(self, other: "StoreGeometry") -> list[str]:
        """``key: this vs other`` for each field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}={mine[k]} (shards: {theirs[k]})" for k in mine if mine[k] != theirs[k]]

    def folder_name(self) -> str:
        """The folder under ``<data_dir>/<dataset>/`` that holds these shards: ``256x256_8fps_4.0s_16000hz``
        (square) or ``short256_25fps_10.0s_16000hz``."""
        size = f"{self.short_side}x{self.short_side}" if self.square else f"short{self.short_side}"
        return f"{size}_{fps_label(self.fps)}fps_{float(self.seconds)}s_{self.sample_rate}hz"
