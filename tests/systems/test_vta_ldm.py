"""VTA-LDM (video → audio) at scale=tiny: trained projection and null, Min-SNR weights, classifier-free
guidance, parity of the sampler with diffusers' StableDiffusionPipeline, the released checkpoint's key
layout, gradient checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from avgen.diffusion import min_snr_weights
from avgen.errors import ConfigError
from avgen.systems.vta_ldm import VTALDM, ReleasedCheckpointError, load_released, step_generators
from tests.conftest import compose


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("vta_ldm")


def build(root, *overrides: str) -> VTALDM:
    cfg = compose(["experiment=vta_ldm", "scale=tiny", *overrides], root)
    return instantiate(cfg.model)


@pytest.fixture(scope="module")
def system(tiny_root):
    torch.manual_seed(0)
    return build(tiny_root)


def batch_of(system, b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    frames = system.clip.num_frames
    video = torch.rand(b, frames, 3, system.clip.height, system.clip.width, generator=g) * 2 - 1
    audio = (torch.rand(b, system.clip.num_samples, generator=g) * 2 - 1) * 0.3
    return {"video": video, "audio": audio, "caption": ["a"] * b, "key": [str(i) for i in range(b)]}


# ------------------------------------------------------------------------------ the objective
def test_min_snr_weights_on_hand_cases():
    alphas = torch.tensor([0.5, 0.9, 0.99])  # SNR = 1, 9, 99
    t = torch.arange(3)
    for form in ("target", "epsilon"):
        assert torch.allclose(min_snr_weights(alphas, t, "epsilon", 5, form), torch.tensor([1.0, 5 / 9, 5 / 99]))
    assert torch.allclose(min_snr_weights(alphas, t, "v_prediction", 5), torch.tensor([0.5, 0.5, 0.05]))
    # the public code's form: min(SNR, γ)/SNR on the v target
    assert torch.allclose(min_snr_weights(alphas, t, "v_prediction", 5, "epsilon"), torch.tensor([1.0, 5 / 9, 5 / 99]))
    assert torch.allclose(min_snr_weights(alphas, t, "sample", 5), torch.tensor([1.0, 5.0, 5.0]))
    assert torch.equal(min_snr_weights(alphas, t, "v_prediction", None), torch.ones(3))
    with pytest.raises(ValueError, match="min_snr_gamma=0"):
        min_snr_weights(alphas, t, "epsilon", 0)


def test_the_loss_is_the_weighted_mean_of_per_clip_errors(tiny_root, monkeypatch):
    system = build(tiny_root, "model.prediction_type=v_prediction", "model.min_snr_gamma=5")
    seen = {}
    original = system.denoise

    def record(x, t, context, mask):
        out = original(x, t, context, mask)
        seen.update(t=t.clone(), out=out.detach().clone())
        return out

    monkeypatch.setattr(system, "denoise", record)
    batch = batch_of(system)
    system.train()
    losses = system.diffusion_loss(batch, generator=torch.Generator().manual_seed(3))
    # replay the same draws to rebuild the target
    g = torch.Generator().manual_seed(3)
    from avgen.backbones.audioldm import encode_audio
    from avgen.diffusion import training_target

    latents = encode_audio(system.codec, system.padded_audio(batch["audio"]), generator=g,
                           time_multiple=system.time_multiple)
    torch.rand(2, generator=g)  # the condition-dropout draw
    t = torch.randint(0, len(system.alphas), (2,), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    assert torch.equal(t, seen["t"])
    target = training_target("v_prediction", latents, noise, system.alphas, t)
    per_clip = ((seen["out"] - target) ** 2).mean(dim=(1, 2, 3))
    ratio = system.alphas[t] / (1 - system.alphas[t])
    expected = (torch.clamp(ratio, max=5) / (ratio + 1) * per_clip).mean()
    assert torch.allclose(losses["loss"], expected, rtol=1e-5)


# ------------------------------------------------------------------------------ what is trained
def test_projection_is_trained_and_frozen_parts_are_not(system):
    trainable = {n.split(".")[0] for n, _ in system.trainable_parameters()}
    assert trainable == {"unet", "projection"}
    system.train()
    assert not system.encoder.training and not system.vae.training
    before = system.projection.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for _, p in system.trainable_parameters()], lr=1e-2)
    system.cond_drop_prob = 0.0
    loss = system.diffusion_loss(batch_of(system), generator=torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    assert system.projection.weight.grad is not None and system.projection.weight.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    assert not torch.equal(before, system.projection.weight)
    system.cond_drop_prob = 0.1


@pytest.mark.parametrize("drop", [0.0, 1.0])
def test_condition_dropout_trains_the_null(system, drop, monkeypatch):
    """p = 1: every context is the null (zeros, mask all true); p = 0: every context is φ(f_V)."""
    seen = {}
    monkeypatch.setattr(system, "denoise", lambda x, t, context, mask: seen.update(context=context, mask=mask) or x)
    system.train()
    system.cond_drop_prob = drop
    batch = batch_of(system)
    system.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    system.cond_drop_prob = 0.1
    assert seen["mask"].all()
    with torch.no_grad():
        expected = torch.zeros_like(seen["context"]) if drop else system.context(batch["video"])[0]
    assert torch.allclose(seen["context"], expected)


# ------------------------------------------------------------------------------ sampling
def test_guidance_is_equation_2_and_one_means_a_single_pass(system, monkeypatch):
    calls = []
    original = system.denoise

    def record(x, t, context, mask):
        out = original(x, t, context, mask)
        calls.append((x.shape[0], context.clone(), out.clone()))
        return out

    monkeypatch.setattr(system, "denoise", record)
    context, mask = system.context(batch_of(system)["video"])
    latents = torch.randn(2, *system.latent_shape, generator=torch.Generator().manual_seed(1))
    x3 = system.generate_latents(context, mask, steps=1, guidance=3.0, sampler="ddim", latents=latents)
    [(rows, ctx, out)] = calls
    assert rows == 4 and torch.equal(ctx[:2], torch.zeros_like(ctx[:2]))
    uncond, cond = out.chunk(2)
    scheduler = system.sampler("ddim")
    scheduler.set_timesteps(1)
    expected = scheduler.step(uncond + 3.0 * (cond - uncond), scheduler.timesteps[0], latents).prev_sample
    assert torch.allclose(x3, expected, atol=1e-6)
    calls.clear()
    system.generate_latents(context, mask, steps=1, guidance=1.0, sampler="ddim", latents=latents)
    assert [c[0] for c in calls] == [2]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm_solver"])
def test_sampler_equals_stable_diffusion_pipeline(system, sampler):
    """Same U-Net, context φ(f_V), initial latents and scheduler: avgen's sampler gives diffusers'
    StableDiffusionPipeline(prompt_embeds=φ(f_V), negative_prompt_embeds=0, output_type="latent")."""
    from diffusers import StableDiffusionPipeline

    context, mask = system.context(batch_of(system)["video"])
    latents = torch.randn(2, *system.latent_shape, generator=torch.Generator().manual_seed(2))
    ours = system.generate_latents(context, mask, steps=3, guidance=3.0, sampler=sampler, latents=latents, seed=5)
    pipe = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=system.unet,
                                   scheduler=system.sampler(sampler), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    _, frames, width = system.latent_shape
    theirs = pipe(prompt_embeds=context, negative_prompt_embeds=torch.zeros_like(context), latents=latents.clone(),
                  num_inference_steps=3, guidance_scale=3.0, height=frames * pipe.vae_scale_factor,
                  width=width * pipe.vae_scale_factor, output_type="latent",
                  generator=step_generators(2, 5)).images
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_generated_audio_covers_the_clip(system):
    audio = system.generate(batch_of(system, b=1)["video"], steps=2, sampler="ddim")
    assert audio.shape == (1, system.clip.num_samples) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1
    again = system.generate(batch_of(system, b=1)["video"], steps=2, sampler="ddim")
    assert torch.equal(audio, again)


# ------------------------------------------------------------------------------ the released checkpoint
def released_layout(system) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    state = {f"unet.{k}": torch.randn(v.shape, generator=g) for k, v in system.unet.state_dict().items()}
    state["vid_fea_extractor.linear_layer.weight"] = torch.randn(system.projection.weight.shape, generator=g)
    state["vid_fea_extractor.linear_layer.bias"] = torch.randn(system.projection.bias.shape, generator=g)
    state["vid_fea_extractor.clip_vision.vision_model.post_layernorm.weight"] = torch.ones(4)
    return state


def test_released_checkpoint_layout_loads(system, tiny_root, tmp_path):
    state = released_layout(system)
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    loaded = build(tiny_root, "experiment=vta_ldm_public", f"model.released={path}")
    for k, v in loaded.unet.state_dict().items():
        assert torch.equal(v, state[f"unet.{k}"])
    assert torch.equal(loaded.projection.weight, state["vid_fea_extractor.linear_layer.weight"])
    assert loaded.prediction_type == "v_prediction" and loaded.min_snr_gamma == 5


def test_released_checkpoint_errors(system, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.released=.*no such file"):
        load_released(tmp_path / "missing.bin")
    state = released_layout(system)
    state["text_encoder.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.bin")
    with pytest.raises(ReleasedCheckpointError, match=r"other keys \['text_encoder.weight'\]"):
        load_released(tmp_path / "extra.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ReleasedCheckpointError, match="cannot be read"):
        load_released(tmp_path / "junk.bin")


# ------------------------------------------------------------------------------ settings and memory
@pytest.mark.parametrize("override, message", [
    ("model.prediction_type=sample", r"model\.prediction_type='sample'"),
    ("model.min_snr_gamma=-1", r"model\.min_snr_gamma=-1"),
    ("model.tiny.audio_seconds=0.5", r"model\.audio_seconds=0\.5: shorter than the clip"),
    ("model.tiny.audio_seconds=1.1", r"do not divide by the VAE × U-Net downsampling \(8\); use 1\.12"),
    ("model.sampling.sampler=euler", r"model\.sampling\.sampler='euler'"),
])
def test_bad_settings_are_refused(tiny_root, override, message):
    with pytest.raises(Exception) as info:
        build(tiny_root, override)
    assert info.match(message)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_root):
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        system = build(tiny_root, f"model.gradient_checkpointing={str(flag).lower()}")
        system.train()
        system.cond_drop_prob = 0.0
        system.diffusion_loss(batch_of(system), generator=torch.Generator().manual_seed(0))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in system.trainable_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    assert math.isfinite(sum(float(g.abs().sum()) for g in grads[1].values()))
