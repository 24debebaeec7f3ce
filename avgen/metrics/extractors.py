"""Pinned feature extractors for Fréchet distances (FVD: I3D, FAD: VGGish), loaded from local files only.

Published FVD and FAD numbers disagree across implementations because of the extractor's weights
and its input convention (wrong I3D checkpoints, CogVideo#25; [0, 255] vs [-1, 1] inputs,
stylegan-v#41; different VGGish ports). So every extractor here

- loads one named file from a local path (avgen never downloads weights) and records its SHA-256,
  which goes into ``metrics.json`` and into the key of cached reference statistics;
- stops with :class:`ExtractorWeightsMissing` naming the file, the config key, what the original is
  and where it is published when the file is absent;
- stays frozen and in eval mode whatever its parent does (``train()`` is a no-op), so a metric held
  by a LightningModule never normalises with batch statistics nor lands in a checkpoint.

Each extractor maps a batch to features ``(N, D)`` and exposes ``num_features`` (``D``), which
:class:`avgen.metrics.frechet.FrechetDistance` uses to size its states without a dummy forward pass.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avgen.errors import ConfigError


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a pinned weight file comes from, for error messages and the README."""

    file: str          # the published file name
    config_key: str    # the avgen config key that points at the local copy
    metric: str        # the metric in ``evaluate.metrics`` that needs it
    what: str          # what the original is
    where: str         # where it is published


ORIGINS: dict[str, WeightsOrigin] = {
    "i3d": WeightsOrigin(
        file="i3d_torchscript.pt", config_key="evaluate.fvd.i3d_path", metric="fvd",
        what="the Kinetics-400 I3D as TorchScript: StyleGAN-V's port of the tf.hub i3d-kinetics-400 model "
             "that the original FVD (google-research frechet_video_distance) uses",
        where="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1, linked from "
              "universome/stylegan-v src/metrics/frechet_video_distance.py"),
    "c3d": WeightsOrigin(
        file="c3d_ucf101.pt", config_key="evaluate.is_video.c3d_path", metric="is_video",
        what="the UCF-101-finetuned C3D as TorchScript: StyleGAN-V's exact port of TGANv2's chainer C3D, "
             "the classifier of the video Inception Score (TGAN, TGANv2, StyleGAN-V, TempoTokens' IS column)",
        where="https://www.dropbox.com/s/jxpu7avzdc9n97q/c3d_ucf101.pt?dl=1, linked from "
              "universome/stylegan-v src/metrics/video_inception_score.py"),
    "vggish": WeightsOrigin(
        file="vggish-10086976.pth", config_key="evaluate.fad.vggish_path", metric="fad",
        what="Google's AudioSet VGGish converted to a PyTorch state dict by torchvggish "
             "(torch.hub harritaylor/torchvggish)",
        where="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"),
    "vggish_pca": WeightsOrigin(
        file="vggish_pca_params.npz", config_key="evaluate.fad.vggish_pca_path", metric="fad",
        what="the PCA/whitening parameters of Google's AudioSet VGGish embedding release "
             "(arrays pca_eigen_vectors, pca_means)",
        where="https://storage.googleapis.com/audioset/vggish_pca_params.npz"),
    "panns": WeightsOrigin(
        file="Cnn14_16k_mAP=0.438.pth", config_key="evaluate.panns.path",
        metric="is' and 'kl",  # both metrics use it; the message quotes this as 'is' and 'kl'
        what="the PANNs CNN14 AudioSet tagger trained on 16 kHz audio (Kong et al. 2020), the classifier of "
             "audioldm_eval's Inception Score and KL",
        where="https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth (Zenodo record 3987831)"),
    "imagebind": WeightsOrigin(
        file="imagebind_huge.pth", config_key="evaluate.imagebind.path", metric="imagebind",
        what="Meta's ImageBind-Huge state dict (Girdhar et al. 2023, facebookresearch/ImageBind); only its vision "
             "and audio towers are used",
        where="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth, linked from facebookresearch/ImageBind "
              "imagebind/models/imagebind_model.py"),
}


class ExtractorWeightsMissing(FileNotFoundError):
    """A pinned extractor's weight file is not where the config says."""

    def __init__(self, role: str, path: str | os.PathLike | None, config_key: str | None = None):
        origin = ORIGINS[role]
        key = config_key or origin.config_key
        where = "no path is set" if path is None else f"{path} does not exist"
        super().__init__(
            f"{role} extractor weights missing: {where} (config key {key}). Expected {origin.file}, "
            f"{origin.what}; published at {origin.where}. avgen loads extractor weights from local files "
            f"only: download the file where there is network, copy it here and set {key}=/path/to/"
            f"{origin.file}, or leave '{origin.metric}' out of evaluate.metrics.")
        self.role, self.path, self.config_key = role, path, key


