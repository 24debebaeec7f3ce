"""Cross-attention to a pooled condition vector: the CoDi-style baseline of Hayakawa et al. (Fig. 3a, Table I)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from avgen.modules.attention import CrossModalTransformer


class CrossModalAttention(CrossModalTransformer):
    """The standard choice of Sec. III-C1: one condition vector per clip, read by cross-attention.

    The second sublayer of ``CrossModalTransformer``::

        v = mean_τ c_τ / ||mean_τ c_τ||                    (B, 1, cond_dim): "the conditional audio
                                                           information is embedded into a single feature vector"
        h = h + CrossAttn(LN_2(h), keys/values from v)

    With a single key the attention weights are all 1, so every token receives the same vector
    ``W_o W_v v``: the block cannot say *when* something happens in the other modality, which is the
    limitation CMC-PE removes. Pooling before normalising follows the public code's ``attn`` variant.

    Args:
        channels: C, channels of the U-Net features at the insertion point.
        cond_dim: channels of the connector features (paper: 1280).
        head_dim: channels per attention head.
        norm_groups: groups of the input GroupNorm.
        dropout: dropout in the attentions and the feed-forward.
        attention_span: ``full`` (all T·S tokens, public code) or ``frame`` (within each time step);
            see ``CrossModalTransformer``.
    """

    def __init__(self, channels: int, cond_dim: int = 1280, head_dim: int = 64, norm_groups: int = 32,
                 dropout: float = 0.0, attention_span: str = "full"):
        super().__init__(channels, cond_dim, head_dim, norm_groups, dropout, context_dim=cond_dim,
                         attention_span=attention_span)

    def attention_inputs(self, h: Tensor, cond: Tensor, time_frames: int) -> tuple[Tensor, Tensor]:
        return h, F.normalize(cond.mean(dim=1, keepdim=True), dim=-1)
