"""avgen.diffusion: the DDIM step between arbitrary timesteps equals diffusers' DDIMScheduler on its own grid;
Min-SNR and v weights; noising in float32."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from avgen.diffusion import (
    add_noise,
    classifier_free_guidance,
    ddim_step,
    final_alpha_cumprod,
    min_snr_weights,
    mixed_noise,
    sample_latents,
    seeded_noise,
    shared_frame_noise,
    split_prediction,
    training_target,
    v_loss_weights,
)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_step_matches_diffusers(prediction_type, set_alpha_to_one, eta):
    """Deterministic (η = 0) and stochastic (η > 0, Song et al. 2021 Eq. 16) steps along a whole ``leading`` grid:
    the trajectory of ``DDIMScheduler.step(eta=..., variance_noise=z)`` with the same z."""
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=set_alpha_to_one, steps_offset=1,
                          timestep_spacing="leading", prediction_type=prediction_type)
    sched.set_timesteps(10)
    grid = [int(t) for t in sched.timesteps]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 5, generator=g)
    ours = x.clone()
    for k, t in enumerate(grid):
        out, z = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
        x = sched.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        prev = grid[k + 1] if k + 1 < len(grid) else -1
        ours, _ = ddim_step(prediction_type, ours, out, sched.alphas_cumprod, t, prev, final_alpha_cumprod(sched),
                            eta, z)
    assert torch.allclose(ours, x, rtol=1e-5, atol=1e-5)


def test_stochastic_ddim_step_keeps_the_forward_marginal_and_checks_its_inputs():
    """With the true noise as prediction, x_prev = sqrt(ᾱ_prev) x0 + sqrt(1 − ᾱ_prev − σ²) ε + σ z has exactly the
    forward process's marginal at t_prev for every η: its deviation from sqrt(ᾱ_prev) x0 has variance 1 − ᾱ_prev.
    η = 0 ignores z; η outside [0, 1] and a missing z are refused."""
    alphas = torch.linspace(0.9991, 0.005, 1000)
    g = torch.Generator().manual_seed(0)
    x0, eps, z = (torch.randn(200_000, generator=g) for _ in range(3))
    t, prev = 800, 600
    x_t = add_noise(x0, eps, alphas, torch.full((1,), t))
    for eta in (0.0, 0.5, 1.0):
        x_prev, _ = ddim_step("epsilon", x_t, eps, alphas, t, prev, 1.0, eta, z)
        deviation = x_prev - alphas[prev].sqrt() * x0
        assert abs(deviation.var().item() - (1 - alphas[prev]).item()) < 0.01, eta
    deterministic, _ = ddim_step("epsilon", x_t, eps, alphas, t, prev, 1.0)
    assert torch.equal(ddim_step("epsilon", x_t, eps, alphas, t, prev, 1.0, 0.0, z)[0], deterministic)
    stochastic, _ = ddim_step("epsilon", x_t, eps, alphas, t, prev, 1.0, 1.0, z)
    sigma = ((1 - alphas[prev]) / (1 - alphas[t]) * (1 - alphas[t] / alphas[prev])).sqrt()
    expected = alphas[prev].sqrt() * x0 + (1 - alphas[prev] - sigma ** 2).sqrt() * eps + sigma * z
    assert torch.allclose(stochastic, expected, atol=1e-4) and not torch.allclose(stochastic, deterministic)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        ddim_step("epsilon", x_t, eps, alphas, t, prev, 1.0, 1.5, z)
    with pytest.raises(ValueError, match=r"needs noise of the latents' shape \(200000,\), got None"):
        ddim_step("epsilon", x_t, eps, alphas, t, prev, 1.0, 1.0)


def test_stochastic_ddim_step_at_zero_terminal_snr_repeating_a_timestep_is_finite():
    """Eq. 9's rounding can map two grid points to the same local timestep; at ᾱ_999 = 0 (zero terminal SNR,
    v-prediction) σ = η·sqrt((1 − ᾱ_prev)/(1 − ᾱ_t))·sqrt(1 − ᾱ_t/ᾱ_prev) is 0/0 there: the step must be finite,
    σ = 0, i.e. the deterministic step."""
    alphas = torch.linspace(0.999, 0.0, 1000)
    g = torch.Generator().manual_seed(0)
    x_t, out, z = (torch.randn(2, 3, generator=g) for _ in range(3))
    stochastic, _ = ddim_step("v_prediction", x_t, out, alphas, 999, 999, 1.0, 1.0, z)
    deterministic, _ = ddim_step("v_prediction", x_t, out, alphas, 999, 999, 1.0)
    assert torch.isfinite(stochastic).all() and torch.allclose(stochastic, deterministic)


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


def test_min_snr_weights_on_hand_cases():
    """Hang et al. 2023 Sec. 3.4: min(SNR, γ)/SNR on ε, /(SNR + 1) on v, min(SNR, γ) on x0; VTA-LDM's public code
    applies the ε form to its v target."""
    alphas = torch.tensor([0.5, 0.9, 0.99])  # SNR = 1, 9, 99
    t = torch.arange(3)
    for form in ("target", "epsilon"):
        assert torch.allclose(min_snr_weights(alphas, t, "epsilon", 5, form), torch.tensor([1.0, 5 / 9, 5 / 99]))
    assert torch.allclose(min_snr_weights(alphas, t, "v_prediction", 5), torch.tensor([0.5, 0.5, 0.05]))
    assert torch.allclose(min_snr_weights(alphas, t, "v_prediction", 5, "epsilon"), torch.tensor([1.0, 5 / 9, 5 / 99]))
    assert torch.allclose(min_snr_weights(alphas, t, "sample", 5), torch.tensor([1.0, 5.0, 5.0]))
    assert torch.equal(min_snr_weights(alphas, t, "v_prediction", None), torch.ones(3))
    with pytest.raises(ValueError, match="min_snr_gamma=0"):
        min_snr_weights(alphas, t, "epsilon", 0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_noising_is_float32_whatever_the_latents_dtype(prediction_type):
    """Latents encoded under bf16 autocast: ᾱ_0 = 0.99915 would round to 1 in bf16 and x_t would carry no noise."""
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1])
    x0_bf16 = x0.bfloat16()
    noisy = add_noise(x0_bf16, noise, alphas, t)
    assert noisy.dtype == torch.float32
    a = alphas[t].reshape(2, 1, 1, 1)
    assert torch.allclose(noisy, a.sqrt() * x0_bf16.float() + (1 - a).sqrt() * noise, atol=1e-6)
    assert (noisy - x0_bf16.float()).abs().max() > 0.02  # the noise of t = 0, 1 is there
    target = training_target(prediction_type, x0_bf16, noise, alphas, t)
    assert target.dtype == torch.float32


def test_posterior_samples_are_drawn_per_chunk_as_diffusers_draws_them():
    """z = (mean + std · ε) · s with ε drawn per chunk of rows, as diffusers' DiagonalGaussianDistribution.sample
    draws once per VAE call: the latents of a cached posterior are the encoder's for the same generator."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    g = torch.Generator().manual_seed(0)
    params = torch.randn(20, 2, 5, generator=g)  # (N, 2·C, ...): mean and logvar, 5 values each per row
    dists = [DiagonalGaussianDistribution(part) for part in params.split(8)]
    g = torch.Generator().manual_seed(5)
    expected = torch.cat([d.sample(g) for d in dists]) * 0.18215
    mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
    assert torch.equal(sample_latents(mean, std, torch.Generator().manual_seed(5), 0.18215, chunk=8), expected)
    # one draw for the 20 rows is another sample (8 rows = 40 values per draw: not whole blocks of the sampler)
    assert not torch.equal(sample_latents(mean, std, torch.Generator().manual_seed(5), 0.18215), expected)
    whole = DiagonalGaussianDistribution(params).sample(torch.Generator().manual_seed(5))
    assert torch.equal(sample_latents(mean, std, torch.Generator().manual_seed(5)), whole)
    with pytest.raises(ValueError, match="differ in shape"):
        sample_latents(mean, std[:3])