def _require_file(role: str, path: str | os.PathLike | None, config_key: str | None) -> Path:
    if path is None or not Path(path).is_file():
        raise ExtractorWeightsMissing(role, path, config_key)
    return Path(path)


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


class FeatureExtractor(nn.Module):
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
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        # A parent's .train() must not switch a pretrained extractor to batch statistics or dropout.
        return super().train(False)

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


# --------------------------------------------------------------------------------------------- I3D


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
    file = _require_file(role, path, config_key)
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


# ------------------------------------------------------------------------------------------ VGGish

VGGISH_LAYERS: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
TINY_VGGISH = {"layers": (4, "M", 8, "M", 8, 8, "M", 8, 8, "M"), "hidden": 32, "embedding_dim": 16}


def hertz_to_mel(hz: torch.Tensor | float) -> torch.Tensor | float:
    """HTK mel scale, as VGGish's ``mel_features.hertz_to_mel`` (tensor in, tensor out; float in, float out)."""
    return 1127.0 * (torch.log1p(hz / 700.0) if isinstance(hz, torch.Tensor) else math.log1p(hz / 700.0))


def vggish_mel_matrix(num_spectrogram_bins: int = 257, sample_rate: int = 16000, num_mel_bins: int = 64,
                      lower_hz: float = 125.0, upper_hz: float = 7500.0) -> torch.Tensor:
    """(num_spectrogram_bins, num_mel_bins) float64, VGGish's ``spectrogram_to_mel_matrix``.

    The triangles are linear in the *mel* domain and the DC bin gets zero weight. torchaudio's
    ``melscale_fbanks(mel_scale="htk", norm=None)`` places its triangles' corners at the same mel
    points but interpolates linearly in Hz, so it is not the same matrix.
    """
    bins_mel = hertz_to_mel(torch.linspace(0.0, sample_rate / 2, num_spectrogram_bins, dtype=torch.float64))
    edges = torch.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_mel_bins + 2, dtype=torch.float64)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.minimum(rising, falling).clamp(min=0.0)
    weights[0] = 0.0
    return weights


