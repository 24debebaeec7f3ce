"""Eq. 9 of the SVG baseline paper: local timesteps m(t), n(t) and the training draws."""

from __future__ import annotations

import math

import pytest
import torch

from avgen.modules.timestep_adjust import adjust_timesteps, sample_training_timesteps


def test_gamma_one_is_the_identity():
    t = torch.arange(0, 1000)
    m, n = adjust_timesteps(t, 1.0, total=1000)
    assert torch.equal(m, t) and torch.equal(n, t)


@pytest.mark.parametrize("gamma", [1.5, 2.0, 3.0])
def test_exact_values_on_hand_computed_cases(gamma):
    for t in (0, 1, 250, 500, 961, 999):
        m, n = adjust_timesteps(t, gamma, total=1000)
        assert int(m) == min(999, round(1000 * (t / 1000) ** math.sqrt(gamma)))
        assert int(n) == min(999, round(1000 * (t / 1000) ** (1 / math.sqrt(gamma))))
    # γ = 1.5 at t = 500: m = round(1000·0.5^1.2247) = 428, n = round(1000·0.5^0.8165) = 568
    if gamma == 1.5:
        m, n = adjust_timesteps(500, gamma, total=1000)
        assert (int(m), int(n)) == (428, 568)


@pytest.mark.parametrize("gamma", [1.0, 1.5, 2.0, 4.0])
def test_maps_are_monotone_and_video_runs_ahead(gamma):
    t = torch.arange(0, 1000)
    m, n = adjust_timesteps(t, gamma, total=1000)
    assert torch.all(m[1:] >= m[:-1]) and torch.all(n[1:] >= n[:-1])
    assert m[0] == 0 and n[0] == 0 and n[-1] == 999 and m[-1] == round(1000 * 0.999 ** gamma ** 0.5)
    assert torch.all(m <= n)  # γ ≥ 1: the video is always less noisy than the audio
    if gamma > 1:
        assert (m < n).float().mean() > 0.9


def test_relation_between_the_two_maps():
    """m(t)/T_v ≈ (n(t)/T_a)^γ (up to rounding), with different T_v and T_a."""
    t = torch.arange(100, 1000, 50)
    m, n = adjust_timesteps(t, 2.0, total=1000, video_total=1000, audio_total=500)
    assert torch.allclose(m.double() / 1000, (n.double() / 500) ** 2.0, atol=6e-3)


def test_bad_gamma_is_a_clear_error():
    with pytest.raises(ValueError, match="gamma"):
        adjust_timesteps(10, 0.0)


def test_training_draws():
    g = torch.Generator().manual_seed(0)
    t_v, t_a = sample_training_timesteps(4096, 1000, 1000, "independent", generator=g)
    assert t_v.min() >= 0 and t_v.max() <= 999 and not torch.equal(t_v, t_a)
    # independent: uncorrelated
    corr = torch.corrcoef(torch.stack([t_v.double(), t_a.double()]))[0, 1]
    assert abs(float(corr)) < 0.06
    t_v, t_a = sample_training_timesteps(16, 1000, 1000, "shared", generator=g)
    assert torch.equal(t_v, t_a)
    with pytest.raises(ValueError, match="model.timesteps.train"):
        sample_training_timesteps(2, 1000, 1000, "joint")


def test_high_noise_prob_draws_from_the_upper_half():
    g = torch.Generator().manual_seed(0)
    plain = sample_training_timesteps(64, 1000, 1000, "independent", generator=g)
    g = torch.Generator().manual_seed(0)
    same = sample_training_timesteps(64, 1000, 1000, "independent", generator=g, high_noise_prob=(0.0, 0.0))
    assert all(torch.equal(a, b) for a, b in zip(plain, same))  # p = 0: the paper's draw, the same stream
    g = torch.Generator().manual_seed(0)
    t_v, t_a = sample_training_timesteps(4000, 1000, 800, "independent", generator=g, high_noise_prob=(0.0, 1.0))
    assert t_a.min() >= 400 and t_a.max() <= 799 and t_v.min() < 400  # audio only, its own schedule's half
    g = torch.Generator().manual_seed(1)
    t_v, t_a = sample_training_timesteps(4000, 1000, 1000, "independent", generator=g, high_noise_prob=(0.5, 0.5))
    for t in (t_v, t_a):  # half of the draws from the upper half, half uniform: 3/4 land there
        assert abs(float((t >= 500).double().mean()) - 0.75) < 0.03
    t_v, t_a = sample_training_timesteps(16, 1000, 1000, "shared", generator=g, high_noise_prob=(1.0, 1.0))
    assert torch.equal(t_v, t_a) and t_v.min() >= 500
    with pytest.raises(ValueError, match=r"high_noise_prob: video 0.0 and audio 0.5 differ"):
        sample_training_timesteps(2, 1000, 1000, "shared", high_noise_prob=(0.0, 0.5))
    with pytest.raises(ValueError, match=r"model.timesteps.high_noise_prob.audio=1.5"):
        sample_training_timesteps(2, 1000, 1000, "independent", high_noise_prob=(0.0, 1.5))


def test_checking_the_training_timesteps_draws_nothing():
    """The joint system checks ``model.timesteps`` when it is built, before its weights are initialised: the check
    must not move torch's global random stream (a seeded run's initial weights would change)."""
    from avgen.modules.timestep_adjust import check_training_timesteps

    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert check_training_timesteps("independent", (0, 1)) == (0.0, 1.0)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match=r"high_noise_prob.video=True"):
        check_training_timesteps("independent", (True, 0.0))
    with pytest.raises(ValueError, match=r"model.timesteps.train='joint'"):
        check_training_timesteps("joint")
