"""BEATs audio encoder (Chen et al. 2022, "BEATs: Audio Pre-Training with Acoustic Tokenizers", arXiv 2212.09058).

TempoTokens runs 1 s of 16 kHz audio through the frozen BEATs_iter3+ (AS2M) checkpoint fine-tuned on AudioSet-2M
(cpt2), without its AudioSet classifier, and concatenates the outputs of all 12 encoder layers per patch.

Shapes for B clips of S samples at 16 kHz (1 s: T = 98 frames, 6 × 8 = 48 patches)::

    waveform (B, S)          ── preprocess ──>                        fbank (B, T, 128)   axis 1 time, axis 2 mel
    fbank                    ── PatchEmbedding, layer_norm, post_extract_proj ──>  (B, R', D)
                             ── positional convolution, encoder.layer_norm ──>     layer index 0 (encoder input)
                             ── L post-LN transformer layers ──>                   layer indices 1..L

R' = time_patches · freq_patches, time_patches = T // 16, freq_patches = 128 // 16 = 8; patch r = t·freq_patches + f
(time-major) covers fbank frames [16t, 16t + 16) and mel bins [16f, 16f + 16).

Parameter names equal the keys of the official checkpoints' ``model`` state dict (microsoft/unilm
``beats/BEATs.py``, ``beats/backbone.py``): :func:`load_beats` reads ``BEATs_iter3_plus_AS2M*.pt`` with a strict
key check, and :func:`save_official_format` writes files that the official code loads.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.compliance import kaldi

from avgen.errors import ConfigError, WeightsFileError, WeightsFileMissing
from avgen.pretrained import ORIGINS, freeze, load_weights_file

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
# Mean and standard deviation of BEATs' log-mel fbank over AudioSet, fixed in the official code (unilm issue
# #1223); every released checkpoint was trained on features normalised with them.
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
# Kaldi's fbank expects 16-bit sample values; BEATs scales audio in [-1, 1] to that range.
INT16_SCALE = 2 ** 15

CHECKPOINT_FILE = ORIGINS["beats"].file
CHECKPOINT_ORIGIN = ORIGINS["beats"].where
# Keys of the AudioSet classifier that fine-tuned checkpoints add; TempoTokens discards it (predictor=None).
PREDICTOR_KEYS = ("predictor.weight", "predictor.bias")


@dataclass
class BEATsConfig:
    """The ``cfg`` dict of an official BEATs checkpoint, with the values of BEATs_iter3+ (AS2M) cpt2 as defaults.

    Field names and meanings are those of the official ``BEATsConfig``. The architecture defaults are the iter3+
    ones; the training-only values (dropouts, layer drop, gradient decay, predictor dropout) are those a third-party
    port (Typhoon2-Audio's BEATsConfig) reports for the cpt2 file, not checked against the file here (the official
    class defaults differ). A checkpoint's own ``cfg`` overrides every default.

    Fields marked "stored only" take effect only when BEATs itself is trained; :class:`BEATs` is a frozen feature
    extractor, so it keeps them to write them back (:func:`save_official_format`) and otherwise ignores them.
    """

    input_patch_size: int = 16  # side of the square fbank patches (frames × mel bins)
    embed_dim: int = 512  # patch embedding width
    conv_bias: bool = False  # bias in the patch embedding
    encoder_layers: int = 12
    encoder_embed_dim: int = 768  # D, transformer width
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"  # FFN activation, one of ACTIVATIONS
    layer_wise_gradient_decay_ratio: float = 0.6  # stored only: scales gradients between layers in fine-tuning
    layer_norm_first: bool = False  # pre-LN layers; no released checkpoint uses them (BEATs rejects True)
    deep_norm: bool = True  # DeepNorm residual scaling α = (2L)^¼ in post-LN layers
    dropout: float = 0.0  # stored only
    attention_dropout: float = 0.0  # stored only
    activation_dropout: float = 0.0  # stored only
    encoder_layerdrop: float = 0.05  # stored only
    dropout_input: float = 0.0  # stored only
    conv_pos: int = 128  # kernel size of the convolutional positional embedding
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True  # bucketed relative position bias in the attention
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True  # query-dependent gate on the relative position bias
    finetuned_model: bool = True  # the checkpoint holds an AudioSet classifier (`predictor`); load_beats drops it
    predictor_dropout: float = 0.0  # stored only
    predictor_class: int = 527  # AudioSet classes of the classifier, used to check its shape on load

    @classmethod
    def from_official(cls, cfg: Mapping[str, Any]) -> BEATsConfig:
        """The config of a checkpoint's ``cfg`` dict: missing keys take the defaults above, keys that are not fields
        are ignored (logged at INFO; the official ``BEATsConfig`` also stores them without any use)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in cfg if k not in known)
        if unknown:
            logger.info("BEATs cfg keys %s are not BEATsConfig fields; ignored", unknown)
        return cls(**{k: v for k, v in cfg.items() if k in known})

    def to_official(self) -> dict[str, Any]:
        """The ``cfg`` dict of an official checkpoint (plain Python values only)."""
        return dataclasses.asdict(self)

    @classmethod
    def tiny(cls) -> BEATsConfig:
        """A 2-layer, 32-wide BEATs with the real front end and patch geometry, for tests and ``scale=tiny``."""
        return cls(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                   embed_dim=16, conv_pos=16, conv_pos_groups=4, num_buckets=32, max_distance=64,
                   finetuned_model=False)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
}


