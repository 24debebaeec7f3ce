"""Pinned video networks of the video metrics, loaded from local TorchScript files only: the Kinetics-400
I3D of FVD (:class:`I3DFeatures`) and the UCF-101 C3D of the video Inception Score
(:class:`C3DProbabilities`).

Published FVD numbers disagree across implementations because of the extractor's weights and its
input convention (wrong I3D checkpoints, CogVideo#25; [0, 255] vs [-1, 1] inputs, stylegan-v#41), so
each network loads one named file (:data:`avgen.pretrained.ORIGINS`) and records its SHA-256.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avgen.encoders.base import FeatureExtractor
from avgen.errors import ConfigError
from avgen.pretrained import ORIGINS, require_file


class I3DFeatures(FeatureExtractor):
    """FVD features from the Kinetics-400 I3D TorchScript (``i3d_torchscript.pt``).

    The TorchScript's signature is ``forward(x, rescale=False, resize=False, return_features=False)``
    with ``x`` of shape ``(B, 3, T, H, W)``; ``return_features=True`` gives the 400 pre-softmax
    activations. Two input conventions are offered (``input_mode``):

    - ``"uint8"`` (default): exactly StyleGAN-V's ``compute_fvd``. Frames are quantised the way its
      generator path does, ``(x * 127.5 + 128).clamp(0, 255).to(uint8)``, and the detector is called
      with ``rescale=True, resize=True``: it maps ``[0, 255]`` to ``[-1, 1]`` and resizes to 224×224
      itself (its author, stylegan-v#41 and fvd-comparison#4). ``resolution`` is not used.
    - ``"float"``: the call most third-party FVD code makes. Frames are resized here to
      ``resolution`` (bilinear, ``align_corners=False``, as content-debiased FVD's preprocessing) and
      passed as float in ``[-1, 1]`` with ``rescale=False, resize=False``.

    Unverified offline: the TorchScript's internal resize method, and whether the two modes give
    the same numbers on real weights (they differ at least by the uint8 quantisation).

    Args:
        path: local ``i3d_torchscript.pt``.
        num_frames: frames per clip fed to I3D (FVD convention: 16).
        frame_sampling: ``"uniform"`` spreads ``num_frames`` over the whole clip
            (``round(linspace(0, F-1, num_frames))``); ``"first"`` takes the first ``num_frames``
            consecutive frames, as StyleGAN-V loads them. Clips shorter than ``num_frames`` are an error.
        input_mode: ``"uint8"`` or ``"float"`` (above).
        resolution: side of the square frames in ``"float"`` mode.
        feature_dim: width of the detector's output (400 for the Kinetics-400 logits).
        config_key: config key named in the error when the file is missing.
    """

    name = "i3d"

    def __init__(self, path: str | os.PathLike | None, num_frames: int = 16, frame_sampling: str = "uniform",
                 input_mode: str = "uint8", resolution: int = 224, feature_dim: int = 400,
                 config_key: str | None = None):
        super().__init__()
        if frame_sampling not in ("uniform", "first"):
            raise ConfigError(f"I3D frame_sampling={frame_sampling!r}: expected 'uniform' or 'first'")
        if input_mode not in ("uint8", "float"):
            raise ConfigError(f"I3D input_mode={input_mode!r}: expected 'uint8' (StyleGAN-V) or 'float'")
        file, self.detector = _load_torchscript("i3d", path, config_key)
        self._record("i3d", file)
        self.num_frames, self.frame_sampling = num_frames, frame_sampling
        self.input_mode, self.resolution = input_mode, resolution
        self.num_features = feature_dim
        self._freeze()

    def config(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "frame_sampling": self.frame_sampling,
                "input_mode": self.input_mode, "resolution": self.resolution, "feature_dim": self.num_features}

    def frame_indices(self, total: int) -> torch.Tensor:
        """Indices of the frames fed to I3D out of ``total`` frames."""
        return _frame_indices(total, self.num_frames, self.frame_sampling, "I3D features")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, F, 3, H, W) float in [-1, 1], axis 1 is time → features (B, feature_dim) float32."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"I3D expects video (B, F, 3, H, W), got {tuple(video.shape)}")
        clip = video[:, self.frame_indices(video.shape[1]).to(video.device)].float()
        if self.input_mode == "uint8":
            feats = self.detector(_to_uint8_cthw(clip), rescale=True, resize=True, return_features=True)
        else:
            b, t = clip.shape[:2]
            frames = F.interpolate(clip.flatten(0, 1), size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False)
            x = frames.view(b, t, 3, self.resolution, self.resolution).permute(0, 2, 1, 3, 4).contiguous()
            feats = self.detector(x, rescale=False, resize=False, return_features=True)
        if feats.shape != (video.shape[0], self.num_features):
            raise ValueError(f"I3D detector returned {tuple(feats.shape)}, expected ({video.shape[0]}, "
                             f"{self.num_features}); check feature_dim and that the file is {ORIGINS['i3d'].file}")
        return feats.float()


def _load_torchscript(role: str, path: str | os.PathLike | None, config_key: str | None) -> tuple[Path, nn.Module]:
    file = require_file(role, path, config_key)
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in torch, but it is the format these weights are published in.
            warnings.simplefilter("ignore", DeprecationWarning)
            return file, torch.jit.load(str(file), map_location="cpu")
    except RuntimeError as exc:
        raise ValueError(f"{file} is not a TorchScript module ({exc}); expected {ORIGINS[role].file} "
                         f"from {ORIGINS[role].where}") from exc


def _frame_indices(total: int, num_frames: int, sampling: str, who: str) -> torch.Tensor:
    """``num_frames`` indices out of ``total`` frames: ``"uniform"`` over the whole clip or the ``"first"`` ones."""
    if total < num_frames:
        raise ValueError(f"{who}: clips need at least num_frames={num_frames} frames, got {total}; generate "
                         f"longer clips or lower num_frames (convention: 16)")
    if sampling == "first":
        return torch.arange(num_frames)
    return torch.linspace(0, total - 1, num_frames).round().long()


def _to_uint8_cthw(clip: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) float in [-1, 1] → (B, 3, T, H, W) uint8, StyleGAN-V's generator-side quantisation."""
    return (clip.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 1, 3, 4).contiguous()


# --------------------------------------------------------------------------------------------- C3D


class C3DProbabilities(FeatureExtractor):
    """Class posteriors of the UCF-101 C3D (``c3d_ucf101.pt``) for the video Inception Score.

    This is StyleGAN-V's ``compute_isv`` input side: ``num_frames`` (16) consecutive frames from the
    start of each clip (its dataset loader: ``load_n_consecutive=16``, no random offset), quantised
    to uint8 ``(B, 3, T, H, W)`` as its generator path does, and passed to the TorchScript with no
    arguments; the TorchScript resizes, crops and normalises internally (TGANv2's C3D preprocessing)
    and returns the softmax over the 101 UCF-101 classes, ``(B, 101)``. The score itself is
    :class:`avgen.metrics.classifier_scores.InceptionScore` on ``log`` of these probabilities with
    ``shuffle_seed=42`` (StyleGAN-V's ``RandomState(42).shuffle``) and 10 splits.

    The output is checked to be a probability vector per clip, so a file that returns logits or
    features is refused rather than silently scored.

    Args:
        path: local ``c3d_ucf101.pt``.
        num_frames: frames per clip (16).
        frame_sampling: ``"first"`` (StyleGAN-V) or ``"uniform"`` over the clip.
        num_classes: width of the detector's output (101).
        config_key: config key named in the error when the file is missing.
    """

    name = "c3d_ucf101"

    def __init__(self, path: str | os.PathLike | None, num_frames: int = 16, frame_sampling: str = "first",
                 num_classes: int = 101, config_key: str | None = None):
        super().__init__()
        if frame_sampling not in ("uniform", "first"):
            raise ConfigError(f"C3D frame_sampling={frame_sampling!r}: expected 'first' (StyleGAN-V) or 'uniform'")
        file, self.detector = _load_torchscript("c3d", path, config_key)
        self._record("c3d", file)
        self.num_frames, self.frame_sampling = int(num_frames), frame_sampling
        self.num_features = int(num_classes)
        self._freeze()

    def config(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "frame_sampling": self.frame_sampling, "num_classes": self.num_features,
                "input": "uint8 (B, 3, T, H, W), (x * 127.5 + 128).clamp(0, 255)", "output": "softmax probabilities"}

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, F, 3, H, W) float in [-1, 1] → class probabilities (B, num_classes) float64."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"C3D expects video (B, F, 3, H, W), got {tuple(video.shape)}")
        index = _frame_indices(video.shape[1], self.num_frames, self.frame_sampling, "C3D (video IS)")
        probs = self.detector(_to_uint8_cthw(video[:, index.to(video.device)])).double()
        if probs.shape != (video.shape[0], self.num_features):
            raise ValueError(f"C3D detector returned {tuple(probs.shape)}, expected ({video.shape[0]}, "
                             f"{self.num_features}); check num_classes and that the file is {ORIGINS['c3d'].file}")
        if probs.min() < 0 or not torch.allclose(probs.sum(-1), torch.ones_like(probs[:, 0]), atol=1e-3):
            raise ValueError(f"C3D detector output rows are not probabilities (min {float(probs.min()):.3g}, row sums "
                             f"{probs.sum(-1).tolist()[:4]}); {ORIGINS['c3d'].file} returns a softmax")
        return probs
