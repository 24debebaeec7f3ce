"""VTA-LDM (video → audio) at scale=tiny: trained projection and null, Min-SNR weights, classifier-free
guidance, parity of the sampler with diffusers' StableDiffusionPipeline, the released checkpoint's key
layout, gradient checkpointing, the optical-flow condition."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

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
def test_the_loss_is_the_weighted_mean_of_per_clip_errors(tiny_root, monkeypatch):
    system = build(tiny_root, "model.objective.prediction_type=v_prediction", "model.objective.min_snr_gamma=5")
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
    torch.rand(2, generator=g), torch.rand(2, generator=g)  # the condition-dropout draws (video, text)
    t = torch.randint(0, len(system.alphas), (2,), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    assert torch.equal(t, seen["t"])
    target = training_target("v_prediction", latents, noise, system.alphas, t)
    per_clip = ((seen["out"] - target) ** 2).mean(dim=(1, 2, 3))
    ratio = system.alphas[t] / (1 - system.alphas[t])
    expected = (torch.clamp(ratio, max=5) / (ratio + 1) * per_clip).mean()
    assert torch.allclose(losses["loss"], expected, rtol=1e-5)


# ------------------------------------------------------------------------------ what is trained
def test_projection_is_trained_and_frozen_parts_are_not(tiny_root):
    system = build(tiny_root, "model.cond_drop_prob=0.0")
    trainable = {n.split(".")[0] for n, _ in system.trainable_parameters()}
    assert trainable == {"unet", "condition"}
    system.train()
    assert not system.encoder.training and not system.vae.training
    before = system.condition.projection.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for _, p in system.trainable_parameters()], lr=1e-2)
    loss = system.diffusion_loss(batch_of(system), generator=torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    grad = system.condition.projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    assert not torch.equal(before, system.condition.projection.weight)


@pytest.mark.parametrize("drop", [0.0, 1.0])
def test_condition_dropout_trains_the_null(tiny_root, drop, monkeypatch):
    """p = 1: every context is the video null (zeros after φ, mask all true); p = 0: every context is φ(f_V)."""
    system = build(tiny_root, f"model.cond_drop_prob={drop}")
    seen = {}
    monkeypatch.setattr(system, "denoise", lambda x, t, context, mask: seen.update(context=context, mask=mask) or x)
    system.train()
    batch = batch_of(system)
    system.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    assert seen["mask"].all()
    with torch.no_grad():
        expected = torch.zeros_like(seen["context"]) if drop else system.context(batch["video"])[0]
    assert torch.allclose(seen["context"], expected, atol=1e-6)


@pytest.mark.parametrize("drop", [0.0, 1.0])
def test_text_and_video_are_dropped_independently(tiny_root, drop, monkeypatch):
    """conditions [text, video]: text slots first; p = 1 drops both, the text to "" and the video to its null."""
    system = build(tiny_root, "model.conditions=[text,video]", f"model.cond_drop_prob={drop}")
    seen = {}
    monkeypatch.setattr(system, "denoise", lambda x, t, context, mask: seen.update(context=context) or x)
    system.train()
    batch = {**batch_of(system), "caption": ["a dog barks", "rain on a roof"]}
    system.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    slots = system.clip.num_frames
    with torch.no_grad():
        if drop:
            empty, _ = system.context(batch["video"], captions=["", ""], keep_video=torch.zeros(2, dtype=torch.bool))
            assert torch.equal(seen["context"][:, slots:], torch.zeros_like(seen["context"][:, slots:]))
            assert torch.allclose(seen["context"], empty, atol=1e-6)
        else:
            full, _ = system.context(batch["video"], captions=batch["caption"])
            assert torch.allclose(seen["context"], full, atol=1e-6)


def test_padded_frames_are_zero_and_masked(system):
    video = batch_of(system)["video"]
    context, mask = system.context(video, lengths=[3, 1])
    assert mask.tolist() == [[True] * 3, [True, False, False]]  # as long as the longest clip
    assert torch.equal(context[1, 1:], torch.zeros_like(context[1, 1:]))
    alone, _ = system.context(video[1:, :1])
    assert torch.allclose(context[1, :1], alone[0], atol=1e-6)


def test_paper_geometry():
    """10-s clips padded to 163,840 samples: 1024 mel frames → latents (8, 256, 16), tiled by VAE 4× · U-Net 8×."""
    from avgen.backbones.audioldm import AudioLDMMel, padded_frames
    from avgen.config_files import model_config_node

    mel = AudioLDMMel()
    audio = model_config_node("vta_ldm", "audio", scale="paper")
    samples = round(audio["seconds"] * 16000)
    assert samples == 163_840 and mel.num_frames(samples) == 1024 == padded_frames(1024, 32)
    assert (mel.num_frames(samples) // 4, mel.n_mels // 4) == (256, 16)


# ------------------------------------------------------------------------------ sampling
def test_guidance_is_equation_2_and_one_means_a_single_pass(system, monkeypatch):
    calls = []
    original = system.denoise

    def record(x, t, context, mask):
        out = original(x, t, context, mask)
        calls.append((x.shape[0], context.clone(), out.clone()))
        return out

    monkeypatch.setattr(system, "denoise", record)
    video = batch_of(system)["video"]
    branches, weights = system.guidance_branches(video, None, None, "", 3.0, 1.0)
    assert weights == [3.0] and len(branches) == 2
    latents = torch.randn(2, *system.latent_shape, generator=torch.Generator().manual_seed(1))
    x3 = system.generate_latents(branches, weights, steps=1, sampler="ddim", latents=latents)
    [(rows, ctx, out)] = calls
    assert rows == 4 and torch.equal(ctx[:2], torch.zeros_like(ctx[:2]))
    uncond, cond = out.chunk(2)
    scheduler = system.sampler("ddim")
    scheduler.set_timesteps(1)
    expected = scheduler.step(uncond + 3.0 * (cond - uncond), scheduler.timesteps[0], latents).prev_sample
    assert torch.allclose(x3, expected, atol=1e-6)
    calls.clear()
    branches, weights = system.guidance_branches(video, None, None, "", 1.0, 1.0)
    system.generate_latents(branches, weights, steps=1, sampler="ddim", latents=latents)
    assert [c[0] for c in calls] == [2] and weights == []


def test_text_and_video_guidance_formula(tiny_root, monkeypatch):
    """ε̂ = ε(∅, neg) + w_v[ε(v, neg) − ε(∅, neg)] + w_t[ε(v, t) − ε(v, neg)] on a hand case: the U-Net replaced by
    a function whose output is a known value per branch."""
    system = build(tiny_root, "model.conditions=[text,video]")
    video = batch_of(system, b=1)["video"]
    branches, weights = system.guidance_branches(video, None, ["a dog barks"], "bad quality", 3.0, 2.0)
    slots = system.clip.num_frames
    null_neg, video_neg, full = branches
    assert torch.equal(null_neg[0][:, slots:], torch.zeros_like(null_neg[0][:, slots:])) and null_neg[1].all()
    assert torch.equal(video_neg[0][:, slots:], full[0][:, slots:])  # same video, other text
    assert torch.equal(null_neg[0][:, :slots], video_neg[0][:, :slots])  # both carry the negative prompt
    assert not torch.allclose(video_neg[0][:, :slots], full[0][:, :slots])
    values = {0: 1.0, 1: 5.0, 2: 6.0}  # ε(∅, neg), ε(v, neg), ε(v, t)

    def fake(x, t, context, mask):
        return torch.cat([torch.full_like(x[:1], values[i]) for i in range(x.shape[0])])

    monkeypatch.setattr(system, "denoise", fake)
    monkeypatch.setattr(system, "sampler", lambda name: _IdentityStep())
    out = system.generate_latents(branches, weights, steps=1, sampler="ddim",
                                  latents=torch.zeros(1, *system.latent_shape))
    assert torch.allclose(out, torch.full_like(out, 1.0 + 3.0 * (5.0 - 1.0) + 2.0 * (6.0 - 5.0)))


class _IdentityStep:
    """A scheduler whose step returns the model output (to read the guided ε̂ directly)."""

    init_noise_sigma = 1.0
    timesteps = [0]

    def set_timesteps(self, steps, device=None):
        pass

    def scale_model_input(self, x, t):
        return x

    def step(self, out, t, x):
        from types import SimpleNamespace

        return SimpleNamespace(prev_sample=out)


def test_conditions_change_the_context_as_documented(tiny_root):
    video_only = build(tiny_root)
    with_pe = build(tiny_root, "model.conditions=[video,pe]")
    with_pe.load_state_dict(video_only.state_dict())
    video = batch_of(video_only)["video"]
    tokens = video_only.video_tokens(video)
    from avgen.modules.vta_condition import sinusoidal_table

    plain, _ = video_only.context(video)
    shifted, _ = with_pe.context(video)
    table = sinusoidal_table(tokens.embeds.shape[1], tokens.embeds.shape[2])
    assert torch.allclose(shifted, with_pe.condition.projection(tokens.embeds + table), atol=1e-5)
    assert not torch.allclose(plain, shifted)
    text_only = build(tiny_root, "model.conditions=[text]")
    context, mask = text_only.context(video, captions=["a", "b"])
    assert context.shape[1] == video.shape[1] and mask.all()  # one text token per frame slot, no video
    assert torch.allclose(context[0, 0], context[0, -1])
    with pytest.raises(Exception, match=r"model\.conditions=\['flow'\]: flow is computed from the video's frames "
                                        r"and conditions with it; add video"):
        build(tiny_root, "model.conditions=[flow]")


def test_samplers_keep_the_training_schedule_and_their_settings(tiny_root):
    """Each sampler has the training noise schedule and its SAMPLER_OVERRIDES, also when the training schedule leaves
    a setting at its default (DDIM's ``steps_offset=1`` was lost then: diffusers resets the keys a config lists in
    ``_use_default_values`` when given a merged dict)."""
    from avgen.systems.vta_ldm import SAMPLER_OVERRIDES, SAMPLERS

    system = build(tiny_root, "~model.noise_scheduler.steps_offset", "model.objective.prediction_type=v_prediction")
    for sampler in SAMPLERS:
        built = system.sampler(sampler)
        for key, value in SAMPLER_OVERRIDES[sampler].items():
            assert built.config[key] == value, (sampler, key)
        assert torch.equal(built.alphas_cumprod, system.noise_scheduler.alphas_cumprod), sampler
        assert built.config.prediction_type == "v_prediction", sampler


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm_solver"])
def test_sampler_equals_stable_diffusion_pipeline(system, sampler):
    """Same U-Net, context φ(f_V), initial latents and scheduler: avgen's sampler gives diffusers'
    StableDiffusionPipeline(prompt_embeds=φ(f_V), negative_prompt_embeds=0, output_type="latent")."""
    from diffusers import StableDiffusionPipeline

    branches, weights = system.guidance_branches(batch_of(system)["video"], None, None, "", 3.0, 1.0)
    (_, null_mask), (context, mask) = branches
    assert mask.all() and null_mask.all()  # what the pipeline assumes (it passes no mask)
    latents = torch.randn(2, *system.latent_shape, generator=torch.Generator().manual_seed(2))
    ours = system.generate_latents(branches, weights, steps=3, sampler=sampler, latents=latents, seed=5)
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


def test_a_clip_does_not_depend_on_its_batch(system):
    """Windows of different lengths generated together give what each gives alone (padding is masked)."""
    video = batch_of(system)["video"]
    both = system.generate(video, lengths=[video.shape[1], 3], steps=2, sampler="ddpm", seed=4)
    first = system.generate(video[:1], steps=2, sampler="ddpm", seed=4)
    second = system.generate(video[1:, :3], steps=2, sampler="ddpm", seed=5)
    assert torch.allclose(both[0], first[0], atol=1e-5) and torch.allclose(both[1], second[0], atol=1e-5)


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
    state["vid_fea_extractor.linear_layer.weight"] = torch.randn(system.condition.projection.weight.shape, generator=g)
    state["vid_fea_extractor.linear_layer.bias"] = torch.randn(system.condition.projection.bias.shape, generator=g)
    state["vid_fea_extractor.clip_vision.vision_model.post_layernorm.weight"] = torch.ones(4)
    return state


def test_released_checkpoint_layout_loads(system, tiny_root, tmp_path):
    state = released_layout(system)
    path = tmp_path / "pytorch_model_2.bin"  # the release's model file (the authors' inference loads it)
    torch.save(state, path)
    loaded = build(tiny_root, "experiment=vta_ldm_public", f"model.released={path}")
    for k, v in loaded.unet.state_dict().items():
        assert torch.equal(v, state[f"unet.{k}"])
    assert torch.equal(loaded.condition.projection.weight, state["vid_fea_extractor.linear_layer.weight"])
    assert (loaded.objective.prediction_type, loaded.objective.min_snr_gamma, loaded.objective.min_snr_form) == (
        "v_prediction", 5, "epsilon")
    assert loaded.encoder.normalize is False and loaded.noise_scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(Exception, match=r"its U-Net does not fit the one model\.unet\.\* builds"):
        build(tiny_root, f"model.released={path}", "model.tiny.unet.layers_per_block=2")


def test_released_checkpoint_errors(system, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.released=.*no such file"):
        load_released(tmp_path / "missing.bin")
    state = released_layout(system)
    state["text_encoder.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.bin")
    with pytest.raises(ReleasedCheckpointError, match=r"other keys \['text_encoder.weight'\]"):
        load_released(tmp_path / "extra.bin")
    # another file of the release (accelerate saved each prepared module): no U-Net, so the error names the model's
    torch.save({"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_out.weight": torch.zeros(1)},
               tmp_path / "pytorch_model.bin")
    with pytest.raises(ReleasedCheckpointError, match=r"the model is the release's pytorch_model_2\.bin"):
        load_released(tmp_path / "pytorch_model.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ReleasedCheckpointError, match="cannot be read"):
        load_released(tmp_path / "junk.bin")


# ------------------------------------------------------------------------------ settings and memory
@pytest.mark.parametrize("override, message", [
    ("model.objective.prediction_type=sample", r"model\.objective\.prediction_type='sample'"),
    ("model.objective.min_snr_gamma=-1", r"model\.objective\.min_snr_gamma=-1"),
    ("+model.objective.snr=1", r"model\.objective\.snr: not an objective setting"),
    ("model.tiny.audio.seconds=0.5", r"model\.audio\.seconds=0\.5: shorter than the clip"),
    ("model.tiny.audio.seconds=1.1", r"do not divide by the VAE × U-Net downsampling \(8\); use 1\.12"),
    ("model.sampling.sampler=euler", r"model\.sampling\.sampler='euler'"),
    ("model.tiny.encoder.fps=2", r"data\.clip\.fps=8: VTA-LDM's encoder embeds frames at 2 fps"),
])
def test_bad_settings_are_refused(tiny_root, override, message):
    with pytest.raises(Exception) as info:  # Hydra wraps what the constructor raised
        build(tiny_root, override)
    assert info.match(message) and "ConfigError" in str(info.value)


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


@pytest.mark.parametrize("name", sorted(__import__("avgen.encoders.video_tokens", fromlist=["x"]).VIDEO_ENCODERS))
def test_every_video_encoder_conditions_the_model(tiny_root, name):
    """model.encoder.name=<each registered encoder> at scale=tiny: its tokens (B, T_v, d) on its own time axis go
    through φ, and a training step and a sampling step run."""
    system = build(tiny_root, f"model.encoder.name={name}")
    video = batch_of(system)["video"]
    tokens = system.video_tokens(video)
    b, slots, width = tokens.embeds.shape
    assert (b, width) == (2, system.encoder.embed_dim)
    # the real tokens cover the clip on the encoder's time axis (a windowed encoder pads its last window)
    assert tokens.mask.sum(1).tolist() == [math.ceil(system.clip.seconds / tokens.seconds_per_token)] * 2
    context, mask = system.context(video)
    assert context.shape == (2, slots, system.unet.config.cross_attention_dim)
    loss = system.diffusion_loss(batch_of(system), generator=torch.Generator().manual_seed(0))["loss"]
    assert torch.isfinite(loss)
    audio = system.generate(video[:1], steps=1, sampler="ddim")
    assert audio.shape == (1, system.clip.num_samples)


# ------------------------------------------------------------------------------ the flow condition (Table 3)
@pytest.fixture(scope="module")
def flow_system(tiny_root):
    """vta_ldm_aux's Vision+Optical Flow row at scale=tiny."""
    torch.manual_seed(0)
    return build(tiny_root, "experiment=vta_ldm_aux", "model.conditions=[video,flow]")


