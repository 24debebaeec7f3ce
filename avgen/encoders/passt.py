"""PaSST (Koutini et al. 2022, "Efficient Training of Audio Transformers with Patchout"), the AudioSet tagger
behind the FD-PaSST, KL-PaSST and IS-PaSST columns of av-benchmark (MMAudio and the video-to-audio papers after it).

The released ``passt-s-f128-p16-s10-ap.476-swa.pt`` (PaSST-S, SWA weights, mAP 0.476) is rebuilt here with its
published state-dict keys, as hear21passt (kkoutini/passt_hear21@5f1cce6, = PyPI ``hear21passt`` 0.0.26) runs it
in eval mode through ``get_basic_model(mode="all")``, which is what av-benchmark calls
(``av_bench/extraction_models.py:40-43@050a5cd``):

- :class:`PasstMel`, the front end (``hear21passt/models/preprocess.py:15-82@5f1cce6``, ``AugmentMelSTFT`` with
  the arguments of ``hear21passt/base.py:51-54@5f1cce6``, eval mode): pre-emphasis ``y[n] = x[n+1] − 0.97·x[n]``,
  ``torch.stft`` (n_fft 1024, hop 320, window 800 samples, symmetric Hann, centred with reflect padding), power,
  128 Kaldi mel bands 0–15 000 Hz (``fmax=None`` there means ``sr // 2 − fmax_aug_range // 2`` =
  16 000 − 1 000), ``log(mel + 1e-5)``, ``(x + 4.5) / 5``;
- :class:`PaSST`, the network (``hear21passt/models/passt.py:360-565@5f1cce6``): a 16×16 patch convolution with
  stride 10×10 over the (128 mel × T frame) image, separate frequency and time positional embeddings (the time
  one cut to the patches present), a class and a distillation token, 12 pre-norm ViT blocks (768 wide, 12 heads,
  LayerNorm eps 1e-6, exact GELU), a final norm; the features are the mean of the two tokens and the logits are
  ``head(features)`` with ``head = Sequential(LayerNorm(768) [eps 1e-5, torch's default], Linear(768, 527))``.
  ``head_dist`` is in the file and loaded, but hear21passt does not use it at inference, and neither does this.

Why not depend on ``hear21passt``: it needs timm and hence torchvision and pillow only for a download helper, its
``get_basic_model`` always downloads the weights (avgen never does), it prints the model and debug shapes on
every construction (a module-level ``first_RUN`` flag), and it calls ``torch.stft(return_complex=False)``, which
torch deprecates; the package is unmaintained since 2024-01. The model is about 150 lines; building it here with
the published keys lets :func:`load_passt` read the released file strictly with ``torch.load(weights_only=True)``.

Unverified against the released weights (not available offline here): the tests check the front end against an
independent numpy computation and the network against hear21passt's own code with random tiny weights
(``tests/fixtures/passt_tiny_parity.pt``, written by ``tests/fixtures/make_passt_parity.py``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgen.encoders.base import FeatureExtractor
from avgen.errors import WeightsFileError
from avgen.pretrained import ORIGINS, ExtractorWeightsMissing, load_weights_file

CHECKPOINT_FILE = "passt-s-f128-p16-s10-ap.476-swa.pt"
TINY_PASST: dict[str, int] = {"embed_dim": 16, "depth": 1}
HEAD_DIM = 64  # ViT-B / DeiT-B / PaSST-S: 768 wide, 12 heads


def heads_for(embed_dim: int) -> int:
    """Attention heads of a PaSST of width ``embed_dim``: the file does not store them (qkv is one (3D, D)
    matrix), so they follow the published design's 64 channels per head (768 → 12), at least 1 (tiny twins)."""
    return max(1, int(embed_dim) // HEAD_DIM)


class PasstMel(nn.Module):
    """hear21passt's ``AugmentMelSTFT`` in eval mode: waveform at 32 kHz → normalised log-mel "image".

    Source: ``hear21passt/models/preprocess.py:15-82@5f1cce6`` with ``hear21passt/base.py:51-54@5f1cce6``'s
    arguments. Frequency and time masking and the random fmin/fmax shifts are training-only and absent here. The
    mel matrix (``torchaudio.compliance.kaldi.get_mel_banks``, padded with one zero column for the Nyquist bin) is
    computed once, as float32, instead of on every call; the matmul runs in float32 with autocast off.

    Args:
        n_mels: mel bands.
        sample_rate: rate the input must already have (Hz).
        win_length: analysis window (samples), a symmetric Hann window zero-padded to ``n_fft`` by ``torch.stft``.
        hop_length: frame hop (samples).
        n_fft: FFT size (samples).
        fmin, fmax: mel range (Hz); 15 000 Hz is hear21passt's eval value.
        preemphasis: ``c`` of the filter ``y[n] = x[n+1] − c·x[n]`` (one sample shorter, no padding).
        log_offset: added before the natural log.
        shift, scale: the "fast normalisation" ``(log_mel + shift) / scale``.
    """

    def __init__(self, n_mels: int = 128, sample_rate: int = 32000, win_length: int = 800, hop_length: int = 320,
                 n_fft: int = 1024, fmin: float = 0.0, fmax: float = 15000.0, preemphasis: float = 0.97,
                 log_offset: float = 1e-5, shift: float = 4.5, scale: float = 5.0):
        super().__init__()
        from torchaudio.compliance.kaldi import get_mel_banks

        self.n_mels, self.sample_rate, self.win_length, self.hop_length = n_mels, sample_rate, win_length, hop_length
        self.n_fft, self.fmin, self.fmax, self.preemphasis = n_fft, fmin, fmax, preemphasis
        self.log_offset, self.shift, self.scale = log_offset, shift, scale
        banks, _ = get_mel_banks(n_mels, n_fft, float(sample_rate), float(fmin), float(fmax),
                                 vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0)
        self.register_buffer("mel_basis", F.pad(banks, (0, 1)).float(), persistent=False)   # (n_mels, n_fft//2+1)
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        self.register_buffer("emphasis", torch.tensor([[[-preemphasis, 1.0]]]), persistent=False)

    def config(self) -> dict[str, Any]:
        return {"n_mels": self.n_mels, "sample_rate": self.sample_rate, "win_length": self.win_length,
                "hop_length": self.hop_length, "n_fft": self.n_fft, "fmin": self.fmin, "fmax": self.fmax,
                "preemphasis": self.preemphasis, "log_offset": self.log_offset, "shift": self.shift,
                "scale": self.scale}

    def frames(self, samples: int) -> int:
        """Mel frames of an input of ``samples`` samples: ``1 + (samples − 1) // hop`` (1000 for 320 000)."""
        return 1 + (int(samples) - 1) // self.hop_length

    def forward(self, audio: Tensor) -> Tensor:
        """audio (B, S) float32 at ``sample_rate`` → (B, 1, n_mels, T) float32, axis 3 is time,
        ``T = 1 + (S − 1) // hop_length``."""
        with torch.autocast(device_type=audio.device.type, enabled=False):
            x = F.conv1d(audio.float()[:, None], self.emphasis)[:, 0]
            spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                              window=self.window, center=True, pad_mode="reflect", normalized=False,
                              return_complex=True)
            power = torch.view_as_real(spec).pow(2).sum(-1)                     # (B, n_fft//2+1, T)
            mel = torch.matmul(self.mel_basis, power)
        return ((mel + self.log_offset).log()[:, None] + self.shift) / self.scale


