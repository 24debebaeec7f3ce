"""Gradient saliency of a conditional model's input frames (Simonyan et al. 2014, "Deep Inside Convolutional
Networks", §3: the magnitude of the gradient of a score with respect to the input pixels, maximised over colour
channels), as VTA-LDM draws it (Xu et al. 2024, "Video-to-Audio Generation with Hidden Alignment", arXiv 2407.07464,
§4.2 Figs. 2, 3 and 6: "the saliency map of the input visual feature based on the generated audio content").

The paper gives no formula. avgen's protocol (``sample.saliency=true`` on VTA-LDM,
:meth:`avgen.systems.vta_ldm.VTALDM.saliency`): for each input the denoising loss of the *generated* latent z_0,
L_t = ‖model(√ᾱ_t z_0 + √(1 − ᾱ_t) ε, t, c(frames)) − target‖², at t ∈ {100, 300, 500}
(:data:`SALIENCY_TIMESTEPS`) with one fixed noise ε; the map of frame f is
S_f(y, x) = max_c mean_t |∂L_t / ∂frames[f, c, y, x]|, normalised per video by its largest value (so 1 is the most
salient pixel of the whole clip and maps of one clip compare across frames). Gradients reach the decoded frames
through the frozen encoder's own preprocessing
(:meth:`avgen.encoders.frames.FrozenVideoEncoder.differentiable`).

:func:`input_saliency` is the computation on any inputs and losses; :func:`saliency_grid` draws the maps over
their frames; :func:`write_saliency` writes the PNG and the raw maps.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avgen._lazy import lazy_module

cv2 = lazy_module("cv2", "saliency map images")

#: the diffusion timesteps whose loss gradients are averaged (VTA-LDM's Fig. 2 protocol, avgen's reading)
SALIENCY_TIMESTEPS: tuple[int, ...] = (100, 300, 500)


def input_saliency(inputs: Sequence[Tensor], losses: Sequence[Tensor]) -> list[Tensor]:
    """Per input, the mean over ``losses`` of |∂L/∂input|, maximised over the channel axis and normalised by the
    input's largest value.

    Args:
        inputs: N tensors (F_n, C, H_n, W_n) float that require grad, each a leaf the losses depend on (axis 0
            frames, axis 1 channels).
        losses: K scalar losses; each is differentiated separately (the graph is kept between them), so shared
            parts of the graph (a frozen encoder run once) are computed once. Inputs must not interact through
            the losses if maps are to be per input (a batch loss that is a sum over independent clips is).

    Returns:
        N maps (F_n, H_n, W_n) float32 in [0, 1] on the inputs' devices; an input no loss depends on gets zeros.

    Raises:
        ValueError: no inputs, no losses, or an input that does not require grad.
    """
    if not inputs or not losses:
        raise ValueError(f"input_saliency needs inputs and losses, got {len(inputs)} inputs and {len(losses)} losses")
    for index, x in enumerate(inputs):
        if not x.requires_grad or x.ndim != 4:
            raise ValueError(f"input {index}: expected a (F, C, H, W) tensor that requires grad, got "
                             f"{tuple(x.shape)} requires_grad={x.requires_grad}")
    totals = [torch.zeros_like(x, dtype=torch.float32) for x in inputs]
    for k, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, list(inputs), retain_graph=k < len(losses) - 1, allow_unused=True)
        for total, grad in zip(totals, grads):
            if grad is not None:
                total += grad.detach().float().abs()
    maps = []
    for total in totals:
        per_pixel = (total / len(losses)).amax(dim=1)  # (F, H, W): max over channels
        peak = per_pixel.max()
        maps.append(per_pixel / peak if peak > 0 else per_pixel)
    return maps


def saliency_grid(frames: np.ndarray | Tensor, saliency: np.ndarray | Tensor, *, columns: int = 8,
                  alpha: float = 0.5, gap: int = 2) -> np.ndarray:
    """The maps drawn over their frames: each frame blended with OpenCV's JET colour map of its map,
    ``(1 − alpha) · frame + alpha · jet(saliency)`` rounded to 8 bits, laid out in rows of ``columns`` frames in
    time order with ``gap`` white pixels between them.

    Args:
        frames: (F, H, W, 3) or (F, 3, H, W) uint8 RGB.
        saliency: (F, H, W) float in [0, 1] (values outside are clipped).
        columns: frames per row.
        alpha: weight of the heat map (0: the frames, 1: the heat map alone).
        gap: pixels between frames.

    Returns:
        (rows · H + (rows − 1) · gap, cols · W + (cols − 1) · gap, 3) uint8 RGB.

    Raises:
        ValueError: frames and maps of different counts or sizes, or ``alpha`` outside [0, 1].
    """
    frames = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    saliency = saliency.detach().cpu().float().numpy() if isinstance(saliency, Tensor) else np.asarray(saliency)
    if frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"saliency_grid expects frames (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if saliency.shape != frames.shape[:3]:
        raise ValueError(f"saliency maps {saliency.shape} do not match frames {frames.shape[:3]} (F, H, W)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: expected a weight in [0, 1]")
    count, height, width = saliency.shape
    levels = np.rint(np.clip(saliency, 0.0, 1.0) * 255).astype(np.uint8)
    heat = cv2.applyColorMap(levels.reshape(count * height, width), cv2.COLORMAP_JET)  # BGR
    heat = heat[..., ::-1].reshape(count, height, width, 3).astype(np.float32)
    blended = np.rint((1.0 - alpha) * frames.astype(np.float32) + alpha * heat).clip(0, 255).astype(np.uint8)
    cols = max(1, min(int(columns), count))
    rows = -(-count // cols)
    grid = np.full((rows * height + (rows - 1) * gap, cols * width + (cols - 1) * gap, 3), 255, np.uint8)
    for index, image in enumerate(blended):
        r, c = divmod(index, cols)
        grid[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = image
    return grid


def write_saliency(stem_path: str | os.PathLike, frames: np.ndarray | Tensor, saliency: np.ndarray | Tensor,
                   frame_times: Sequence[float], *, overwrite: bool = False) -> list[Path]:
    """``<stem>.saliency.png`` (:func:`saliency_grid`) and ``<stem>.saliency.npz`` (``saliency`` (F, H, W) float16
    in [0, 1], ``frame_times`` (F,) float64 seconds from the input's start), atomically.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is false (checked before writing either).
    """
    from avgen.media import write_bytes_atomic

    stem = Path(stem_path)
    png, npz = stem.with_name(stem.name + ".saliency.png"), stem.with_name(stem.name + ".saliency.npz")
    for path in (png, npz):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass sample.overwrite=true to replace it")
    image = saliency_grid(frames, saliency)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the saliency grid for {png}")
    maps = saliency.detach().cpu().float().numpy() if isinstance(saliency, Tensor) else np.asarray(saliency)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, saliency=maps.astype(np.float16), frame_times=np.asarray(frame_times, np.float64))
    return [write_bytes_atomic(png, encoded.tobytes(), overwrite=overwrite),
            write_bytes_atomic(npz, buffer.getvalue(), overwrite=overwrite)]


__all__ = ["SALIENCY_TIMESTEPS", "input_saliency", "saliency_grid", "write_saliency"]
