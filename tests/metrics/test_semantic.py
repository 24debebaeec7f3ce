"""CLIPSIM and CLAP score against direct computations with tiny random models saved and loaded offline."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio

from avgen.metrics.semantic import (
    CLIP_MEAN,
    CLIP_STD,
    CLAPScore,
    CLIPSim,
    PretrainedModelMissing,
    load_pretrained,
)
from avgen.pretrained import HUB_MODELS, sha256_file

PROMPTS = ["a dog barks", "rain on a roof", "the sound of a drum kit"]


def _write_bpe(folder, vocab: dict[str, int]) -> tuple[str, str]:
    """A character-level BPE: vocab.json and a merges.txt with no merges."""
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return str(folder / "vocab.json"), str(folder / "merges.txt")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    src, out = tmp_path_factory.mktemp("clip_src"), tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(*_write_bpe(src, vocab))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    CLIPModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizer

    src, out = tmp_path_factory.mktemp("clap_src"), tmp_path_factory.mktemp("clap")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "Ġ": 5}
    for c in string.ascii_lowercase:
        vocab[c], vocab["Ġ" + c] = len(vocab), len(vocab) + 1
    tokenizer = RobertaTokenizer(*_write_bpe(src, vocab))
    torch.manual_seed(0)
    config = ClapConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=40, projection_dim=16, pad_token_id=1),
        audio_config=dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=(4, 4),
                          depths=[1, 1], num_attention_heads=[2, 2], hidden_size=16, patch_embeds_hidden_size=8,
                          projection_dim=16, enable_fusion=False),
        projection_dim=16)
    model = ClapModel(config)
    # At random init the tiny projections' ReLU layers are often all dead (embedding 0, cosine 0);
    # a positive bias keeps them alive, so the scores tested below are not trivially zero.
    for projection in (model.audio_projection, model.text_projection):
        torch.nn.init.constant_(projection.linear1.bias, 0.5)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # LAION CLAP's extractor settings, shortened to 1 s at 48 kHz with 16 mel bands.
    ClapFeatureExtractor(feature_size=16, sampling_rate=48_000, max_length_s=1, truncation="rand_trunc",
                         padding="repeatpad").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clipsim_parts(clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    return (load_pretrained(CLIPModel, clip_dir, "evaluate.clipsim.model").eval(),
            load_pretrained(AutoTokenizer, clip_dir, "evaluate.clipsim.model"))


@pytest.fixture(scope="module")
def clap_parts(clap_dir):
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    key = "evaluate.clap.model"
    return (load_pretrained(ClapModel, clap_dir, key).eval(), load_pretrained(AutoTokenizer, clap_dir, key),
            load_pretrained(ClapFeatureExtractor, clap_dir, key))


def random_frames(b: int, f: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, f, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------ CLIPSIM


def direct_clipsim(model, tokenizer, frames: torch.Tensor, texts: list[str]) -> float:
    """32×32 frames need no resize: CLIP normalisation → embeddings → cosine, mean over frames, then clips."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    scores = []
    with torch.no_grad():
        for clip, text in zip(frames, texts):
            image = model.get_image_features(pixel_values=((clip + 1) / 2 - mean) / std).pooler_output
            tokens = tokenizer([text], return_tensors="pt")
            prompt = model.get_text_features(**tokens).pooler_output
            scores.append(F.cosine_similarity(image, prompt, dim=-1).mean().item())
    return float(np.mean(scores))


def test_clipsim_matches_direct_computation(clip_dir, clipsim_parts):
    frames = random_frames(3, 4)
    metric = CLIPSim.from_pretrained(clip_dir, frame_batch=5)  # chunks cut across clips
    metric.update(frames[:2], PROMPTS[:2])
    metric.update(frames[2:], PROMPTS[2:])
    expected = direct_clipsim(*clipsim_parts, frames, PROMPTS)
    assert abs(expected) > 1e-3
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    assert metric.count.item() == 3


