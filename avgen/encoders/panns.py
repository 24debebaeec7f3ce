"""PANNs CNN14 audio tagger (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks
for Audio Pattern Recognition"), the classifier behind the Inception Score and KL columns of
audioldm_eval (AudioLDM, VTA-LDM, ...).

The 16 kHz variant ``Cnn14_16k`` (AudioSet, 527 classes, mAP 0.438; Zenodo record 3987831) is built
here from its architecture (the paper's CNN14; official ``pytorch/models.py``):

- front end: log-mel spectrogram (Hann window 512, hop 160, centred frames with reflect padding,
  power spectrum, 64 slaney mel bands 50–8000 Hz, ``10·log10(max(mel, 1e-10))``, no top_db clip);
- ``bn0``: BatchNorm over the mel bins;
- six conv blocks (64, 128, 256, 512, 1024, 2048 channels), each two 3×3 conv + BN + ReLU, then
  2×2 average pooling (blocks 1–5) or none (block 6, pool size 1×1);
- global pooling: mean over frequency, then max + mean over time;
- ``fc1`` 2048→2048 + ReLU (the embedding), ``fc_audioset`` 2048→527 (the logits; sigmoid gives
  ``clipwise_output``).

The official model computes its spectrogram with torchlibrosa's STFT-as-Conv1d and mel matrix,
whose weights are part of the published state dict. The modules here are written to give the same
state-dict keys (``spectrogram_extractor.stft.conv_real.weight``, ``logmel_extractor.melW``, ``bn0.*``,
``conv_block{1..6}.{conv1,conv2,bn1,bn2}.*``, ``fc1.*``, ``fc_audioset.*``), so the published file
loads with ``strict=True`` and its own front-end weights are the ones used.

The model is always in eval mode (dropout and SpecAugment of the training code never run), frozen,
and records the SHA-256 of the file it was loaded from (:class:`avgen.encoders.base.FeatureExtractor`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avgen.encoders.base import FeatureExtractor
from avgen.errors import WeightsFileError
from avgen.pretrained import ORIGINS, require_file

CNN14_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
TINY_CNN14 = {"channels": (4, 8, 8, 16, 16, 32), "embedding_dim": 32}


class ConvSTFT(nn.Module):
    """Short-time Fourier transform as two strided ``Conv1d`` (real and imaginary part), torchlibrosa's layout.

    Kernel ``k`` of ``conv_real`` / ``conv_imag`` is ``w[n]·cos(2πkn/N)`` / ``−w[n]·sin(2πkn/N)``
    (``n = 0..N−1``, ``N = n_fft``, ``w`` the periodic Hann window), so output channel ``k`` is
    the DFT bin ``k`` of each windowed frame, as ``librosa.stft``. The kernels are the (frozen)
    weights of ``nn.Conv1d`` modules because that is how the published checkpoints store them.

    Args:
        n_fft: frame and FFT length (samples).
        hop_length: frame hop (samples).
        center: pad ``n_fft // 2`` samples on both sides first, so frame ``t`` is centred on
            sample ``t · hop_length``.
        pad_mode: padding mode when centring (``"reflect"`` as librosa < 0.10 and torchlibrosa).
    """

    def __init__(self, n_fft: int = 512, hop_length: int = 160, center: bool = True, pad_mode: str = "reflect"):
        super().__init__()
        self.n_fft, self.hop_length, self.center, self.pad_mode = n_fft, hop_length, center, pad_mode
        bins = n_fft // 2 + 1
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(bins, dtype=torch.float64)
        # k·n reduced mod N first: the angle stays in [0, 2π) and exact for large k·n
        angle = 2 * math.pi * torch.remainder(k[:, None] * n[None, :], n_fft) / n_fft
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        self.conv_real = nn.Conv1d(1, bins, kernel_size=n_fft, stride=hop_length, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, kernel_size=n_fft, stride=hop_length, bias=False)
        with torch.no_grad():
            self.conv_real.weight.copy_((torch.cos(angle) * window)[:, None, :])
            self.conv_imag.weight.copy_((-torch.sin(angle) * window)[:, None, :])

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S) → real, imag (B, 1, T, n_fft // 2 + 1), axis 2 is time; T = 1 + S // hop_length when centred."""
        x = audio[:, None, :]
        if self.center:
            x = F.pad(x, (self.n_fft // 2, self.n_fft // 2), mode=self.pad_mode)
        real = self.conv_real(x).transpose(1, 2)[:, None]
        imag = self.conv_imag(x).transpose(1, 2)[:, None]
        return real, imag


class PowerSpectrogram(nn.Module):
    """``|STFT|²``; its own module only so that the STFT weights sit at ``spectrogram_extractor.stft.*``."""

    def __init__(self, n_fft: int = 512, hop_length: int = 160, center: bool = True, pad_mode: str = "reflect"):
        super().__init__()
        self.stft = ConvSTFT(n_fft, hop_length, center, pad_mode)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, S) → power spectrogram (B, 1, T, n_fft // 2 + 1), axis 2 is time."""
        real, imag = self.stft(audio)
        return real ** 2 + imag ** 2


class LogMelFilterBank(nn.Module):
    """Power spectrogram → dB mel spectrogram: ``10·log10(max(S @ melW, amin)) − 10·log10(max(amin, ref))``.

    ``melW`` (n_fft // 2 + 1, n_mels) is ``librosa.filters.mel(...).T`` (slaney mel scale, slaney area
    normalisation), kept as a persistent buffer under the checkpoint's name. ``top_db`` clipping is
    not applied (PANNs uses ``top_db=None``).
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, n_mels: int = 64, fmin: float = 50.0,
                 fmax: float = 8000.0, ref: float = 1.0, amin: float = 1e-10):
        super().__init__()
        import librosa

        self.ref, self.amin = ref, amin
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        self.register_buffer("melW", torch.from_numpy(np.ascontiguousarray(mel.T)).float())

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        """power spectrogram (..., n_fft // 2 + 1) → dB mel spectrogram (..., n_mels)."""
        mel = power @ self.melW.to(power.dtype)
        return 10.0 * torch.log10(mel.clamp(min=self.amin)) - 10.0 * math.log10(max(self.amin, self.ref))


class ConvBlock(nn.Module):
    """Two 3×3 conv (no bias) + BatchNorm + ReLU, then average pooling of ``pool_size``."""

    def __init__(self, in_channels: int, out_channels: int, pool_size: tuple[int, int] = (2, 2)):
        super().__init__()
        self.pool_size = pool_size
        # registration order = the official state-dict order
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, T, F) → (B, C_out, T // p_t, F // p_f), axis 2 is time."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=self.pool_size)


class Cnn14(FeatureExtractor):
    """PANNs CNN14 audio tagger; defaults are the 16 kHz release ``Cnn14_16k_mAP=0.438.pth``.

    Use :func:`load_cnn14` for the published weights; the constructor alone gives random weights
    (tests, ``Cnn14.tiny()``). ``num_features`` is the embedding width (``fc1`` output).

    Args:
        sample_rate: rate the input audio must already have (Hz).
        window_size: STFT frame / FFT length (samples).
        hop_size: STFT hop (samples).
        mel_bins: mel bands (also the width of ``bn0``).
        fmin, fmax: mel filter bank range (Hz).
        classes_num: output classes (AudioSet: 527).
        channels: output channels of the six conv blocks (paper: 64 … 2048); smaller for tests.
        embedding_dim: width of ``fc1`` (paper: 2048).
        amin: floor of the mel power before the log.
    """

    name = "panns_cnn14"

    def __init__(self, sample_rate: int = 16000, window_size: int = 512, hop_size: int = 160, mel_bins: int = 64,
                 fmin: float = 50.0, fmax: float = 8000.0, classes_num: int = 527,
                 channels: Sequence[int] = CNN14_CHANNELS, embedding_dim: int = 2048, amin: float = 1e-10):
        super().__init__()
        if len(channels) != 6:
            raise ValueError(f"Cnn14 has six conv blocks; channels={list(channels)} has {len(channels)} entries")
        self.sample_rate, self.window_size, self.hop_size, self.mel_bins = sample_rate, window_size, hop_size, mel_bins
        self.fmin, self.fmax, self.classes_num, self.amin = fmin, fmax, classes_num, amin
        self.channels, self.embedding_dim = tuple(int(c) for c in channels), embedding_dim
        self.num_features = embedding_dim
        self.pools = 5  # blocks 1–5 halve time and frequency; block 6 keeps them
        if mel_bins < 2 ** self.pools:
            raise ValueError(f"Cnn14 needs mel_bins >= {2 ** self.pools} (five 2×2 poolings), got {mel_bins}")

        self.spectrogram_extractor = PowerSpectrogram(window_size, hop_size)
        self.logmel_extractor = LogMelFilterBank(sample_rate, window_size, mel_bins, fmin, fmax, amin=amin)
        self.bn0 = nn.BatchNorm2d(mel_bins)
        widths = (1, *self.channels)
        for i in range(6):
            pool = (2, 2) if i < self.pools else (1, 1)
            self.add_module(f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1], pool))
        self.fc1 = nn.Linear(self.channels[-1], embedding_dim)
        self.fc_audioset = nn.Linear(embedding_dim, classes_num)
        self._freeze()

    @classmethod
    def tiny(cls, **overrides: Any) -> Cnn14:
        """Same code path with few channels (``TINY_CNN14``), for tests; the front end is unchanged."""
        return cls(**{**TINY_CNN14, **overrides})

    def config(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "window_size": self.window_size, "hop_size": self.hop_size,
                "mel_bins": self.mel_bins, "fmin": self.fmin, "fmax": self.fmax, "classes_num": self.classes_num,
                "channels": list(self.channels), "embedding_dim": self.embedding_dim, "amin": self.amin}

    @property
    def min_samples(self) -> int:
        """Shortest input (samples) that leaves one frame after the five time poolings: 4960 (0.31 s) at 16 kHz."""
        return max((2 ** self.pools - 1) * self.hop_size, self.window_size // 2 + 1)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, S) at ``sample_rate`` → dB log-mel (B, 1, T, mel_bins), axis 2 is time."""
        return self.logmel_extractor(self.spectrogram_extractor(audio))

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """audio (B, S) float at ``sample_rate`` → ``logits`` (B, classes_num) (pre-sigmoid ``fc_audioset``
        output), ``clipwise_output`` (B, classes_num) = sigmoid(logits), ``embedding`` (B, embedding_dim)."""
        if audio.ndim != 2:
            raise ValueError(f"Cnn14 expects mono audio (B, S) at {self.sample_rate} Hz, got {tuple(audio.shape)}")
        if audio.shape[1] < self.min_samples:
            seconds = self.min_samples / self.sample_rate
            raise ValueError(f"Cnn14 needs at least {self.min_samples} samples ({seconds:.2f}"
                             f" s at {self.sample_rate} Hz) per clip, got {audio.shape[1]}")
        x = self.log_mel(audio.to(self.fc1.weight.dtype))
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin: bins on the channel axis
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x)
        x = x.mean(dim=3)                              # (B, C, T): mean over frequency
        x = x.amax(dim=2) + x.mean(dim=2)              # (B, C): max + mean over time
        embedding = F.relu(self.fc1(x))
        logits = self.fc_audioset(embedding)
        return {"logits": logits, "clipwise_output": torch.sigmoid(logits), "embedding": embedding}


def _numpy_pickle_globals() -> list:
    """What a PANNs checkpoint pickles besides tensors: its ``sampler`` entry holds numpy arrays and
    scalars. Files written under numpy 1.x name ``numpy.core.multiarray``, renamed ``numpy._core`` in
    numpy 2, so both names are allowed. These rebuild arrays from bytes and run no other code."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    names = [(multiarray._reconstruct, "_reconstruct"), (multiarray.scalar, "scalar")]
    allowed: list = [np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in (np.int64, np.int32, np.float64, np.float32, np.bool_)]
    for fn, name in names:
        allowed += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    return allowed


def load_cnn14(path: str | os.PathLike | None, config_key: str = "evaluate.panns.path", **kwargs: Any) -> Cnn14:
    """CNN14 with the weights of a PANNs checkpoint (``{"model": state_dict, ...}``, as published).

    The file is read with ``torch.load(weights_only=True)``, allowing only numpy's array globals
    (see :func:`_numpy_pickle_globals`); its ``model`` entry must fit ``Cnn14(**kwargs)`` exactly
    (``strict=True``, front-end weights included). The file's SHA-256 is recorded under ``"panns"``.
    A missing file raises :class:`~avgen.pretrained.ExtractorWeightsMissing` naming ``config_key``.
    """
    file = require_file("panns", path, config_key)
    origin = ORIGINS["panns"]
    try:
        with torch.serialization.safe_globals(_numpy_pickle_globals()):
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsFileError(f"cannot read {file} (config key {config_key}) with torch.load(weights_only=True) "
                               f"({exc}); expected {origin.file} from {origin.where}") from exc
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if state is None:
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{file} holds {found}, not a PANNs checkpoint {{'model': state_dict, ...}}; expected "
                         f"{origin.file} from {origin.where}")
    model = Cnn14(**kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{file} does not fit Cnn14({model.config()}); expected {origin.file}, {origin.what}: "
                         f"{exc}") from exc
    model._record("panns", file)
    return model


class Cnn14Embedding(FeatureExtractor):
    """CNN14's 2048-d embedding (the ``fc1`` output) as a Fréchet-distance feature: FAD with PANNs,
    as audioldm_eval's ``frechet_distance`` computes it. audio (B, S) at 16 kHz → (B, 2048).

    Args:
        cnn14: a loaded :class:`Cnn14` (its weight hash is carried over).
    """

    name = "panns_cnn14_embedding"

    def __init__(self, cnn14: Cnn14):
        super().__init__()
        self.cnn14 = cnn14
        self.num_features = cnn14.num_features
        self.weights = dict(cnn14.weights)
        self._freeze()

    def config(self) -> dict[str, Any]:
        return {**self.cnn14.config(), "output": "embedding"}

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.cnn14(audio)["embedding"]