def _validate(config: BEATsConfig) -> None:
    def fail(key: str, problem: str, expected: str) -> NoReturn:
        raise ConfigError(f"BEATs cfg['{key}']={getattr(config, key)!r} {problem}; expected {expected}. The cfg comes "
                          f"from the checkpoint file (or BEATsConfig): use an official BEATs checkpoint.")

    if config.layer_norm_first:
        fail("layer_norm_first", "asks for pre-LN layers, which avgen's BEATs does not implement",
             "False (post-LN, as in every released BEATs checkpoint)")
    if config.activation_fn not in ACTIVATIONS:
        fail("activation_fn", "is not supported", f"one of {sorted(ACTIVATIONS)}")
    if config.encoder_embed_dim % config.encoder_attention_heads:
        fail("encoder_attention_heads", f"does not divide encoder_embed_dim={config.encoder_embed_dim}",
             "a divisor of encoder_embed_dim")
    if config.encoder_embed_dim % config.conv_pos_groups:
        fail("conv_pos_groups", f"does not divide encoder_embed_dim={config.encoder_embed_dim}",
             "a divisor of encoder_embed_dim")
    if not 1 <= config.input_patch_size <= NUM_MEL_BINS:
        fail("input_patch_size", "does not fit the 128 mel bins", f"1..{NUM_MEL_BINS} (16 in BEATs)")
    if config.relative_position_embedding and not 0 < config.num_buckets // 4 < config.max_distance:
        fail("max_distance", f"does not exceed num_buckets / 4 = {config.num_buckets // 4}",
             "num_buckets ≥ 4 and max_distance > num_buckets / 4 (320 and 800 in BEATs)")


def preprocess(waveform: Tensor, fbank_mean: float = FBANK_MEAN, fbank_std: float = FBANK_STD) -> Tensor:
    """BEATs' front end: 128-bin Kaldi log-mel filter banks, normalised.

    Each clip is scaled by 2^15 and passed to ``torchaudio.compliance.kaldi.fbank`` (25 ms Povey windows every
    10 ms, Kaldi's defaults otherwise: no dither, pre-emphasis 0.97, DC removal, edges snipped), then normalised as
    ``(fbank − fbank_mean) / (2 · fbank_std)``, the official scaling.

    Args:
        waveform: (B, S) mono audio in [-1, 1] at 16 kHz; axis 1 is time.
        fbank_mean, fbank_std: normalisation statistics (BEATs' AudioSet values by default).

    Returns:
        (B, T, 128), T = 1 + (S − 400) // 160 frames (1 s → 98); axis 1 is time, axis 2 mel bins.
    """
    if waveform.dim() != 2:
        raise ValueError(f"BEATs expects a batch of mono waveforms (B, S); got shape {tuple(waveform.shape)}. "
                         f"Downmix channels and add a batch axis (waveform[None] for one clip).")
    # Kaldi's fbank reads one channel of one signal at a time.
    fbanks = [kaldi.fbank(clip.unsqueeze(0) * INT16_SCALE, num_mel_bins=NUM_MEL_BINS, sample_frequency=SAMPLE_RATE,
                          frame_length=FRAME_LENGTH_MS, frame_shift=FRAME_SHIFT_MS) for clip in waveform]
    return (torch.stack(fbanks) - fbank_mean) / (2 * fbank_std)


