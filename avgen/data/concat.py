"""Concat augmentation of VTA-LDM (Xu et al. 2024, "Video-to-Audio Generation with Hidden Alignment",
arXiv 2407.07464, §5.5, Table 4 and appendix E; the public code's ``--concat_augment``): a training clip is
continued, from a random cut on, by another clip of a different label, its video and its audio cut at the same
instant, so the model must follow the video through a change of scene. The paper also "propose[s] a test set"
of such clips (appendix E, item 2; §4: "an augmented test set ... by randomly cutting and combining segments"),
without saying how it was drawn: :class:`ConcatTest` is avgen's, fixed by a seed.

One :func:`join` serves both: frames [0, k) of a clip and frames [k, F) of its partner, audio samples [0, a) and
[a, S) with a = round(k · sample_rate / fps), the instant of cut frame k.

The public code cuts after 5–15 of its 2-fps frames (2.5–7.5 s of 10-s clips); avgen draws the cut as a fraction
of the clip, ``cut`` = [0.25, 0.75], on the clip's frame grid (:func:`cut_frames`). Training pairs
(:class:`ConcatAugment`, ``data.concat``) are drawn inside a training batch from the stream's own seeded generator
(seed, rank, worker, epoch), so a run is reproducible and every DDP rank draws its own pairs without
communicating. Test pairs (:class:`ConcatTest`, ``data.concat_test``) are drawn over the whole split, clip by clip
in sorted key order, each from a generator seeded with (seed, clip index) alone: the same list on any number of
ranks and workers, in every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from avgen.data.geometry import ClipGeometry
from avgen.errors import ConfigError

CUT = (0.25, 0.75)  # VTA-LDM: 2.5-7.5 s of 10-s clips


def _cut_setting(cfg: Mapping[str, Any], key: str) -> tuple[float, float]:
    """``<key>.cut`` checked: [low, high] fractions of the clip, 0 < low <= high < 1 (default :data:`CUT`)."""
    cut = tuple(cfg.get("cut", CUT))
    if len(cut) != 2 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in cut) \
            or not 0 < cut[0] <= cut[1] < 1:
        raise ConfigError(f"{key}.cut={list(cut)}: expected [low, high] fractions of the clip, 0 < low <= high < 1 "
                          f"(VTA-LDM: [0.25, 0.75], 2.5-7.5 s of 10-s clips)")
    return float(cut[0]), float(cut[1])


def _settings(cfg: Mapping[str, Any] | None, key: str, known: tuple[str, ...]) -> dict[str, Any]:
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: not a {key.rpartition('.')[2]} setting; expected "
                          f"{', '.join(known[:-1])} and {known[-1]}")
    return cfg


def cut_frames(cut: tuple[float, float], num_frames: int) -> tuple[int, int]:
    """The first and last cut frame k for ``cut`` fractions of a clip of ``num_frames`` frames (frames [0, k)
    from the clip, [k, F) from its partner), 1 <= k <= F − 1."""
    low = max(1, math.ceil(cut[0] * num_frames))
    high = min(num_frames - 1, math.floor(cut[1] * num_frames))
    return low, max(low, high)


def join(first: Mapping[str, Any], second: Mapping[str, Any], k: int, clip: ClipGeometry) -> dict[str, Any]:
    """``first`` continued by ``second`` from cut frame ``k`` on, video and audio cut at the same instant.

    ``first``, ``second``: decoded clips of geometry ``clip`` (``video`` (F, H, W, 3) uint8, a numpy array or a
    torch tensor, F = 0 with ``data.audio_only``; ``audio`` (S,) float32; ``caption``, ``label``, ``key``: str;
    ``events``: float32 onsets in seconds). ``first["video"]`` is written in place: its frames [k, F) become
    ``second``'s. The audio is ``first``'s samples [0, a) and ``second``'s [a, S), a = round(k · sample_rate / fps)
    (exact rational), the instant k / fps s of frame k.

    Returns:
        the joined clip: ``video`` (``first``'s array), ``audio`` (S,) float32, caption ``"<first>, <second>"``,
        label ``"<first>+<second>"``, key ``"<first>+<second>@<k>"`` (``+`` never occurs in a prepared key:
        :func:`avgen.data.shards.key_part`), and each clip's events on its side of the cut.
    """
    a = round(Fraction(k) * clip.sample_rate / clip.fps)
    cut_s = float(Fraction(k) / clip.fps)
    video = first["video"]
    video[k:] = second["video"][k:]
    return {
        "video": video,
        "audio": np.concatenate([first["audio"][:a], second["audio"][a:]]).astype(np.float32),
        "caption": f"{first['caption']}, {second['caption']}",
        "label": f"{first['label']}+{second['label']}",
        "key": f"{first['key']}+{second['key']}@{k}",
        "events": np.concatenate([first["events"][first["events"] < cut_s],
                                  second["events"][second["events"] >= cut_s]]).astype(np.float32),
    }


@dataclass(frozen=True)
class ConcatAugment:
    """``data.concat``: probability ``p`` that a training clip is concatenated (0: off; Table 4 uses 0.5 in avgen's
    ``vta_ldm_augment``), and the range of the cut as fractions of the clip.

    Raises:
        ConfigError: an unknown key, ``p`` outside [0, 1], or a cut range outside (0, 1) or reversed; naming the key.
    """

    p: float = 0.0
    cut: tuple[float, float] = CUT

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, key: str = "data.concat") -> "ConcatAugment":
        cfg = _settings(cfg, key, ("p", "cut"))
        p = cfg.get("p", cls.p)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ConfigError(f"{key}.p={p!r}: expected a probability in [0, 1]")
        return cls(p=float(p), cut=_cut_setting(cfg, key))

    def cut_frames(self, num_frames: int) -> tuple[int, int]:
        """The first and last cut frame k (:func:`cut_frames`)."""
        return cut_frames(self.cut, num_frames)

    def apply(self, clips: list[dict[str, Any]], video: torch.Tensor, clip: ClipGeometry,
              rng: np.random.Generator) -> list[tuple[int, int, int]]:
        """Concatenate clips of a decoded batch in place: ``clips`` (decoded dicts: ``audio`` (S,) float32,
        ``caption``, ``label``, ``key``, ``events`` (seconds)) and their frames ``video`` (B, F, H, W, 3) uint8.

        Each clip i is chosen with probability ``p`` (one draw per clip, always made, so the generator's state
        does not depend on the outcome); its partner j is drawn among the clips of the batch with another label
        (none: i is left alone), and the cut frame k in :meth:`cut_frames`. Clip i becomes :func:`join` (i, j, k):
        its frames [0, k) and j's [k, F), its audio [0, a) and j's [a, S), caption "<i>, <j>", label "<i>+<j>",
        key "<i>+<j>@<k>", both clips' events on their sides of the cut. Partners are read from the batch as it
        was before any concatenation.

        Returns:
            ``[(i, j, k), ...]``, the concatenations made.
        """
        if self.p <= 0 or len(clips) < 2:
            return []
        frames = clip.num_frames  # the clip's frame grid (the batch holds none with data.audio_only)
        original_video = video.clone()
        original = [{k: clip_[k] for k in ("audio", "caption", "label", "key", "events")} for clip_ in clips]
        chosen = rng.random(len(clips)) < self.p
        low, high = self.cut_frames(frames)
        made = []
        for i in np.flatnonzero(chosen).tolist():
            partners = [j for j in range(len(clips)) if original[j]["label"] != original[i]["label"]]
            if not partners:
                continue
            j = partners[int(rng.integers(len(partners)))]
            k = int(rng.integers(low, high + 1))
            joined = join({**original[i], "video": video[i]}, {**original[j], "video": original_video[j]}, k, clip)
            joined.pop("video")  # written into video[i]
            clips[i].update(joined)
            made.append((i, j, k))
        return made


class ConcatPair(NamedTuple):
    """One clip of the concatenated test set: ``first``'s frames [0, ``cut``) then ``second``'s (keys)."""

    first: str
    second: str
    cut: int


@dataclass(frozen=True)
class ConcatTest:
    """``data.concat_test``: VTA-LDM's concatenated test set (appendix E), fixed by ``seed``; ``cut``: the range of
    the cut as fractions of the clip (as ``data.concat.cut``).

    One joined clip per clip of the split: clip i (in sorted key order) continued by a partner j of another
    label, j and the cut frame k drawn from ``numpy.random.default_rng([seed, i])``, never from the rank,
    worker or epoch. A clip without a label (``""``) counts as its own label: any other clip is its partner.

    Raises:
        ConfigError: an unknown key, a ``seed`` that is not an int >= 0, or a bad ``cut``; naming the key.
    """

    seed: int = 0
    cut: tuple[float, float] = CUT

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, key: str = "data.concat_test") -> "ConcatTest | None":
        """The settings, or ``None`` for ``cfg`` null (off)."""
        if cfg is None:
            return None
        cfg = _settings(cfg, key, ("seed", "cut"))
        seed = cfg.get("seed", cls.seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{key}.seed={seed!r}: expected an int >= 0 (the set is fixed by it)")
        return cls(seed=seed, cut=_cut_setting(cfg, key))

    def pairs(self, keys: Sequence[str], labels: Sequence[str], num_frames: int) -> list[ConcatPair]:
        """The set: one :class:`ConcatPair` per key, in sorted key order, for clips of ``num_frames`` frames.

        ``labels[n]`` is ``keys[n]``'s label. The partner is uniform over the clips of another label (drawn as
        an index into them, O(log n) per clip); the cut frame uniform in :func:`cut_frames`.

        Raises:
            ConfigError: every clip has the same label (no clip has a partner), naming ``data.concat_test``.
        """
        order = sorted(range(len(keys)), key=lambda n: keys[n])
        names = [keys[n] for n in order]
        classes = [labels[n] or keys[n] for n in order]  # unlabelled: its own label
        if len(set(classes)) < 2:
            raise ConfigError(f"data.concat_test: the {len(names)} clip(s) of the split share one label "
                              f"({classes[0]!r}), so none has a partner of another label; evaluate on a split "
                              f"with two labels or more, or set data.concat_test=null")
        members: dict[str, list[int]] = {}
        for i, label in enumerate(classes):
            members.setdefault(label, []).append(i)
        # the r-th clip of another label than positions P (sorted): r + #{p in P : p - rank(p) <= r}
        shifted = {label: np.asarray(p) - np.arange(len(p)) for label, p in members.items()}
        low, high = cut_frames(self.cut, num_frames)
        out = []
        for i, name in enumerate(names):
            rng = np.random.default_rng([self.seed, i])
            others = len(names) - len(members[classes[i]])
            r = int(rng.integers(others))
            j = r + int(np.searchsorted(shifted[classes[i]], r, side="right"))
            out.append(ConcatPair(name, names[j], int(rng.integers(low, high + 1))))
        return out