def test_v_loss_weights_on_hand_cases():
    """ᾱ = (0.9, 0.5, 0.1, 0.01): for ε the v/ε ratio 1/ᾱ = (10/9, 2, 10, 100), capped at 20, over its mean 299/36."""
    alphas = torch.tensor([0.9, 0.5, 0.1, 0.01])
    t = torch.tensor([0, 1, 2, 3, 3])
    mean = (10 / 9 + 2 + 10 + 20) / 4
    expected = torch.tensor([10 / 9, 2, 10, 20, 20]) / mean
    assert torch.allclose(v_loss_weights(alphas, t, "epsilon", 20), expected)
    # x0 target: 1/(1 − ᾱ) = (10, 2, 10/9, 100/99), under the cap
    sample = torch.tensor([10, 2, 10 / 9, 100 / 99])
    assert torch.allclose(v_loss_weights(alphas, t[:4], "sample", 20), sample / sample.mean())
    assert torch.equal(v_loss_weights(alphas, t, "v_prediction", 20), torch.ones(5))  # v is already v
    # a cap of 1 is the plain MSE; every cap gives mean 1 over the schedule
    assert torch.equal(v_loss_weights(alphas, t, "epsilon", 1), torch.ones(5))
    for cap in (1.5, 20, 1e6):
        assert float(v_loss_weights(alphas, torch.arange(4), "epsilon", cap).mean()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="max_weight=0.5"):
        v_loss_weights(alphas, t, "epsilon", 0.5)
    with pytest.raises(ValueError, match="unknown prediction_type 'x'"):
        v_loss_weights(alphas, t, "x", 20)