def patchify(fbank: Tensor, patch_size: int = 16) -> Tensor:
    """Cut fbanks into non-overlapping ``patch_size × patch_size`` patches in time-major order.

    Args:
        fbank: (B, T, M); axis 1 is time (frames), axis 2 mel bins. The last T mod p frames and M mod p bins, which
            do not fill a patch, are dropped, as by the official strided convolution.

    Returns:
        (B, R', p²) with R' = (T // p) · (M // p): patch r = t · (M // p) + f is
        ``fbank[:, t·p:(t+1)·p, f·p:(f+1)·p]`` flattened frame by frame, the element order of a Conv2d kernel
        over (time, mel).
    """
    batch, frames, bins = fbank.shape
    p = patch_size
    rows, cols = frames // p, bins // p
    grid = fbank[:, : rows * p, : cols * p].reshape(batch, rows, p, cols, p)
    return grid.permute(0, 1, 3, 2, 4).reshape(batch, rows * cols, p * p)


class PatchEmbedding(nn.Module):
    """Linear embedding of fbank patches: the official ``Conv2d(1, embed_dim, kernel=p, stride=p)``.

    Holds the convolution's ``weight`` (embed_dim, 1, p, p) (and ``bias`` when ``bias``) under the checkpoint's
    names and applies it to :func:`patchify`'s patches, which equals the strided convolution followed by the
    official flattening of its (time, frequency) output grid; the patch order so lives in one tested function.

    Args:
        embed_dim: output width (512 in BEATs).
        patch_size: p, patch side in frames and mel bins (16 in BEATs).
        bias: add a bias (``conv_bias``, False in BEATs).
    """

    def __init__(self, embed_dim: int = 512, patch_size: int = 16, bias: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.weight = nn.Parameter(torch.empty(embed_dim, 1, patch_size, patch_size))
        # The default initialisation of the equivalent nn.Conv2d.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(embed_dim)) if bias else None

    def forward(self, fbank: Tensor) -> Tensor:
        """fbank (B, T, M), time on axis 1 → (B, R', embed_dim) in :func:`patchify`'s time-major order."""
        return F.linear(patchify(fbank, self.patch_size), self.weight.flatten(1), self.bias)


class WeightNormConv1d(nn.Module):
    """Grouped 1-D convolution with a weight-normalised kernel (Salimans & Kingma 2016).

    kernel = weight_g · weight_v / ‖weight_v‖, the norm taken per kernel tap over output and input channels
    (torch's ``weight_norm(conv, dim=2)``, which the official code applies). The parameters keep the official names
    ``weight_g`` (1, 1, K), ``weight_v`` (C, C / groups, K) and ``bias`` (C,) rather than torch's
    ``parametrizations.weight.original0/1``, so checkpoint keys map one to one.

    Args:
        channels: C, input and output channels.
        kernel_size: K, zero-padded by K // 2 on both sides.
        groups: channel groups.
    """

    def __init__(self, channels: int = 768, kernel_size: int = 128, groups: int = 16):
        super().__init__()
        self.kernel_size, self.groups = kernel_size, groups
        # The official initialisation: normal with std √(4 / (K·C)), g set so that the initial kernel is v.
        v = torch.randn(channels, channels // groups, kernel_size) * math.sqrt(4 / (kernel_size * channels))
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(v)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, L), sequence on axis 2 → (B, C, L + 1 − K mod 2)."""
        kernel = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, kernel, self.bias, padding=self.kernel_size // 2, groups=self.groups)


class ConvPositionalEmbedding(nn.Sequential):
    """Convolutional positional embedding (as in wav2vec 2.0): GELU of a wide grouped convolution along the
    patch sequence, added to the patch embeddings by the encoder.

    The sequence is the time-major flattened patch grid, so the kernel spans K / freq_patches patch rows.
    An ``nn.Sequential`` holding the convolution at index 0 only so its parameters carry the checkpoint's
    ``pos_conv.0.`` prefix.

    Args:
        channels: D, encoder width (768 in BEATs).
        kernel_size: K (``conv_pos``, 128 in BEATs).
        groups: ``conv_pos_groups`` (16 in BEATs).
    """

    def __init__(self, channels: int = 768, kernel_size: int = 128, groups: int = 16):
        super().__init__(WeightNormConv1d(channels, kernel_size, groups))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, R', D), sequence on axis 1 → the positional term (B, R', D)."""
        out = self[0](x.transpose(1, 2))
        # An even kernel padded by K // 2 on both sides yields one step too many at the end; the official SamePad
        # drops it.
        return F.gelu(out[..., : x.shape[1]]).transpose(1, 2)


def relative_position_bucket(relative_position: Tensor, num_buckets: int = 320, max_distance: int = 800) -> Tensor:
    """Bidirectional T5-style buckets of ``key index − query index``.

    Each sign gets num_buckets / 2 buckets, positive offsets (keys after the query) the upper half. Within a half,
    distances below num_buckets / 4 have a bucket each; larger ones share logarithmically spaced buckets that reach
    the last one of the half at ``max_distance`` and keep it beyond.

    Args:
        relative_position: integer tensor of any shape.

    Returns:
        Long tensor of the same shape, values in [0, num_buckets).
    """
    half = num_buckets // 2
    exact = half // 2
    bucket = (relative_position > 0).long() * half
    distance = relative_position.abs()
    # Clamped below at `exact` to keep the logarithm finite; those distances take the exact branch anyway.
    log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, far)


