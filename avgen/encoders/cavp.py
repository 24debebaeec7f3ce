"""The audio branch of CAVP, Diff-Foley's contrastive audio-visual encoder (Luo et al. 2023, "Diff-Foley:
Synchronized Video-to-Audio Synthesis with Latent Diffusion Models"), as the TempoTokens course-project variant
("AudioVisGen: Video Generation using Audio", a UPenn course project; no arXiv) uses it in place of BEATs.

Shapes for B clips of S samples at 16 kHz (4 s: T = 251 frames, T' = 15 steps)::

    waveform (B, S)  ── CAVPMelSpectrogram ──>                 spec (B, 1, T, 128)    axis 2 time, axis 3 mel
    spec             ── spec_encoder.bn, conv_block1..6 ──>    (B, C, T // 16, 4)     time pooled 2⁴, mel 2⁵
                     ── mean over mel, max + mean over 3 steps, fc1 twice, final_project ──>  (B, T', 512)
                     ── spec_project_head (identity), L2 norm ──>                              hidden (B, T', 1, 512)

T' = T // 16 with T = 1 + S // 256 (≈ 3.9 steps per second). The time axis is never pooled away: TempoTokens
maps the steps to video frames (``pool_to_frames``) as it does with BEATs' patch rows.

Official code (luosiallen/Diff-Foley, read for reference only):

- front end: ``data_preprocess/wav2spec.py``: ``|librosa.stft(n_fft=1024, hop_length=256)|`` (librosa 0.8.0:
  periodic Hann window, centred frames, reflect padding), ``librosa.filters.mel(sr=16000, n_fft=1024, fmin=125,
  fmax=7600, n_mels=128)`` (slaney scale and area norm), then ``max(·, 1e-5)``, ``log10``, ``·20``, ``−20``,
  ``+100``, ``/100``, clip to [0, 1]. The script also drops the clip's last sample (``y[:length - 1]``, so a clip
  of S samples gives S / 256 frames); that is not done here and changes no T' when S is a multiple of 4096
  (4 s: 251 vs 250 frames, T' = 15 either way).
- model: ``inference/model/cavp_model.py`` ``CAVP_Inference`` with ``inference/config/Stage1_CAVP.yaml``
  (``spec_encode: cnn14_pool``, ``embed_dim: 512``): ``spec_encoder = Cnn14(embed_dim=512)`` from
  ``inference/model/cavp_modules.py`` and ``spec_project_head = nn.Identity()``; the 2048 → 512 projection is the
  encoder's own ``final_project``. Its Cnn14 differs from the PANNs tagger (:mod:`avgen.encoders.panns`): the input
  BatchNorm is ``bn`` over 128 bins, block 5 pools mel only (time pooling 16, not 32), time is kept (max + mean
  pooling over a sliding window of 3 steps instead of over the clip) and ``fc1`` is applied twice.
- per-step features: Diff-Foley ships no audio-feature extraction (issue #33); the recipe of Sony's
  ``cavp_score.py`` is ``encode_spec(spec, normalize=True, pool=False)``: spec_encoder → spec_project_head → L2
  norm, without the 16-step max pooling of the contrastive loss. That is :meth:`CAVPAudio.forward`.

Parameter names are those of ``CAVP_Inference``'s audio branch (``spec_encoder.bn.*``,
``spec_encoder.conv_block{1..6}.{conv1,conv2,bn1,bn2}.*``, ``spec_encoder.fc1.*``,
``spec_encoder.final_project.*``); see :func:`load_cavp` for what is and is not known about the file. The video
branch of the same file, VTA-LDM's CAVP video encoder, is :mod:`avgen.encoders.cavp_video`.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from avgen.encoders.panns import CNN14_CHANNELS, ConvBlock
from avgen.errors import ConfigError, WeightsFileError, WeightsFileMissing
from avgen.pretrained import ORIGINS, freeze, load_weights_file

SAMPLE_RATE = 16000
N_FFT = 1024
HOP_LENGTH = 256
NUM_MEL_BINS = 128
F_MIN = 125.0
F_MAX = 7600.0
AMIN = 1e-5  # floor of the mel magnitude before the log (Diff-Foley's LowerThresh)
EMBED_DIM = 512
TINY_CAVP = {"channels": (4, 8, 8, 16, 16, 32), "embed_dim": 16}
# Per-block (time, mel) pooling of Diff-Foley's Cnn14: block 5 keeps time, so time is pooled 2⁴ = 16.
POOL_SIZES: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 2), (2, 2), (1, 2), (1, 1))
TIME_POOLING = math.prod(t for t, _ in POOL_SIZES)

CHECKPOINT_FILE = ORIGINS["cavp"].file
TINY_FILE = "cavp_tiny.ckpt"  # ``tiny:cavp``'s file: both branches, in the layout of CHECKPOINT_FILE
CHECKPOINT_ORIGIN = ORIGINS["cavp"].where
AUDIO_BRANCH = "spec_encoder."
# DistributedDataParallel's wrapper prefix; Diff-Foley's own loader removes it the same way.
WRAPPER_PREFIX = "module."


class CAVPMelSpectrogram(nn.Module):
    """Diff-Foley's spectrogram: waveform → clip((20·log10(max(|mel|, 1e-5)) − 20 + 100) / 100, 0, 1).

    ``torch.stft`` (periodic Hann window 1024, hop 256, centred, reflect padding) reproduces librosa 0.8's
    ``stft``; ``torchaudio``'s slaney mel bank equals ``librosa.filters.mel`` (slaney scale, slaney area norm).
    The mel bank is a non-persistent buffer: the official checkpoint holds no front-end weights.

    Args:
        hop_length: STFT hop in samples (Diff-Foley's ``wav2spec.py``: 256; Sony's ``cavp_score`` copy: 250).
        pad_mode: padding of the centred frames (librosa 0.8: ``reflect``; librosa ≥ 0.9, which the SVG baseline pins:
            ``constant``, zeros).
    """

    def __init__(self, hop_length: int = HOP_LENGTH, pad_mode: str = "reflect"):
        super().__init__()
        self.hop_length, self.pad_mode = int(hop_length), pad_mode
        from avgen.pretrained import computed_tables

        mel, window = computed_tables(lambda: (
            torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, F_MIN, F_MAX, NUM_MEL_BINS, SAMPLE_RATE,
                                                  norm="slaney", mel_scale="slaney"),
            torch.hann_window(N_FFT, periodic=True)))
        self.register_buffer("mel_bank", mel, persistent=False)  # (N_FFT // 2 + 1, 128)
        self.register_buffer("window", window, persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        """waveform (B, S) at 16 kHz → spec (B, 1, T, 128) in [0, 1], axis 2 is time, T = 1 + S // hop_length."""
        stft = torch.stft(waveform.float(), N_FFT, self.hop_length, window=self.window, center=True,
                          pad_mode=self.pad_mode, return_complex=True)  # (B, N_FFT // 2 + 1, T)
        mel = stft.abs().transpose(1, 2) @ self.mel_bank  # (B, T, 128)
        db = 20.0 * torch.log10(mel.clamp(min=AMIN))
        return ((db - 20.0 + 100.0) / 100.0).clamp(0.0, 1.0)[:, None]


