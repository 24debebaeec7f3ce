"""Concat augmentation of VTA-LDM (Xu et al. 2024, "Video-to-Audio Generation with Hidden Alignment",
arXiv 2407.07464, §5 and Table 4; the public code's ``--concat_augment``): a training clip is continued, from a
random cut on, by another clip of a different label, its video and its audio cut at the same instant, so the model
must follow the video through a change of scene.

The public code cuts after 5–15 of its 2-fps frames (2.5–7.5 s of 10-s clips); avgen draws the cut as a fraction
of the clip, ``data.concat.cut`` = [0.25, 0.75], on the clip's frame grid, and cuts the audio at that frame's
instant (sample ``round(k · sample_rate / fps)`` for cut frame k). Pairs are drawn inside a training batch from the
stream's own seeded generator (seed, rank, worker, epoch), so a run is reproducible and every DDP rank draws its
own pairs without communicating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping

import numpy as np
import torch

from avgen.data.geometry import ClipGeometry
from avgen.errors import ConfigError


@dataclass(frozen=True)
class ConcatAugment:
    """``data.concat``: probability ``p`` that a training clip is concatenated (0: off; Table 4 uses 0.5 in avgen's
    ``vta_ldm_augment``), and the range of the cut as fractions of the clip.

    Raises:
        ConfigError: ``p`` outside [0, 1], or a cut range outside (0, 1) or reversed; naming the key.
    """

    p: float = 0.0
    cut: tuple[float, float] = (0.25, 0.75)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, key: str = "data.concat") -> "ConcatAugment":
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {"p", "cut"})
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: not a concat setting; expected p and cut")
        p = cfg.get("p", cls.p)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ConfigError(f"{key}.p={p!r}: expected a probability in [0, 1]")
        cut = tuple(cfg.get("cut", cls.cut))
        if len(cut) != 2 or not 0 < cut[0] <= cut[1] < 1:
            raise ConfigError(f"{key}.cut={list(cut)}: expected [low, high] fractions of the clip, 0 < low <= high < 1 "
                              f"(VTA-LDM: [0.25, 0.75], 2.5-7.5 s of 10-s clips)")
        return cls(p=float(p), cut=(float(cut[0]), float(cut[1])))

    def cut_frames(self, num_frames: int) -> tuple[int, int]:
        """The first and last cut frame k (frames [0, k) from the clip, [k, F) from its partner), 1 <= k <= F − 1."""
        low = max(1, math.ceil(self.cut[0] * num_frames))
        high = min(num_frames - 1, math.floor(self.cut[1] * num_frames))
        return low, max(low, high)

    def apply(self, clips: list[dict[str, Any]], video: torch.Tensor, clip: ClipGeometry,
              rng: np.random.Generator) -> list[tuple[int, int, int]]:
        """Concatenate clips of a decoded batch in place: ``clips`` (decoded dicts: ``audio`` (S,) float32,
        ``caption``, ``label``, ``key``, ``events`` (seconds)) and their frames ``video`` (B, F, H, W, 3) uint8.

        Each clip i is chosen with probability ``p`` (one draw per clip, always made, so the generator's state
        does not depend on the outcome); its partner j is drawn among the clips of the batch with another label
        (none: i is left alone), and the cut frame k in :meth:`cut_frames`. Clip i then shows its frames [0, k)
        and j's frames [k, F), hears its audio [0, a) and j's [a, S) with a = round(k · sample_rate / fps), and
        carries the caption "<i>, <j>", the label "<i>+<j>", the key "<i>+<j>@<k>" and both clips' events on
        their sides of the cut. Partners are read from the batch as it was before any concatenation.

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
            a = round(Fraction(k) * clip.sample_rate / clip.fps)
            cut_s = float(Fraction(k) / clip.fps)
            mine, theirs = original[i], original[j]
            video[i, k:] = original_video[j, k:]
            clips[i]["audio"] = np.concatenate([mine["audio"][:a], theirs["audio"][a:]]).astype(np.float32)
            clips[i]["caption"] = f"{mine['caption']}, {theirs['caption']}"
            clips[i]["label"] = f"{mine['label']}+{theirs['label']}"
            clips[i]["key"] = f"{mine['key']}+{theirs['key']}@{k}"
            clips[i]["events"] = np.concatenate([mine["events"][mine["events"] < cut_s],
                                                 theirs["events"][theirs["events"] >= cut_s]]).astype(np.float32)
            made.append((i, j, k))
        return made