class BEATsSelfAttention(nn.Module):
    """Multi-head self-attention with BEATs' gated relative position bias (the gate comes from WavLM)::

        attention = softmax(q kᵀ / √d_h + G ⊙ P) v,   G[b, h, i] = a · (b' · grep_a[h] − 1) + 2

    P (H, R', R') is the relative position bias shared by all layers. (a, b') = σ of the sums of the first and last
    four of ``grep_linear``'s 8 outputs, read from query i's raw projection in head h, so each query scales the bias
    of its row by a factor in (1, 2 + grep_a).

    The official code divides q by 32 and multiplies the max-subtracted logits by 32 again, a float16 overflow guard
    that leaves the softmax unchanged; here the logits go to ``F.scaled_dot_product_attention`` directly.

    Args:
        dim: D, model width (768 in BEATs).
        heads: H (12 in BEATs).
        relative_attention_bias: the shared (num_buckets, H) bias table, registered in every layer as the checkpoint
            stores it under every layer's name; None without relative position bias.
        gru_rel_pos: gate the bias per query (True in BEATs).
    """

    def __init__(self, dim: int = 768, heads: int = 12, relative_attention_bias: nn.Embedding | None = None,
                 gru_rel_pos: bool = True):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.relative_attention_bias = relative_attention_bias
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
        else:
            self.grep_linear = self.grep_a = None

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: Tensor, position_bias: Tensor | None) -> Tensor:
        """x (B, R', D) → (B, R', D); position_bias (H, R', R') or None."""
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        bias = position_bias
        if bias is not None and self.grep_linear is not None:
            gates = torch.sigmoid(self.grep_linear(q).unflatten(-1, (2, 4)).sum(-1))
            gate_a, gate_b = gates[..., :1], gates[..., 1:]
            bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class BEATsLayer(nn.Module):
    """Post-LN transformer layer with DeepNorm residual scaling (Wang et al. 2022)::

        x = self_attn_layer_norm(α·x + SelfAttn(x));   x = final_layer_norm(α·x + fc2(act(fc1(x))))

    Args:
        dim: D (768 in BEATs).
        ffn_dim: hidden width of the feed-forward (3072 in BEATs).
        heads: attention heads (12 in BEATs).
        activation: key of :data:`ACTIVATIONS` ("gelu" in BEATs).
        residual_scale: α, (2L)^¼ with DeepNorm (BEATs), else 1.
        relative_attention_bias, gru_rel_pos: see :class:`BEATsSelfAttention`.
    """

    def __init__(self, dim: int = 768, ffn_dim: int = 3072, heads: int = 12, activation: str = "gelu",
                 residual_scale: float = 1.0, relative_attention_bias: nn.Embedding | None = None,
                 gru_rel_pos: bool = True):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.residual_scale = residual_scale
        self.self_attn = BEATsSelfAttention(dim, heads, relative_attention_bias, gru_rel_pos)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, position_bias: Tensor | None) -> Tensor:
        """x (B, R', D) → (B, R', D); position_bias (H, R', R') or None."""
        x = self.self_attn_layer_norm(self.residual_scale * x + self.self_attn(x, position_bias))
        return self.final_layer_norm(self.residual_scale * x + self.fc2(self.activation(self.fc1(x))))


