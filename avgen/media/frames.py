"""Frame conversions between the two layouts avgen uses, in one place.

- decoded frames: ``uint8`` numpy ``(F, H, W, 3)``, channels last (what :mod:`avgen.media.decode` returns);
- model frames: ``float`` torch ``(..., F, 3, H, W)`` in [-1, 1], channels first (the batch contract).

``uint8 → [-1, 1]`` is ``x / 127.5 − 1``; ``[-1, 1] → uint8`` is ``round((x + 1) · 127.5)`` clamped to
[0, 255], so decoded bytes survive a round trip exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def quantize_unit_range(video: torch.Tensor) -> torch.Tensor:
    """Model frames float in [-1, 1] (any shape) → uint8 of the same shape, on the same device,
    ``round((x + 1) · 127.5)`` clamped to [0, 255] (what an encoder that takes uint8 pixels is given)."""
    import torch

    return ((video.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def unit_range_to_uint8(video: torch.Tensor) -> np.ndarray:
    """Model frames ``(..., F, 3, H, W)`` float in [-1, 1] (any leading batch axes) → ``(..., F, H, W, 3)``
    uint8 numpy, ``round((x + 1) · 127.5)`` clamped to [0, 255] (:func:`quantize_unit_range`)."""
    return quantize_unit_range(video.detach().cpu()).movedim(-3, -1).numpy()


def uint8_to_unit_range(frames: np.ndarray | torch.Tensor, device: Any = None) -> torch.Tensor:
    """Decoded frames ``(F, H, W, 3)`` uint8 → ``(F, 3, H, W)`` float32 in [-1, 1] on ``device`` (a feature
    extractor's uint8 quantisation ``x · 127.5 + 128`` gives the decoded bytes back exactly)."""
    import torch

    video = torch.as_tensor(np.ascontiguousarray(frames)).to(device)
    return video.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def frames_to_uint8(video: Any) -> np.ndarray:
    """Either layout of one clip → decoded frames ``(F, H, W, 3)`` uint8 numpy: ``(F, H, W, 3)`` uint8 is
    returned as is, ``(F, 3, H, W)`` float in [-1, 1] is converted (:func:`unit_range_to_uint8`).

    Raises:
        ValueError: any other shape or dtype.
    """
    import torch

    x = video.detach().cpu() if isinstance(video, torch.Tensor) else torch.as_tensor(np.asarray(video))
    if x.ndim == 4 and x.dtype == torch.uint8 and x.shape[-1] == 3:
        return x.numpy()
    if x.ndim == 4 and x.is_floating_point() and x.shape[1] == 3:
        return unit_range_to_uint8(x.clamp(-1, 1))
    raise ValueError(f"video must be (F, 3, H, W) float in [-1, 1] or (F, H, W, 3) uint8, got {x.dtype} "
                     f"{tuple(x.shape)}")