class PatchEmbed(nn.Module):
    """Overlapping patches: ``proj`` = Conv2d(in_chans, D, patch, stride); its own module for the key
    ``patch_embed.proj.*``. (B, C, F, T) → (B, D, F', T'), ``F' = (F − patch) // stride + 1`` (same for T)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention (timm ViT): ``qkv`` one Linear(D, 3D) with bias, scale ``head_dim^-1/2``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"PaSST width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, D) → (B, N, D)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 → exact GELU → fc2 (timm ``Mlp``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PaSST(FeatureExtractor):
    """PaSST with its mel front end: waveform (B, S) at 32 kHz → (logits (B, 527), embedding (B, 768)).

    Defaults are PaSST-S of ``passt-s-f128-p16-s10-ap.476-swa.pt``; use :func:`load_passt` for the released
    weights, the constructor alone gives random weights (tests, :meth:`tiny`). The state dict holds exactly the
    published keys (the front end has no persistent state). ``num_features`` is the embedding width.

    Args:
        embed_dim: token width D (768).
        depth: transformer blocks (12).
        num_heads: attention heads (12); ``None``: :func:`heads_for` ``(embed_dim)``.
        mlp_ratio: MLP hidden width / D (4).
        patch_size: square patch side in (mel bins, frames) (16).
        stride: patch stride in both axes (10; the file does not record it: fixed by the released model).
        freq_patches, time_patches: the positional-embedding grid (12 × 99: 128 mel bins, 998 frames in
            hear21passt's ``input_tdim``, so up to 1005 frames = 10.05 s fit, :attr:`max_frames`; shorter inputs
            use the first time embeddings, as hear21passt cuts them).
        in_chans: image channels (1).
        num_classes: AudioSet classes (527).
        mel: the front end; default :class:`PasstMel` ``()``.
    """

    name = "passt"

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int | None = 12, mlp_ratio: float = 4.0,
                 patch_size: int = 16, stride: int = 10, freq_patches: int = 12, time_patches: int = 99,
                 in_chans: int = 1, num_classes: int = 527, mel: PasstMel | None = None):
        super().__init__()
        num_heads = heads_for(embed_dim) if num_heads is None else int(num_heads)
        self.embed_dim, self.depth, self.num_heads, self.mlp_ratio = embed_dim, depth, num_heads, mlp_ratio
        self.patch_size, self.stride, self.freq_patches, self.time_patches = patch_size, stride, freq_patches, \
            time_patches
        self.in_chans, self.num_classes = in_chans, num_classes
        self.num_features = embed_dim
        self.mel = mel or PasstMel()
        # registration order = the published state-dict order
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, embed_dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, freq_patches, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, 1, time_patches))
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, stride)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))
        self.head_dist = nn.Linear(embed_dim, num_classes)
        for p in (self.cls_token, self.dist_token, self.new_pos_embed, self.freq_new_pos_embed,
                  self.time_new_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self._freeze()

    @classmethod
    def tiny(cls, **overrides: Any) -> PaSST:
        """Same code path, width 16 and one block (:data:`TINY_PASST`), full 128 × 1000 front end; for tests."""
        return cls(**{**TINY_PASST, "num_heads": None, **overrides})

    def config(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "patch_size": self.patch_size, "stride": self.stride,
                "freq_patches": self.freq_patches, "time_patches": self.time_patches, "in_chans": self.in_chans,
                "num_classes": self.num_classes, "mel": self.mel.config()}

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def max_frames(self) -> int:
        """The most mel frames the time embedding covers: 1005 (10.05 s) for 99 patches of 16, stride 10."""
        return (self.time_patches - 1) * self.stride + self.patch_size + self.stride - 1

    def patches(self, frames: int) -> int:
        """Time patches of a spectrogram of ``frames`` frames (0 when shorter than one patch)."""
        return max(0, (int(frames) - self.patch_size) // self.stride + 1)

    def spectrogram_logits(self, spec: Tensor) -> tuple[Tensor, Tensor]:
        """The network alone (hear21passt ``PaSST.forward``): spec (B, 1, n_mels, T) → (logits (B, classes),
        features (B, D)); features = mean of the class and distillation tokens after ``norm``."""
        x = self.patch_embed(spec)                                              # (B, D, F', T'), axis 3 is time
        b, _, f, t = x.shape
        if f != self.freq_patches or not 1 <= t <= self.time_patches:
            raise ValueError(f"PaSST got a {tuple(spec.shape[-2:])} spectrogram = {f} x {t} patches; its positional "
                             f"embeddings hold {self.freq_patches} x {self.time_patches} (at most {self.max_frames} "
                             f"frames)")
        x = x + self.time_new_pos_embed[..., :t] + self.freq_new_pos_embed
        x = x.flatten(2).transpose(1, 2)                                        # (B, F'·T', D), frequency-major
        cls = self.cls_token.expand(b, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(b, -1, -1) + self.new_pos_embed[:, 1:]
        x = self.norm(self.blocks(torch.cat((cls, dist, x), dim=1)))
        features = (x[:, 0] + x[:, 1]) / 2
        return self.head(features), features

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """audio (B, S) float at ``sample_rate`` (32 kHz) → (logits (B, num_classes) pre-sigmoid, embedding (B, D))
        float32. av-benchmark feeds exactly S = 320 000 (10 s; :class:`~avgen.encoders.audio_input.AudioInput`).

        Raises:
            ValueError: not (B, S), or S gives fewer frames than one patch or more than the time embedding holds.
        """
        if audio.ndim != 2:
            raise ValueError(f"PaSST expects mono audio (B, S) at {self.sample_rate} Hz, got {tuple(audio.shape)}")
        frames = self.mel.frames(audio.shape[1])
        if not 1 <= self.patches(frames) <= self.time_patches:
            raise ValueError(f"PaSST takes {self.patch_size}..{self.max_frames} mel frames "
                             f"({self.mel.hop_length}-sample hop at {self.sample_rate} Hz); {audio.shape[1]} samples "
                             f"give {frames}")
        with torch.autocast(device_type=audio.device.type, enabled=False):
            return self.spectrogram_logits(self.mel(audio.to(self.head_dist.weight.device)))


class PasstWeightsMissing(ExtractorWeightsMissing):
    """The PaSST checkpoint is not where the config says (names the config key and the release URL)."""

    def __init__(self, path: str | os.PathLike | None, config_key: str = "evaluate.passt.path"):
        super().__init__("passt", path, config_key)


class PasstCheckpointError(WeightsFileError):
    """A file that is not a PaSST state dict in the released layout; the message is one line naming the file and
    the config key (torch's multi-line reasons are folded)."""


def _architecture(state: Mapping[str, Any], where: str) -> dict[str, int]:
    """The :class:`PaSST` sizes the file's tensor shapes imply (the heads follow :func:`heads_for`)."""
    def shape(key: str) -> tuple[int, ...]:
        value = state.get(key)
        if not isinstance(value, Tensor):
            raise PasstCheckpointError(f"{where} has no tensor {key}: not a PaSST state dict (expected "
                                       f"{CHECKPOINT_FILE}, {ORIGINS['passt'].where})")
        return tuple(value.shape)

    proj = shape("patch_embed.proj.weight")
    depth = 0
    while f"blocks.{depth}.attn.qkv.weight" in state:
        depth += 1
    flat = len(proj) == 2  # (D, P·P): one input channel, square patches
    return {"embed_dim": proj[0], "in_chans": 1 if flat else proj[1],
            "patch_size": round(proj[1] ** 0.5) if flat else proj[-1], "depth": depth,
            "mlp_ratio": shape("blocks.0.mlp.fc1.weight")[0] / proj[0] if depth else 4.0,
            "freq_patches": shape("freq_new_pos_embed")[2], "time_patches": shape("time_new_pos_embed")[3],
            "num_classes": shape("head.1.weight")[0]}


def load_passt(path: str | os.PathLike | None, config_key: str = "evaluate.passt.path",
               num_heads: int | None = None) -> PaSST:
    """:class:`PaSST` with the weights of ``passt-s-f128-p16-s10-ap.476-swa.pt`` (or a file in its layout).

    The file is read with ``torch.load(weights_only=True)``; as hear21passt's ``checkpoint_filter_fn``
    (``hear21passt/models/passt.py:646-672@5f1cce6``) accepts, it is a plain state dict or ``{'model': state
    dict}``, and a flattened ``patch_embed.proj.weight`` (D, C·P·P) is reshaped to (D, C, P, P). The sizes
    (width, depth, patch, positional grid, classes) come from the tensor shapes; the heads, which no shape
    records, are ``num_heads`` or :func:`heads_for` (12 for 768). The load is strict: every key, no extra one,
    every shape. The SHA-256 is recorded under ``"passt"``.

    Raises:
        PasstWeightsMissing: no file at ``path`` (names ``config_key``).
        PasstCheckpointError: (a ``ValueError``) unreadable with the safe loader, or not a PaSST state dict; one
            line naming the file and ``config_key``.
    """
    origin = ORIGINS["passt"]
    checkpoint = load_weights_file(
        path, config_key, PasstWeightsMissing, PasstCheckpointError,
        f"The released {origin.file} ({origin.where}) holds only tensors and loads this way.")
    where = f"{path} (config key {config_key})"
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise PasstCheckpointError(f"{where} holds a {type(checkpoint).__name__}, not a PaSST state dict or "
                                   f"{{'model': state dict}}; expected {origin.file} from {origin.where}")
    state = dict(state)
    sizes = _architecture(state, where)
    proj = state["patch_embed.proj.weight"]
    if proj.ndim < 4:  # weights trained before patchify-by-conv (checkpoint_filter_fn keeps this branch)
        state["patch_embed.proj.weight"] = proj.reshape(proj.shape[0], -1, sizes["patch_size"], sizes["patch_size"])
    model = PaSST(**sizes, num_heads=num_heads)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PasstCheckpointError(f"{where} does not fit PaSST({model.config()}): {exc}; expected {origin.file}, "
                         f"{origin.what}, from {origin.where}") from exc
    model._record("passt", Path(path))
    model._freeze()
    return model


def save_official_format(model: PaSST, path: str | os.PathLike, *, wrap: bool = False,
                         overwrite: bool = False) -> Path:
    """Write ``model``'s weights in the released layout: a flat ``torch.save``-d state dict with the published
    keys (``head_dist.*`` included), or ``{'model': state dict}`` with ``wrap``; atomically. Returns the path.
    Refuses to replace an existing file unless ``overwrite``. (Tests: tiny files in the released format.)"""
    from avgen.media import write_bytes_atomic

    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"model": state} if wrap else state, buffer)
    return write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)
