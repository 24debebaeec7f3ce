"""The joint audio+video system (SVG baseline) at scale=tiny: zero-init identity, trainable set,
gradients, checkpoints, deterministic sampling and the sample command."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from avgen.commands import load_system, run_command
from tests.conftest import TINY_CLIP, compose


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("joint")


def build(tiny_root, *overrides: str):
    cfg = compose(["experiment=joint_cmcpe", "scale=tiny", *overrides], tiny_root)
    return instantiate(cfg.model), cfg


@pytest.fixture(scope="module")
def system(tiny_root):
    return build(tiny_root)[0]


def random_inputs(system, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape_v, shape_a = system.latent_shapes(batch)
    x_v, x_a = torch.randn(shape_v, generator=g), torch.randn(shape_a, generator=g)
    text_v, text_a = system.encode_text(["a red ball drops onto wood", "a cube hits glass"][:batch])
    t_v, t_a = torch.tensor([10, 900][:batch]), torch.tensor([500, 20][:batch])
    return x_v, x_a, t_v, t_a, text_v, text_a


def base_outputs(system, x_v, x_a, t_v, t_a, text_v, text_a):
    frames = x_v.shape[2]
    video = system.video.unet(x_v, t_v, encoder_hidden_states=text_v.repeat_interleave(frames, dim=0)).sample
    audio = system.audio.unet(x_a, t_a, encoder_hidden_states=None, class_labels=text_a).sample
    return video, audio


@pytest.mark.parametrize("cross_modal", ["cmcpe", "cross_attention"])
def test_zero_initialised_joint_model_equals_the_base_models(tiny_root, cross_modal):
    system, _ = build(tiny_root, f"model.cross_modal={cross_modal}")
    inputs = random_inputs(system)
    with torch.no_grad():
        joint_v, joint_a = system.denoiser(*inputs)
        base_v, base_a = base_outputs(system, *inputs)
    assert torch.equal(joint_v, base_v) and torch.equal(joint_a, base_a)
    # and the inserted blocks do act once their output projection is not zero
    with torch.no_grad():
        for block in list(system.denoiser.video_blocks.values()) + list(system.denoiser.audio_blocks.values()):
            for p in block.proj_out.parameters():
                p.normal_(0, 0.5)
        moved_v, moved_a = system.denoiser(*inputs)
        again_v, again_a = base_outputs(system, *inputs)  # hooks are inert outside the joint call
    assert not torch.allclose(moved_v, base_v) and not torch.allclose(moved_a, base_a)
    assert torch.equal(again_v, base_v) and torch.equal(again_a, base_a)


def test_cross_modal_features_reach_the_other_modality(tiny_root):
    """Once the blocks are active, the audio output depends on the video latent and vice versa."""
    system, _ = build(tiny_root)
    with torch.no_grad():
        for block in list(system.denoiser.video_blocks.values()) + list(system.denoiser.audio_blocks.values()):
            for p in block.proj_out.parameters():
                p.normal_(0, 0.5)
    x_v, x_a, t_v, t_a, text_v, text_a = random_inputs(system)
    with torch.no_grad():
        v1, a1 = system.denoiser(x_v, x_a, t_v, t_a, text_v, text_a)
        _, a2 = system.denoiser(x_v + 1.0, x_a, t_v, t_a, text_v, text_a)
        v3, _ = system.denoiser(x_v, x_a, t_v, t_a, text_v, text_a, audio_x0=torch.ones_like(x_a))
    assert not torch.allclose(a1, a2)  # video latent → audio output
    assert not torch.allclose(v1, v3)  # audio self-conditioning → video output


def test_cmcpe_reads_the_video_of_the_clip_not_of_the_mel_padding(tiny_root, system):
    """A 1-s clip's audio latents are 32 frames, 25 of them the clip (100 of 128 mel frames). With
    ``block.time_span=clip`` the video output does not depend on the audio connector's frames of the mel padding;
    with the public code's mapping (``padded``) it does."""
    model, _ = build(tiny_root)
    assert model.denoiser.audio_clip_fraction == 100 / 128 and model.denoiser.time_span == "clip"
    with torch.no_grad():
        for block in list(model.denoiser.video_blocks.values()):
            for p in block.proj_out.parameters():
                p.normal_(0, 0.5)
    x_v, x_a, t_v, t_a, text_v, text_a = random_inputs(model)
    features = model.denoiser.connect(x_v, x_a, t_v, t_a)
    padding = features[1].clone()
    keep = -(-features[1].shape[1] * 100 // 128)
    padding[:, keep:] += 5.0  # the audio connector's frames of the mel padding only
    outputs = {}
    for span in ("clip", "padded"):  # the setting is read at every call: one model serves both
        model.denoiser.time_span = span
        with torch.no_grad():
            v1, _ = model.denoiser(x_v, x_a, t_v, t_a, text_v, text_a, features=features)
            v2, _ = model.denoiser(x_v, x_a, t_v, t_a, text_v, text_a, features=(features[0], padding))
        outputs[span] = torch.allclose(v1, v2)
    assert outputs == {"clip": True, "padded": False}


def test_an_unknown_time_span_names_the_key(tiny_root):
    with pytest.raises(Exception, match=r"model\.block\.time_span='frames': expected one of clip, padded"):
        build(tiny_root, "model.block.time_span=frames")


def test_exact_trainable_set(tiny_root, system):
    names = {n for n, _ in system.trainable_parameters()}
    added = {f"denoiser.{k}" for k in ("video_connector", "audio_connector", "video_blocks", "audio_blocks")}
    motion = {n for n in names if "motion_modules" in n}
    assert motion and all(n.startswith("denoiser.video_unet.") for n in motion)
    assert names == {n for n in names if any(n.startswith(a + ".") for a in added)} | motion
    expected = {f"{prefix}.{n}" for prefix in added for n, _ in system.get_submodule(prefix).named_parameters()}
    expected |= {f"denoiser.video_unet.{n}" for n, _ in system.video.unet.named_parameters() if "motion_modules" in n}
    assert names == expected
    frozen, _ = build(tiny_root, "model.train_motion_modules=false")
    assert not any("motion_modules" in n for n, _ in frozen.trainable_parameters())
    for module in (system.video_vae, system.audio_vae, system.vocoder, system.video_text_encoder,
                   system.audio_text_encoder, system.audio.unet):
        assert not any(p.requires_grad for p in module.parameters())


def test_a_deep_copy_conditions_through_its_own_blocks(tiny_root):
    """copy.deepcopy of the model (torch's AveragedModel, an EMA copy) keeps the cross-modal blocks working and
    its own: the base U-Nets' hooks of the copy call the copy's blocks, not the original's (a closure over the
    original once made every copy's blocks inert: the copy's joint call left the original's context empty)."""
    system, _ = build(tiny_root)
    with torch.no_grad():
        for block in list(system.denoiser.video_blocks.values()) + list(system.denoiser.audio_blocks.values()):
            for p in block.proj_out.parameters():
                p.normal_(0, 0.5)
    inputs = random_inputs(system)
    twin = copy.deepcopy(system)
    with torch.no_grad():
        v, a = system.denoiser(*inputs)
        tv, ta = twin.denoiser(*inputs)
        base_v, base_a = base_outputs(twin, *inputs)
        assert torch.equal(tv, v) and torch.equal(ta, a)
        assert not torch.allclose(ta, base_a) and not torch.allclose(tv, base_v)
        for p in twin.denoiser.audio_blocks.parameters():
            p.zero_()
        assert torch.equal(system.denoiser(*inputs)[1], a)  # the original is untouched
        assert not torch.equal(twin.denoiser(*inputs)[1], a)


def tiny_batch(system, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = int(TINY_CLIP["seconds"] * TINY_CLIP["fps"])
    return {"video": torch.rand(batch, frames, 3, 32, 32, generator=g) * 2 - 1,
            "audio": (torch.rand(batch, 16000, generator=g) * 2 - 1) * 0.3,
            "caption": ["a red ball drops onto wood", "a cube hits glass"][:batch], "key": ["a", "b"][:batch]}


def test_gradients_reach_only_trainable_parameters(tiny_root, system):
    system.train()
    system.zero_grad(set_to_none=True)
    loss = system.diffusion_loss(tiny_batch(system), generator=torch.Generator().manual_seed(1))["loss"]
    loss.backward()
    for name, p in system.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert not system.video.unet.training and not system.video_vae.training  # frozen parts stay in eval


def test_gradient_checkpointing_gives_the_same_gradients(tiny_root):
    plain, _ = build(tiny_root)
    ckpt, _ = build(tiny_root, "model.gradient_checkpointing=true")
    ckpt.load_state_dict(plain.state_dict())
    grads = []
    for model in (plain, ckpt):
        model.train()
        loss = model.diffusion_loss(tiny_batch(model), generator=torch.Generator().manual_seed(3))["loss"]
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.trainable_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name


def test_sampling_is_deterministic_and_batch_independent(system):
    system.eval()
    prompts = ["a red ball drops onto wood", "a cube hits glass"]
    v1, a1 = system.generate(prompts, steps=3, seed=7)
    v2, a2 = system.generate(prompts, steps=3, seed=7)
    assert v1.shape == (2, 8, 3, 32, 32) and a1.shape == (2, 16000)
    assert torch.equal(v1, v2) and torch.equal(a1, a2)
    v3, a3 = system.generate(prompts[1:], steps=3, seed=8)  # sample 1 of the batch = seed 7 + 1
    assert torch.allclose(v3[0], v1[1], atol=1e-5) and torch.allclose(a3[0], a1[1], atol=1e-5)
    v4, _ = system.generate(prompts, steps=3, seed=9)
    assert not torch.allclose(v4, v1)
    v5, _ = system.generate(prompts, steps=3, seed=7, gamma=3.0)  # γ changes the trajectory
    assert not torch.allclose(v5, v1)


def test_stochastic_ddim_is_seeded_per_sample_and_eta_zero_is_the_deterministic_sampler(system):
    """``eta`` (DDIM's σ, Song et al. 2021 Eq. 16): 0 gives exactly the default sampler; 1 is another, still
    reproducible trajectory whose clips do not depend on their batch; a bad value names ``sample.eta``."""
    from avgen.diffusion import seeded_noise
    from avgen.errors import ConfigError

    system.eval()
    prompts = ["a red ball drops onto wood", "a cube hits glass"]
    v0, a0 = system.generate(prompts, steps=3, seed=7)
    v1, a1 = system.generate(prompts, steps=3, seed=7, eta=0.0)
    assert torch.equal(v0, v1) and torch.equal(a0, a1)
    v2, a2 = system.generate(prompts, steps=3, seed=7, eta=1.0)
    v3, a3 = system.generate(prompts, steps=3, seed=7, eta=1.0)
    assert torch.equal(v2, v3) and torch.equal(a2, a3)
    assert not torch.allclose(v2, v0) and not torch.allclose(a2, a0, rtol=1e-3, atol=0)  # tiny audio is ~1e-10
    v4, a4 = system.generate(prompts[1:], steps=3, seed=8, eta=1.0)  # sample 1 of the batch = seed 7 + 1
    assert torch.allclose(v4[0], v2[1], atol=1e-5) and torch.allclose(a4[0], a2[1], atol=1e-5)
    # the seeded noise passed as latents gives the seeded clips: the step noise never repeats the starting noise
    shape_v, shape_a = system.latent_shapes(2)
    v5, a5 = system.generate(prompts, steps=3, seed=7, eta=1.0,
                             latents=tuple(seeded_noise([shape_v[1:], shape_a[1:]], 2, 7)))
    assert torch.equal(v5, v2) and torch.equal(a5, a2)
    with pytest.raises(ConfigError, match=r"sample\.eta=1\.5: expected DDIM eta in \[0, 1\]"):
        system.generate(prompts, steps=3, eta=1.5)


def test_frame_noise_correlation_mixes_the_video_noise_of_sampling_and_training(system):
    """``model.video.frame_noise_correlation`` r (a video generator trained on PYoCo's mixed noise): the seeded start
    and each stochastic step's video noise are mixed, each sample's shared part drawn next from its own stream, so
    a clip still does not depend on its batch, and the mixed seeded noise passed as ``latents`` gives the seeded
    clips; the audio is not mixed; r = 0 is the sampler before. Training draws the video loss's noise from the same
    prior. A bad value names the key; null takes the generator's own (0 for the tiny twin)."""
    from avgen.diffusion import add_noise, mixed_noise, seeded_noise
    from avgen.errors import ConfigError
    from avgen.systems.joint import video_frame_noise_correlation

    model = copy.deepcopy(system).eval()
    assert model.frame_noise_correlation == 0.0  # null: the tiny AnimateDiff twin's own
    prompts = ["a red ball drops onto wood", "a cube hits glass"]
    v0, a0 = model.generate(prompts, steps=3, seed=7, eta=1.0)
    model.frame_noise_correlation = 0.6
    v1, a1 = model.generate(prompts, steps=3, seed=7, eta=1.0)
    assert not torch.allclose(v1, v0)
    v2, a2 = model.generate(prompts[1:], steps=3, seed=8, eta=1.0)  # sample 1 of the batch, alone
    assert torch.allclose(v2[0], v1[1], atol=1e-5) and torch.allclose(a2[0], a1[1], atol=1e-5)
    shape_v, shape_a = model.latent_shapes(2)
    streams = []
    noise_v, noise_a = seeded_noise([shape_v[1:], shape_a[1:]], 2, 7, generators=streams)
    shared = torch.stack([torch.randn((shape_v[1], 1, *shape_v[3:]), generator=g) for g in streams])
    v3, a3 = model.generate(prompts, steps=3, seed=7, eta=1.0, latents=(mixed_noise(noise_v, 0.6, shared=shared),
                                                                         noise_a))
    assert torch.equal(v3, v1) and torch.equal(a3, a1)
    # training: the video loss's noise comes from the prior (its shared part drawn next from the step's generator)
    g = torch.Generator().manual_seed(3)
    mixed = model.video_noise(torch.randn(shape_v, generator=g), g)
    g = torch.Generator().manual_seed(3)
    independent = torch.randn(shape_v, generator=g)
    assert torch.equal(mixed, mixed_noise(independent, 0.6, g))
    noisy = add_noise(torch.zeros(shape_v), mixed, model.video_alphas, torch.full((2,), 999))
    frame_0, frame_1 = noisy[:, :, 0].flatten(), noisy[:, :, 1].flatten()
    assert torch.corrcoef(torch.stack([frame_0, frame_1]))[0, 1] > 0.4
    seen = []
    spy = model.video_noise
    model.video_noise = lambda noise, generator=None: seen.append(tuple(noise.shape)) or spy(noise, generator)
    with torch.no_grad():
        loss_mixed = model.diffusion_loss(tiny_batch(model), generator=torch.Generator().manual_seed(1))
        model.frame_noise_correlation = 0.0
        loss_plain = model.diffusion_loss(tiny_batch(model), generator=torch.Generator().manual_seed(1))
    assert seen[0] == shape_v and loss_mixed["loss_video"] != loss_plain["loss_video"]
    assert model.video_noise(independent, g) is independent
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ConfigError, match=r"model.video.frame_noise_correlation=.*expected r in \[0, 1\)"):
            video_frame_noise_correlation(bad, "tiny:animatediff")
    assert video_frame_noise_correlation(None, "guoyww/animatediff-motion-adapter-v1-5-2") == 0.0
    assert video_frame_noise_correlation(0.25, "tiny:animatediff") == 0.25


def test_cross_modal_guidance_scales_what_the_audio_takes_from_the_video_motion(system, monkeypatch):
    """``cross_modal_guidance`` s: the audio output of each step is ``still + s·(video − still)``, "still" the same
    step with the video held still (its frames averaged). So the first step's audio output for a given video with s
    equals the output for the still video plus s times the difference, a still video is not guided, the video is
    never touched and s = 1 is the plain sampler; a bad value names ``sample.cross_modal_guidance``."""
    import avgen.systems.joint as joint
    from avgen.errors import ConfigError

    model = copy.deepcopy(system).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the zero-initialised cross-modal blocks would make the audio ignore the video
        for name, param in model.denoiser.named_parameters():
            if name.startswith(("video_connector.", "audio_blocks.")):
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    outputs: list[torch.Tensor] = []  # the model outputs the DDIM steps get: video, audio, video, audio, ...
    decoded: list[torch.Tensor] = []
    step, decode = joint.ddim_step, joint.decode_audio
    monkeypatch.setattr(joint, "ddim_step", lambda *args: outputs.append(args[2].clone()) or step(*args))
    monkeypatch.setattr(joint, "decode_audio", lambda audio, x, n: decoded.append(x.clone()) or decode(audio, x, n))
    prompts = ["a red ball drops onto wood", "a cube hits glass"]
    given = torch.randn(model.latent_shapes(2)[0], generator=generator)
    still = given.mean(dim=2, keepdim=True).expand_as(given).contiguous()

    def run(video, scale, steps=3):
        outputs.clear(), decoded.clear()
        frames = model.generate(prompts, steps=steps, seed=3, video_latents=video, cross_modal_guidance=scale)[0]
        return outputs[1], decoded[0], frames  # the first step's audio output, the final audio latents, the video

    (plain, plain_final, frames), (for_still, still_final, _) = run(given, 1.0), run(still, 1.0)
    assert (plain - for_still).abs().max() > 1e-3 * plain.abs().max()  # the audio depends on the video's motion
    for scale in (0.0, 2.0, 4.0):
        guided, final, frames_s = run(given, scale)
        expected = for_still + scale * (plain - for_still)
        assert torch.allclose(guided, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()), scale
        assert not torch.allclose(final, plain_final) and torch.equal(frames_s, frames)
    _, final, _ = run(still, 4.0)
    assert torch.allclose(final, still_final, rtol=1e-4, atol=1e-4 * still_final.abs().max().item())
    # in the joint sampler too: s = 1 is the default, s != 1 another audio (the same video here: the video blocks
    # are still zero, so the video does not read the audio)
    decoded.clear()
    v1, _ = model.generate(prompts, steps=3, seed=3)
    v2, _ = model.generate(prompts, steps=3, seed=3, cross_modal_guidance=1.0)
    v3, _ = model.generate(prompts, steps=3, seed=3, cross_modal_guidance=3.0)
    assert torch.equal(decoded[0], decoded[1]) and torch.equal(v1, v2)
    assert not torch.allclose(decoded[2], decoded[0]) and torch.allclose(v3, v1, atol=1e-5)
    with pytest.raises(ConfigError, match=r"sample\.cross_modal_guidance=-1: expected a guidance scale >= 0"):
        model.generate(prompts, steps=1, cross_modal_guidance=-1)


def test_audio_for_a_given_video_by_replacement(system):
    """``video_latents``: at every step the connector and the video U-Net see the given latents noised to the step's
    local timestep with the starting video noise, and x̂0 = the given latents; the returned video is the given one
    decoded; with zero-initialised cross-modal blocks the audio is the unconditional sampler's (the audio U-Net cannot
    see the video); with trained (here: perturbed) blocks it depends on the given video; a wrong shape is refused."""
    from avgen.backbones.animatediff import decode_video
    from avgen.diffusion import add_noise, seeded_noise

    system.eval()
    prompts = ["a red ball drops onto wood", "a cube hits glass"]
    shape_v, shape_a = system.latent_shapes(2)
    given = torch.randn(shape_v, generator=torch.Generator().manual_seed(3))
    v0, a0 = system.generate(prompts, steps=3, seed=7)
    seen = []
    connect = system.denoiser.connect
    system.denoiser.connect = lambda x_v, x_a, t_v, t_a, x0_v, x0_a: seen.append((x_v, t_v, x0_v)) or connect(
        x_v, x_a, t_v, t_a, x0_v, x0_a)
    try:
        v1, a1 = system.generate(prompts, steps=3, seed=7, video_latents=given)
    finally:
        del system.denoiser.connect
    start_v = seeded_noise([shape_v[1:], shape_a[1:]], 2, 7)[0]
    assert len(seen) == 3 and len({int(t[0]) for _, t, _ in seen}) == 3
    for x_v, t_v, x0_v in seen:
        assert torch.allclose(x_v, add_noise(given, start_v, system.video_alphas, t_v), atol=1e-6)
        assert torch.equal(x0_v, given)
    assert torch.allclose(v1, decode_video(system.video, given).float().clamp(-1, 1))
    assert not torch.allclose(v1, v0)
    assert torch.allclose(a1, a0, rtol=1e-4, atol=0)
    perturbed = copy.deepcopy(system)
    with torch.no_grad():
        for p in perturbed.denoiser.audio_blocks.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    _, a2 = perturbed.generate(prompts, steps=3, seed=7, video_latents=given)
    _, a3 = perturbed.generate(prompts, steps=3, seed=7, video_latents=given.flip(2))
    assert not torch.allclose(a2, a3, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match=r"video_latents must be \(2, .*got \(1, "):
        system.generate(prompts, steps=3, video_latents=given[:1])


def test_given_latents_replace_the_seeded_noise(system):
    """``latents=`` (diffusers pipelines' argument): the seeded noise passed in gives the seeded samples, other
    noise other samples, and a wrong shape is refused with both shapes named."""
    from avgen.diffusion import seeded_noise

    system.eval()
    prompts = ["a red ball drops onto wood", "a cube hits glass"]
    shape_v, shape_a = system.latent_shapes(2)
    noise = seeded_noise([shape_v[1:], shape_a[1:]], 2, 7)
    v1, a1 = system.generate(prompts, steps=3, seed=7)
    v2, a2 = system.generate(prompts, steps=3, seed=123, latents=tuple(noise))
    assert torch.equal(v1, v2) and torch.equal(a1, a2)
    v3, a3 = system.generate(prompts, steps=3, latents=(noise[0].flip(2), noise[1]))
    assert not torch.allclose(v3, v1)
    with pytest.raises(ValueError, match=r"latents must be video \(2, .*got \(1, "):
        system.generate(prompts, steps=3, latents=(noise[0][:1], noise[1]))


def test_fit_checkpoint_holds_only_trainable_weights_and_reloads(tiny_root, tmp_path):
    cfg = compose(["command=fit", "experiment=joint_cmcpe", "scale=tiny", "trainer.max_steps=2",
                   "trainer.limit_val_batches=1", "model.validation.samples=0", "logger=csv",
                   f"paths.data_dir={tiny_root}/data"], tmp_path)
    run_command(cfg)
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model, _ = load_system(ckpt_path)
    trainable = dict(model.trainable_parameters())
    assert set(ckpt["state_dict"]) == set(model.trainable_state_dict())
    assert not any(k.startswith(("video_vae", "audio_vae", "vocoder")) for k in ckpt["state_dict"])
    for name, value in ckpt["state_dict"].items():
        if name in trainable:
            assert torch.equal(trainable[name].detach(), value), name
    # frozen parts are rebuilt identically from the config (deterministic tiny backbones)
    fresh, _ = build(tiny_root)
    fresh_state = fresh.state_dict()
    for name, value in model.state_dict().items():
        if name not in ckpt["state_dict"]:
            assert torch.equal(value, fresh_state[name]), name
    trained_bytes = sum(v.numel() * v.element_size() for v in ckpt["state_dict"].values())
    assert trained_bytes == sum(v.numel() * v.element_size() for v in model.trainable_state_dict().values())

    # A checkpoint whose config predates model.connector.spatio_temporal was trained with the order-blind blocks:
    # its config is read as `unordered` (here the weights are the public blocks', so the load must fail, naming
    # the key and the value that fits them).
    old = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    del old["avgen"]["config"]["model"]["connector"]["spatio_temporal"]
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(KeyError, match="model.connector.spatio_temporal=public"):
        load_system(tmp_path / "old.ckpt")


def test_a_checkpoint_that_does_not_fit_names_the_options_it_was_trained_with(system):
    trainable = set(system.trainable_state_dict())
    motion = {k for k in trainable if "motion_modules" in k}
    assert motion  # the paper's default trains them
    hint = system.trainable_keys_hint(motion, set())
    assert "model.train_motion_modules=false" in hint and "spatio_temporal" not in hint
    connector = {k for k in trainable if ".video_connector.attn1.ff_in" in k}
    hint = system.trainable_keys_hint(connector, {"denoiser.video_connector.attn1.spatial.to_q.weight"})
    assert "model.connector.spatio_temporal=unordered" in hint and "motion" not in hint
    assert system.trainable_keys_hint({"denoiser.audio_blocks.up_0.proj_out.weight"}, set()) == ""


def test_a_model_config_from_before_spatio_temporal_is_read_as_unordered():
    from avgen.systems.joint import JointAudioVideo

    before = {"_target_": "avgen.systems.joint.JointAudioVideo", "connector": {"channels": 320},
              "tiny": {"connector": {"channels": 16}}}
    upgraded = JointAudioVideo.upgrade_model_config(before)
    assert upgraded["connector"] == {"channels": 320, "spatio_temporal": "unordered"}
    assert before["connector"] == {"channels": 320}  # not modified in place
    for explicit in ({**before, "connector": {"channels": 320, "spatio_temporal": "public"}},
                     {**before, "tiny": {"connector": {"spatio_temporal": "public"}}}):
        assert JointAudioVideo.upgrade_model_config(explicit) == explicit


def test_ema_is_used_for_sampling(tiny_root):
    system, _ = build(tiny_root, "model.ema_decay=0.5")
    system.on_fit_start()
    with torch.no_grad():
        for k in system.ema_state:
            system.ema_state[k] += 0.01
    before = copy.deepcopy(system.trainable_state_dict())
    with system.ema_weights():
        inside = system.trainable_state_dict()
        assert any(not torch.equal(inside[k], before[k]) for k in before)
    after = system.trainable_state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_sample_command_writes_sounding_videos(tiny_root, tmp_path, capsys):
    """fit → ``python -m avgen sample`` (as composed by the command line) → mp4 with video and audio of
    the same duration, a wav and the prompt; existing files are not replaced without sample.overwrite."""
    from avgen.media import decode_audio, decode_video

    fit_cfg = compose(["command=fit", "experiment=joint_cmcpe", "scale=tiny", "trainer.max_steps=1",
                       "trainer.limit_val_batches=0", "logger=csv", f"paths.data_dir={tiny_root}/data"],
                      tmp_path, run_dir=tmp_path / "fit")
    run_command(fit_cfg)
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    overrides = ["command=sample", f"ckpt_path={ckpt}", "sample.n=3", "sample.steps=2", "sample.batch_size=2"]
    cfg = compose(overrides, tmp_path, run_dir=tmp_path / "sample")
    paths = run_command(cfg)
    out = tmp_path / "sample" / "samples"
    assert [p.name for p in paths] == ["sample_0000.mp4", "sample_0001.mp4", "sample_0002.mp4"]
    for path in paths:
        frames, _ = decode_video(str(path))
        audio = decode_audio(str(path), 16000)
        assert frames.shape == (8, 32, 32, 3)
        assert abs(len(audio) / 16000 - frames.shape[0] / 8) < 0.05  # same duration, 1 s
        assert path.with_suffix(".wav").is_file() and path.with_suffix(".txt").read_text()
    # the json names the data clip whose caption was the prompt (evaluate pairs references by it)
    from avgen.samples import split_captions

    captions = split_captions(str(tiny_root / "data" / "synthetic_hits" / "32x32_8fps_1.0s_16000hz"), 3)
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in paths]
    assert [(m["source"], m["prompt"]) for m in metas] == captions
    # prompts default to the data's captions; sampling again into the same folder needs overwrite
    with pytest.raises(SystemExit):
        run_command(compose(overrides, tmp_path, run_dir=tmp_path / "sample"))
    assert "sample.overwrite=true" in capsys.readouterr().err
    run_command(compose([*overrides, "sample.overwrite=true"], tmp_path, run_dir=tmp_path / "sample"))
    assert len(list(out.glob("*.mp4"))) == 3
    # sample.video: the same checkpoint generates audio for given videos (here its own samples), dubbed onto them
    dubbed = run_command(compose([*overrides, f"sample.video={out}"], tmp_path, run_dir=tmp_path / "dub"))
    assert [p.name for p in dubbed] == ["sample_0000.mp4", "sample_0001.mp4", "sample_0002.mp4"]
    for path in dubbed:
        assert json.loads(path.with_suffix(".json").read_text())["generation"]["method"] == "replacement"
        assert path.with_suffix(".txt").read_text() == (out / path.name).with_suffix(".txt").read_text()
        assert len(decode_audio(str(path.with_suffix(".wav")), 16000)) == 16000  # the video stream's 1 s
        assert abs(len(decode_audio(str(path), 16000)) / 16000 - 1) < 0.05  # AAC pads its last frame


