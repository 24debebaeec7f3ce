"""Text-to-video backbone (zeroscope layout): tiny twin, loading, per-frame cross-attention contexts,
gradient checkpointing of the frozen UNet3D."""

from __future__ import annotations

import hashlib

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet3DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from avgen.backbones import text2video, tiny, unet3d_checkpointing
from avgen.backbones.loader import PretrainedModelMissing
from avgen.backbones.text2video import FrameContextProcessor, PerFrameUNet3D, load_text2video
from avgen.backbones.unet3d_checkpointing import (
    checkpointed_layers,
    disable_unet3d_checkpointing,
    enable_unet3d_checkpointing,
    is_checkpointed,
)
from avgen.errors import ConfigError

B, F, L, H, W = 2, 6, 77, 8, 8


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def backbone(tiny_root):
    return load_text2video("tiny:zeroscope", tiny_dir=tiny_root)


@pytest.fixture(scope="module")
def per_frame(backbone):
    return PerFrameUNet3D(backbone.unet)


def _inputs(backbone, seed: int = 0):
    """Noisy latents (B, 4, F, H, W), per-clip timesteps (B,), and distinct contexts (B, F, L, D) for every frame."""
    g = torch.Generator().manual_seed(seed)
    dim = backbone.unet.config.cross_attention_dim
    return (torch.randn(B, 4, F, H, W, generator=g), torch.tensor([17, 803]),
            torch.randn(B, F, L, dim, generator=g))


def _fresh_unet(tiny_root) -> UNet3DConditionModel:
    unet = UNet3DConditionModel.from_pretrained(tiny_root / f"zeroscope-v{tiny.TINY_VERSION}" / "unet")
    return unet.requires_grad_(False).eval()


def _frame_rows_reference(unet, sample, timestep, contexts) -> torch.Tensor:
    """Per-frame conditioning as TempoTokens' patched UNet does it: every spatial transformer receives the
    (B·F, L, D) rows as its encoder_hidden_states (substituted by hooks, not by attention processors)."""
    rows = contexts.flatten(0, 1)

    def substitute(module, args, kwargs):
        return args, {**kwargs, "encoder_hidden_states": rows}

    handles = [m.register_forward_pre_hook(substitute, with_kwargs=True)
               for m in unet.modules() if isinstance(m, Transformer2DModel)]
    try:
        return unet(sample, timestep, encoder_hidden_states=contexts[:, 0]).sample
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------------- loading