def test_v_weighting_makes_the_epsilon_error_the_v_error():
    """For any ε̂, the weighted ε MSE is the MSE of the v that ε̂ implies (uncapped, up to the normalising mean)."""
    g = torch.Generator().manual_seed(0)
    alphas = torch.linspace(0.999, 0.05, 50)
    t = torch.tensor([3, 20, 49])
    x0, noise, eps_hat = (torch.randn(3, 4, 5, generator=g) for _ in range(3))
    x_t = add_noise(x0, noise, alphas, t)
    v = training_target("v_prediction", x0, noise, alphas, t)
    x0_hat, _ = split_prediction("epsilon", x_t, eps_hat, alphas, t)
    a = alphas[t].reshape(3, 1, 1)
    v_hat = a.sqrt() * eps_hat - (1 - a).sqrt() * x0_hat
    mean = (1 / alphas.double()).mean().float()
    weighted = v_loss_weights(alphas, t, "epsilon", 1e9) * (eps_hat - noise).pow(2).flatten(1).mean(1)
    assert torch.allclose(weighted * mean, (v_hat - v).pow(2).flatten(1).mean(1), rtol=1e-4)


def test_mixed_noise_keeps_each_frame_standard_normal_and_correlates_frames_by_r():
    """PYoCo's mixed noise prior (Ge et al. 2023, Eq. 4): r = 0 is the noise itself (no draw); with r = 0.6 each
    frame is still N(0, 1) and two frames of a clip correlate by 0.6, two clips not at all; exact on a given shared
    part; r = 1, non-video noise and a shared part of another shape are refused."""
    noise = torch.randn((64, 4, 8, 16, 16), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    assert mixed_noise(noise, 0.0, generator) is noise and torch.equal(generator.get_state(), state)
    mixed = mixed_noise(noise, 0.6, generator)
    assert mixed.shape == noise.shape and mixed.dtype == noise.dtype
    assert mixed.std().item() == pytest.approx(1.0, abs=0.01) and mixed.mean().item() == pytest.approx(0.0, abs=0.01)
    frames = mixed.transpose(1, 2).flatten(2)  # (clips, F, C·h·w)
    between_frames = torch.corrcoef(torch.stack([frames[:, 0].flatten(), frames[:, 5].flatten()]))[0, 1]
    between_clips = torch.corrcoef(torch.stack([frames[0].flatten(), frames[1].flatten()]))[0, 1]
    assert between_frames.item() == pytest.approx(0.6, abs=0.02) and abs(between_clips.item()) < 0.03
    # frame differences keep only the independent part: var 2 (1 - r)
    assert mixed.diff(dim=2).var().item() == pytest.approx(2 * 0.4, rel=0.02)
    shared = torch.full((1, 1, 1, 1, 1), 2.0)
    one = torch.tensor([1.0, -1.0]).view(1, 1, 2, 1, 1)
    expected = torch.tensor([3 ** 0.5 + 0.5, 3 ** 0.5 - 0.5]).view(1, 1, 2, 1, 1)  # √0.75 · 2 ± √0.25 · 1
    assert torch.allclose(mixed_noise(one, 0.75, shared=shared), expected)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        mixed_noise(noise, 1.0)
    with pytest.raises(ValueError, match=r"\(B, C, F, h, w\)"):
        mixed_noise(noise[:, :, 0], 0.5)
    with pytest.raises(ValueError, match="expected \\(1, 1, 1, 1, 1\\)"):
        mixed_noise(one, 0.5, shared=torch.zeros(1, 1, 2, 1, 1))


def test_mixed_noise_from_per_sample_streams_does_not_depend_on_the_batch():
    """``streams=``: sample i's shared part is the next (C, 1, h, w) draw of its own generator, so a clip mixed in a
    batch of three equals the same clip mixed alone, and each stream ends where a lone draw leaves it; the number of
    streams must match the batch, and only one source of the shared part may be given."""
    shape = (2, 4, 3, 3)

    def mixed(seeds):
        streams: list[torch.Generator] = []
        noise = seeded_noise([shape], len(seeds), 0, generators=streams)[0] if seeds == [0, 1, 2] else None
        if noise is None:  # the second sample alone: its own stream, seeded as it is in the batch
            streams = [torch.Generator().manual_seed(1)]
            noise = torch.randn(shape, generator=streams[0])[None]
        return mixed_noise(noise, 0.5, streams=streams), streams

    batch, batch_streams = mixed([0, 1, 2])
    alone, alone_streams = mixed([1])
    assert torch.equal(batch[1:2], alone)
    assert torch.equal(batch_streams[1].get_state(), alone_streams[0].get_state())
    g = torch.Generator().manual_seed(1)
    independent = torch.randn(shape, generator=g)
    shared = torch.randn((2, 1, 3, 3), generator=g)
    assert torch.allclose(alone[0], 0.5 ** 0.5 * shared + 0.5 ** 0.5 * independent)
    assert shared_frame_noise((1, 2, 3, 3, 3), [torch.Generator().manual_seed(4)]).shape == (1, 2, 1, 3, 3)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        mixed_noise(batch, 0.5, streams=batch_streams[:2])
    with pytest.raises(ValueError, match="at most one of generator, shared and streams"):
        mixed_noise(batch, 0.5, generator=g, streams=batch_streams)
    with pytest.raises(ValueError, match=r"\(B, C, F, h, w\)"):
        shared_frame_noise((3, 2, 3, 3), batch_streams)
