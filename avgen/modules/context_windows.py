"""Context windows of TempoTokens (Yariv et al., "Diverse and Aligned Audio-to-Video Generation via
Text-to-Video Model Adaptation", Sec. 3, Eqs. 2-3).

Frame i is conditioned on its own token and on means of the tokens in windows around it whose
lengths grow as powers of two, a local-to-global context sequence::

    c^(i) = (ã_{max(1, i-j), min(i+j, K)} | j = 2^k)_{k=0}^{log K}        (Eq. 2)
    ã_{l,r} = 1/(r-l) · Σ_{s=l}^{r} ã^(s)                                  (Eq. 3)

Reading of the equations (as printed they are not self-consistent; K stands for the clip length L):

* The windows are indexed by their length ``w = 2^k`` frames, k = 0, 1, ..., so k = 0 is the
  frame's own token and window k reaches j = w/2 frames to each side of frame i. Taken literally,
  Eq. 2's reach j = 2^k would give lengths 2, 4, 8, ... and never the frame alone, yet Sec. 6.3
  calls the 1-res setting "the local context window" and the public code conditions every frame on
  its own token plus slices [i-k, i+k), k = 1, 2, 4, 8: lengths 1, 2, 4, 8, 16, the five
  resolutions of the paper's model (5-res, the main results). See ``resolutions``.
* The window is symmetric about frame i, as ``max(1, i-j)``, ``min(i+j, K)`` are. Frames are unit
  intervals, frame i centred at i; the window is the interval [i - w/2, i + w/2], of length
  r - l = w, clipped to the clip. Eq. 3 is the mean of the tokens over that interval: its
  normaliser 1/(r-l) is the interval's length and its sum runs over every frame that touches it.
  A frame counts by the fraction of it inside the window, so an odd w averages w whole frames and
  an even w averages w - 1 whole frames plus half of each of the two next ones. (Summing r-l+1
  whole frames and dividing by r-l, the literal print, is no mean: it scales tokens up by
  (r-l+1)/(r-l), most at the clip's ends.)
* ``mode="left"`` is the public code's window instead: the half-open slice [i - ⌊w/2⌋, i - ⌊w/2⌋ + w)
  of whole frames, clipped. For even w it reaches one frame further into the past than into the
  future, so every context token lags the frame it conditions by half a frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from avgen.errors import ConfigError

WINDOW_MODES = ("centered", "left")
MAX_RESOLUTIONS = 5


def resolutions(num: int) -> tuple[int, ...]:
    """Window lengths of Table 3's settings: ``win. (num-res.)``, or ``vec.`` for ``num = 0``.

    ``num``-res keeps the ``num`` finest windows, lengths ``1, 2, ..., 2^(num-1)`` frames:
    1-res is the frame's own token alone, 5-res (the paper's model) is ``(1, 2, 4, 8, 16)``.
    ``vec.`` is ``()``: no per-frame windows, every frame gets one vector, the mean of all tokens,
    which the caller builds. The course project's moving averages "with varying window sizes
    (1, 2, 4, 8)", read as lengths, are ``resolutions(4)``.
    """
    if not 0 <= num <= MAX_RESOLUTIONS:
        raise ConfigError(f"resolutions={num}: Table 3 has the settings vec. (0) and 1- to {MAX_RESOLUTIONS}-res; "
                          f"set it to an integer in [0, {MAX_RESOLUTIONS}] or list the window lengths yourself.")
    return tuple(2**k for k in range(num))


def _bounds(length: int, sizes: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Window start and end of every (frame, size), in half-frames from the clip start: (L, K) each.

    Frame s covers [2s, 2s + 2) in these units, so every window edge of both modes is an integer.
    """
    centre = 2 * torch.arange(length, device=sizes.device)[:, None] + 1
    if mode == "centered":
        start, end = centre - sizes, centre + sizes
    else:
        start = centre - 1 - 2 * (sizes // 2)
        end = start + 2 * sizes
    return start.clamp(0, 2 * length), end.clamp(0, 2 * length)


def window_means(tokens: Tensor, sizes: Sequence[int], mode: str = "centered") -> Tensor:
    """Mean of the tokens in a window of each length around every frame (Eqs. 2-3).

    Computed from one cumulative sum at half-frame resolution, so the cost does not grow with the
    window lengths and no loop runs over frames.

    Args:
        tokens: (B, L, d) one token per video frame; axis 1 is time.
        sizes: K window lengths w in frames, e.g. ``resolutions(5)``.
        mode: ``"centered"``: the interval [i - w/2, i + w/2] around frame i (see the module
            docstring); ``"left"``: the public code's half-open slice [i - ⌊w/2⌋, i - ⌊w/2⌋ + w).
            Both clip the window to the clip [0, L) and average what is left, and both give the
            token itself for w = 1.

    Returns:
        (B, L, K, d): ``out[:, i, k]`` is the mean over the window of length ``sizes[k]`` around frame i.
    """
    if mode not in WINDOW_MODES:
        raise ConfigError(f"context window mode={mode!r}: expected one of {WINDOW_MODES} "
                          f"('centered' follows Eq. 2; 'left' is the public code's window).")
    if any(not isinstance(w, int) or w < 1 for w in sizes):
        raise ConfigError(f"context window sizes={list(sizes)}: expected positive integer lengths in frames, "
                          f"e.g. {list(resolutions(MAX_RESOLUTIONS))}.")
    if tokens.ndim != 3:
        raise ValueError(f"window_means expects tokens (B, L, d), got {tuple(tokens.shape)}.")
    b, length, d = tokens.shape
    # A difference of two large prefix sums loses the low bits in half precision.
    work = tokens.to(torch.promote_types(tokens.dtype, torch.float32))
    prefix = torch.cat([work.new_zeros(b, 1, d), work.cumsum(dim=1)], dim=1)
    # Integral of the piecewise-constant token sequence at every half frame: (B, 2L + 1, d).
    half = torch.stack([prefix[:, :-1], 0.5 * (prefix[:, :-1] + prefix[:, 1:])], dim=2).flatten(1, 2)
    integral = torch.cat([half, prefix[:, -1:]], dim=1)
    start, end = _bounds(length, torch.tensor(list(sizes), dtype=torch.long, device=tokens.device), mode)
    means = (integral[:, end] - integral[:, start]) / (0.5 * (end - start)).to(work.dtype)[..., None]
    return means.to(tokens.dtype)
