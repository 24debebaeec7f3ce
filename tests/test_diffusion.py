"""The DDIM step between arbitrary timesteps equals diffusers' DDIMScheduler on its own grid."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from avgen.diffusion import (
    add_noise,
    classifier_free_guidance,
    ddim_step,
    final_alpha_cumprod,
    split_prediction,
    training_target,
)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_step_matches_diffusers(prediction_type, set_alpha_to_one):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=set_alpha_to_one, steps_offset=1,
                          timestep_spacing="leading", prediction_type=prediction_type)
    sched.set_timesteps(10)
    grid = [int(t) for t in sched.timesteps]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 5, generator=g)
    ours = x.clone()
    for k, t in enumerate(grid):
        out = torch.randn(x.shape, generator=g)
        x = sched.step(out, t, x).prev_sample
        prev = grid[k + 1] if k + 1 < len(grid) else -1
        ours, _ = ddim_step(prediction_type, ours, out, sched.alphas_cumprod, t, prev, final_alpha_cumprod(sched))
    assert torch.allclose(ours, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_round_trip(prediction_type):
    alphas = torch.linspace(0.999, 0.01, 1000)
    x0, noise = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    t = torch.tensor([0, 400, 999])
    x_t = add_noise(x0, noise, alphas, t)
    target = training_target(prediction_type, x0, noise, alphas, t)
    rec_x0, rec_eps = split_prediction(prediction_type, x_t, target, alphas, t)
    assert torch.allclose(rec_x0, x0, atol=1e-4) and torch.allclose(rec_eps, noise, atol=1e-3)


def test_step_to_same_timestep_keeps_the_sample():
    alphas = torch.linspace(0.999, 0.01, 1000)
    x, eps = torch.randn(2, 3), torch.randn(2, 3)
    out, _ = ddim_step("epsilon", x, eps, alphas, 500, 500, 1.0)
    assert torch.allclose(out, x, atol=1e-6)


def test_guidance():
    u, c = torch.zeros(3), torch.ones(3)
    assert torch.equal(classifier_free_guidance(u, c, 1.0), c)
    assert torch.equal(classifier_free_guidance(u, c, 7.5), torch.full((3,), 7.5))


def test_seeded_noise_does_not_depend_on_the_batch():
    """Sample i's noise comes from seed + i, one shape after the other, whatever the batch it is in."""
    from avgen.diffusion import seeded_noise

    video, audio = seeded_noise([(2, 3), (4,)], 3, seed=7)
    assert video.shape == (3, 2, 3) and audio.shape == (3, 4) and video.dtype == torch.float32
    alone_v, alone_a = seeded_noise([(2, 3), (4,)], 1, seed=9)
    assert torch.equal(alone_v[0], video[2]) and torch.equal(alone_a[0], audio[2])
    generator = torch.Generator().manual_seed(8)
    assert torch.equal(video[1], torch.randn((2, 3), generator=generator))
    assert torch.equal(audio[1], torch.randn((4,), generator=generator))