class BEATsEncoder(nn.Module):
    """Positional convolution, layer norm and the stack of :class:`BEATsLayer` (official ``TransformerEncoder``).

    Args:
        config: the BEATs config (fields ``encoder_*``, ``conv_pos*``, ``relative_position_embedding``,
            ``num_buckets``, ``max_distance``, ``gru_rel_pos``, ``deep_norm``, ``activation_fn``).
    """

    def __init__(self, config: BEATsConfig):
        super().__init__()
        dim, heads = config.encoder_embed_dim, config.encoder_attention_heads
        self.num_buckets, self.max_distance = config.num_buckets, config.max_distance
        self.pos_conv = ConvPositionalEmbedding(dim, config.conv_pos, config.conv_pos_groups)
        table = nn.Embedding(config.num_buckets, heads) if config.relative_position_embedding else None
        residual_scale = (2 * config.encoder_layers) ** 0.25 if config.deep_norm else 1.0
        self.layers = nn.ModuleList(
            BEATsLayer(dim, config.encoder_ffn_embed_dim, heads, config.activation_fn, residual_scale, table,
                       config.gru_rel_pos)
            for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)

    def position_bias(self, length: int, device: torch.device) -> Tensor | None:
        """The (H, length, length) relative position bias of a sequence, or None without one."""
        table = self.layers[0].self_attn.relative_attention_bias if len(self.layers) else None
        if table is None:
            return None
        position = torch.arange(length, device=device)
        bucket = relative_position_bucket(position[None, :] - position[:, None], self.num_buckets, self.max_distance)
        return table(bucket).permute(2, 0, 1)

    def forward(self, x: Tensor, layers: Sequence[int]) -> Tensor:
        """x (B, R', D) patch embeddings → (B, R', len(layers), D), the outputs named by ``layers``
        (0: encoder input after positional convolution and layer norm; i ≥ 1: output of layer i).
        Layers after the deepest one asked for are not run."""
        x = self.layer_norm(x + self.pos_conv(x))
        bias = self.position_bias(x.shape[1], x.device)
        outputs = [x]
        for layer in self.layers[: max(layers)]:
            x = layer(x, bias)
            outputs.append(x)
        return torch.stack([outputs[i] for i in layers], dim=2)


@dataclass
class BEATsOutput:
    """Features of the selected encoder layers for every fbank patch.

    Attributes:
        hidden: (B, R', H, D). Axis 1 runs over patches in time-major order, patch r = t · freq_patches + f;
            axis 2 over ``layers`` in the order asked for. With all layers, ``hidden.flatten(2)`` (B, R', 12·768)
            is TempoTokens' concatenation of the 12 layer outputs.
        layers: the layer index of each entry of axis 2 (0: encoder input; i: output of layer i).
        time_patches: T' = T // 16 patch rows along time (1 s → 6).
        freq_patches: F' = 128 // 16 = 8 patches along the mel axis.
        patch_seconds: hop between patch rows, 16 frames × 10 ms = 0.16 s: row t covers fbank frames
            [16t, 16t + 16), i.e. audio [0.16·t, 0.16·t + 0.175) s (the last frame's window is 25 ms long).
            A video frame at time τ seconds maps to row min(⌊τ / patch_seconds⌋, time_patches − 1).
    """

    hidden: Tensor
    layers: tuple[int, ...]
    time_patches: int
    freq_patches: int
    patch_seconds: float

    def grid(self) -> Tensor:
        """``hidden`` as (B, T', F', H, D): axis 1 is time, axis 2 frequency."""
        return self.hidden.unflatten(1, (self.time_patches, self.freq_patches))


