"""AudioMapper of TempoTokens (Yariv et al., Sec. 3, Eq. 1): audio-encoder features -> one pseudo text
token per video frame, the TempoTokens ``ã^(i) = g(h(a)^(i))``.

Two steps:

* ``pool_to_frames``: the pooling layer that "fix[es] R' = L": the encoder's patch features
  (time x frequency grid, H layers of width d) become one (H·d)-vector per video frame, made only
  of the patches whose time span covers that frame.
* ``AudioMapper``: g, "four sequential linear layers with GELU non-linearity between them", from
  H·d to the text encoder's embedding width d_t, optionally followed by one self-attention layer
  over the L frames (the course-project variant, "a self-attention layer after the MLP layers ...
  to further intermix frame information before it reaches the diffusion model").

The paper writes g's output as L x H x d_t; like the public code we map the H layers, concatenated,
to one d_t token per frame, which is what each placeholder of the text prompt takes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from avgen.errors import ConfigError
from avgen.modules.attention import MultiHeadAttention, heads_for

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def _overlap_weights(rows: int, frames: int, device: torch.device) -> Tensor:
    """(frames, rows): the fraction of frame i's time span that time row r covers; rows sum to 1.

    Frame i spans [i/L, (i+1)/L) of the clip and row r spans [r/T_p, (r+1)/T_p). In units of
    1/(L·T_p) both edges are integers, so the weights are exact, with no rounding at the boundaries.
    """
    frame = torch.arange(frames, device=device)[:, None]
    row = torch.arange(rows, device=device)[None, :]
    overlap = torch.minimum((frame + 1) * rows, (row + 1) * frames) - torch.maximum(frame * rows, row * frames)
    return overlap.clamp(min=0) / rows


def pool_to_frames(features: Tensor, num_frames: int, time_patches: int | None = None) -> Tensor:
    """Pool audio-encoder patch features to one feature per video frame, by time.

    Each patch row is one stretch of time (BEATs: 16 fbank frames, 160 ms) split into frequency
    patches. A frame's feature is the mean over the frequency patches of the rows it overlaps,
    the rows weighted by how much of the frame's time span [i/L, (i+1)/L) each covers:

    * T_p = L: frame i is row i;  T_p = n·L: the mean of rows n·i .. n·i + n - 1;
    * T_p < L (rows coarser than frames): a frame inside one row copies it, so consecutive frames
      share a row; a frame across a row boundary mixes the two rows by its time in each. The rows
      are a step function of time: interpolating between row centres would leak a row into frames
      outside its span.

    The rows are taken to tile the clip evenly. BEATs drops the fbank frames after its last whole
    patch (2 of 98 for 1 s), a shift of at most one patch's tail that this ignores. (The public code
    instead groups consecutive patches in their time-major order, so several frames read different
    frequency bands of the same time row and the tokens are not per-frame in time.)

    Args:
        features: (B, T_p, F_p, H, d), patches as a time x frequency grid (axis 1 time) with the
            outputs of H encoder layers of width d; or (B, R', H, d) with R' = T_p·F_p patches in
            time-major order (patch t·F_p + f), as BEATs returns them, with ``time_patches`` = T_p.
        num_frames: L, the number of video frames.
        time_patches: T_p for the flat layout; must match axis 1 for the grid layout if given.

    Returns:
        (B, L, H·d); axis 1 is time, the layers concatenated layer-major (layer h at h·d .. h·d + d - 1).
    """
    if num_frames < 1:
        raise ConfigError(f"num_frames={num_frames}: expected at least one video frame.")
    if features.ndim == 4:
        if time_patches is None or time_patches < 1 or features.shape[1] % time_patches:
            raise ValueError(f"pool_to_frames got flat patches {tuple(features.shape)} (B, R', H, d) and "
                             f"time_patches={time_patches}: pass time_patches = T_p, a divisor of R' = "
                             f"{features.shape[1]} (BEATs: one row per 16 fbank frames, 6 for 1 s of audio).")
        b, patches, layers, width = features.shape
        features = features.view(b, time_patches, patches // time_patches, layers, width)
    elif features.ndim != 5 or (time_patches is not None and time_patches != features.shape[1]):
        raise ValueError(f"pool_to_frames expects (B, T_p, F_p, H, d) or (B, T_p·F_p, H, d) with time_patches, "
                         f"got {tuple(features.shape)} with time_patches={time_patches}.")
    rows = features.mean(dim=2).flatten(2)
    weights = _overlap_weights(rows.shape[1], num_frames, rows.device).to(rows.dtype)
    return torch.einsum("lt,btc->blc", weights, rows)


def default_hidden_dims(in_dim: int, out_dim: int, depth: int) -> tuple[int, ...]:
    """Hidden widths of g: ``depth - 2`` layers at in_dim/4, then one at out_dim.

    At the paper's size (depth 4, 9216 -> 1024) this is the public code's 9216 -> 2304 -> 2304 ->
    1024 -> 1024, whose four layers match the paper's "four sequential linear layers with GELU
    non-linearity between them" (the public code pools frames between its third and fourth layer;
    here pooling comes first, so all four act per frame). Depth 2 (Table 4) is 9216 -> 1024 -> 1024.
    """
    if depth < 1:
        raise ConfigError(f"mapper depth={depth}: expected at least one linear layer (paper: 4).")
    if depth == 1:
        return ()
    return (in_dim // 4,) * (depth - 2) + (out_dim,)


class AudioMapper(nn.Module):
    """g of Eq. 1: per-frame audio features -> TempoTokens in the text encoder's embedding space.

    Args:
        in_dim: H·d, the concatenated encoder layers (paper: 12 BEATs layers x 768 = 9216).
        out_dim: d_t, the text encoder's token width (paper: 1024, ModelScope/Zeroscope's
            OpenCLIP ViT-H/14).
        depth: number of linear layers (paper: 4; Table 4 compares 2 and 4).
        hidden_dims: the ``depth - 1`` widths between them; ``None`` for ``default_hidden_dims``.
        activation: non-linearity between the linear layers, one of ``ACTIVATIONS`` (paper: gelu).
        self_attention: add one pre-norm residual self-attention over the L frames after the MLP
            (course-project variant; paper: no).
        head_dim: channels per head of that attention; heads = out_dim // head_dim (see ``heads_for``).
    """

    def __init__(self, in_dim: int = 9216, out_dim: int = 1024, depth: int = 4,
                 hidden_dims: Sequence[int] | None = None, activation: str = "gelu",
                 self_attention: bool = False, head_dim: int = 64):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"mapper activation={activation!r}: expected one of {sorted(ACTIVATIONS)} (paper: gelu).")
        hidden = default_hidden_dims(in_dim, out_dim, depth) if hidden_dims is None else tuple(hidden_dims)
        if len(hidden) != depth - 1 or any(width < 1 for width in hidden):
            raise ConfigError(f"mapper hidden_dims={list(hidden)} for depth={depth}: expected depth - 1 = "
                              f"{depth - 1} positive widths, or null for the default ones.")
        widths = (in_dim, *hidden, out_dim)
        layers: list[nn.Module] = []
        for k, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            if k:
                layers.append(ACTIVATIONS[activation]())
            layers.append(nn.Linear(width_in, width_out))
        self.mlp = nn.Sequential(*layers)
        self.attention_norm = self.attention = None
        if self_attention:
            heads = heads_for(out_dim, head_dim)
            self.attention_norm = nn.LayerNorm(out_dim)
            self.attention = MultiHeadAttention(out_dim, heads, out_dim // heads)

    def forward(self, features: Tensor) -> Tensor:
        """Map each frame's audio features to a token.

        Args:
            features: (B, L, in_dim), e.g. from ``pool_to_frames``; axis 1 is time (video frames).

        Returns:
            (B, L, out_dim) TempoTokens. Without self-attention each frame's token depends on that
            frame's features alone.
        """
        tokens = self.mlp(features)
        if self.attention is None:
            return tokens
        # No position encoding: the residual keeps each frame its own token, attention adds context.
        return tokens + self.attention(self.attention_norm(tokens))
