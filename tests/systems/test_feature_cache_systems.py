"""The systems' side of training's feature cache (issue 19): ``feature_parts()``, ``compute_features()`` and a
``diffusion_loss`` that reads ``batch["features"]``.

For each system at scale=tiny: one training step from cached features equals the step that computes them, for
the same generator (loss and the gradients of the trainable parameters): to float rounding with float32 features,
to fp16 tolerance with features stored as float16; with condition dropout active; with the modalities the cached
parts replace left undecoded ((B, 0, 3, H, W) / (B, 0)). Part descriptions follow the weights and the
preprocessing and are JSON. The posterior split (encode = posterior + sample) keeps the encoders' outputs.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hydra.utils import instantiate

from avgen.data.feature_cache import PART_NAMES, skipped_modalities
from avgen.errors import ConfigError
from tests.conftest import compose


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """torch on one thread (the test machine's two cores are shared)."""


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("feature_cache_systems")


def build(root, experiment: str, *overrides: str):
    torch.manual_seed(0)
    cfg = compose([f"experiment={experiment}", "scale=tiny", *overrides], root)
    return instantiate(cfg.model)


def batch_of(system, b: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c = system.clip
    return {"video": torch.rand(b, c.num_frames, 3, c.height, c.width, generator=g) * 2 - 1,
            "audio": (torch.rand(b, c.num_samples, generator=g) * 2 - 1) * 0.3,
            "caption": ["a red ball drops onto wood", "rain falls on a tin roof", "a dog barks"][:b],
            "key": [f"clip{i}" for i in range(b)]}


def train_step(system, batch: dict, seed: int) -> tuple[dict, dict]:
    """Losses and the trainable parameters' gradients of one training step drawn from ``seed`` (torch's global
    stream too: the trainable modules' dropout draws from it)."""
    system.train()
    system.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    losses = system.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))
    losses["loss"].backward()
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in system.trainable_parameters()}
    system.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in losses.items()}, grads


def cached_batch(system, batch: dict, parts, dtype: torch.dtype = torch.float32) -> dict:
    """``batch`` as the datamodule gives it with a cache of ``parts`` stored as ``dtype``: ``features`` float32,
    the modalities only cached parts read left undecoded."""
    features = system.compute_features(batch, parts)
    for tensors in features.values():
        for name, value in tensors.items():
            assert value.dtype == torch.float32 and not value.requires_grad
            tensors[name] = value.to(dtype).float()
    out = {**batch, "features": features}
    skipped = skipped_modalities(system.feature_parts(), set(parts))
    if "video" in skipped:
        out["video"] = batch["video"][:, :0]
    if "audio" in skipped:
        out["audio"] = batch["audio"][:, :0]
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def assert_same_step(system, batch: dict, parts, seed: int, *, fp16_tolerance: float, partial=()) -> None:
    """The step from cached ``parts`` (and from the cached ``partial`` subset) equals the computing step: to 1e-6
    with float32 features, to ``fp16_tolerance`` (relative) with float16 features."""
    losses, grads = train_step(system, batch, seed)
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    for subset in (parts, partial) if partial else (parts,):
        cached, cached_grads = train_step(system, cached_batch(system, batch, subset), seed)
        for name in losses:
            torch.testing.assert_close(cached[name], losses[name], rtol=1e-6, atol=1e-7)
        for name in grads:
            torch.testing.assert_close(cached_grads[name], grads[name], rtol=1e-5, atol=1e-7)
    half, half_grads = train_step(system, cached_batch(system, batch, parts, torch.float16), seed)
    for name in losses:
        assert relative_error(half[name], losses[name]) < fp16_tolerance, name
    total = torch.cat([g.flatten() for g in grads.values()])
    total_half = torch.cat([half_grads[n].flatten() for n in grads])
    assert relative_error(total_half, total) < fp16_tolerance
    # and float16 does change something: the comparison can fail
    assert not torch.equal(total_half, total) or not all(torch.equal(half[k], losses[k]) for k in losses)


class Stop(Exception):
    pass