class BEATs(nn.Module):
    """BEATs (Chen et al. 2022) as a frozen feature extractor: audio → per-patch features of chosen layers.

    The modules and their names are those of the official ``BEATs`` without the AudioSet classifier
    (``predictor``), which TempoTokens removes and :func:`load_beats` drops. Dropout, layer drop and layer-wise
    gradient decay act only when BEATs itself is trained and are not implemented; their config values are kept.

    No padding mask: every clip of a batch has the same length, so no patch is padding. (The official code reduces a
    sample mask to frames and then to patch indices as if patches were ordered by time alone, which does not match
    the time-major grid; TempoTokens passes no mask.)

    Args:
        config: the architecture; :class:`BEATsConfig` defaults are BEATs_iter3+ (≈90 M parameters),
            :meth:`BEATsConfig.tiny` a tiny random twin.
    """

    def __init__(self, config: BEATsConfig | None = None):
        super().__init__()
        config = config if config is not None else BEATsConfig()
        _validate(config)
        self.config = config
        self.post_extract_proj = (nn.Linear(config.embed_dim, config.encoder_embed_dim)
                                  if config.embed_dim != config.encoder_embed_dim else None)
        self.patch_embedding = PatchEmbedding(config.embed_dim, config.input_patch_size, config.conv_bias)
        self.encoder = BEATsEncoder(config)
        self.layer_norm = nn.LayerNorm(config.embed_dim)

    @property
    def min_samples(self) -> int:
        """Shortest waveform that fills one row of patches: 400 + 15·160 = 2800 samples (0.175 s)."""
        window = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)
        hop = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)
        return window + (self.config.input_patch_size - 1) * hop

    def _select_layers(self, layers: Sequence[int] | None) -> tuple[int, ...]:
        depth = self.config.encoder_layers
        if layers is None:
            return tuple(range(1, depth + 1))
        selected = tuple(int(i) for i in layers)
        if not selected or not all(0 <= i <= depth for i in selected):
            raise ConfigError(f"model.encoder.layers={list(selected)}: BEATs layers must be a non-empty list of "
                              f"indices in 0..{depth} (0: encoder input; i: output of layer i), or None for all of "
                              f"1..{depth}")
        return selected

    def forward(self, waveform: Tensor, layers: Sequence[int] | None = None) -> BEATsOutput:
        """Per-patch features of the selected encoder layers.

        Args:
            waveform: (B, S) mono audio in [-1, 1] at 16 kHz, axis 1 is time; S ≥ :attr:`min_samples`.
            layers: indices in 0..L (L = ``encoder_layers``): 0 is the encoder input (patch embeddings after the
                positional convolution and layer norm), i ≥ 1 the output of layer i, so L is the last layer's output
                (the official ``extract_features`` result). None: 1..L, all layer outputs (TempoTokens).

        Returns:
            :class:`BEATsOutput` with ``hidden`` (B, R', H, D), R' = time_patches · freq_patches in time-major
            order, H = len(layers).
        """
        selected = self._select_layers(layers)
        if waveform.dim() == 2 and waveform.shape[1] < self.min_samples:
            raise ValueError(f"BEATs needs at least {self.min_samples} samples ({self.min_samples / SAMPLE_RATE} s "
                             f"at {SAMPLE_RATE} Hz) per clip to fill one row of patches; got {waveform.shape[1]}. "
                             f"Pass longer clips (TempoTokens uses 1 s).")
        fbank = preprocess(waveform)
        tokens = self.layer_norm(self.patch_embedding(fbank.to(self.patch_embedding.weight.dtype)))
        if self.post_extract_proj is not None:
            tokens = self.post_extract_proj(tokens)
        patch = self.config.input_patch_size
        return BEATsOutput(hidden=self.encoder(tokens, selected), layers=selected,
                           time_patches=fbank.shape[1] // patch, freq_patches=NUM_MEL_BINS // patch,
                           patch_seconds=patch * FRAME_SHIFT_MS / 1000)


class BEATsWeightsMissing(WeightsFileMissing):
    """The BEATs checkpoint is not where the config says."""

    def __init__(self, path: str | os.PathLike | None, config_key: str = "model.encoder.path"):
        super().__init__("BEATs", path, config_key, CHECKPOINT_FILE, ORIGINS["beats"].what, CHECKPOINT_ORIGIN)