def test_timing_oracle_marks_event_frames_and_reaches_the_loss_only_through_the_blocks(tiny_root, system):
    """benchmarks/joint_timing_oracle.py: frames of events (and delayed), the follow score on audio loud exactly in
    the marked frames, and the oracle in the video features' place: it changes the audio loss only once the audio
    blocks' output projections are non-zero (zero-initialised blocks: true and delayed oracle give the same loss)."""
    import math
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from joint_timing_oracle import TimingOracle, event_frames, follow_scores

    events = [0.0, 0.126, 0.99, 1.2]  # 1.2 s is past the 1-s clip
    assert event_frames(events, 8, 8.0).nonzero().flatten().tolist() == [0, 1, 7]
    assert event_frames(events, 8, 8.0, delay=3).nonzero().flatten().tolist() == [3, 4]
    audio = torch.zeros(2, 16000)
    audio[0, 2000:4000] = 1.0  # frame 1 (of 8) loud, the others silent
    audio[1] = 1.0  # the same everywhere
    scores = follow_scores(audio, [[0.13], [0.13]], 8, 8.0, 0)
    assert scores[0] == pytest.approx(math.log(1 + 1e-4) - math.log(1e-4)) and abs(scores[1]) < 1e-12
    assert follow_scores(audio[:1], [[]], 8, 8.0, 0) == []  # no marked frame: not scored

    system = copy.deepcopy(system)
    oracle = TimingOracle(system, 8.0)
    batch = {**tiny_batch(system), "events": [torch.tensor([0.3]), torch.tensor([0.6, 0.9])]}

    def audio_loss(delay):
        oracle.delay = delay
        with torch.no_grad():
            return system.diffusion_loss(batch, torch.Generator().manual_seed(0))["loss_audio"]

    oracle.use(batch["events"], 0)
    features = oracle.features(8)
    assert torch.equal(features[1, 4], oracle.e_hit) and torch.equal(features[1, 7], oracle.e_hit)
    assert torch.equal(features[0, 0], oracle.e_none) and torch.equal(features[0, 2], oracle.e_hit)
    assert audio_loss(0) == audio_loss(3)
    with torch.no_grad():
        for block in system.denoiser.audio_blocks.values():
            block.proj_out.weight.normal_(0, 0.05)
    assert audio_loss(0) != audio_loss(3)


