"""Backbones: offline loading, tiny twins written and read back, encode/decode shapes, the AudioLDM mel."""

from __future__ import annotations

import hashlib
import math

import librosa
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, MotionAdapter, PNDMScheduler

from avgen.backbones import animatediff, audioldm, tiny
from avgen.backbones.loader import PretrainedModelMissing, load_pretrained, load_scheduler, resolve_source
from avgen.errors import ConfigError
from avgen.pretrained import HUB_MODELS

TEXTS = ["a dog barks", "Rain on a tin roof!", "café — naïve 日本語 🎵", ""]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def video(tiny_root):
    return animatediff.load_animatediff("tiny:animatediff", "tiny:animatediff", tiny_dir=tiny_root)


@pytest.fixture(scope="module")
def audio(tiny_root):
    return audioldm.load_audioldm("tiny:audioldm", tiny_dir=tiny_root)


def _file_digests(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------- tiny folders


def test_tiny_sources_resolve_to_versioned_folders_and_others_pass_through(video, audio, tiny_root):
    for name in ("animatediff", "audioldm"):
        assert resolve_source(f"tiny:{name}", tiny_root) == str(tiny_root / f"{name}-v{tiny.TINY_VERSION}")
    assert resolve_source("cvssp/audioldm-m-full", None) == "cvssp/audioldm-m-full"
    assert resolve_source("/some/folder", tiny_root) == "/some/folder"
    assert sorted(p.name for p in tiny_root.iterdir()) == [f"animatediff-v{tiny.TINY_VERSION}",
                                                          f"audioldm-v{tiny.TINY_VERSION}"]


@pytest.mark.parametrize("name", ["animatediff", "audioldm"])
def test_tiny_weights_are_deterministic(video, audio, tiny_root, tmp_path, name):
    first = tiny_root / f"{name}-v{tiny.TINY_VERSION}"
    second = tiny.materialize(name, tmp_path)
    digests = _file_digests(first)
    assert any(path.endswith(".safetensors") for path in digests)
    assert _file_digests(second) == digests


def test_materialize_reuses_an_existing_folder(video, tiny_root):
    folder = tiny_root / f"animatediff-v{tiny.TINY_VERSION}"
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    before = (folder.stat().st_mtime_ns, weights.stat().st_mtime_ns)
    assert tiny.materialize("animatediff", tiny_root) == folder
    assert (folder.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before


def test_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    def broken(folder):
        (folder / "half_written.json").write_text("{}")
        raise RuntimeError("interrupted")

    monkeypatch.setitem(tiny.TINY_BUILDERS, "audioldm", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        tiny.materialize("audioldm", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_losing_a_race_returns_the_winners_folder(tmp_path, monkeypatch):
    final = tmp_path / f"audioldm-v{tiny.TINY_VERSION}"

    def racing(folder):
        (folder / "mine.json").write_text("{}")
        final.mkdir()  # another rank renames its copy into place while this one is still building
        (final / "theirs.json").write_text("{}")

    monkeypatch.setitem(tiny.TINY_BUILDERS, "audioldm", racing)
    assert tiny.materialize("audioldm", tmp_path) == final
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    assert [p.name for p in final.iterdir()] == ["theirs.json"]


def test_tiny_source_needs_a_folder_and_a_known_name():
    with pytest.raises(ConfigError, match=r"model\.audio\.base=tiny:audioldm .*tiny_dir is None"):
        audioldm.load_audioldm("tiny:audioldm")
    with pytest.raises(ConfigError, match=r"model\.video\.base=tiny:sd15: unknown tiny backbone .*tiny:animatediff"):
        animatediff.load_animatediff("tiny:sd15", "tiny:animatediff", tiny_dir="/unused")


# --------------------------------------------------------------------------------------- missing weights


@pytest.mark.parametrize("load, key", [
    (lambda missing: audioldm.load_audioldm(missing), "model.audio.base"),
    (lambda missing: animatediff.load_animatediff(missing, missing), "model.video.base"),
])
def test_missing_backbone_folder_names_key_origin_and_tiny_scale(tmp_path, load, key):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(PretrainedModelMissing) as err:
        load(missing)
    message = str(err.value)
    for text in (missing, key, HUB_MODELS[key], f"huggingface-cli download {HUB_MODELS[key]}", "scale=tiny"):
        assert text in message
    assert err.value.config_key == key


def test_separate_motion_adapter_and_vae_name_their_own_keys(video, tiny_root, tmp_path):
    base = tiny_root / f"animatediff-v{tiny.TINY_VERSION}"
    with pytest.raises(PretrainedModelMissing, match=r"config key model\.video\.motion_adapter\b"):
        animatediff.load_animatediff(str(base), str(tmp_path / "no_adapter"))
    with pytest.raises(PretrainedModelMissing, match=r"(?s)config key model\.video\.vae\b.*stabilityai/sd-vae-ft-mse"):
        animatediff.load_animatediff(str(base), str(base), vae=str(tmp_path / "no_vae"))


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_uncached_hub_id_is_not_downloaded(tmp_path):
    key = "model.video.motion_adapter"
    with pytest.raises(PretrainedModelMissing) as err:
        load_pretrained(MotionAdapter, HUB_MODELS[key], key, cache_dir=tmp_path / "empty_cache")
    assert key in str(err.value) and HUB_MODELS[key] in str(err.value) and "scale=tiny" in str(err.value)
    assert not any((tmp_path / "empty_cache").rglob("*.safetensors"))


def test_metric_models_are_not_offered_the_tiny_scale(tmp_path):
    with pytest.raises(PretrainedModelMissing) as err:
        load_pretrained(MotionAdapter, tmp_path / "nothing", "evaluate.clap.model")
    assert "laion/clap-htsat-unfused" in str(err.value) and "scale=tiny" not in str(err.value)


# --------------------------------------------------------------------------------------- loading


def test_backbones_load_frozen_with_the_published_block_layouts(video, audio):
    for module in (video.unet, video.vae, video.text_encoder, audio.unet, audio.vae, audio.text_encoder,
                   audio.vocoder):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    # The joint model's connectors sit after video down blocks 2, 3 and up blocks 0, 1.
    assert [type(b).__name__ for b in video.unet.down_blocks] == ["CrossAttnDownBlockMotion"] * 3 + ["DownBlockMotion"]
    assert [type(b).__name__ for b in video.unet.up_blocks] == ["UpBlockMotion"] + ["CrossAttnUpBlockMotion"] * 3
    assert [type(b).__name__ for b in audio.unet.down_blocks] == ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3
    assert [type(b).__name__ for b in audio.unet.up_blocks] == ["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"]
    assert audio.unet.config.class_embed_type == "simple_projection" and audio.unet.config.class_embeddings_concat


def test_adapter_and_vae_given_as_their_own_folders_load_the_same_weights(video, tiny_root):
    base = tiny_root / f"animatediff-v{tiny.TINY_VERSION}"
    other = animatediff.load_animatediff(str(base), str(base / "motion_adapter"), vae=str(base / "vae"))
    for mine, theirs in ((other.unet, video.unet), (other.vae, video.vae)):
        expected = theirs.state_dict()
        assert all(torch.equal(value, expected[name]) for name, value in mine.state_dict().items())


def test_scheduler_gets_animatediff_settings_over_the_base_config(tmp_path):
    # SD1.5 ships a PNDM config with the scaled_linear schedule.
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1).save_pretrained(tmp_path / "scheduler")
    scheduler = load_scheduler(DDIMScheduler, tmp_path, "model.video.base",
                               {**animatediff.ANIMATEDIFF_SCHEDULER, "timestep_spacing": "trailing"},
                               "model.video.scheduler")
    assert isinstance(scheduler, DDIMScheduler)
    config = scheduler.config
    assert (config.beta_schedule, config.clip_sample, config.steps_offset) == ("linear", False, 1)
    assert (config.beta_start, config.beta_end, config.timestep_spacing) == (0.00085, 0.012, "trailing")
    torch.testing.assert_close(scheduler.betas, torch.linspace(0.00085, 0.012, 1000))


def test_unknown_scheduler_setting_names_its_key(tiny_root):
    with pytest.raises(ConfigError, match=r"model\.audio\.scheduler sets clip_samples, .*clip_sample"):
        audioldm.load_audioldm("tiny:audioldm", tiny_dir=tiny_root, scheduler_overrides={"clip_samples": True})


# --------------------------------------------------------------------------------------- video


def test_motion_unet_wants_text_states_repeated_per_frame(video):
    b, f = 2, 8
    sample = torch.randn(b, 4, f, 16, 16)
    text = animatediff.encode_prompts(video, TEXTS[:b])
    assert text.shape == (b, 77, 32)
    with torch.no_grad():
        out = video.unet(sample, 10, text.repeat_interleave(f, dim=0)).sample
        assert out.shape == sample.shape
        # diffusers 0.42 does not repeat the text states itself.
        with pytest.raises(RuntimeError):
            video.unet(sample, 10, text)


def test_video_latents_are_per_frame_vae_samples_in_time_major_layout(video):
    clip = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    latents = animatediff.encode_video(video, clip, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 3, 16, 16)
    with torch.no_grad():
        frames = video.vae.encode(clip.flatten(0, 1)).latent_dist.sample(torch.Generator().manual_seed(0))
    expected = frames.unflatten(0, (2, 3)) * video.vae.config.scaling_factor  # (B, F, C, h, w)
    torch.testing.assert_close(latents[1, :, 2], expected[1, 2])
    torch.testing.assert_close(latents.permute(0, 2, 1, 3, 4), expected)


def test_video_decode_is_per_frame_and_does_not_depend_on_chunk(video):
    latents = torch.randn(2, 4, 8, 16, 16)
    decoded = animatediff.decode_video(video, latents, chunk=16)
    assert decoded.shape == (2, 8, 3, 32, 32) and decoded.abs().max() <= 1
    torch.testing.assert_close(animatediff.decode_video(video, latents, chunk=3), decoded)
    with torch.no_grad():
        one = video.vae.decode(latents[1, :, 5][None] / video.vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(decoded[1, 5], one[0])
    round_trip = animatediff.decode_video(video, animatediff.encode_video(video, decoded))
    assert round_trip.shape == decoded.shape


# --------------------------------------------------------------------------------------- audio


def _reference_mel(waveform: np.ndarray) -> np.ndarray:
    """AudioLDM's log-mel, (T, 64), computed with librosa in float64."""
    padded = np.pad(waveform.astype(np.float64), ((1024 - 160) // 2,), mode="reflect")
    magnitude = np.abs(librosa.stft(padded, n_fft=1024, hop_length=160, win_length=1024, window="hann",
                                    center=False))
    basis = librosa.filters.mel(sr=16_000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8_000.0)
    return np.log(np.maximum(basis @ magnitude, 1e-5)).T


def test_mel_matches_librosa_reference():
    rng = np.random.default_rng(0)
    t = np.arange(64_000) / 16_000
    waveform = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    waveform[20_000:30_000] = 0  # silence reaches the log floor
    mel = audioldm.AudioLDMMel()
    got = mel(torch.from_numpy(np.stack([waveform, waveform[::-1]])).float()).numpy()
    assert got.shape == (2, 400, 64) and mel.num_frames(64_000) == 400
    # Log-domain differences are relative differences of the mel magnitudes.
    np.testing.assert_allclose(got[0], _reference_mel(waveform.astype(np.float32)), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], _reference_mel(waveform[::-1].astype(np.float32)), atol=1e-4, rtol=0)
    assert got.min() == pytest.approx(math.log(1e-5)) == pytest.approx(mel.silence)
    assert mel.state_dict() == {}


@pytest.mark.parametrize("num_samples", [16_000, 16_050, 16_159, 1_000])
def test_mel_frame_count_is_samples_over_hop(num_samples):
    mel = audioldm.AudioLDMMel()
    assert mel(torch.zeros(1, num_samples)).shape == (1, num_samples // 160, 64)
    assert mel.num_frames(num_samples) == num_samples // 160


def test_audio_prompts_are_unit_clap_embeddings(audio):
    embeds = audioldm.encode_prompts(audio, TEXTS + ["a very long prompt " * 20])
    assert embeds.shape == (5, 32)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(5))
    assert not torch.allclose(embeds[0], embeds[1])


def test_audio_unet_is_conditioned_through_class_labels(audio):
    latents = torch.randn(2, 8, 32, 16)
    text = audioldm.encode_prompts(audio, TEXTS[:2])
    with torch.no_grad():
        out = audio.unet(latents, 10, encoder_hidden_states=None, class_labels=text).sample
        swapped = audio.unet(latents, 10, encoder_hidden_states=None, class_labels=text.flip(0)).sample
    assert out.shape == latents.shape
    assert not torch.allclose(out, swapped)


def test_audio_latents_are_vae_samples_of_the_silence_padded_mel(audio):
    waveform = 0.1 * torch.randn(2, 16_000)
    latents = audioldm.encode_audio(audio, waveform, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 8, 32, 16) == (2, audio.vae.config.latent_channels,
                                                *audioldm.latent_frames(audio, 16_000))
    mel = audio.mel(waveform)
    assert mel.shape == (2, 100, 64)
    padded = torch.cat([mel, torch.full((2, 28, 64), math.log(1e-5))], dim=1)
    with torch.no_grad():
        expected = audio.vae.encode(padded[:, None]).latent_dist.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(latents, expected * audio.vae.config.scaling_factor)


def test_audio_latent_shape_for_paper_clips(audio):
    assert audioldm.padded_frames(100) == 128 and audioldm.padded_frames(128) == 128
    assert audioldm.latent_frames(audio, 64_000) == (104, 16)  # 4 s: 400 frames → 416
    assert audioldm.latent_frames(audio, 64_000, time_multiple=4) == (100, 16)


def test_audio_decode_is_vae_then_vocoder_cut_or_padded_to_the_requested_samples(audio):
    latents = torch.randn(2, 8, 32, 16)
    with torch.no_grad():
        mel = audio.vae.decode(latents / audio.vae.config.scaling_factor).sample  # (B, 1, T, 64)
        expected = audio.vocoder(mel.squeeze(1))
        # 1 s = 100 mel frames = 25 latent frames of the 32: the 7 padding frames are not decoded
        first = audio.vocoder(audio.vae.decode(latents[:, :, :25] / audio.vae.config.scaling_factor).sample.squeeze(1))
    # AudioLDM's HiFi-GAN makes T·160 + 32 samples: its first transposed convolution (kernel 16, stride 5)
    # adds one sample, which the later 4·2·2·2 upsampling turns into 32.
    assert expected.shape[1] == 128 * 160 + 32
    waveform = audioldm.decode_audio(audio, latents, 16_000)
    assert waveform.shape == (2, 16_000) and waveform.dtype == torch.float32
    torch.testing.assert_close(waveform, first[:, :16_000])
    # the decoder's attention sees the whole latent: decoding the pad too changes the clip
    assert float((waveform - expected[:, :16_000]).abs().max()) > 1e-3 * float(expected.abs().max())
    # 16,001 samples need a 101st mel frame, so a 26th latent frame
    assert audioldm.decode_audio(audio, latents, 16_001).shape == (2, 16_001)
    with torch.no_grad():
        more = audio.vocoder(audio.vae.decode(latents[:, :, :26] / audio.vae.config.scaling_factor).sample.squeeze(1))
    torch.testing.assert_close(audioldm.decode_audio(audio, latents, 16_001), more[:, :16_001])
    longer = audioldm.decode_audio(audio, latents, expected.shape[1] + 1_000)
    torch.testing.assert_close(longer, torch.cat([expected, torch.zeros(2, 1_000)], dim=1))


# --------------------------------------------------------------------------------------- tokenizers


# CLIP: 2 special tokens, then 256 byte symbols and their end-of-word forms; RoBERTa: 5 special, 256 byte symbols.
@pytest.mark.parametrize("make, backbone, specials, vocab_size", [(tiny.clip_tokenizer, "video", 2, 2 + 2 * 256),
                                                                  (tiny.roberta_tokenizer, "audio", 5, 5 + 256)])
def test_tokenizers_round_trip_through_save_pretrained(request, tmp_path, make, backbone, specials, vocab_size):
    tokenizer = make()
    assert len(tokenizer) == vocab_size
    tokenizer.save_pretrained(tmp_path)
    loaded = type(tokenizer).from_pretrained(tmp_path, local_files_only=True)
    shipped = request.getfixturevalue(backbone).tokenizer
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        assert loaded(text).input_ids == ids == shipped(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert all(specials <= i < vocab_size for i in ids[1:-1])  # no unknown or special token inside
    assert len(tokenizer(TEXTS[2]).input_ids) > len(TEXTS[2])  # multi-byte characters become several tokens


def test_roberta_tokenizer_decodes_any_text_exactly():
    tokenizer = tiny.roberta_tokenizer()
    for text in TEXTS:
        assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_materialize_leaves_the_global_random_state_alone(tmp_path):
    """Writing a tiny folder seeds its own weights; the caller's random state (which initialises its
    trainable modules) must not depend on whether the folder already existed."""
    from avgen.backbones.tiny import materialize

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    materialize("beats", tmp_path)
    assert torch.equal(torch.rand(3), expected)