class CAVPCnn14(nn.Module):
    """Diff-Foley's Cnn14 spectrogram encoder (``CAVP_Inference.spec_encoder``), eval-mode computation.

    The official dropout (p = 0.2 after every block) acts only in training and is left out: CAVP is frozen.

    Args:
        channels: output channels of the six conv blocks (official: 64 … 2048); smaller for tests.
        embed_dim: width of ``final_project`` (official: 512).
    """

    def __init__(self, channels: Sequence[int] = CNN14_CHANNELS, embed_dim: int = EMBED_DIM):
        super().__init__()
        if len(channels) != len(POOL_SIZES):
            raise ValueError(f"CAVP's Cnn14 has {len(POOL_SIZES)} conv blocks; channels={list(channels)} has "
                             f"{len(channels)} entries")
        self.bn = nn.BatchNorm2d(NUM_MEL_BINS)
        widths = (1, *(int(c) for c in channels))
        for i, pool in enumerate(POOL_SIZES):
            self.add_module(f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1], pool))
        self.fc1 = nn.Linear(widths[-1], widths[-1])
        self.final_project = nn.Linear(widths[-1], embed_dim)

    def forward(self, spec: Tensor) -> Tensor:
        """spec (B, 1, T, 128), axis 2 time → features (B, T // 16, embed_dim), axis 1 time."""
        x = self.bn(spec.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin: bins on the channel axis
        for i in range(len(POOL_SIZES)):
            x = getattr(self, f"conv_block{i + 1}")(x)
        x = x.mean(dim=3)  # (B, C, T'): mean over mel
        # Zero-padded windows of 3 steps; avg_pool1d counts the padding (the official call does too).
        x = F.max_pool1d(x, kernel_size=3, stride=1, padding=1) + F.avg_pool1d(x, kernel_size=3, stride=1, padding=1)
        x = x.transpose(1, 2)
        # fc1 twice with the same weights, as the official forward does.
        x = F.relu(self.fc1(F.relu(self.fc1(x))))
        return self.final_project(x)


@dataclass
class CAVPOutput:
    """Per-step CAVP audio embeddings in the layout TempoTokens reads from :class:`~avgen.encoders.beats.BEATsOutput`.

    Attributes:
        hidden: (B, T', 1, D), axis 1 time steps, axis 2 the single "layer", D = 512; L2-normalised over D.
        layers: ``(1,)``: CAVP has one output, the projected embedding.
        time_patches: T' = T // 16 (4 s → 15).
        freq_patches: 1: the mel axis is pooled away.
        patch_seconds: hop between steps, 16 · 256 / 16000 = 0.256 s.
    """

    hidden: Tensor
    layers: tuple[int, ...]
    time_patches: int
    freq_patches: int
    patch_seconds: float


@dataclass(frozen=True)
class CAVPConfig:
    """The width TempoTokens' mapper reads: ``encoder_layers · encoder_embed_dim`` = 1 · 512."""

    encoder_layers: int = 1
    encoder_embed_dim: int = EMBED_DIM


class CAVPAudio(nn.Module):
    """CAVP's audio branch as a frozen feature extractor: waveform → L2-normalised 512-d embedding per 0.256 s step.

    Use :func:`load_cavp` for the Diff-Foley weights; the constructor alone gives random weights (tests,
    ``CAVPAudio(**TINY_CAVP)``). ``spec_project_head`` is the official identity head, kept so the module tree
    reads as ``CAVP_Inference``'s.

    Args:
        channels: conv block widths of the Cnn14 (official: 64 … 2048).
        embed_dim: embedding width D (official: 512).
    """

    def __init__(self, channels: Sequence[int] = CNN14_CHANNELS, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.channels, self.embed_dim = tuple(int(c) for c in channels), int(embed_dim)
        self.config = CAVPConfig(encoder_embed_dim=self.embed_dim)
        self.spec = CAVPMelSpectrogram()
        self.spec_encoder = CAVPCnn14(self.channels, self.embed_dim)
        self.spec_project_head = nn.Identity()

    @property
    def min_samples(self) -> int:
        """Shortest waveform that gives one step: 15 · 256 = 3840 samples (0.24 s), i.e. 16 frames."""
        return (TIME_POOLING - 1) * HOP_LENGTH

    def forward(self, waveform: Tensor, layers: Sequence[int] | None = None) -> CAVPOutput:
        """Per-step embeddings of ``waveform``.

        Args:
            waveform: (B, S) mono audio in [-1, 1] at 16 kHz, axis 1 is time; S ≥ :attr:`min_samples`.
            layers: CAVP has a single output; only None or ``[1]`` are accepted (TempoTokens passes
                ``model.encoder.layers``), so a BEATs layer list left in the config fails here instead of
                giving the mapper a wrong width.

        Returns:
            :class:`CAVPOutput` with ``hidden`` (B, T', 1, D), T' = (1 + S // 256) // 16.
        """
        if layers is not None and tuple(int(i) for i in layers) != (1,):
            raise ConfigError(f"model.encoder.layers={list(layers)}: CAVP has one output layer; set it to null "
                             f"or [1] with model.encoder.name=cavp")
        if waveform.dim() != 2 or waveform.shape[1] < self.min_samples:
            raise ValueError(f"CAVP expects mono audio (B, S) at {SAMPLE_RATE} Hz with S >= {self.min_samples} "
                             f"({self.min_samples / SAMPLE_RATE} s, one 16-frame step); got {tuple(waveform.shape)}")
        spec = self.spec(waveform).to(self.spec_encoder.fc1.weight.dtype)
        features = F.normalize(self.spec_project_head(self.spec_encoder(spec)), dim=-1)  # (B, T', D)
        return CAVPOutput(hidden=features[:, :, None], layers=(1,), time_patches=features.shape[1], freq_patches=1,
                          patch_seconds=TIME_POOLING * HOP_LENGTH / SAMPLE_RATE)


class CAVPWeightsMissing(WeightsFileMissing):
    """The CAVP checkpoint is not where the config says."""

    def __init__(self, path: str | os.PathLike | None, config_key: str = "model.encoder.path"):
        super().__init__("CAVP", path, config_key, CHECKPOINT_FILE, ORIGINS["cavp"].what, CHECKPOINT_ORIGIN)


class CAVPCheckpointError(WeightsFileError):
    """A file is not a CAVP checkpoint, or the weights of the branch that is run do not fit (a
    :class:`~avgen.errors.ConfigError`: the message names the config key that set the file)."""


def checkpoint_branch(state: Mapping[str, Any], prefixes: Sequence[str], where: str) -> dict[str, Tensor]:
    """The entries of a CAVP state dict whose names start with one of ``prefixes`` (a branch of ``CAVP_Inference``:
    ``("spec_encoder.",)`` or ``("video_encoder.", "video_project_head.")``), with wrapper prefixes (``module.``)
    removed; every other entry (the other branch, ``logit_scale``) is dropped.

    Raises:
        CAVPCheckpointError: no entry has one of ``prefixes``; ``where`` (the file and its config key) is named.
    """
    branch = {}
    for key, value in state.items():
        name = str(key)
        while name.startswith(WRAPPER_PREFIX):
            name = name[len(WRAPPER_PREFIX):]
        if name.startswith(tuple(prefixes)):
            branch[name] = value
    if not branch:
        shown = sorted(map(str, state))[:8]
        wanted = " or ".join(f"{prefix}*" for prefix in prefixes)
        raise CAVPCheckpointError(f"{where} has no {wanted} weights (first keys: {shown}); expected "
                                  f"{CHECKPOINT_FILE} from {CHECKPOINT_ORIGIN}")
    return branch


def audio_branch(state: Mapping[str, Any], where: str) -> dict[str, Tensor]:
    """The ``spec_encoder.*`` entries of a CAVP state dict, with wrapper prefixes (``module.``) removed
    (:func:`checkpoint_branch`). Keys of the video branch (``video_encoder.*``, ``video_project_head.*``) and
    ``logit_scale`` are dropped."""
    return checkpoint_branch(state, (AUDIO_BRANCH,), where)


def read_state_dict(path: str | os.PathLike | None, config_key: str) -> tuple[Mapping[str, Any], str]:
    """The state dict of ``cavp_epoch66.ckpt`` (its ``state_dict`` entry, or the dict itself) read with
    ``torch.load(weights_only=True)``, and ``where`` ("<path> (config key <config_key>)") for error messages.

    Raises:
        CAVPWeightsMissing: no file at ``path``.
        CAVPCheckpointError: unreadable with the safe loader, or not a dict of weights.
    """
    checkpoint = load_weights_file(
        path, config_key, CAVPWeightsMissing, CAVPCheckpointError,
        "A file you trust that holds other objects can be converted once: in a separate session read it with "
        "torch.load(weights_only=False) and write {'state_dict': its state dict} with torch.save.")
    where = f"{path} (config key {config_key})"
    if not isinstance(checkpoint, Mapping):
        raise CAVPCheckpointError(f"{where} holds a {type(checkpoint).__name__}, not a CAVP checkpoint dict")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise CAVPCheckpointError(f"{where}: 'state_dict' is a {type(state).__name__}, not a state dict")
    return state, where


def shapes_to_arguments(branch: Mapping[str, Tensor], where: str) -> dict[str, Any]:
    """``CAVPAudio`` arguments read off the weight shapes, since the file stores no config."""
    try:
        channels = [branch[f"{AUDIO_BRANCH}conv_block{i + 1}.conv1.weight"].shape[0] for i in range(len(POOL_SIZES))]
        embed_dim = branch[f"{AUDIO_BRANCH}final_project.weight"].shape[0]
    except KeyError as exc:
        raise CAVPCheckpointError(f"{where} lacks {exc.args[0]}, so it is not CAVP's Cnn14 audio branch; expected "
                                  f"{CHECKPOINT_FILE} from {CHECKPOINT_ORIGIN}") from exc
    return {"channels": channels, "embed_dim": embed_dim}


def load_cavp(path: str | os.PathLike | None, config_key: str = "model.encoder.path") -> CAVPAudio:
    """A frozen :class:`CAVPAudio` (eval mode, no gradients) from Diff-Foley's ``cavp_epoch66.ckpt``.

    What is known about the file, from Diff-Foley's own loader (``inference/demo_util.py``
    ``Extract_CAVP_Features.init_first_from_ckpt``): a dict whose weights are under ``state_dict`` (or the dict
    itself is the state dict), keys possibly prefixed ``module.`` (removed there), loaded into ``CAVP_Inference``,
    whose audio-branch names are ``spec_encoder.*`` (the Cnn14 of ``cavp_modules.py``; ``spec_project_head`` is an
    identity without weights). The same prefix handling is done here; video-branch keys and ``logit_scale`` are
    ignored. Not verified (the file was not available): the exact prefix in the published file and which other
    entries it holds (CAVP was trained with an open_clip-style loop that also saves ``epoch``, ``name`` and
    ``optimizer``; those are plain values and tensors and pass the safe loader).

    The file is read with ``torch.load(weights_only=True)``; a file that needs any other object to unpickle is
    refused rather than executed. The architecture comes from the weight shapes and every ``spec_encoder`` weight
    must fit exactly (``strict=True``).

    Args:
        path: the ``.ckpt`` file.
        config_key: the config key that set ``path``, named in errors.

    Raises:
        CAVPWeightsMissing: no file at ``path`` (a ``FileNotFoundError``).
        CAVPCheckpointError: unreadable with the safe loader, no audio branch, or weights that do not fit.
    """
    state, where = read_state_dict(path, config_key)
    branch = audio_branch(state, where)
    model = CAVPAudio(**shapes_to_arguments(branch, where))
    try:
        model.load_state_dict(branch, strict=True)
    except RuntimeError as exc:
        raise CAVPCheckpointError(f"{where}: the {AUDIO_BRANCH}* weights do not fit CAVP's Cnn14 "
                                  f"(channels={list(model.channels)}, embed_dim={model.embed_dim}): {exc}") from exc
    return freeze(model)


def save_tiny_format(model: nn.Module | Sequence[nn.Module], path: str | os.PathLike, *,
                     overwrite: bool = False) -> Path:
    """Write ``model`` (one branch, or several: :class:`CAVPAudio` and
    :class:`~avgen.encoders.cavp_video.CAVPVideo`, whose names do not overlap) as ``{'state_dict':
    {'module.spec_encoder.*': ..., 'module.video_encoder.*': ...}}``, the layout :func:`load_cavp` and
    :func:`~avgen.encoders.cavp_video.load_cavp_video` read from ``cavp_epoch66.ckpt``, atomically. Refuses to replace
    an existing file unless ``overwrite``."""
    from avgen.media import write_bytes_atomic

    state: dict[str, Tensor] = {}
    for part in [model] if isinstance(model, nn.Module) else model:
        for name, value in part.state_dict().items():
            if f"{WRAPPER_PREFIX}{name}" in state:
                raise ValueError(f"save_tiny_format: two branches hold {name}; expected disjoint CAVP branches")
            state[f"{WRAPPER_PREFIX}{name}"] = value.detach().cpu()
    buffer = io.BytesIO()
    torch.save({"state_dict": state}, buffer)
    return write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)