def test_timing_oracle_for_the_video_blocks_marks_audio_positions_and_scores_frame_change(tiny_root, system):
    """benchmarks/joint_timing_oracle.py --reader video: exact audio latent positions of events (delay, span, the
    clip's end), the oracle in the audio features' place only (the video features stay the connector's), the video
    loss moved by it only through non-zero video blocks, and the frame-change follow score on a known video."""
    import math
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from joint_timing_oracle import (
        TimingOracle,
        audio_event_positions,
        codec_roundtrips,
        frame_change,
        video_follow_scores,
    )

    marks = audio_event_positions([0.0, 0.1, 0.99], 25, 0.04)  # positions 0-1, 2-3, 24 (25 cut)
    assert marks.nonzero().flatten().tolist() == [0, 1, 2, 3, 24]
    assert audio_event_positions([0.1], 25, 0.04, delay_s=0.375, span=3).nonzero().flatten().tolist() == [11, 12, 13]
    assert not audio_event_positions([1.5, -0.5], 25, 0.04).any()
    with pytest.raises(ValueError, match="reader"):
        TimingOracle(copy.deepcopy(system), 8.0, reader="both")
    with pytest.raises(ValueError, match="seconds_per_position"):
        TimingOracle(copy.deepcopy(system), 8.0, reader="video")

    video = -torch.ones(1, 8, 3, 4, 4)
    video[0, 3:] = 1.0  # one change, frames 2 -> 3: the pair of an event in frame 2
    assert frame_change(video[0])[2] == pytest.approx(math.log(2 + 1e-4))
    assert video_follow_scores(video, [[0.3]], 8.0, 0) == [pytest.approx(math.log(2 + 1e-4) - math.log(1e-4))]
    assert video_follow_scores(video, [[0.3]], 8.0, 3)[0] < 0 and video_follow_scores(video, [[]], 8.0, 0) == []

    wave = tiny_batch(system)["audio"]
    trips = codec_roundtrips(system, wave)
    assert sorted(trips) == ["mel_vae+vocoder", "vocoder"]
    assert all(t.shape == wave.shape and t.dtype == torch.float32 and t.isfinite().all() for t in trips.values())

    system = copy.deepcopy(system)
    connect = system.denoiser.connect
    oracle = TimingOracle(system, 8.0, reader="video", seconds_per_position=0.04)
    batch = {**tiny_batch(system), "events": [torch.tensor([0.3]), torch.tensor([0.6, 0.9])]}
    oracle.use(batch["events"], 0)
    z_v, z_a = system.encode_batch(batch, torch.Generator().manual_seed(0))
    t = torch.full((2,), 500)
    features_v, features_a = system.denoiser.connect(z_v, z_a, t, t)
    own_v, own_a = connect(z_v, z_a, t, t)
    assert torch.equal(features_v, own_v) and not torch.equal(features_a, own_a)
    assert torch.equal(features_a[0, 7], oracle.e_hit) and torch.equal(features_a[0, 6], oracle.e_none)

    def video_loss(delay):
        oracle.delay = delay
        with torch.no_grad():
            return system.diffusion_loss(batch, torch.Generator().manual_seed(0))["loss_video"]

    assert video_loss(0) == video_loss(3)
    with torch.no_grad():
        for block in system.denoiser.video_blocks.values():
            block.proj_out.weight.normal_(0, 0.05)
    assert video_loss(0) != video_loss(3)


