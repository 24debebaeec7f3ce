"""Cross-Modal Conditioning as Positional Encoding (CMC-PE), Hayakawa et al., Sec. III-C2, Fig. 3b.

The other modality's connector features, one vector per time frame, are projected to the U-Net
width, stretched to the U-Net's number of frames, broadcast over the non-time positions and added
to the tokens like a positional encoding; a self-attention then reads the sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgen.errors import ConfigError
from avgen.modules.attention import CrossModalTransformer, GEGLUFeedForward

INTERPOLATION_MODES = ("nearest", "linear")


def _check_mode(mode: str) -> None:
    if mode not in INTERPOLATION_MODES:
        raise ConfigError(f"interpolation={mode!r} is not a time interpolation of CMC-PE; "
                          f"expected one of {INTERPOLATION_MODES}.")


def interpolate_time(cond: Tensor, length: int, mode: str = "nearest") -> Tensor:
    """Resample a feature sequence along time from T_c to ``length`` frames.

    Args:
        cond: (B, T_c, D); axis 1 is time.
        length: T, the number of output frames.
        mode: ``"nearest"``: ``out[:, i] = cond[:, floor(i·T_c / T)]``, the index rule of torch's
            ``"nearest"`` (what the public code uses), computed here in integers so that no float
            rounding can move a frame. ``"linear"``: torch's ``"linear"`` with
            ``align_corners=False``: output frame ``i`` reads source position
            ``p = max((i + 0.5)·T_c / T - 0.5, 0)`` and blends frames ``floor(p)`` and
            ``min(floor(p) + 1, T_c - 1)`` by the fractional part of ``p``.
            Both return ``cond`` unchanged when ``T == T_c``.

    Returns:
        (B, length, D).
    """
    _check_mode(mode)
    source = cond.shape[1]
    if mode == "nearest":
        index = torch.arange(length, device=cond.device) * source // length
        return cond.index_select(1, index)
    return F.interpolate(cond.transpose(1, 2), size=length, mode="linear", align_corners=False).transpose(1, 2)


class CMCPE(CrossModalTransformer):
    """CMC-PE block: the connector features enter as a positional encoding before a self-attention.

    The second sublayer of ``CrossModalTransformer`` (Hayakawa et al., Sec. III-C2 and III-E:
    "a cross-attention layer is replaced with a self-attention one for CMC-PE")::

        e_τ = LN_e(FF_e(c_τ / ||c_τ||))                    one vector per condition frame τ < T_c, (B, T_c, C)
        E   = interpolate_time(e, T, interpolation)        (B, T, C), broadcast over the S positions
        h   = h + SelfAttn(LN_2(h) + E)

    Both normalisations act on the channels of one frame, so the encoding of a frame depends on
    that frame's condition alone: the public code L2-normalises over time instead, which lets every
    audio frame rescale every other one and blurs the temporal locality the method is built on.

    Args:
        channels: C, channels of the U-Net features at the insertion point (paper: 1280 in
            AnimateDiff, 576 and 960 in AudioLDM).
        cond_dim: channels of the connector features (paper: 1280).
        head_dim: channels per attention head. The public code splits into heads of 8 channels.
        norm_groups: groups of the input GroupNorm.
        interpolation: time resampling of the condition, ``"nearest"`` (public code) or ``"linear"``.
        dropout: dropout in the attentions and the feed-forwards.
        attention_span: ``full`` (all T·S tokens, public code) or ``frame`` (within each time step);
            see ``CrossModalTransformer``.
    """

    def __init__(self, channels: int, cond_dim: int = 1280, head_dim: int = 64, norm_groups: int = 32,
                 interpolation: str = "nearest", dropout: float = 0.0, attention_span: str = "full"):
        _check_mode(interpolation)
        super().__init__(channels, cond_dim, head_dim, norm_groups, dropout, context_dim=None,
                         attention_span=attention_span)
        self.interpolation = interpolation
        self.cond_ff = GEGLUFeedForward(cond_dim, channels, dropout=dropout)
        self.cond_norm = nn.LayerNorm(channels)

    def positional_encoding(self, cond: Tensor, time_frames: int) -> Tensor:
        """(B, T_c, cond_dim) connector features -> (B, T, C) encoding, one vector per U-Net frame."""
        frames = self.cond_norm(self.cond_ff(F.normalize(cond, dim=-1)))
        return interpolate_time(frames, time_frames, self.interpolation)

    def attention_inputs(self, h: Tensor, cond: Tensor, time_frames: int) -> tuple[Tensor, None]:
        b, tokens, c = h.shape
        encoding = self.positional_encoding(cond, time_frames)
        h = h.view(b, time_frames, tokens // time_frames, c) + encoding[:, :, None, :]
        return h.view(b, tokens, c), None