class BEATsCheckpointError(WeightsFileError):
    """A file is not an official-format BEATs checkpoint, or its weights do not fit the model its cfg describes."""


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', … ({len(names) - limit} more)' if len(names) > limit else ''}]"


def _check_weights(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape) if isinstance(state[k], Tensor) else type(state[k]).__name__} "
                   f"(expected {expected[k]})"
                   for k in set(expected) & set(state)
                   if not isinstance(state[k], Tensor) or tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        problems = [f"{label} {_listing(names)}" for label, names in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if names]
        raise BEATsCheckpointError(
            f"{where}: the 'model' weights do not fit the BEATs that the file's own 'cfg' describes: "
            f"{'; '.join(problems)}. Expected the state dict of the official BEATs (microsoft/unilm beats/BEATs.py) "
            f"for that cfg, e.g. {CHECKPOINT_FILE}; a file written for another model or edited by hand does not load.")


def load_beats(path: str | os.PathLike | None, config_key: str = "model.encoder.path") -> BEATs:
    """A frozen BEATs (eval mode, no gradients) from an official checkpoint file.

    The file is the official format: a dict with ``cfg`` (the :class:`BEATsConfig` fields), ``model`` (the state
    dict) and, for fine-tuned checkpoints, ``label_dict`` (AudioSet index → label id). All three hold only tensors and
    plain Python values, so it is read with ``torch.load(weights_only=True)``; a file that needs any other object
    to unpickle is refused rather than executed. The model is built from the file's ``cfg`` and its weights must
    match exactly: every key, no extra key, every shape. The AudioSet classifier of fine-tuned files
    (``predictor.*``, present iff ``cfg['finetuned_model']``) is checked and then dropped, as TempoTokens does.

    Args:
        path: the ``.pt`` file, e.g. ``BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt``.
        config_key: the config key that set ``path``, named in errors.

    Raises:
        BEATsWeightsMissing: no file at ``path`` (a ``FileNotFoundError``).
        BEATsCheckpointError: the file is unreadable with the safe loader, not in the official layout, or its
            weights do not fit its cfg.
    """
    checkpoint = load_weights_file(
        path, config_key, BEATsWeightsMissing, BEATsCheckpointError,
        f"Official BEATs checkpoints hold only tensors and plain values and load this way; expected "
        f"{CHECKPOINT_FILE} from {CHECKPOINT_ORIGIN}. A file you trust that holds other objects can be converted "
        f"once: in a separate session read it with torch.load(weights_only=False), load its 'model' into "
        f"BEATs(BEATsConfig.from_official(its 'cfg')) and write that with save_official_format.")
    where = f"{path} (config key {config_key})"
    if not (isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("cfg"), Mapping)
            and isinstance(checkpoint.get("model"), Mapping)):
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise BEATsCheckpointError(f"{where} holds {found}, not an official BEATs checkpoint {{'cfg': dict, 'model': "
                                   f"state dict, ...}}; expected {CHECKPOINT_FILE} from {CHECKPOINT_ORIGIN}.")
    model = BEATs(BEATsConfig.from_official(checkpoint["cfg"]))
    config = model.config
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    if config.finetuned_model:
        expected.update(zip(PREDICTOR_KEYS, [(config.predictor_class, config.encoder_embed_dim),
                                             (config.predictor_class,)]))
    state = dict(checkpoint["model"])
    _check_weights(state, expected, where)
    for key in PREDICTOR_KEYS:
        state.pop(key, None)
    model.load_state_dict(state, strict=True)
    return freeze(model)


def save_official_format(model: BEATs, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` as an official BEATs checkpoint ``{'cfg': dict, 'model': state dict}``, atomically.

    The official ``BEATs(BEATsConfig(ckpt['cfg'])).load_state_dict(ckpt['model'])`` and :func:`load_beats` read it.
    ``cfg['finetuned_model']`` is written False because the file holds no AudioSet classifier.

    Returns:
        The path written. Refuses to replace an existing file unless ``overwrite``.
    """
    from avgen.media import write_bytes_atomic

    cfg = {**model.config.to_official(), "finetuned_model": False}
    state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"cfg": cfg, "model": state}, buffer)
    return write_bytes_atomic(path, buffer.getvalue(), overwrite=overwrite)