def test_flow_frames_are_the_flow_images_of_the_encoder_frames(flow_system):
    from avgen.media import flow_images, quantize_unit_range

    video = batch_of(flow_system)["video"]
    images = flow_system.flow_frames(video, lengths=[video.shape[1], 1])
    assert [tuple(i.shape) for i in images] == [tuple(video.shape[1:]), (1, *video.shape[2:])]
    assert images[0].dtype == torch.uint8 and images[0][0].min() == 255 and images[1].min() == 255
    frames = quantize_unit_range(video[0]).permute(0, 2, 3, 1).numpy()
    assert torch.equal(images[0], torch.from_numpy(flow_images(frames, flow_system.flow)).permute(0, 3, 1, 2))


def test_flow_context_is_video_then_flow_through_one_projection(flow_system):
    """(B, 2T, D_φ): [0, T) φ(encoder(frames)), [T, 2T) φ(encoder(flow images)), one mask; the video null
    zeroes both halves."""
    video = batch_of(flow_system)["video"]
    context, mask = flow_system.context(video, lengths=[video.shape[1], 3])
    video_tokens = flow_system.video_tokens(video, [video.shape[1], 3])
    flow_tokens = flow_system.encoder(flow_system.flow_frames(video, [video.shape[1], 3]))
    slots = video_tokens.embeds.shape[1]
    assert context.shape == (2, 2 * slots, flow_system.unet.config.cross_attention_dim)
    assert torch.equal(mask, torch.cat([video_tokens.mask, video_tokens.mask], 1))
    phi = flow_system.condition.projection
    with torch.no_grad():
        assert torch.allclose(context[:, :slots], phi(video_tokens.embeds) * video_tokens.mask[..., None], atol=1e-5)
        assert torch.allclose(context[:, slots:], phi(flow_tokens.embeds) * flow_tokens.mask[..., None], atol=1e-5)
    null, null_mask = flow_system.context(video, keep_video=torch.zeros(2, dtype=torch.bool), tokens=video_tokens,
                                          flow_tokens=flow_tokens)
    assert torch.equal(null, torch.zeros_like(null)) and null_mask.all()


def test_flow_trains_and_samples_with_tokens_computed_once(flow_system, monkeypatch):
    """A training step reaches φ; a guided sampling call computes the flow once: branches (∅, v), the null branch
    zero over the video and flow slots."""
    flow_system.train()
    loss = flow_system.diffusion_loss(batch_of(flow_system, b=1), generator=torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and flow_system.condition.projection.weight.grad.abs().sum() > 0
    flow_system.zero_grad()
    flow_system.eval()
    calls = []
    original = flow_system.flow_frames
    monkeypatch.setattr(flow_system, "flow_frames", lambda *a, **k: calls.append(1) or original(*a, **k))
    branches, weights = flow_system.guidance_branches(batch_of(flow_system, b=1)["video"], None, None, "", 3.0, 1.0)
    assert weights == [3.0] and len(calls) == 1
    (null, null_mask), (full, _) = branches
    assert null.shape == full.shape == (1, 2 * flow_system.clip.num_frames, flow_system.unet.config.cross_attention_dim)
    assert torch.equal(null, torch.zeros_like(null)) and null_mask.all()
    latents = flow_system.generate_latents(branches, weights, steps=1, sampler="ddim")
    assert latents.shape == (1, *flow_system.latent_shape) and torch.isfinite(latents).all()
