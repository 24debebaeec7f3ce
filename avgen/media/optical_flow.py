"""Dense optical flow of a clip and its rendering as RGB images: the input of VTA-LDM's optical-flow condition
(Xu et al. 2024, arXiv 2407.07464, Table 3 "Vision+Optical Flow" and appendix D item 3: "optical flow video
embeddings ... concatenated with the original video embeddings").

The paper says neither how the flow is computed nor how it is made into images a video encoder can embed; avgen's
choice (``model.flow``):

1. Flow between consecutive frames of the clip the encoder sees (uint8 RGB at the encoder's rate), on grey frames
   (``cv2.COLOR_RGB2GRAY``), with OpenCV: ``farneback`` (``cv2.calcOpticalFlowFarneback``, Farnebäck 2003) with the
   parameters of OpenCV's optical-flow tutorial (pyr_scale 0.5, levels 3, winsize 15, iterations 3, poly_n 5,
   poly_sigma 1.2, flags 0; the same as AV-Align's, :mod:`avgen.metrics.av_align`), or ``dis`` (DIS, Kroeger et al.
   2016, ``cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)``). Learned flow (RAFT) is left out: it needs
   torchvision and downloaded weights, neither of which avgen has.
2. Each flow field rendered with the Middlebury colour coding (Baker et al. 2011, "A Database and Evaluation
   Methodology for Optical Flow", IJCV 92; their ``flowToColor`` code, as ``torchvision.utils.flow_to_image``):
   hue = direction on a colour wheel of 55 hues (:func:`colour_wheel`), saturation = magnitude divided by the
   largest magnitude of the clip (all its flow fields together, so motion stays comparable across the clip's
   frames); zero flow is white, and a still clip is all white.
3. F frames give F − 1 flow fields; image 0 is the zero-flow (white) image, so image k (k ≥ 1) shows the motion from
   frame k − 1 into frame k and the images share the frames' time axis (axis 0). A clip of one frame gives one white
   image.

Flow vectors are (dx, dy) in pixels per frame of the clip, x to the right, y down (image coordinates).

Cost, measured on 2 cores of an AMD EPYC for a 10-s clip at 2 fps and 224 × 224 (20 frames): :func:`flow_images`
0.29 s with ``farneback`` (0.21 s of it the flow), 0.19 s with ``dis``. VTA-LDM computes it in the training step, on
the CPU, for every clip of the batch (about 2.3 s per step of 8 clips with Farneback), then runs the frame encoder a
second time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from avgen.errors import ConfigError

FLOW_METHODS = ("farneback", "dis")
# the Middlebury colour wheel: hues per segment red→yellow→green→cyan→blue→magenta→red (Baker et al. 2011)
WHEEL_SEGMENTS = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))


@dataclass(frozen=True)
class OpticalFlow:
    """``model.flow``: how the flow between consecutive frames is computed (module docstring).

    ``method``: ``farneback`` (``cv2.calcOpticalFlowFarneback`` with the fields below, in its argument order; OpenCV
    tutorial values) or ``dis`` (``cv2.DISOpticalFlow_create`` with ``PRESET_MEDIUM``; the Farneback fields unused).
    """

    method: str = "farneback"
    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    flags: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, key: str = "model.flow") -> "OpticalFlow":
        """Checked settings (``None`` or ``{}``: the defaults).

        Raises:
            ConfigError: an unknown key or method; the message names ``key``.
        """
        cfg = dict(cfg or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: not an optical-flow setting; expected one of {', '.join(known)}")
        out = cls(**cfg)
        if out.method not in FLOW_METHODS:
            raise ConfigError(f"{key}.method={out.method!r}: expected one of {', '.join(FLOW_METHODS)}")
        return out

    def between(self, grey: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """The flow from each grey frame (H, W) uint8 to the next: F − 1 fields (H, W, 2) float32 (dx, dy) in
        pixels per frame, in time order."""
        import cv2

        grey = [np.ascontiguousarray(g) for g in grey]  # DIS refuses views
        if self.method == "dis":
            dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            for prev, nxt in zip(grey[:-1], grey[1:]):
                yield dis.calc(prev, nxt, None)
            return
        params = (self.pyr_scale, self.levels, self.winsize, self.iterations, self.poly_n, self.poly_sigma,
                  self.flags)
        for prev, nxt in zip(grey[:-1], grey[1:]):
            yield cv2.calcOpticalFlowFarneback(prev, nxt, None, *params)


def colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel (55, 3) float32 RGB in 0…255 (Baker et al. 2011; ``flowToColor``'s
    ``makecolorwheel``): entry 0 is red, then ``WHEEL_SEGMENTS`` in order, each ramping one channel by
    floor(255 · i / n)."""
    wheel = np.zeros((sum(n for _, n in WHEEL_SEGMENTS), 3), dtype=np.float32)
    start = 0
    # (channel held at 255, channel ramping, direction of the ramp) per segment
    ramps = {"RY": (0, 1, 1), "YG": (1, 0, -1), "GC": (1, 2, 1), "CB": (2, 1, -1), "BM": (2, 0, 1), "MR": (0, 2, -1)}
    for name, n in WHEEL_SEGMENTS:
        full, ramp, direction = ramps[name]
        steps = np.floor(255 * np.arange(n) / n)
        wheel[start:start + n, full] = 255
        wheel[start:start + n, ramp] = steps if direction > 0 else 255 - steps
        start += n
    return wheel


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Flow fields (..., H, W, 2) (dx, dy) → images (..., H, W, 3) uint8 RGB in the Middlebury colour coding.

    The direction picks the hue: angle atan2(−dy, −dx) / π ∈ [−1, 1] maps linearly onto wheel positions
    0…54, interpolated between neighbouring entries (+x is entry 0, red; +y, down, is yellow; −x cyan-blue;
    −y violet). The magnitude divided by ``max_magnitude`` (default: the largest in ``flow``) is the
    saturation s (at most 1): each channel is 1 − s · (1 − wheel), so zero flow is white. A ``max_magnitude`` of 0
    gives white. Values are floor(255 · channel), as ``torchvision.utils.flow_to_image``. Magnitudes are in the
    flow's units (pixels per frame).
    """
    flow = np.asarray(flow, dtype=np.float32)  # float32 throughout, as torchvision
    if flow.ndim < 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow_to_rgb expects flow fields (..., H, W, 2), got shape {flow.shape}")
    dx, dy = flow[..., 0], flow[..., 1]
    magnitude = np.sqrt(dx * dx + dy * dy)
    scale = float(magnitude.max(initial=0.0)) if max_magnitude is None else float(max_magnitude)
    wheel = colour_wheel() / 255
    saturation = magnitude / np.float32(scale + np.finfo(np.float32).eps)  # torchvision's ε: 0 / ε = 0 for a still clip
    np.minimum(saturation, 1, out=saturation)  # beyond a given max_magnitude: fully saturated
    position = (np.arctan2(-dy, -dx) / np.float32(np.pi) + 1) / 2 * (len(wheel) - 1)
    floor = np.floor(position)
    frac = position - floor  # float32, as torch's float32 − int64
    k0 = floor.astype(np.intp)
    k1 = (k0 + 1) % len(wheel)
    rgb = np.empty((*flow.shape[:-1], 3), dtype=np.uint8)
    for c in range(3):  # channel by channel, torchvision's arithmetic (and faster than one (..., 3) pass)
        hue = (1 - frac) * wheel[k0, c] + frac * wheel[k1, c]
        rgb[..., c] = np.floor(255 * (1 - saturation * (1 - hue)))
    return rgb


def flow_images(frames: np.ndarray, flow: OpticalFlow = OpticalFlow()) -> np.ndarray:
    """The flow images of one clip on its own time axis (module docstring).

    Args:
        frames: (F, H, W, 3) uint8 RGB, axis 0 time, F ≥ 1.
        flow: how the flow is computed.

    Returns:
        (F, H, W, 3) uint8 RGB: image 0 white, image k the flow from frame k − 1 to k rendered by
        :func:`flow_to_rgb` with the clip's largest magnitude as full saturation.

    Raises:
        ValueError: frames not (F, H, W, 3) uint8 with F ≥ 1.
    """
    import cv2

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"flow_images expects frames (F, H, W, 3) uint8 RGB with F >= 1, got {frames.dtype} "
                         f"{frames.shape}")
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    flows = np.zeros((len(frames), *frames.shape[1:3], 2), dtype=np.float32)  # flows[0]: zero flow into frame 0
    for k, field in enumerate(flow.between(grey), start=1):
        flows[k] = field
    return flow_to_rgb(flows)