def test_clipsim_uint8_clips_of_different_lengths_and_sizes(clipsim_parts):
    model, tokenizer = clipsim_parts
    frames = random_frames(2, 3, seed=1)
    as_uint8 = ((frames + 1) * 127.5).round().to(torch.uint8)
    wide = torch.cat([torch.zeros_like(as_uint8[1, :2, ..., :8]), as_uint8[1, :2],
                      torch.zeros_like(as_uint8[1, :2, ..., :8])], dim=-1)  # 32×48, centre 32×32 is the clip
    clips = [as_uint8[0].permute(0, 2, 3, 1).numpy(), wide.permute(0, 2, 3, 1)]
    metric = CLIPSim(model, tokenizer)
    metric.update(clips, PROMPTS[:2])
    expected = np.mean([direct_clipsim(model, tokenizer, (as_uint8[0:1].float() / 127.5 - 1), PROMPTS[:1]),
                        direct_clipsim(model, tokenizer, (as_uint8[1:2, :2].float() / 127.5 - 1), PROMPTS[1:2])])
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)


def test_clipsim_repeated_frame_equals_single_frame(clipsim_parts):
    one = random_frames(2, 1, seed=2)
    single, repeated = CLIPSim(*clipsim_parts), CLIPSim(*clipsim_parts)
    single.update(one, PROMPTS[:2])
    repeated.update(one.expand(-1, 5, -1, -1, -1), PROMPTS[:2])
    assert repeated.compute().item() == pytest.approx(single.compute().item(), abs=1e-6)


