"""Attentive pooling of the TempoTokens into one clip token (Yariv et al., Sec. 3, Eqs. 4-6).

The widest context window of TempoTokens replaces the plain mean with the attention of Schwartz et
al. 2019 ("Factor Graph Attention", unary + pairwise potentials)::

    ã_atten = Σ_u p(u) ã^(u)                                                    (Eq. 4)
    p(u) ∝ exp(α_l θ_l(u) + α_c θ_c(u))                                         (Eq. 5)
    θ_l(u) = v_l^T relu(V_l ã^(u))                                                local potential
    θ_c(u) = 1/L Σ_i cos(W_1 ã^(u), W_2 ã^(i))                                   (Eq. 6)

Choices where the paper leaves room:

* θ_c averages over the L positions (i = u included, as in Eq. 6) where Eq. 6 sums: a factor of L
  that α_c absorbs, but it keeps θ_c in [-1, 1] whatever the clip length, so one α_c serves
  clips of every length.
* α_l, α_c are two learned scalars, as Eq. 5 writes them, starting at 1. The public code's
  Conv1d(2 -> 1, no bias) over the stacked potentials computes the same weighted sum, only from a
  random start.
* Dropout sits on the hidden layer of θ_l, as in the public code (the paper does not mention it),
  and follows the module's training flag: the public code's ``F.dropout`` without ``training=``
  keeps it on at inference and makes the clip token random.
* v_l has no bias: a shift shared by every position cancels in the softmax and would never learn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgen.errors import ConfigError


class AttentivePooling(nn.Module):
    """Pool L tokens into one by a learned distribution over positions (Eqs. 4-6).

    Args:
        dim: d, width of the tokens (paper: d_t = 1024, the text encoder's embedding width).
        hidden_dim: width of V_l in the local potential; ``None`` for ``dim`` (public code: 1024).
        embed_dim: width of the W_1, W_2 embeddings of the cross potential; ``None`` for ``dim``
            (public code: 1024).
        dropout: dropout on relu(V_l ã), training only (public code: 0.5).
    """

    def __init__(self, dim: int = 1024, hidden_dim: int | None = None, embed_dim: int | None = None,
                 dropout: float = 0.5):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"attentive pooling dropout={dropout}: expected a probability in [0, 1).")
        hidden_dim = dim if hidden_dim is None else hidden_dim
        embed_dim = dim if embed_dim is None else embed_dim
        self.local_hidden = nn.Linear(dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.local_score = nn.Linear(hidden_dim, 1, bias=False)
        self.cross_query = nn.Linear(dim, embed_dim)
        self.cross_key = nn.Linear(dim, embed_dim)
        self.alpha_local = nn.Parameter(torch.ones(()))
        self.alpha_cross = nn.Parameter(torch.ones(()))

    def potentials(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(θ_l, θ_c), each (B, L), of tokens (B, L, d)."""
        local = self.local_score(self.dropout(F.relu(self.local_hidden(tokens)))).squeeze(-1)
        query = F.normalize(self.cross_query(tokens), dim=-1)
        key = F.normalize(self.cross_key(tokens), dim=-1)
        # The mean cosine with every key is the cosine's dot product with the mean key: O(L), not O(L²).
        cross = torch.einsum("bud,bd->bu", query, key.mean(dim=1))
        return local, cross

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Attend over the tokens of a clip.

        Args:
            tokens: (B, L, d) TempoTokens, one per video frame; axis 1 is time.

        Returns:
            ``(token, weights)``: the clip token ã_atten (B, d) and p (B, L), which sums to 1
            over the L positions.
        """
        if tokens.ndim != 3:
            raise ValueError(f"AttentivePooling expects tokens (B, L, d), got {tuple(tokens.shape)}.")
        local, cross = self.potentials(tokens)
        weights = torch.softmax(self.alpha_local * local + self.alpha_cross * cross, dim=1)
        return torch.einsum("bu,bud->bd", weights, tokens), weights