def test_connector_warm_start_objective_code_teacher_and_a_learnable_hit(tiny_root, system):
    """benchmarks/joint_connector_warm_start.py: exact labels and code, both targets' loss and score on a known
    output (code loss exactly 0 on the code itself, AUC 1), the teacher putting the code in the video features'
    place only while set, and a connector that learns to mark frames whose latents are bright within 25 steps."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from joint_connector_warm_start import CodeTeacher, HitObjective, hit_labels, roc_auc

    from avgen.modules.connector_events import code_directions

    labels = hit_labels([[0.13, 0.9], [], [1.5]], 8, 8.0)
    assert labels.tolist() == [[0, 1, 0, 0, 0, 0, 0, 1], [0] * 8, [0] * 8]
    e_hit, e_none = code_directions(32)

    system = copy.deepcopy(system)
    connector = system.denoiser.video_connector
    objective = HitObjective(connector, system.video_alphas, "code")
    code = objective.code.code(labels)
    assert torch.equal(code[0, 1], e_hit) and torch.equal(code[0, 0], e_none)  # model.video_connector_events' code
    assert objective.loss(3.0 * code, labels).item() == pytest.approx(0.0, abs=1e-12)
    assert roc_auc(labels[:1].numpy(), objective.score(code[:1]).numpy()) == 1.0
    assert np.isnan(roc_auc(labels[1:2].numpy(), objective.score(code[1:2]).numpy()))  # one class only
    logit = HitObjective(connector, system.video_alphas, "logit", pos_weight=2.0)
    assert len(logit.parameters()) == len(objective.parameters()) + 2  # the head's weight and bias
    with pytest.raises(ValueError, match="--target"):
        HitObjective(connector, system.video_alphas, "mse")

    # x̂0 from the frozen base video U-Net: its ε̂ turned into x̂0 (x_t = √ᾱ·x̂0 + √(1-ᾱ)·ε̂ holds exactly)
    from joint_connector_warm_start import base_video_estimate

    shape_v, _ = system.latent_shapes(2)
    clean, t = torch.randn(shape_v), torch.tensor([10, 500])
    text_v = system.encode_text(["a red ball drops onto wood", "a cube hits glass"])[0]
    estimate = base_video_estimate(system)
    x_t = clean * 0.5
    eps = system.video.unet(x_t, t, encoder_hidden_states=text_v.repeat_interleave(shape_v[2], dim=0)).sample
    a_t = system.video_alphas[t].view(-1, 1, 1, 1, 1)
    assert torch.allclose(a_t.sqrt() * estimate(x_t, t, text_v) + (1 - a_t).sqrt() * eps, x_t, atol=1e-4)
    with pytest.raises(ValueError, match="x0="):
        objective.output(clean, t, "estimate")  # no estimator
    objective.estimator = estimate
    assert objective.output(clean, t, "estimate", text=text_v).shape == (2, shape_v[2], 32)
    with pytest.raises(ValueError, match="x0="):
        objective.output(clean, t, "noisy")

    teacher = CodeTeacher(system, objective, 8.0)
    shape_v, shape_a = system.latent_shapes(2)
    x_v, x_a = torch.randn(shape_v), torch.randn(shape_a)
    t = torch.tensor([10, 500])
    own_v, own_a = system.denoiser.connect(x_v, x_a, t, t)
    teacher.events = [torch.tensor([0.3]), torch.tensor([])]
    taught_v, taught_a = system.denoiser.connect(x_v, x_a, t, t)
    assert torch.equal(taught_a, own_a) and torch.equal(taught_v[0, 2], e_hit) and torch.equal(taught_v[1, 2], e_none)
    teacher.events = None
    assert torch.equal(system.denoiser.connect(x_v, x_a, t, t)[0], own_v)

    # a learnable case: 4×4 latents of noise, a hit frame two units brighter in every channel; clean x̂0, t = 0
    torch.manual_seed(0)
    frames = shape_v[2]
    labels = (torch.rand(64, frames) < 0.25).float()
    latents = torch.randn(64, shape_v[1], frames, 4, 4) * 0.5 + 2.0 * labels[:, None, :, None, None]
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    for _ in range(25):
        index = torch.randint(0, 64, (16,))
        loss = objective.loss(objective.output(latents[index], torch.zeros(16, dtype=torch.long), "clean"),
                              labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = objective.score(objective.output(latents, torch.zeros(64, dtype=torch.long), "clean"))
    assert roc_auc(labels.numpy(), scores.numpy()) > 0.9


def test_modality_use_is_exactly_zero_at_zero_init_and_seen_once_the_blocks_act(tiny_root, system):
    """benchmarks/joint_modality_use.py: the swapped-minus-paired loss is exactly 0 in both directions with the
    zero-initialised blocks (same draws, the other modality cannot reach the loss), and non-zero once the blocks'
    output projections are; the connector measurement gives one value per modality in range. The two clips differ
    in both modalities (black and silent / noise and loud), so the swap changes what the connectors see."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from joint_modality_use import connector_variation, modality_use

    system = copy.deepcopy(system)
    pair = tiny_batch(system, 2)
    pair["video"][0] = -1.0
    pair["audio"][0] = 0.0
    pair["audio"][1] = pair["audio"][1] / 0.3 * 0.9
    zero = modality_use(system, [pair], repeats=2)
    for modality in ("audio", "video"):
        assert zero[f"{modality}_loss"]["swapped_minus_paired"] == 0.0
        assert zero[f"{modality}_loss"]["ci95"] == [0.0, 0.0]
    # the measurement itself, on a stand-in whose losses depend on the other modality in a known way (each loss
    # also draws from the generator, as the real one does): swapped − paired is exactly the known difference

    class Known(torch.nn.Module):
        def diffusion_loss(self, batch, generator):
            noise = torch.randn((), generator=generator)
            v = batch["video"].mean(dim=(1, 2, 3, 4))
            a = batch["audio"].mean(dim=1)
            return {"loss_audio": ((a - v) ** 2).mean() + noise, "loss_video": ((v - 2 * a) ** 2).mean() + noise}

    known = modality_use(Known(), [pair], repeats=3)
    v, a = pair["video"].mean(dim=(1, 2, 3, 4)), pair["audio"].mean(dim=1)
    expected_audio = (((a - v.roll(1)) ** 2).mean() - ((a - v) ** 2).mean()).item()
    expected_video = (((v - 2 * a.roll(1)) ** 2).mean() - ((v - 2 * a) ** 2).mean()).item()
    assert known["audio_loss"]["swapped_minus_paired"] == pytest.approx(expected_audio, rel=1e-3) != 0
    assert known["video_loss"]["swapped_minus_paired"] == pytest.approx(expected_video, rel=1e-3) != 0
    features = connector_variation(system, [pair])
    for modality in ("video", "audio"):
        assert features[modality]["temporal_std_over_norm"] > 0
        assert -1 <= features[modality]["cosine_between_clips"] <= 1 + 1e-6
    with pytest.raises(ValueError, match="swapping needs at least 2"):
        modality_use(system, [tiny_batch(system, 1)], repeats=1)