def mixed_dropout_seed(system, batch: dict, monkeypatch, method: str = "drop_conditions") -> int:
    """A generator seed whose condition dropout (``method``, stopped there) keeps some captions and drops others."""
    seen = {}
    original = getattr(type(system), method)

    def record(self, *args, **kwargs):
        seen["keep"] = original(self, *args, **kwargs)[1]
        raise Stop

    monkeypatch.setattr(type(system), method, record)
    system.train()
    try:
        for seed in range(20):
            with pytest.raises(Stop), torch.no_grad():
                system.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))
            if 0 < int(seen["keep"].sum()) < len(seen["keep"]):
                return seed
    finally:
        monkeypatch.undo()
    raise AssertionError("no seed among 20 mixes kept and dropped captions")


def nudged_description(system, module: torch.nn.Module, part: str) -> dict:
    """``part``'s description after adding 1e-3 to one weight of the frozen ``module`` (restored after)."""
    param = next(module.parameters())
    saved = param.detach().clone()
    with torch.no_grad():
        param.add_(1e-3)
    try:
        return system.feature_parts()[part].description("float16")
    finally:
        with torch.no_grad():
            param.copy_(saved)


# ======================================================================================== joint
@pytest.fixture(scope="module")
def joint(tiny_root):
    system = build(tiny_root, "joint_cmcpe", "data.clip.seconds=0.5")
    system.cond_drop_prob = 0.5
    return system


def test_joint_parts_are_described_and_json(joint):
    parts = joint.feature_parts()
    assert list(parts) == ["video_latents", "audio_latents", "text"] == [p for p in PART_NAMES if p in parts]
    assert parts["video_latents"].reads == ("video",) and parts["audio_latents"].reads == ("audio",)
    assert parts["text"].reads == ()
    for name, part in parts.items():
        description = part.description("float16")
        assert json.loads(json.dumps(description)) == description
        assert part.name == name and all(len(h) == 64 for h in part.weights_sha256.values())
    assert parts["video_latents"].preprocessing["frames"] == joint.clip.num_frames
    assert parts["audio_latents"].preprocessing["mel"]["hop_length"] == 160


def test_joint_descriptions_follow_weights_and_preprocessing(joint):
    before = {name: part.description("float16") for name, part in joint.feature_parts().items()}
    changed = nudged_description(joint, joint.video_vae, "video_latents")
    assert changed["weights_sha256"] != before["video_latents"]["weights_sha256"]
    assert nudged_description(joint, joint.audio_text_encoder, "text") != before["text"]
    # restored weights: the digests are back
    assert {name: part.description("float16") for name, part in joint.feature_parts().items()} == before
    clip = joint.clip
    try:
        joint.clip = dataclasses.replace(clip, height=clip.height * 2)
        after = joint.feature_parts()
        assert after["video_latents"].preprocessing != before["video_latents"]["preprocessing"]
        assert after["audio_latents"].description("float16") == before["audio_latents"]
    finally:
        joint.clip = clip


def test_joint_step_from_cached_features_equals_the_computing_step(joint, monkeypatch):
    batch = batch_of(joint, b=2)
    seed = mixed_dropout_seed(joint, batch, monkeypatch)
    # and with the video latents alone cached: the audio is decoded and encoded as before
    assert_same_step(joint, batch, ["video_latents", "audio_latents", "text"], seed, fp16_tolerance=1e-2,
                     partial=["video_latents"])


def test_joint_partial_cache_and_dropped_captions(joint):
    batch = batch_of(joint, b=2)
    cached = cached_batch(joint, batch, ["video_latents"])
    assert cached["video"].shape == (2, 0, 3, joint.clip.height, joint.clip.width) and cached["audio"].shape[1] > 0
    assert set(cached["features"]) == {"video_latents"}
    assert cached["features"]["video_latents"]["mean"].shape == (2, 4, joint.clip.num_frames, 16, 16)
    # a dropped caption gets the text encoders' output for ""
    text = joint.compute_features(batch, ["text"])
    keep = torch.tensor([True, False])
    text_v, text_a = joint.caption_text({**batch, "features": text}, keep)
    null_v, null_a = joint.encode_text([""])
    torch.testing.assert_close(text_v[1], null_v[0])
    torch.testing.assert_close(text_a[1], null_a[0])
    assert torch.equal(text_v[0], text["text"]["clip"][0]) and torch.equal(text_a[0], text["text"]["clap"][0])


def test_joint_refuses_parts_it_does_not_run(joint):
    with pytest.raises(ConfigError, match=r"cache.parts.*'encoder'.*video_latents, audio_latents, text"):
        joint.compute_features(batch_of(joint, b=1), ["encoder"])
    with pytest.raises(ConfigError, match=r"cache.parts.*'nonsense'"):
        joint.check_feature_parts(["nonsense"])


