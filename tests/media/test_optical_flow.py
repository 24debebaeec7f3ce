"""Optical flow of VTA-LDM's flow condition: the Middlebury colour wheel on hand cases, per-clip normalisation,
Farneback and DIS on a known shift, the flow images' time axis, the ``model.flow`` settings."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from avgen.errors import ConfigError
from avgen.media.optical_flow import OpticalFlow, colour_wheel, flow_images, flow_to_rgb


def one_pixel(*vectors) -> np.ndarray:
    """Flow fields (N, 1, 1, 2) of one pixel each."""
    return np.array(vectors, dtype=np.float32).reshape(-1, 1, 1, 2)


def test_colour_wheel_is_middlebury():
    """55 hues, RY=15, YG=6, GC=4, CB=11, BM=13, MR=6: each segment starts at its pure colour and ramps one channel
    by floor(255 i / n)."""
    wheel = colour_wheel()
    assert wheel.shape == (55, 3)
    starts = {0: (255, 0, 0), 15: (255, 255, 0), 21: (0, 255, 0), 25: (0, 255, 255), 36: (0, 0, 255),
              49: (255, 0, 255)}
    for index, colour in starts.items():
        assert tuple(wheel[index]) == colour, index
    assert tuple(wheel[1]) == (255, 17, 0)  # RY: G = floor(255 · 1/15)
    assert tuple(wheel[54]) == (255, 0, 43)  # MR's last: B = 255 − floor(255 · 5/6)


def test_axis_directions_and_zero_flow():
    """Position (atan2(−dy, −dx)/π + 1)/2 · 54 on the wheel: +x → 0 (red); +y (down) → 13.5, halfway between
    (255, 221, 0) and (255, 238, 0); −x → 27 (CB i = 2: G = 255 − 46); −y → 40.5, between BM's R = 78 and 98;
    zero → white."""
    rgb = flow_to_rgb(one_pixel((1, 0), (0, 1), (-1, 0), (0, -1), (0, 0))).reshape(-1, 3)
    assert rgb.dtype == np.uint8
    assert rgb.tolist() == [[255, 0, 0], [255, 229, 0], [0, 209, 255], [88, 0, 255], [255, 255, 255]]


def test_saturation_is_magnitude_over_the_largest():
    """Half the largest magnitude: halfway to white (1 − 0.5 · (1 − 0) = 0.5 → floor(127.5) = 127); an explicit
    maximum overrides the flow's own; a maximum of zero is white."""
    rgb = flow_to_rgb(one_pixel((4, 0), (2, 0))).reshape(-1, 3)
    assert rgb.tolist() == [[255, 0, 0], [255, 127, 127]]
    assert flow_to_rgb(one_pixel((2, 0)), max_magnitude=4).reshape(3).tolist() == [255, 127, 127]
    assert flow_to_rgb(one_pixel((8, 0)), max_magnitude=4).reshape(3).tolist() == [255, 0, 0]  # capped at 1
    assert flow_to_rgb(np.zeros((2, 3, 3, 2))).min() == 255


def square_pair(shift: int = 3, size: int = 32) -> np.ndarray:
    """Two (size, size, 3) uint8 frames: a white square of half the size on black, moved ``shift`` px in +x."""
    frames = np.zeros((2, size, size, 3), np.uint8)
    lo, hi = size // 4, size // 4 + size // 2
    frames[0, lo:hi, lo:hi] = 255
    frames[1, lo:hi, lo + shift:hi + shift] = 255
    return frames


def test_farneback_measures_a_known_shift_and_renders_red():
    frames = square_pair()
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    (field,) = OpticalFlow().between(grey)
    assert field.shape == (32, 32, 2) and field.dtype == np.float32
    inside = field[10:22, 13:22].reshape(-1, 2).mean(0)  # the square at both times, away from its edges
    assert inside == pytest.approx([3.0, 0.0], abs=0.05)
    images = flow_images(frames)
    assert np.array_equal(images[1], flow_to_rgb(field[None])[0])
    red = images[1, 10:22, 13:22].reshape(-1, 3)
    # +x is the wheel's seam: entry 0 (255, 0, 0) for dy ≤ 0, entry 54 (255, 0, 43) for dy = +0
    assert (red[:, 0] == 255).all() and red[:, 1].max() <= 10 and red[:, 2].max() <= 43