def test_tiny_zeroscope_has_the_zeroscope_layout_and_is_frozen(backbone):
    unet = backbone.unet
    assert isinstance(unet, UNet3DConditionModel)
    assert list(unet.config.down_block_types) == ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"]
    assert list(unet.config.up_block_types) == ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3
    assert unet.config.cross_attention_dim == backbone.text_encoder.config.hidden_size
    assert backbone.vae.config.scaling_factor == 0.18215
    for module in (unet, backbone.vae, backbone.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    # The temporal convolutions are not the identity they are at diffusers' init.
    convs = [m for m in unet.modules() if isinstance(m, TemporalConvLayer)]
    assert convs and all(m.conv4[-1].weight.abs().sum() > 0 for m in convs)


def test_training_and_sampling_schedules_share_zeroscope_betas(backbone):
    noise, sampler = backbone.noise_scheduler, backbone.scheduler
    assert type(noise) is DDPMScheduler and type(sampler) is DPMSolverMultistepScheduler
    assert sampler.config.algorithm_type == "dpmsolver++"
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    torch.testing.assert_close(noise.alphas_cumprod, torch.cumprod(1 - betas, 0))
    assert torch.equal(sampler.alphas_cumprod, noise.alphas_cumprod)
    assert noise.config.prediction_type == "epsilon" and noise.config.clip_sample is False
    assert sampler.config.steps_offset == 1


def test_tiny_zeroscope_weights_are_deterministic(backbone, tiny_root, tmp_path):
    def digests(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    assert digests(tiny.materialize("zeroscope", tmp_path)) == digests(tiny_root / f"zeroscope-v{tiny.TINY_VERSION}")


def test_sampler_choice_and_overrides(tiny_root):
    loaded = load_text2video("tiny:zeroscope", tiny_dir=tiny_root, scheduler="ddim",
                             scheduler_overrides={"timestep_spacing": "trailing"})
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.scheduler.config.timestep_spacing == "trailing"
    assert loaded.noise_scheduler.config.timestep_spacing == "leading"  # the training schedule is never overridden
    with pytest.raises(ConfigError, match="model.t2v.scheduler="):
        load_text2video("tiny:zeroscope", tiny_dir=tiny_root, scheduler="euler")
    with pytest.raises(ConfigError, match="model.t2v.scheduler_overrides"):
        load_text2video("tiny:zeroscope", tiny_dir=tiny_root, scheduler_overrides={"not_an_argument": 1})


def test_missing_base_names_the_config_key_and_the_tiny_twin():
    with pytest.raises(PretrainedModelMissing) as info:
        load_text2video("no-such-user/no-such-model")
    message = str(info.value)
    # a hub id on the key is the model to fetch; a missing local folder names the key's registered original
    assert "model.t2v.base" in message and "scale=tiny" in message
    assert "huggingface-cli download no-such-user/no-such-model" in message
    with pytest.raises(PretrainedModelMissing) as info:
        load_text2video("/no/such/folder")
    assert "huggingface-cli download cerspense/zeroscope_v2_576w" in str(info.value)


def test_encode_video_is_the_scaled_per_frame_posterior_sample_and_decode_inverts_shapes(backbone):
    video = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    latents = text2video.encode_video(backbone, video, generator=torch.Generator().manual_seed(3))
    assert latents.shape == (1, 4, 3, 16, 16)
    with torch.no_grad():
        posterior = backbone.vae.encode(video[0]).latent_dist
    expected = posterior.sample(torch.Generator().manual_seed(3)) * 0.18215
    torch.testing.assert_close(latents[0].permute(1, 0, 2, 3), expected)
    frames = text2video.decode_video(backbone, latents, chunk=2)
    assert frames.shape == (1, 3, 3, 32, 32) and frames.abs().max() <= 1


# ----------------------------------------------------------------------------- per-frame contexts


def test_same_context_for_every_frame_equals_the_plain_unet(backbone, per_frame):
    sample, timestep, contexts = _inputs(backbone)
    clip_context = contexts[:, 0]
    with torch.no_grad():
        ours = per_frame(sample, timestep, clip_context[:, None].expand(B, F, L, -1))
        plain = backbone.unet(sample, timestep, encoder_hidden_states=clip_context).sample
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-5)


def test_each_frame_attends_to_its_own_context(backbone, per_frame):
    sample, timestep, contexts = _inputs(backbone)
    with torch.no_grad():
        ours = per_frame(sample, timestep, contexts)
        reference = _frame_rows_reference(backbone.unet, sample, timestep, contexts)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_changing_one_frames_context_changes_that_frame_most(backbone, per_frame):
    sample, timestep, contexts = _inputs(backbone)
    shared = contexts[:, :1].expand(B, F, L, -1)
    changed = shared.clone()
    changed[:, 3] = contexts[:, 3]
    with torch.no_grad():
        base = per_frame(sample, timestep, shared)
        again = per_frame(sample, timestep, shared.clone())
        moved = per_frame(sample, timestep, changed)
    assert torch.equal(base, again)
    change = (moved - base).abs().mean(dim=(1, 3, 4))  # (B, F)
    # The temporal layers carry the change to the other frames, more weakly.
    assert (change > 0).all()
    assert (change[:, 3] > 1.5 * change[:, [0, 1, 2, 4, 5]].amax(dim=1)).all()


def test_classifier_free_guidance_batch_keeps_each_clip_with_its_contexts(backbone, per_frame):
    sample, timestep, contexts = _inputs(backbone)
    null = torch.zeros_like(contexts)
    with torch.no_grad():
        both = per_frame(torch.cat([sample, sample]), timestep.repeat(2), torch.cat([contexts, null]))
        cond = per_frame(sample, timestep, contexts)
        uncond = per_frame(sample, timestep, null)
    torch.testing.assert_close(both, torch.cat([cond, uncond]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"contexts \(B, F, L, D\)"):
        per_frame(sample, timestep, contexts[:, :-1])


def test_wrapping_leaves_the_plain_unet_unchanged_and_rewraps_new_processors(backbone, tiny_root):
    unet = _fresh_unet(tiny_root)
    sample, timestep, contexts = _inputs(backbone)
    originals = {name: m.processor for name, m in unet.named_modules() if isinstance(m, Attention)}
    with torch.no_grad():
        before = unet(sample, timestep, encoder_hidden_states=contexts[:, 0]).sample
        wrapper = PerFrameUNet3D(unet)
        wrapper(sample, timestep, contexts)
        after = unet(sample, timestep, encoder_hidden_states=contexts[:, 0]).sample
        assert torch.equal(before, after)
        wrapped = {name: m.processor for name, m in unet.named_modules() if isinstance(m, Attention)}
        assert all(isinstance(p, FrameContextProcessor) and p.processor is originals[name]
                   for name, p in wrapped.items())
        # A processor set later (another attention backend) is wrapped on the next call.
        unet.set_attn_processor(AttnProcessor())
        torch.testing.assert_close(wrapper(sample, timestep, contexts),
                                   _frame_rows_reference(unet, sample, timestep, contexts), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------- checkpointing


def _input_gradients(per_frame, sample, timestep, contexts):
    sample, contexts = sample.clone().requires_grad_(True), contexts.clone().requires_grad_(True)
    out = per_frame(sample, timestep, contexts)
    # A weighted sum, so every output element has its own upstream gradient.
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), sample.grad, contexts.grad


def test_checkpointing_gives_the_same_gradients_and_keeps_the_module_tree(backbone, per_frame):
    unet = backbone.unet
    sample, timestep, contexts = _inputs(backbone)
    keys = list(unet.state_dict())
    children = {name: id(m) for name, m in unet.named_modules()}
    plain = _input_gradients(per_frame, sample, timestep, contexts)
    count = enable_unet3d_checkpointing(unet)
    try:
        assert count == len(checkpointed_layers(unet)) == 49
        assert all(is_checkpointed(m) for m in checkpointed_layers(unet))
        assert list(unet.state_dict()) == keys
        assert {name: id(m) for name, m in unet.named_modules()} == children
        assert not unet.training
        checkpointed = _input_gradients(per_frame, sample, timestep, contexts)
    finally:
        disable_unet3d_checkpointing(unet)
    assert plain[2].abs().sum() > 0
    for ours, reference in zip(checkpointed, plain, strict=True):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    assert not any("forward" in vars(m) for m in unet.modules())


def test_checkpointing_drops_activations_and_only_while_recording_gradients(backbone, per_frame, monkeypatch):
    unet = backbone.unet
    sample, timestep, contexts = _inputs(backbone)

    def saved_bytes() -> int:
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            per_frame(sample, timestep, contexts.clone().requires_grad_(True)).sum().backward()
        return total

    calls = []
    real = unet3d_checkpointing.checkpoint
    monkeypatch.setattr(unet3d_checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    without = saved_bytes()
    enable_unet3d_checkpointing(unet)
    try:
        with_checkpointing = saved_bytes()
        assert len(calls) == len(checkpointed_layers(unet))
        with torch.no_grad():
            per_frame(sample, timestep, contexts)
        assert len(calls) == len(checkpointed_layers(unet))
    finally:
        disable_unet3d_checkpointing(unet)
    # Tensors kept for the backward pass outside the checkpointed layers: a small part of all of them.
    assert with_checkpointing < without / 4


def test_checkpointing_refuses_a_model_without_unet3d_layers():
    with pytest.raises(ValueError, match="UNet3DConditionModel"):
        enable_unet3d_checkpointing(torch.nn.Linear(2, 2))
