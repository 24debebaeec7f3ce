"""VGGish (Hershey et al. 2017, Google's AudioSet release, as ported by torchvggish), the embedding of FAD,
loaded from the local ``vggish-10086976.pth`` (and optional PCA parameters) only.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from avgen.encoders.base import FeatureExtractor
from avgen.errors import ConfigError, WeightsFileError
from avgen.pretrained import ORIGINS, require_file

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
            file = require_file("vggish", path, config_key)
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise WeightsFileError(f"{file} (config key {config_key}) cannot be read with torch.load("
                                       f"weights_only=True) ({type(exc).__name__}: {str(exc).strip().splitlines()[0]});"
                                       f" expected {ORIGINS['vggish'].file} from {ORIGINS['vggish'].where}") from exc
            try:
                self.load_state_dict(state, strict=True)
            except (RuntimeError, TypeError, AttributeError) as exc:
                raise WeightsFileError(f"{file} (config key {config_key}) does not fit VGGish(layers="
                                       f"{list(self.layers)}, hidden={hidden}, embedding_dim={embedding_dim}); "
                                       f"expected the torchvggish layout of {ORIGINS['vggish'].file}: {exc}") from exc
            self._record("vggish", file)
        if pca_path is not None:
            self._load_pca(require_file("vggish_pca", pca_path, pca_config_key))
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
                raise WeightsFileError(f"cannot read {file} with torch.load(weights_only=True) ({exc}); use Google's "
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