class VGGishFeatures(FeatureExtractor):
    """VGGish embeddings (Hershey et al. 2017) for FAD, in the torchvggish state-dict layout.

    Front end (VGGish's ``mel_features``, computed in float64): 16 kHz audio is cut into 25 ms frames
    (400 samples) every 10 ms (160), each weighted by a periodic Hann window and zero-padded to a
    512-point FFT; the magnitude (not power) spectrum goes through :func:`vggish_mel_matrix`
    (64 bands, 125–7500 Hz) and ``log(mel + 0.01)``. Frames are grouped into non-overlapping
    0.96 s examples of 96 frames; a trailing partial example is dropped, as VGGish does. The framing
    is written out rather than taken from ``torchaudio.transforms.MelSpectrogram`` because that
    centres the 400-sample window inside the 512-sample frame (frames start 56 samples later) and
    its HTK filters are triangles in Hz, not in mel.

    Network (``layers``): 3×3 convs 64-M-128-M-256-256-M-512-512-M (M = 2×2 max-pool), each conv
    followed by ReLU, on (1, 96, 64) log-mel patches; the (C, 6, 4) map is flattened in TF's
    (6, 4, C) order; then FC 4096-ReLU-4096-ReLU-128. Keys ``features.{0,3,6,8,11,13}.*`` and
    ``embeddings.{0,2,4}.*`` match ``vggish-10086976.pth``.

    Args:
        path: local ``vggish-10086976.pth`` (``torch.load(weights_only=True)``), or ``None`` for
            random weights (tests and ``scale=tiny`` only; ``identity()`` then records no hash).
        per_example: ``True`` returns one embedding per 0.96 s example, ``(B * E, D)`` clip-major —
            what FAD does (Kilgour et al. 2019; gudgud96/frechet-audio-distance; fadtk): the
            statistics are over all examples of all clips. ``False`` returns the clip mean ``(B, D)``.
        embedding_relu: keep torchvggish's ReLU after the 128-d layer. Google's VGGish graph has
            none on its ``embedding`` output (``activation_fn=None``), and gudgud96's FAD removes it
            by default (``use_activation=False``), so the default is ``False``.
        pca_path: optional PCA parameters (Google's ``vggish_pca_params.npz``, or a torch /
            safetensors file with ``pca_eigen_vectors`` (D, D) and ``pca_means`` (D,)). When given,
            embeddings go through the AudioSet release post-processing: PCA with whitening, clip to
            [-2, 2], 8-bit quantisation to [0, 255]. Off by default, as in Google's FAD and gudgud96.
        layers, hidden, embedding_dim: architecture (defaults: the published VGGish; ``TINY_VGGISH``
            for tests).
        sample_rate, window_seconds, hop_seconds, num_mel_bins, lower_hz, upper_hz, log_offset,
        example_frames: the front end (defaults: VGGish's ``vggish_params``). Input audio must
            already be at ``sample_rate``: FAD moves with the resampler (audioldm_eval), so it is
            chosen and recorded by the caller, not here.
        config_key, pca_config_key: config keys named when a file is missing.
    """

    name = "vggish"

    def __init__(self, path: str | os.PathLike | None, per_example: bool = True, embedding_relu: bool = False,
                 pca_path: str | os.PathLike | None = None, layers: Sequence[int | str] = VGGISH_LAYERS,
                 hidden: int = 4096, embedding_dim: int = 128, sample_rate: int = 16000,
                 window_seconds: float = 0.025, hop_seconds: float = 0.010, num_mel_bins: int = 64,
                 lower_hz: float = 125.0, upper_hz: float = 7500.0, log_offset: float = 0.01,
                 example_frames: int = 96, config_key: str | None = None, pca_config_key: str | None = None):
        super().__init__()
        self.per_example, self.embedding_relu = per_example, embedding_relu
        self.layers, self.hidden, self.embedding_dim = tuple(layers), hidden, embedding_dim
        self.sample_rate, self.num_mel_bins, self.example_frames = sample_rate, num_mel_bins, example_frames
        self.lower_hz, self.upper_hz, self.log_offset = lower_hz, upper_hz, log_offset
        self.window_length = int(round(sample_rate * window_seconds))
        self.hop_length = int(round(sample_rate * hop_seconds))
        self.fft_length = 2 ** int(np.ceil(np.log2(self.window_length)))
        self.num_features = embedding_dim

        pools = sum(1 for v in self.layers if v == "M")
        if example_frames % 2 ** pools or num_mel_bins % 2 ** pools:
            raise ConfigError(f"VGGish example_frames={example_frames} and num_mel_bins={num_mel_bins} must be "
                              f"divisible by 2**{pools} (one halving per 'M' in layers)")
        convs: list[nn.Module] = []
        channels = 1
        for v in self.layers:
            if v == "M":
                convs.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                convs += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*convs)
        flat = channels * (example_frames // 2 ** pools) * (num_mel_bins // 2 ** pools)
        head: list[nn.Module] = [nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, embedding_dim)]
        if embedding_relu:
            head.append(nn.ReLU(inplace=True))
        self.embeddings = nn.Sequential(*head)

        # Non-persistent: the state dict stays exactly the published file's layout.
        self.register_buffer("window", torch.hann_window(self.window_length, periodic=True, dtype=torch.float64),
                             persistent=False)
        self.register_buffer("mel_matrix", vggish_mel_matrix(self.fft_length // 2 + 1, sample_rate, num_mel_bins,
                                                             lower_hz, upper_hz), persistent=False)
        self.register_buffer("pca_matrix", None, persistent=False)
        self.register_buffer("pca_means", None, persistent=False)

        if path is not None:
            file = _require_file("vggish", path, config_key)
            state = torch.load(file, map_location="cpu", weights_only=True)
            try:
                self.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"{file} does not fit VGGish(layers={list(self.layers)}, hidden={hidden}, "
                                 f"embedding_dim={embedding_dim}); expected the torchvggish layout of "
                                 f"{ORIGINS['vggish'].file}: {exc}") from exc
            self._record("vggish", file)
        if pca_path is not None:
            self._load_pca(_require_file("vggish_pca", pca_path, pca_config_key))
        self._freeze()

    @classmethod
    def tiny(cls, path: str | os.PathLike | None = None, **overrides: Any) -> VGGishFeatures:
        """Same code path with few channels (``TINY_VGGISH``), for tests and ``scale=tiny``."""
        return cls(path, **{**TINY_VGGISH, **overrides})

    def _load_pca(self, file: Path) -> None:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as data:
                params = {k: torch.from_numpy(data[k]) for k in data.files}
        elif file.suffix == ".safetensors":
            from safetensors.torch import load_file

            params = load_file(str(file))
        else:
            try:
                params = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ValueError(f"cannot read {file} with torch.load(weights_only=True) ({exc}); use Google's "
                                 f"{ORIGINS['vggish_pca'].file} from {ORIGINS['vggish_pca'].where}") from exc
        d = self.embedding_dim
        try:
            matrix = torch.as_tensor(params["pca_eigen_vectors"], dtype=torch.float64)
            means = torch.as_tensor(params["pca_means"], dtype=torch.float64).reshape(-1)
        except KeyError as exc:
            raise ValueError(f"{file} has no {exc}; expected arrays pca_eigen_vectors ({d}, {d}) and "
                             f"pca_means ({d},)") from exc
        if matrix.shape != (d, d) or means.shape != (d,):
            raise ValueError(f"{file}: pca_eigen_vectors {tuple(matrix.shape)} / pca_means {tuple(means.shape)}, "
                             f"expected ({d}, {d}) / ({d},)")
        self.pca_matrix, self.pca_means = matrix, means
        self._record("vggish_pca", file)

    def config(self) -> dict[str, Any]:
        return {"per_example": self.per_example, "embedding_relu": self.embedding_relu,
                "pca": self.pca_matrix is not None, "layers": list(self.layers), "hidden": self.hidden,
                "embedding_dim": self.embedding_dim, "sample_rate": self.sample_rate,
                "window_length": self.window_length, "hop_length": self.hop_length, "fft_length": self.fft_length,
                "num_mel_bins": self.num_mel_bins, "lower_hz": self.lower_hz, "upper_hz": self.upper_hz,
                "log_offset": self.log_offset, "example_frames": self.example_frames}

    @property
    def min_samples(self) -> int:
        """Shortest audio (samples) that yields one example: 15600 at the VGGish defaults (0.975 s)."""
        return self.window_length + (self.example_frames - 1) * self.hop_length

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, S) at ``sample_rate`` → log-mel (B, frames, num_mel_bins) float64."""
        # float64 whatever a parent's .half()/.to(dtype) did to the buffers: the log of small mel values is sensitive.
        window, mel_matrix = self.window.to(torch.float64), self.mel_matrix.to(torch.float64)
        frames = audio.to(torch.float64).unfold(-1, self.window_length, self.hop_length) * window
        spectrum = torch.fft.rfft(frames, n=self.fft_length).abs()
        return torch.log(spectrum @ mel_matrix + self.log_offset)

    def examples(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, S) → log-mel examples (B, E, example_frames, num_mel_bins) float64."""
        if audio.ndim != 2:
            raise ValueError(f"VGGish expects mono audio (B, S) at {self.sample_rate} Hz, got {tuple(audio.shape)}")
        if audio.shape[1] < self.min_samples:
            seconds = self.min_samples / self.sample_rate
            raise ValueError(f"VGGish needs at least {self.min_samples} samples ({seconds:.3f} s at "
                             f"{self.sample_rate} Hz) per clip for one example, got {audio.shape[1]}")
        mel = self.log_mel(audio)
        count = mel.shape[1] // self.example_frames
        return mel[:, : count * self.example_frames].reshape(audio.shape[0], count, self.example_frames, -1)

    def embed(self, examples: torch.Tensor) -> torch.Tensor:
        """log-mel examples (N, example_frames, num_mel_bins) → embeddings (N, embedding_dim)."""
        dtype = self.embeddings[0].weight.dtype
        x = self.features(examples[:, None].to(dtype))
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF's NHWC flatten order, as torchvggish
        x = self.embeddings(x)
        if self.pca_matrix is not None:
            x = (x.double() - self.pca_means.double()) @ self.pca_matrix.double().T
            x = torch.round((x.clamp(-2.0, 2.0) + 2.0) * (255.0 / 4.0))
        return x.float()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, S) float in [-1, 1] at 16 kHz → (B * E, D) per example, or (B, D) clip means."""
        ex = self.examples(audio)
        b, e = ex.shape[:2]
        emb = self.embed(ex.flatten(0, 1))
        return emb if self.per_example else emb.view(b, e, -1).mean(dim=1)


EXTRACTORS: dict[str, type[FeatureExtractor]] = {"i3d": I3DFeatures, "c3d": C3DProbabilities, "vggish": VGGishFeatures}


def build_extractor(name: str, path: str | os.PathLike | None, **kwargs: Any) -> FeatureExtractor:
    """A pinned extractor by name (``i3d``, ``c3d``, ``vggish``) from a local weight file; ``kwargs`` go to
    its class."""
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; available: {sorted(EXTRACTORS)}")
    if path is None:
        raise ExtractorWeightsMissing(name, None, kwargs.get("config_key"))
    return EXTRACTORS[name](path, **kwargs)