def test_dis_measures_a_known_shift():
    """DIS (PRESET_MEDIUM) on a smooth texture moved 3 px in +x (it needs texture: a flat square's inside is
    ambiguous to it)."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur((rng.random((48, 64)) * 255).astype(np.float32), (0, 0), 2)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    (field,) = OpticalFlow(method="dis").between([texture[:, 3:38], texture[:, 0:35]])
    assert field[8:-8, 8:-8].reshape(-1, 2).mean(0) == pytest.approx([3.0, 0.0], abs=0.15)


def test_flow_images_share_the_frames_time_axis():
    """F frames → F images: image 0 white (zero flow into frame 0), image k the flow from frame k − 1 to k, all
    normalised by the clip's largest magnitude; one frame → one white image; a still clip → white."""
    pair = square_pair()
    frames = np.stack([pair[0], pair[0], pair[1]])  # still, then the shift
    images = flow_images(frames)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert images[0].min() == 255 and images[1].min() == 255  # zero flow: frame 0, and the still pair
    assert np.array_equal(images[2], flow_images(pair)[1])
    assert flow_images(frames[:1]).min() == 255 and flow_images(frames[:1]).shape == (1, 32, 32, 3)
    assert flow_images(np.repeat(pair[:1], 4, axis=0)).min() == 255


def test_the_clip_normalises_together():
    """Two moves of 1 and 3 px: the smaller one is rendered paler than alone (the clip's largest sets saturation)."""
    size = 32
    frames = np.zeros((3, size, size, 3), np.uint8)
    for k, x in enumerate((8, 9, 12)):
        frames[k, 8:24, x:x + 16] = 255
    together = flow_images(frames)
    alone = flow_images(frames[:2])
    inside = (slice(10, 22), slice(12, 22))
    assert together[1][inside].astype(int).sum() > alone[1][inside].astype(int).sum()


def test_flow_images_refuse_bad_frames():
    with pytest.raises(ValueError, match=r"flow_images expects frames \(F, H, W, 3\) uint8"):
        flow_images(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"flow_to_rgb expects flow fields \(\.\.\., H, W, 2\)"):
        flow_to_rgb(np.zeros((4, 4, 3)))


def test_settings_come_from_config():
    assert OpticalFlow.from_config(None) == OpticalFlow()
    assert OpticalFlow.from_config({"method": "dis"}).method == "dis"
    with pytest.raises(ConfigError, match=r"model\.flow\.method='raft': expected one of farneback, dis"):
        OpticalFlow.from_config({"method": "raft"})
    with pytest.raises(ConfigError, match=r"model\.flow\.window: not an optical-flow setting"):
        OpticalFlow.from_config({"window": 3})


def torchvision_flow_to_image(flow: torch.Tensor) -> torch.Tensor:
    """``torchvision.utils.flow_to_image`` (torchvision 0.19, BSD-3; torchvision is not installed here) on (N, 2, H, W)
    float32 flow → (N, 3, H, W) uint8, its colour wheel built from ours (checked entry by entry above)."""
    wheel = torch.from_numpy(colour_wheel())
    flow = flow / (torch.sum(flow**2, dim=1).sqrt().max() + torch.finfo(flow.dtype).eps)
    norm = torch.sum(flow**2, dim=1).sqrt()
    a = torch.atan2(-flow[:, 1], -flow[:, 0]) / torch.pi
    fk = (a + 1) / 2 * (len(wheel) - 1)
    k0 = torch.floor(fk).to(torch.long)
    k1 = k0 + 1
    k1[k1 == len(wheel)] = 0
    f = fk - k0
    image = torch.zeros((flow.shape[0], 3, *flow.shape[2:]), dtype=torch.uint8)
    for c in range(3):
        col = (1 - f) * wheel[k0, c] / 255.0 + f * wheel[k1, c] / 255.0
        image[:, c] = torch.floor(255 * (1 - norm * (1 - col)))
    return image


def test_rendering_equals_torchvision():
    """Equal up to float rounding before the floor: at most one grey level, on 0.3 % of the values here (torchvision
    normalises the flow before taking its norm; avgen divides the norm)."""
    flow = torch.randn(3, 2, 17, 19, generator=torch.Generator().manual_seed(0)) * 4
    expected = torchvision_flow_to_image(flow).permute(0, 2, 3, 1).numpy()
    ours = flow_to_rgb(flow.permute(0, 2, 3, 1).numpy())
    assert np.abs(ours.astype(int) - expected).max() <= 1 and (ours == expected).mean() > 0.99