def test_clipsim_resizes_shorter_side_and_centre_crops(clipsim_parts):
    wide = random_frames(1, 2, h=32, w=64, seed=3)
    on_wide, on_centre = CLIPSim(*clipsim_parts), CLIPSim(*clipsim_parts)
    on_wide.update(wide, PROMPTS[:1])
    on_centre.update(wide[..., 16:48].contiguous(), PROMPTS[:1])
    assert on_wide.compute().item() == pytest.approx(on_centre.compute().item(), abs=1e-5)
    # A smaller frame is upsampled to the model's 32×32: constant frames stay constant.
    flat = CLIPSim(*clipsim_parts)
    assert torch.allclose(flat.preprocess(torch.full((1, 3, 8, 12), 0.25)),
                          flat.preprocess(torch.full((1, 3, 32, 32), 0.25)), atol=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_clipsim_states_merge_like_ddp(clipsim_parts):
    frames = random_frames(5, 2, seed=4)
    prompts = PROMPTS + PROMPTS[:2]
    single = CLIPSim(*clipsim_parts)
    single.update(frames, prompts)
    ranks = [CLIPSim(*clipsim_parts) for _ in range(2)]
    ranks[0].update(frames[:3], prompts[:3])
    ranks[1].update(frames[3:], prompts[3:])
    summed = CLIPSim(*clipsim_parts)
    for name in summed._defaults:
        assert summed._reductions[name].__name__ == "dim_zero_sum"
        setattr(summed, name, getattr(ranks[0], name) + getattr(ranks[1], name))
    # Per-clip scores agree to float32 rounding of the batched towers; the reduction itself is exact.
    assert summed.compute().item() == pytest.approx(single.compute().item(), abs=1e-6)
    ranks[0].merge_state(ranks[1])
    assert ranks[0].compute().item() == summed.compute().item()


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_clipsim_checks_inputs_and_records_hashes(clip_dir, clipsim_parts):
    metric = CLIPSim.from_pretrained(clip_dir)
    with pytest.raises(ValueError, match="no clips"):
        metric.compute()
    with pytest.raises(ValueError, match="one prompt per clip"):
        metric.update(random_frames(2, 1), PROMPTS[:1])
    with pytest.raises(ValueError, match=r"\(B, F, 3, H, W\)"):
        metric.update(torch.zeros(2, 3, 32, 32), PROMPTS[:2])
    info = metric.describe()
    assert info["sha256"]["model.safetensors"] == sha256_file(clip_dir / "model.safetensors")
    assert info["sha256"]["config.json"] == sha256_file(clip_dir / "config.json")
    assert info["scale"] == "raw cosine" and info["config"]["image_size"] == 32


def test_frozen_model_stays_in_eval_mode(clipsim_parts):
    metric = CLIPSim(*clipsim_parts)
    metric.train()
    assert not metric.model.training
    assert not any(p.requires_grad for p in metric.model.parameters())


# ------------------------------------------------------------------------------------------------- CLAP


def direct_clap(model, tokenizer, extractor, waves: list[np.ndarray], texts: list[str]) -> float:
    """Waveforms already at 48 kHz → CLAP features → embeddings → cosine, mean over clips."""
    with torch.no_grad():
        feats = extractor(waves, sampling_rate=48_000, return_tensors="pt")
        sound = model.get_audio_features(**feats).pooler_output
        prompt = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output
    return F.cosine_similarity(sound, prompt, dim=-1).mean().item()


def random_audio(b: int, samples: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, samples, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_clap_resamples_and_matches_direct_computation(clap_dir, clap_parts):
    audio = random_audio(3, 12_000)  # 0.75 s at 16 kHz, shorter than the extractor's 1 s: repeat-padded
    metric = CLAPScore.from_pretrained(clap_dir, sample_rate=16_000)
    metric.update(audio[:1], PROMPTS[:1])
    metric.update(audio[1:], PROMPTS[1:])
    at_48k = torchaudio.functional.resample(audio, 16_000, 48_000)
    assert at_48k.shape[1] == 36_000
    expected = direct_clap(*clap_parts, list(at_48k.numpy()), PROMPTS)
    assert abs(expected) > 1e-3
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)


def test_clap_at_model_rate_is_not_resampled_and_long_clips_keep_their_start(clap_parts):
    audio = random_audio(2, 72_000, seed=1)  # 1.5 s at 48 kHz; the extractor takes 1 s
    metric = CLAPScore(*clap_parts, sample_rate=48_000)
    metric.update(audio, PROMPTS[:2])
    expected = direct_clap(*clap_parts, list(audio[:, :48_000].numpy()), PROMPTS[:2])
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    again = CLAPScore(*clap_parts, sample_rate=48_000)
    again.update(audio, PROMPTS[:2])
    assert again.compute().item() == metric.compute().item()  # no random crop


def test_clap_states_merge_like_ddp(clap_parts):
    audio = random_audio(4, 8_000, seed=2)
    prompts = PROMPTS + PROMPTS[:1]
    single = CLAPScore(*clap_parts)
    single.update(audio, prompts)
    ranks = [CLAPScore(*clap_parts) for _ in range(2)]
    ranks[0].update(audio[:1], prompts[:1])
    ranks[1].update(audio[1:], prompts[1:])
    ranks[0].merge_state(ranks[1])
    assert ranks[0].count.item() == 4
    assert ranks[0].compute().item() == pytest.approx(single.compute().item(), abs=1e-6)


def test_clap_describe_records_hashes_and_rates(clap_dir):
    info = CLAPScore.from_pretrained(clap_dir, sample_rate=16_000).describe()
    assert info["sha256"]["model.safetensors"] == sha256_file(clap_dir / "model.safetensors")
    assert info["sha256"]["preprocessor_config.json"] == sha256_file(clap_dir / "preprocessor_config.json")
    assert info["config"]["input_rate"] == 16_000 and info["config"]["model_rate"] == 48_000


# --------------------------------------------------------------------------------------- missing models


@pytest.mark.parametrize("metric_cls, key", [(CLIPSim, "evaluate.clipsim.model"), (CLAPScore, "evaluate.clap.model")])
def test_missing_model_names_key_origin_and_fetch_command(tmp_path, metric_cls, key):
    missing = tmp_path / "no_such_model"
    with pytest.raises(PretrainedModelMissing) as err:
        metric_cls.from_pretrained(missing)
    message = str(err.value)
    hub_id = HUB_MODELS[key]
    for text in (str(missing), key, hub_id, f"huggingface-cli download {hub_id}"):
        assert text in message
    assert isinstance(err.value, FileNotFoundError) and err.value.config_key == key
    with pytest.raises(PretrainedModelMissing, match="no model is set"):
        metric_cls.from_pretrained(None)


def test_hub_ids_are_the_published_originals():
    assert HUB_MODELS["evaluate.clipsim.model"] == "openai/clip-vit-base-patch32"
    assert HUB_MODELS["evaluate.clap.model"] == "laion/clap-htsat-unfused"
