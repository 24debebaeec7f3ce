"""The base of the frozen feature extractors that metrics use (:class:`FeatureExtractor`), and the
conversion of the frame-based metrics' two input forms (:func:`unit_range_clips`).

Each extractor maps a batch to features ``(N, D)`` and exposes ``num_features`` (``D``), which
:class:`avgen.metrics.frechet.FrechetDistance` uses to size its states without a dummy forward pass;
it records the SHA-256 of every file it was loaded from (:mod:`avgen.pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from avgen.pretrained import FrozenModule, sha256_file


def unit_range_clips(frames: torch.Tensor | Sequence[Any], device: torch.device | str, who: str,
                     clamp: bool = False) -> list[torch.Tensor]:
    """Video clips as a list of (F, 3, H, W) float32 in [0, 1] on ``device``, from either input form of the
    frame-based metrics: a batch (B, F, 3, H, W) float in [-1, 1] (axis 1 is time; ``clamp`` clips values
    outside it) or a list of decoded clips (F, H, W, 3) uint8. ``who`` names the caller in errors."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 5 or frames.shape[2] != 3 or not frames.is_floating_point():
            raise ValueError(f"{who} expects frames (B, F, 3, H, W) float in [-1, 1] (axis 1 is time) or a list of "
                             f"(F, H, W, 3) uint8 clips, got {tuple(frames.shape)} {frames.dtype}")
        x = frames.to(device, torch.float32)
        return list((((x.clamp(-1, 1) if clamp else x) + 1) / 2).unbind(0))
    clips = []
    for clip in frames:
        clip = torch.as_tensor(np.asarray(clip) if not isinstance(clip, torch.Tensor) else clip)
        if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != torch.uint8:
            raise ValueError(f"{who} expects a list of clips (F, H, W, 3) uint8, got {tuple(clip.shape)} {clip.dtype}")
        clips.append(clip.to(device).permute(0, 3, 1, 2).float() / 255)
    return clips


class FeatureExtractor(FrozenModule):
    """Base of the pinned extractors: frozen, always in eval mode, with recorded weight hashes.

    ``weights`` maps a role (``"i3d"``, ``"vggish"``, ``"vggish_pca"``) to ``(path, sha256)``;
    it is empty for a randomly initialised extractor (tests, ``scale=tiny``).
    """

    name: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.num_features: int = 0
        self.weights: dict[str, tuple[str, str]] = {}

    def _record(self, role: str, path: Path) -> None:
        self.weights[role] = (str(path), sha256_file(path))

    def _freeze(self) -> None:
        self.freeze()

    def config(self) -> dict[str, Any]:
        """The hyper-parameters that change the features (part of every reference-statistics key)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What the features depend on: name, weight hashes and config (no file paths)."""
        return {"name": self.name, "sha256": {role: sha for role, (_, sha) in self.weights.items()},
                "config": self.config()}

    def describe(self) -> dict[str, Any]:
        """:meth:`identity` plus the local paths, for ``metrics.json``."""
        return {**self.identity(), "paths": {role: path for role, (path, _) in self.weights.items()}}


@dataclass
class VideoTokens:
    """Tokens of a batch of clips.

    Attributes:
        embeds: (B, T, D) float32, axis 1 is time; clips shorter than the longest are zero-padded at the end.
        mask: (B, T) bool, True at real tokens (all True when every clip has T tokens).
        seconds_per_token: the time axis: token k of a clip covers [k · s, (k + 1) · s) seconds from its start.
    """

    embeds: Tensor
    mask: Tensor
    seconds_per_token: Fraction


class VideoTokenEncoder(Protocol):
    """What a conditioning video encoder provides (a frozen ``nn.Module``)."""

    #: the frame rate (frames per second) its input frames must be decoded at
    fps: Fraction | int | float
    #: D, the width of its tokens
    embed_dim: int

    def __call__(self, frames: Tensor | list[Tensor]) -> VideoTokens:
        """frames: (B, F, 3, H, W) uint8, (F, 3, H, W), or a list of (F_b, 3, H_b, W_b) uint8 clips."""
        ...
