"""Saliency maps of VTA-LDM's input frames (§4.2, Figs. 2, 3, 6): the gradient computation on hand cases, the
differentiable path through every conditioning encoder, a planted visual event, the heat-map grid and the files
``sample.saliency=true`` writes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from avgen.errors import ConfigError
from avgen.media import write_mp4
from avgen.systems.saliency import SALIENCY_TIMESTEPS, input_saliency, saliency_grid, write_saliency
from tests.conftest import compose


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("vta_saliency")


def build(root, *overrides: str):
    return instantiate(compose(["experiment=vta_ldm", "scale=tiny", *overrides], root).model)


@pytest.fixture(scope="module")
def system(tiny_root):
    torch.manual_seed(0)
    return build(tiny_root).eval()


# ------------------------------------------------------------------------------ the computation
def test_input_saliency_is_the_mean_gradient_magnitude_max_over_channels_normalised():
    x = torch.zeros(2, 3, 1, 2, requires_grad=True)  # (F, C, H, W)
    y = torch.zeros(1, 3, 1, 1, requires_grad=True)
    w1 = torch.arange(12.0).view(2, 3, 1, 2) - 6  # |w1| ≤ 6
    w2 = torch.ones(2, 3, 1, 2) * 2
    losses = [(w1 * x).sum() + 3 * y.sum(), (w2 * x).sum() - y.sum()]
    maps = input_saliency([x, y], losses)
    expected = ((w1.abs() + w2.abs()) / 2).amax(dim=1)  # (F, H, W)
    assert torch.allclose(maps[0], expected / expected.max())
    assert maps[0].max() == 1 and maps[0].shape == (2, 1, 2)
    assert torch.equal(maps[1], torch.ones(1, 1, 1))  # (|3| + |−1|) / 2 = 2, normalised to 1


def test_an_input_no_loss_reads_has_a_zero_map_and_bad_inputs_are_refused():
    x, unused = torch.ones(1, 3, 2, 2, requires_grad=True), torch.ones(1, 3, 2, 2, requires_grad=True)
    maps = input_saliency([x, unused], [(x ** 2).sum()])
    assert torch.equal(maps[0], torch.ones(1, 2, 2)) and torch.equal(maps[1], torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="requires grad"):
        input_saliency([torch.ones(1, 3, 2, 2)], [torch.ones(())])
    with pytest.raises(ValueError, match="needs inputs and losses"):
        input_saliency([x], [])


def test_the_grid_blends_the_jet_map_over_each_frame_in_rows():
    frames = np.full((10, 4, 6, 3), 100, np.uint8)
    frames[3] = 0
    maps = np.zeros((10, 4, 6), np.float32)
    maps[3, 1, 2] = 1.0
    grid = saliency_grid(frames, maps, columns=8, alpha=0.5, gap=2)
    assert grid.shape == (2 * 4 + 2, 8 * 6 + 7 * 2, 3) and grid.dtype == np.uint8
    jet = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_JET)[0, :, ::-1].astype(np.float32)
    assert grid[0, 0].tolist() == np.rint(0.5 * 100 + 0.5 * jet[0]).astype(int).tolist()
    left = 3 * (6 + 2)  # frame 3 is in the first row, fourth column
    assert grid[1, left + 2].tolist() == np.rint(0.5 * jet[1]).astype(int).tolist()
    assert (grid[:4, 6:8] == 255).all() and (grid[4:6] == 255).all()  # the gaps
    assert (grid[6:, 2 * (6 + 2):] == 255).all()  # the second row holds two frames
    assert np.array_equal(saliency_grid(frames.transpose(0, 3, 1, 2), maps), saliency_grid(frames, maps))
    with pytest.raises(ValueError, match="do not match"):
        saliency_grid(frames, maps[:, :2])


def test_write_saliency_refuses_to_overwrite(tmp_path):
    frames, maps = np.zeros((2, 4, 4, 3), np.uint8), np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    png, npz = write_saliency(tmp_path / "clip", frames, maps, [0.0, 0.5])
    assert (png.name, npz.name) == ("clip.saliency.png", "clip.saliency.npz")
    assert cv2.imread(str(png)).shape == saliency_grid(frames, maps).shape
    with np.load(npz) as saved:
        assert np.allclose(saved["saliency"], maps, atol=1e-3) and saved["frame_times"].tolist() == [0.0, 0.5]
    with pytest.raises(FileExistsError, match="sample.overwrite=true"):
        write_saliency(tmp_path / "clip", frames, maps, [0.0, 0.5])
    write_saliency(tmp_path / "clip", frames, maps, [0.0, 0.5], overwrite=True)


# ------------------------------------------------------------------------------ through the encoders
@pytest.mark.parametrize("name", sorted(__import__("avgen.encoders.video_tokens", fromlist=["x"]).VIDEO_ENCODERS))
def test_the_differentiable_path_gives_the_tokens_of_the_uint8_path(tiny_root, name):
    """Float frames holding the uint8 values give the same tokens (up to the CPU resize kernel's rounding) and a
    gradient that reaches the frames."""
    encoder = build(tiny_root, f"model.encoder.name={name}").encoder
    generator = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, 3, 3, 40, 52), generator=generator, dtype=torch.uint8)
    reference = encoder(frames)
    clips = [clip.float().requires_grad_() for clip in frames]
    tokens = encoder.differentiable(clips)
    assert torch.equal(tokens.mask, reference.mask)
    scale = reference.embeds.abs().max()
    assert (tokens.embeds - reference.embeds).abs().max() <= 0.05 * scale, name
    tokens.embeds.sum().backward()
    assert all(clip.grad is not None and clip.grad.abs().sum() > 0 for clip in clips)
    with pytest.raises(ValueError, match="float32"):
        encoder.differentiable([frames[0]])


def test_saliency_is_on_the_frames_of_a_planted_event(system, monkeypatch):
    """A denoiser that responds to visual change (its output scales with Σ_k ‖c_k − c_{k−1}‖² over the context
    slots): a still clip with one flash frame gets its saliency on the flash and its neighbours only (one token
    per frame), none on the frames far from it."""
    still = torch.randint(0, 256, (3, system.clip.height, system.clip.width), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(2))
    frames = still.expand(system.clip.num_frames, -1, -1, -1).clone()
    event = 2
    frames[event] = 255 - still
    latents = torch.randn(1, *system.latent_shape, generator=torch.Generator().manual_seed(3))

    def change(x, t, context, mask):
        energy = (context[:, 1:] - context[:, :-1]).pow(2).sum(dim=(1, 2))
        return x * energy[:, None, None, None]

    monkeypatch.setattr(system, "denoise", change)
    (maps,) = system.saliency([frames], latents)
    per_frame = maps.amax(dim=(1, 2))
    assert maps.shape == (len(frames), system.clip.height, system.clip.width)
    assert per_frame.max() == 1.0 and per_frame[event] > 0
    near = {event - 1, event, event + 1}
    assert all(per_frame[f] == 0 for f in range(len(frames)) if f not in near)


def test_saliency_is_deterministic_and_needs_the_video_condition(system, tiny_root):
    frames = torch.randint(0, 256, (system.clip.num_frames, 3, system.clip.height, system.clip.width),
                           dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    latents = torch.randn(1, *system.latent_shape, generator=torch.Generator().manual_seed(5))
    first, second = system.saliency([frames], latents)[0], system.saliency([frames], latents)[0]
    assert torch.equal(first, second) and 0 <= first.min() and first.max() == 1
    assert not torch.equal(first, system.saliency([frames], latents, seed=1)[0])  # the fixed noise is seeded
    with pytest.raises(ConfigError, match="outside"):
        system.saliency([frames], latents, timesteps=[100, 5000])
    text_only = build(tiny_root, "model.conditions=[text]")
    with pytest.raises(ConfigError, match="no video condition"):
        text_only.saliency([frames], latents)
    with pytest.raises(ConfigError, match="sample.saliency=true"):
        text_only.sample_to_files(tiny_root / "never", saliency=True)
    assert SALIENCY_TIMESTEPS == (100, 300, 500)


def test_sample_writes_saliency_maps_over_every_window(system, tmp_path):
    frames = np.zeros((12, 32, 48, 3), np.uint8)
    for i in range(12):
        frames[i, 8:24, (i * 3) % 40:(i * 3) % 40 + 8] = 255
    write_mp4(tmp_path / "in.mp4", frames, 8)  # 1.5 s: two 1-s windows
    out = tmp_path / "out"
    report = system.sample_to_files(out, video=str(tmp_path / "in.mp4"), steps=1, sampler="ddim", device="cpu",
                                    saliency=True)
    assert [p.name for p in report.written] == ["in.mp4"] and not report.failed
    windows = json.loads((out / "in.json").read_text())["windows_s"]
    with np.load(out / "in.saliency.npz") as saved:
        maps, times = saved["saliency"].astype(np.float32), saved["frame_times"]
    per_window = system.clip.num_frames
    assert len(windows) == 2
    assert maps.shape == (len(windows) * per_window, system.clip.height, system.clip.width)
    assert times[:per_window].tolist() == [k / float(system.clip.fps) for k in range(per_window)]
    assert times[per_window] == windows[1][0]
    assert maps.min() >= 0 and maps.max() == 1.0
    image = cv2.imread(str(out / "in.saliency.png"))
    assert image.shape[1] == 8 * system.clip.width + 7 * 2
    for suffix in (".mp4", ".wav", ".txt", ".json"):
        (out / f"in{suffix}").unlink()
    with pytest.raises(FileExistsError, match="saliency.png"):  # the maps are outputs too
        system.sample_to_files(out, video=str(tmp_path / "in.mp4"), steps=1, sampler="ddim", device="cpu",
                               saliency=True)
    with pytest.raises(ConfigError, match="sample.saliency"):
        system.sample_to_files(out, video=str(tmp_path / "in.mp4"), saliency="yes")