def test_video_latents_are_the_encoders_draws_from_the_posterior(joint):
    """encode_video = posterior + sample, with ε drawn per 16 frames of the clips' frames in a row (as
    diffusers' latent_dist.sample per VAE call did): 2 clips × 9 frames span two chunks."""
    from avgen.backbones.animatediff import encode_video, encode_video_posterior, sample_video_latents

    video = torch.rand(2, 9, 3, joint.clip.height, joint.clip.width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    vae = joint.video_vae
    latents = encode_video(joint.video, video, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        written_out = torch.cat([vae.encode(part).latent_dist.sample(g) for part in video.flatten(0, 1).split(16)])
    expected = (written_out * vae.config.scaling_factor).unflatten(0, (2, 9)).permute(0, 2, 1, 3, 4)
    assert torch.equal(latents, expected)
    mean, std = encode_video_posterior(joint.video, video)
    assert mean.shape == std.shape == latents.shape and bool((std > 0).all())
    # a posterior that went through the cache (contiguous (B, C, F, h, w) float32) draws the same latents
    again = sample_video_latents(mean.contiguous(), std.contiguous(), torch.Generator().manual_seed(3),
                                 vae.config.scaling_factor)
    assert torch.equal(again, latents)


# ======================================================================================== TempoTokens
@pytest.fixture(scope="module")
def tempo(tiny_root):
    return build(tiny_root, "tempotokens_vggsound", "model.cond_drop_prob=0.5", "data.clip.seconds=0.5")


def tempo_dropout_seed(system, batch: dict) -> int:
    """A seed whose condition dropout keeps some clips and drops others, by replaying TempoTokens' draws: the
    latents' ε, then the keep mask."""
    posterior = system.compute_features(batch, ["video_latents"])["video_latents"]
    from avgen.backbones.text2video import sample_video_latents

    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        sample_video_latents(posterior["mean"], posterior["std"], g, system.vae.config.scaling_factor)
        keep = torch.rand(len(batch["key"]), generator=g) >= system.cond_drop_prob
        if 0 < int(keep.sum()) < len(keep):
            return seed
    raise AssertionError("no seed among 20 mixes kept and dropped clips")


def test_tempotokens_parts_are_described_and_follow_weights_and_preprocessing(tempo):
    parts = tempo.feature_parts()
    assert list(parts) == ["video_latents", "encoder"]
    assert parts["encoder"].reads == ("audio",) and parts["video_latents"].reads == ("video",)
    before = {name: part.description("float16") for name, part in parts.items()}
    for description in before.values():
        assert json.loads(json.dumps(description)) == description
    assert before["encoder"]["preprocessing"]["layers"] == list(range(1, tempo.encoder.config.encoder_layers + 1))
    assert nudged_description(tempo, tempo.encoder, "encoder")["weights_sha256"] != before["encoder"]["weights_sha256"]
    assert nudged_description(tempo, tempo.vae, "video_latents") != before["video_latents"]
    layers = tempo.encoder_layers
    try:
        tempo.encoder_layers = [1]
        assert tempo.feature_parts()["encoder"].preprocessing["layers"] == [1]
    finally:
        tempo.encoder_layers = layers
    assert {name: part.description("float16") for name, part in tempo.feature_parts().items()} == before


def test_tempotokens_refuses_to_cache_its_prompt(tempo):
    with pytest.raises(ConfigError, match=r"cache.parts: 'text' cannot be cached.*Eq. 7.*video_latents, encoder"):
        tempo.compute_features(batch_of(tempo, b=1), ["text"])


def test_tempotokens_step_from_cached_features_equals_the_computing_step(tempo):
    batch = batch_of(tempo, b=2)
    seed = tempo_dropout_seed(tempo, batch)
    # and with the encoder alone cached: the audio is not decoded, the video is encoded as before
    assert_same_step(tempo, batch, ["video_latents", "encoder"], seed, fp16_tolerance=1e-2, partial=["encoder"])


def test_tempotokens_encoder_features_are_pooled_per_frame(tempo):
    batch = batch_of(tempo, b=2)
    cached = cached_batch(tempo, batch, ["encoder"])
    assert cached["audio"].shape == (2, 0) and cached["video"].shape[1] == tempo.clip.num_frames
    layers, width = tempo.encoder.config.encoder_layers, tempo.encoder.config.encoder_embed_dim
    assert cached["features"]["encoder"]["features"].shape == (2, tempo.clip.num_frames, layers * width)
    # from an audio-only batch (the cache command decoding audio alone) the frame count is the clip's
    alone = tempo.compute_features({**batch, "video": batch["video"][:, :0]}, ["encoder"])
    assert torch.equal(alone["encoder"]["features"], cached["features"]["encoder"]["features"])


# ======================================================================================== VTA-LDM
@pytest.fixture(scope="module")
def vta(tiny_root):
    return build(tiny_root, "vta_ldm", "model.conditions=[video,text,flow]", "model.cond_drop_prob=0.5",
                 "data.clip.seconds=0.5")


def vta_dropout_seed(system, batch: dict) -> int:
    """A seed whose text dropout keeps some captions and drops others (and the video's too), by replaying
    VTA-LDM's draws: the latents' ε, then the video and text keep masks."""
    from avgen.diffusion import sample_latents

    posterior = system.compute_features(batch, ["audio_latents"])["audio_latents"]
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        sample_latents(posterior["mean"], posterior["std"], g, system.vae.config.scaling_factor)
        keep_video = torch.rand(len(batch["key"]), generator=g) >= system.cond_drop_prob
        keep_text = torch.rand(len(batch["key"]), generator=g) >= system.cond_drop_prob
        if all(0 < int(k.sum()) < len(k) for k in (keep_video, keep_text)):
            return seed
    raise AssertionError("no seed among 40 mixes kept and dropped conditions")


def test_vta_ldm_parts_follow_conditions_weights_and_preprocessing(vta):
    parts = vta.feature_parts()
    assert list(parts) == ["audio_latents", "text", "encoder", "flow"]
    assert [parts[n].reads for n in parts] == [("audio",), (), ("video",), ("video",)]
    before = {name: part.description("float16") for name, part in parts.items()}
    for description in before.values():
        assert json.loads(json.dumps(description)) == description
    nudged = nudged_description(vta, vta.encoder, "flow")
    assert nudged["weights_sha256"] != before["flow"]["weights_sha256"]
    assert nudged_description(vta, vta.text_encoder, "text") != before["text"]
    flow, conditions = vta.flow, vta.conditions
    try:
        vta.flow = dataclasses.replace(flow, winsize=9)
        after = vta.feature_parts()
        assert after["flow"].description("float16") != before["flow"]
        assert after["encoder"].description("float16") == before["encoder"]
        vta.conditions = ("video",)
        assert list(vta.feature_parts()) == ["audio_latents", "encoder"]
        with pytest.raises(ConfigError, match=r"cache.parts: VTALDM runs no part 'text'.*audio_latents, encoder"):
            vta.check_feature_parts(["audio_latents", "text"])
    finally:
        vta.flow, vta.conditions = flow, conditions
    assert {name: part.description("float16") for name, part in vta.feature_parts().items()} == before


def test_vta_ldm_step_from_cached_features_equals_the_computing_step(vta):
    batch = batch_of(vta, b=2)
    seed = vta_dropout_seed(vta, batch)
    # and with the video's parts alone cached: the video is not decoded, the audio is encoded as before
    assert_same_step(vta, batch, ["audio_latents", "text", "encoder", "flow"], seed, fp16_tolerance=1e-2,
                     partial=["text", "encoder", "flow"])


def test_vta_ldm_cached_tokens_and_dropped_text(vta):
    batch = batch_of(vta, b=2)
    features = vta.compute_features(batch, ["encoder", "flow", "text"])
    frames = vta.clip.num_frames
    for name in ("encoder", "flow"):
        assert features[name]["embeds"].shape == (2, frames, vta.encoder.embed_dim)
        assert torch.equal(features[name]["mask"], torch.ones(2, frames))  # 0/1 in the cache's dtype
    assert features["text"]["embeds"].shape == (2, vta.text_encoder.embed_dim)
    text = vta.step_text({**batch, "features": features}, torch.tensor([False, True]))
    torch.testing.assert_close(text[0], vta.text_encoder([""])[0])
    assert torch.equal(text[1], features["text"]["embeds"][1])