def test_loss_weighting_and_high_noise_draws(tiny_root):
    """``model.loss.weighting`` changes the optimised loss only (loss_video / loss_audio stay the plain MSE); a cap
    of 1 is the plain MSE; ``model.timesteps.high_noise_prob`` changes the draw; bad values name their key."""
    from hydra.errors import InstantiationException

    from avgen.errors import ConfigError

    system, _ = build(tiny_root)  # not the module's: other tests change its weights and modes
    batch = tiny_batch(system)
    weighted, _ = build(tiny_root, "model.loss.weighting.audio=v")
    capped, _ = build(tiny_root, "model.loss.weighting={video: v, audio: v}", "model.loss.max_weight=1")
    weighted.load_state_dict(system.state_dict()), capped.load_state_dict(system.state_dict())
    with torch.no_grad():
        plain, v, one = (m.diffusion_loss(batch, generator=torch.Generator().manual_seed(3))
                         for m in (system, weighted, capped))
    assert plain["loss_audio"] == v["loss_audio"] and plain["loss_video"] == v["loss_video"]
    assert not torch.isclose(plain["loss"], v["loss"])
    assert torch.isclose(plain["loss"], one["loss"], rtol=1e-6)
    assert weighted.loss_weighting == ("uniform", "v") and weighted.loss_max_weight == 20.0
    high, _ = build(tiny_root, "model.timesteps.high_noise_prob.audio=1.0")
    assert high.high_noise_prob == (0.0, 1.0)
    for overrides, key in ((["model.loss.weighting.audio=snr"], "model.loss.weighting.audio='snr'"),
                           (["model.loss.max_weight=0.5"], "model.loss.max_weight=0.5"),
                           (["model.timesteps.high_noise_prob.video=2"], "model.timesteps.high_noise_prob.video=2"),
                           (["model.timesteps.train=shared", "model.timesteps.high_noise_prob.audio=0.5"],
                            "model.timesteps.high_noise_prob: video 0.0 and audio 0.5 differ")):
        with pytest.raises(InstantiationException) as err:
            build(tiny_root, *overrides)
        assert isinstance(err.value.__cause__, ConfigError) and key in str(err.value.__cause__)


