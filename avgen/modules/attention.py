"""Building blocks shared by the cross-modal modules of the joint audio+video model.

One implementation each of:

* ``MultiHeadAttention``: self- or cross-attention through ``F.scaled_dot_product_attention``;
* ``GEGLUFeedForward``: the gated feed-forward of Stable Diffusion's transformer blocks;
* ``timestep_embedding``: the sinusoidal embedding of diffusion timesteps;
* ``CrossModalTransformer``: the skeleton that ``CMCPE`` and ``CrossModalAttention`` share, one
  Transformer decoder block wrapped like diffusers' ``Transformer2DModel`` with a zero-initialised
  output projection, so that a freshly inserted block leaves the pre-trained U-Net unchanged;
* ``heads_for`` and ``group_norm``: the hyper-parameter checks, with errors that name the key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgen.errors import ConfigError


def heads_for(channels: int, head_dim: int) -> int:
    """Number of attention heads of width ``head_dim`` over ``channels`` channels.

    Widths below ``head_dim`` get a single head of width ``channels`` (tiny debug models);
    otherwise ``head_dim`` must divide ``channels``.
    """
    if head_dim < 1:
        raise ConfigError(f"head_dim={head_dim}: expected a positive number of channels per attention head.")
    if channels < head_dim:
        return 1
    if channels % head_dim:
        raise ConfigError(
            f"head_dim={head_dim} does not divide channels={channels}: attention splits the channels into heads of "
            f"head_dim channels each. Set head_dim to a divisor of {channels} (64 divides every U-Net width of the "
            f"paper: 320, 576, 640, 960, 1280) or to a value above {channels} for a single head."
        )
    return channels // head_dim


def group_norm(norm_groups: int, channels: int) -> nn.GroupNorm:
    """``nn.GroupNorm`` (eps 1e-6, as in the Stable Diffusion U-Nets) after checking that the groups fit."""
    if norm_groups < 1 or channels % norm_groups:
        raise ConfigError(
            f"norm_groups={norm_groups} does not divide channels={channels}: GroupNorm needs whole groups. "
            f"Set norm_groups to a divisor of {channels} (32 for the paper's widths)."
        )
    return nn.GroupNorm(norm_groups, channels, eps=1e-6)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of diffusion timesteps (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020).

    Args:
        timesteps: (B,) integer or fractional timesteps.
        dim: embedding width.
        max_period: the longest wavelength, in timesteps.

    Returns:
        (B, dim) float32: ``[cos(t·ω_0) .. cos(t·ω_{h-1}) | sin(t·ω_0) .. sin(t·ω_{h-1})]`` with
        ``h = dim // 2`` and ``ω_k = max_period^(-k/h)``; an odd ``dim`` ends with a zero column.
    """
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    angles = timesteps.float()[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, Eq. 1), self- or cross-.

    Queries come from ``x``; keys and values from ``context``, or from ``x`` when no context is given.
    Query/key/value maps have no bias and the output map has one, as in the Stable Diffusion U-Nets.

    Args:
        dim: channels of ``x`` (and of the output).
        heads: number of heads.
        head_dim: channels per head.
        context_dim: channels of ``context``; ``None`` for self-attention.
        dropout: dropout on the output.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        context_dim = dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, tokens: Tensor) -> Tensor:
        n, length, _ = tokens.shape
        return tokens.view(n, length, self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """Attend from every query token to every context token.

        Args:
            x: (N, L, dim) queries. No axis is special: callers fold what they do not attend
                across (other frames, other positions) into N.
            context: (N, L_kv, context_dim), or ``None`` to attend within ``x``.
            bias: (heads, L, L_kv), added to the attention logits (after the 1/sqrt(head_dim) scaling)
                before the softmax: a relative position bias; ``None`` for none.

        Returns:
            (N, L, dim).
        """
        context = x if context is None else context
        q, k, v = (self._split_heads(t) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
        n, _, length, _ = out.shape
        return self.dropout(self.to_out(out.transpose(1, 2).reshape(n, length, -1)))


class GEGLUFeedForward(nn.Module):
    """Gated feed-forward ``Linear(inner -> out)(a · GELU(g))`` with ``(a, g) = Linear(dim -> 2·inner)(x)``.

    GEGLU of Shazeer 2020, the feed-forward of the Stable Diffusion / CoDi transformer blocks.

    Args:
        dim: input channels.
        out_dim: output channels (``dim`` when ``None``).
        mult: hidden width ``inner = mult · dim``.
        dropout: dropout on the hidden activations.
    """

    def __init__(self, dim: int, out_dim: int | None = None, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = mult * dim
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim if out_dim is None else out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., out_dim), applied to each position independently."""
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(value * F.gelu(gate)))


ATTENTION_SPANS = ("full", "frame")


class CrossModalTransformer(nn.Module):
    """One Transformer decoder block on U-Net features, with a cross-modal second sublayer.

    The skeleton of ``CMCPE`` (Fig. 3b) and ``CrossModalAttention`` (Fig. 3a) of Hayakawa et al.,
    "A Simple but Strong Baseline for Sounding Video Generation" (Sec. III-C, III-E: "each module is
    implemented by a single Transformer decoder block", following CoDi), wrapped like diffusers'
    ``Transformer2DModel``::

        h = proj_in(GroupNorm(x))                          tokens (B, T·S, C), time-major
        h = h + SelfAttn(LN_1(h))
        h = h + Attn(queries, context)                     (queries, context) = attention_inputs(LN_2(h), cond, T)
        (both attentions over all T·S tokens, or with ``attention_span="frame"`` within each time step)
        h = h + FF(LN_3(h))
        out = x + proj_out(h)

    ``proj_out`` starts at zero (weight and bias), so a new block returns ``x`` bit for bit and
    training starts from the pre-trained U-Net. Subclasses define ``attention_inputs``: what the
    second attention sees, which is where the cross-modal condition enters.

    Args:
        channels: C, channels of the U-Net features at the insertion point.
        cond_dim: D, channels of the connector features of the other modality.
        head_dim: channels per attention head; heads = channels // head_dim (see ``heads_for``).
        norm_groups: groups of the input GroupNorm.
        dropout: dropout in the attentions and the feed-forward.
        context_dim: channels of the second attention's context; ``None`` makes it a self-attention.
        attention_span: ``full``: the attentions run over all T·S tokens of a clip (the public code's
            SpatialTransformer on the (T, S) map); ``frame``: within each time step over its S tokens
            (cost S² instead of (T·S)² per time step; time then mixes only through the U-Net's own
            temporal layers and the time-aligned condition).
    """

    def __init__(self, channels: int, cond_dim: int, head_dim: int, norm_groups: int, dropout: float,
                 context_dim: int | None, attention_span: str = "full"):
        super().__init__()
        if attention_span not in ATTENTION_SPANS:
            raise ConfigError(f"model.block.attention_span={attention_span!r}: expected one of {ATTENTION_SPANS}")
        self.attention_span = attention_span
        heads = heads_for(channels, head_dim)
        self.channels = channels
        self.cond_dim = cond_dim
        self.norm = group_norm(norm_groups, channels)
        self.proj_in = nn.Linear(channels, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = MultiHeadAttention(channels, heads, channels // heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(channels)
        self.attn2 = MultiHeadAttention(channels, heads, channels // heads, context_dim=context_dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = GEGLUFeedForward(channels, dropout=dropout)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def attention_inputs(self, h: Tensor, cond: Tensor, time_frames: int) -> tuple[Tensor, Tensor | None]:
        """(queries (B, T·S, C), context (B, L_kv, context_dim) or None) of the second attention.

        ``h`` is ``LN_2`` of the tokens, (B, T·S, C) time-major (token ``t·S + s``);
        ``cond`` is (B, T_c, cond_dim); ``time_frames`` is T.
        """
        raise NotImplementedError(f"{type(self).__name__} must define attention_inputs")

    def _attend(self, attn: nn.Module, queries: Tensor, context: Tensor | None, time_frames: int) -> Tensor:
        if self.attention_span == "full":
            return attn(queries, context)
        b, n, c = queries.shape
        per_step = queries.reshape(b * time_frames, n // time_frames, c)
        context = None if context is None else context.repeat_interleave(time_frames, dim=0)
        return attn(per_step, context).reshape(b, n, c)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Condition U-Net features on the other modality.

        Args:
            x: (B, C, T, S) U-Net features in their time view: axis 2 is the modality's time
                (video frames / audio latent frames), axis 3 the flattened non-time positions
                (video H·W, audio mel bins).
            cond: (B, T_c, cond_dim) connector features of the other modality; axis 1 is its time.

        Returns:
            (B, C, T, S), equal to ``x`` while ``proj_out`` is zero.
        """
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__} expects features (B, C={self.channels}, T, S) in their time "
                             f"view, got {tuple(x.shape)}.")
        if cond.ndim != 3 or cond.shape[0] != x.shape[0] or cond.shape[2] != self.cond_dim:
            raise ValueError(f"{type(self).__name__} expects cond (B={x.shape[0]}, T_c, cond_dim={self.cond_dim}), "
                             f"got {tuple(cond.shape)}.")
        b, c, t, s = x.shape
        h = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(b, t * s, c))
        h = h + self._attend(self.attn1, self.norm1(h), None, t)
        h = h + self._attend(self.attn2, *self.attention_inputs(self.norm2(h), cond, t), t)
        h = h + self.ff(self.norm3(h))
        return x + self.proj_out(h).view(b, t, s, c).permute(0, 3, 1, 2)