def test_video_connector_events_loss_teacher_forcing_and_connector_only_steps(tiny_root, monkeypatch):
    """model.video_connector_events: the event loss is the code loss of the video connector's own output on x_v
    with the clean latent or zeros as x̂0, added with its weight in training only and leaving the diffusion draws
    as they were; teacher forcing hands the audio blocks the exact code (the connector then gets no diffusion
    gradient); connector-only steps run no U-Net and give every other trainable parameter a zero gradient."""
    import dataclasses

    from avgen.errors import ConfigError
    from avgen.modules.connector_events import VideoConnectorEvents

    system, _ = build(tiny_root, "model.video_connector_events.weight=2")
    with torch.no_grad():
        for block in list(system.denoiser.video_blocks.values()) + list(system.denoiser.audio_blocks.values()):
            for p in block.proj_out.parameters():
                p.normal_(0, 0.5)
    plain = copy.deepcopy(system)
    plain.connector_events = VideoConnectorEvents()
    batch = {**tiny_batch(system), "events": [torch.tensor([0.3]), torch.tensor([])]}  # 0.3 s · 8 fps -> frame 2
    labels = torch.zeros(2, 8)
    labels[0, 2] = 1

    seen = []
    features = system.denoiser.video_features

    def spy(video, t, x0=None):
        out = features(video, t, x0)
        seen.append((video, t, x0, out))
        return out

    monkeypatch.setattr(system.denoiser, "video_features", spy)

    def run(model, b=batch, seed=3):
        return model.diffusion_loss(b, generator=torch.Generator().manual_seed(seed))

    system.train(), plain.train()
    out, ref = run(system), run(plain)
    assert set(out) == {"loss", "loss_video", "loss_audio", "loss_events"} and "loss_events" not in ref
    assert torch.equal(out["loss_audio"], ref["loss_audio"]) and torch.equal(out["loss_video"], ref["loss_video"])
    assert torch.allclose(out["loss"], ref["loss"] + 2 * out["loss_events"])
    x_t, t, x0, output = seen[-1]  # the event loss's call: 8 draws per clip, clip-major
    assert x_t.shape[0] == t.shape[0] == 16 and len(set(t.tolist())) > 8
    clean = system.encode_batch(batch, torch.Generator().manual_seed(3))[0]  # the same posterior draw (the first)
    zero_rows = [not x0[i].any() for i in range(16)]
    assert 0 < sum(zero_rows) < 16  # clean_x0_prob 0.5: both x̂0 appear
    for i in range(16):
        assert zero_rows[i] or torch.equal(x0[i], clean[i // 8]), i
    assert torch.equal(out["loss_events"], system.event_code.loss(output, labels.repeat_interleave(8, dim=0)))
    system.eval()
    evaluated = run(system)
    assert torch.equal(evaluated["loss"], plain.eval().diffusion_loss(batch, torch.Generator().manual_seed(3))["loss"])
    assert "loss_events" in evaluated
    assert "loss_events" not in run(system, tiny_batch(system))  # validation data without events: no event loss
    system.train()

    # teacher forcing: the audio reads the exact code; the connector runs once (its event loss) and gets no
    # gradient from the diffusion loss
    system.connector_events = dataclasses.replace(system.connector_events, teacher_forcing=1.0)
    seen.clear()
    taught = run(system)
    assert len(seen) == 1
    connector = list(system.denoiser.video_connector.parameters())
    assert all(g is None for g in torch.autograd.grad(taught["loss_audio"], connector, allow_unused=True,
                                                      retain_graph=True))
    assert any(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(taught["loss"], connector))
    later = run(system, {**batch, "events": [torch.tensor([0.7]), torch.tensor([])]})
    assert not torch.equal(taught["loss_audio"], later["loss_audio"])  # the audio follows the taught events

    # connector-only steps: no U-Net runs; only the connector moves
    system.connector_events = dataclasses.replace(system.connector_events, connector_only_steps=5)
    monkeypatch.setattr(system.denoiser, "forward", lambda *a, **k: pytest.fail("a U-Net ran"))
    system.zero_grad(set_to_none=True)
    only = run(system)
    assert set(only) == {"loss", "loss_events"} and torch.allclose(only["loss"], 2 * only["loss_events"])
    only["loss"].backward()
    moved = []
    for name, p in system.trainable_parameters():
        assert p.grad is not None, name
        assert name.startswith("denoiser.video_connector.") or not p.grad.any(), name
        moved.append(name.startswith("denoiser.video_connector.") and bool(p.grad.any()))
    assert sum(moved) > 10
    # after DDP's reduction the zero gradients are dropped: Adam keeps no state (counts no step) for the rest
    system.on_after_backward()
    optimizer = torch.optim.Adam([p for _, p in system.trainable_parameters()], lr=1e-3)
    optimizer.step()
    for name, p in system.trainable_parameters():
        assert (p in optimizer.state) == name.startswith("denoiser.video_connector."), name

    with pytest.raises(ConfigError, match=r"needs batch\['events'\]"):
        run(system, tiny_batch(system))
    empty = {**batch, "events": [torch.tensor([]), torch.tensor([])]}
    monkeypatch.setattr(system, "EVENTLESS_BATCHES", 3)
    run(system, empty), run(system), run(system, empty), run(system, empty)  # an event resets the count
    with pytest.raises(ConfigError, match="no clip of the last 3 training batches has an event"):
        run(system, empty)

    # once global_step reaches connector_only_steps the joint step runs, and its gradients are kept
    monkeypatch.delattr(system.denoiser, "forward")
    monkeypatch.setattr(type(system), "global_step", property(lambda self: 5))
    assert not system.connector_only_step()
    system.zero_grad(set_to_none=True)
    joint = run(system)
    assert {"loss_audio", "loss_events"} <= set(joint)
    joint["loss"].backward()
    system.on_after_backward()
    assert all(p.grad is not None for _, p in system.trainable_parameters())
