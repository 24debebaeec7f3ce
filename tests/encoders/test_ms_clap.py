"""MS-CLAP 2023 (HTSAT in transformers' ClapAudioModel, GPT-2): a tiny twin written in the published layout
round-trips exactly; the loader refuses other files in one line naming the key; msclap's audio rule (channels
concatenated, 44.1 kHz, 7 s repeat or seeded crop) and its GPT-2 pooling index on hand cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from avgen.backbones.tiny import gpt2_tokenizer
from avgen.encoders.laion_clap import LaionClapMel
from avgen.encoders.ms_clap import (
    DROPPED,
    FMAX,
    FMIN,
    HOP_SIZE,
    MEL_BINS,
    MEL_RATE,
    MODEL_SAMPLES,
    WINDOW_SIZE,
    MsClap,
    MsClapCheckpointError,
    MsClapWeightsMissing,
    Projection,
    crop_start,
    load_ms_clap,
    ms_clap_input,
    save_ms_clap_format,
    tiny_ms_clap_configs,
)
from avgen.errors import ConfigError
from avgen.pretrained import ORIGINS, sha256_file

KEY, TEXT_KEY = "evaluate.clap_ms.path", "evaluate.clap_ms.text_model"
PARTS = ("audio_model", "front_end", "text_model", "audio_projection", "text_projection")


def tiny_ms_clap() -> MsClap:
    """A tiny MS-CLAP (:func:`tiny_ms_clap_configs`, joint width 16) with non-trivial BatchNorm statistics, so
    ``bn0`` → ``batch_norm`` is checked too."""
    from transformers import ClapAudioModel, GPT2Model

    tokenizer = gpt2_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "!"})
    audio, text = tiny_ms_clap_configs(len(tokenizer))
    torch.manual_seed(0)
    clap = MsClap(ClapAudioModel(audio).eval(), LaionClapMel(MEL_RATE, WINDOW_SIZE, HOP_SIZE, MEL_BINS, FMIN, FMAX),
                  GPT2Model(text).eval(), Projection(audio.hidden_size, 16), Projection(text.n_embd, 16), tokenizer)
    with torch.no_grad():
        clap.audio_model.audio_encoder.batch_norm.running_mean.uniform_(-30, -10)
        clap.audio_model.audio_encoder.batch_norm.running_var.uniform_(50, 200)
    return clap


@pytest.fixture(scope="module")
def ms_clap_twin(tmp_path_factory) -> tuple[MsClap, Path, Path]:
    """(the tiny MsClap, its file in msclap's layout, a tiny local GPT-2 folder: config and tokenizer)."""
    folder = tmp_path_factory.mktemp("ms_clap")
    clap = tiny_ms_clap()
    clap.text_model.config.save_pretrained(folder / "gpt2")
    gpt2_tokenizer().save_pretrained(folder / "gpt2")
    return clap, save_ms_clap_format(clap, folder / ORIGINS["ms_clap"].file), folder / "gpt2"


def _equal_parts(a: MsClap, b: MsClap) -> None:
    for part in PARTS:
        left, right = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert left.keys() == right.keys(), part
        assert all(torch.equal(left[k], right[k]) for k in left), part


def _rewrite(path: Path, out: Path, edit) -> Path:
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint["model"])
    torch.save(checkpoint, out)
    return out


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_published_layout_round_trips_exactly(ms_clap_twin):
    clap, path, gpt2 = ms_clap_twin
    keys = torch.load(path, weights_only=True)["model"]
    htsat = "audio_encoder.base.htsat."
    for key in (f"{htsat}layers.0.blocks.0.attn.qkv.weight", f"{htsat}layers.0.blocks.1.attn_mask",
                f"{htsat}bn0.running_mean", f"{htsat}logmel_extractor.melW", f"{htsat}tscam_conv.weight",
                "audio_encoder.projection.linear1.weight", "caption_encoder.projection.layer_norm.bias",
                "caption_encoder.base.h.0.attn.c_attn.weight", "caption_encoder.base.wte.weight", "logit_scale"):
        assert key in keys, key
    assert "audio_encoder.projection.linear1.bias" not in keys  # msclap's Projection has no biases

    loaded = load_ms_clap(path, gpt2)
    _equal_parts(clap, loaded)
    assert loaded.audio_model.config.depths == [2, 1, 1, 1] and loaded.text_weights == "checkpoint"
    assert loaded.weights["ms_clap"] == (str(path), sha256_file(path)) and "gpt2" not in loaded.weights
    qkv = keys[f"{htsat}layers.1.blocks.0.attn.qkv.weight"]
    attention = loaded.audio_model.audio_encoder.layers[1].blocks[0].attention.self
    width = qkv.shape[0] // 3
    for i, part in enumerate((attention.query, attention.key, attention.value)):
        assert torch.equal(part.weight, qkv[i * width:(i + 1) * width])
    with torch.no_grad():
        audio = torch.randn(2, MODEL_SAMPLES) * 0.1
        assert loaded.front_end(audio).shape == (2, 1, 965, 64)  # 7 s at 44.1 kHz, hop 320: < 1024 frames
        torch.testing.assert_close(loaded.audio_embeddings(audio), clap.audio_embeddings(audio), rtol=0, atol=0)


def test_gpt2_weights_come_from_the_folder_when_the_file_has_none(ms_clap_twin, tmp_path):
    clap, _, gpt2 = ms_clap_twin
    folder = tmp_path / "gpt2"
    clap.text_model.save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    path = save_ms_clap_format(clap, tmp_path / "no_text.pth", with_text=False)
    assert not any(k.startswith("caption_encoder.base.") for k in torch.load(path, weights_only=True)["model"])
    loaded = load_ms_clap(path, folder)
    _equal_parts(clap, loaded)
    assert loaded.text_weights == "text_model folder"
    assert loaded.weights["gpt2"] == (str(folder / "model.safetensors"), sha256_file(folder / "model.safetensors"))
    with pytest.raises(MsClapCheckpointError) as err:  # config and tokenizer only: no GPT-2 weights anywhere
        load_ms_clap(path, gpt2)
    assert "holds no GPT-2 weights" in _one_line(err) and TEXT_KEY in str(err.value)


def test_refusals_name_the_key_in_one_line(ms_clap_twin, tmp_path):
    _, path, gpt2 = ms_clap_twin
    missing = _rewrite(path, tmp_path / "missing.pth", lambda sd: sd.pop("audio_encoder.base.htsat.norm.weight"))
    with pytest.raises(MsClapCheckpointError) as err:
        load_ms_clap(missing, gpt2)
    message = _one_line(err)
    assert "missing keys [audio_encoder.base.htsat.norm.weight]" in message and KEY in message
    assert str(missing) in message

    def add(sd):
        sd["caption_encoder.extra.weight"] = torch.zeros(2)
    with pytest.raises(MsClapCheckpointError, match=r"unexpected keys \[caption_encoder.extra.weight\]"):
        load_ms_clap(_rewrite(path, tmp_path / "unexpected.pth", add), gpt2)

    def widen(sd):
        sd["caption_encoder.projection.linear2.weight"] = torch.zeros(16, 17)
    with pytest.raises(MsClapCheckpointError, match=r"wrong shapes \[caption_encoder.projection.linear2.weight"):
        load_ms_clap(_rewrite(path, tmp_path / "wide.pth", widen), gpt2)

    mel = "audio_encoder.base.htsat.logmel_extractor.melW"
    no_mel = _rewrite(path, tmp_path / "no_mel.pth", lambda sd: sd.pop(mel))
    with pytest.raises(MsClapCheckpointError, match=r"missing keys \[audio_encoder.base.htsat.logmel_extractor.melW\]"):
        load_ms_clap(no_mel, gpt2)

    torch.save({"model": {"conv1.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(MsClapCheckpointError) as err:
        load_ms_clap(tmp_path / "other.pth", gpt2)
    assert "has no tensor audio_encoder.base.htsat.patch_embed.proj.weight" in _one_line(err) and KEY in str(err.value)
    torch.save({"model": {"a": {"b": torch.zeros(2)}}}, tmp_path / "nested.pth")
    with pytest.raises(MsClapCheckpointError, match="holds a dict that is not a state dict of tensors"):
        load_ms_clap(tmp_path / "nested.pth", gpt2)

    torch.save({"model": {}, "optimizer": torch.nn.Linear(1, 1)}, tmp_path / "pickled.pth")
    with pytest.raises(MsClapCheckpointError) as err:
        load_ms_clap(tmp_path / "pickled.pth", gpt2)
    assert "weights_only=True" in _one_line(err) and "torch.save({'model'" in str(err.value)

    with pytest.raises(MsClapWeightsMissing, match=KEY):
        load_ms_clap(tmp_path / "absent.pth", gpt2)
    with pytest.raises(ConfigError) as err:
        load_ms_clap(path, None)
    assert f"{TEXT_KEY} is not set" in _one_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MsClapCheckpointError) as err:
        load_ms_clap(path, tmp_path / "empty")
    assert f"{TEXT_KEY}=" in _one_line(err)


def test_dropped_keys_are_the_documented_ones():
    htsat = "audio_encoder.base.htsat."
    assert set(DROPPED) == {f"{htsat}tscam_conv.*", f"{htsat}head.*", f"{htsat}layers.*.blocks.*.attn_mask",
                            "caption_encoder.base.h.*.attn.bias", "caption_encoder.base.h.*.attn.masked_bias",
                            "logit_scale"}


def test_old_gpt2_causal_mask_buffers_are_dropped(ms_clap_twin, tmp_path):
    clap, path, gpt2 = ms_clap_twin

    def add(sd):
        sd["caption_encoder.base.h.0.attn.bias"] = torch.tril(torch.ones(128, 128))[None, None]
        sd["caption_encoder.base.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    _equal_parts(clap, load_ms_clap(_rewrite(path, tmp_path / "old.pth", add), gpt2))


# ------------------------------------------------------------------------------------------ input rule
def test_stereo_44k_8_s_is_concatenated_and_crop_is_seeded_by_stem():
    """A stereo 8-s file at 44.1 kHz: no resampling, channels one after the other (16 s of samples), a 7-s window
    at a start in [0, 9 s) of samples; the same for the same (seed, stem), another for another stem or seed."""
    rng = np.random.default_rng(0)
    stereo = rng.standard_normal((2, 8 * 44_100)).astype(np.float32)
    flat = torch.from_numpy(stereo).reshape(-1)
    window = ms_clap_input(stereo, 44_100, "clip_a", seed=0)
    start = crop_start(flat.shape[0], "clip_a", 0)
    assert window.shape == (MODEL_SAMPLES,) and window.dtype == torch.float32
    assert 0 <= start < flat.shape[0] - MODEL_SAMPLES and start != 0
    assert torch.equal(window, flat[start:start + MODEL_SAMPLES])
    assert torch.equal(ms_clap_input(stereo, 44_100, "clip_a", seed=0), window)
    assert crop_start(flat.shape[0], "clip_b", 0) != start and crop_start(flat.shape[0], "clip_a", 1) != start
    assert torch.equal(ms_clap_input(stereo, 44_100, "clip_a", crop="start"), flat[:MODEL_SAMPLES])
    starts = [crop_start(flat.shape[0], f"s{i}", 0) for i in range(200)]
    assert min(starts) >= 0 and max(starts) < flat.shape[0] - MODEL_SAMPLES
    with pytest.raises(ConfigError, match="evaluate.clap_ms.crop"):
        crop_start(flat.shape[0], "clip_a", 0, crop="centre")


def test_resampling_is_per_channel_before_the_concatenation():
    rng = np.random.default_rng(1)
    stereo = rng.standard_normal((2, 3 * 16_000)).astype(np.float32)
    resampled = torchaudio.transforms.Resample(16_000, 44_100)(torch.from_numpy(stereo)).reshape(-1)  # 6 s
    expected = resampled.repeat(2)[:MODEL_SAMPLES]
    torch.testing.assert_close(ms_clap_input(stereo, 16_000, "x"), expected, rtol=0, atol=1e-6)


def test_3_s_clip_is_repeated_3_times_and_cut_to_7_s():
    clip = torch.arange(1, 3 * 44_100 + 1, dtype=torch.float32)
    repeated = ms_clap_input(clip.numpy(), 44_100, "short")
    assert repeated.shape == (MODEL_SAMPLES,) and math.ceil(MODEL_SAMPLES / clip.shape[0]) == 3
    assert torch.equal(repeated[:132_300], clip) and torch.equal(repeated[132_300:264_600], clip)
    assert torch.equal(repeated[264_600:], clip[:MODEL_SAMPLES - 264_600])
    exact = torch.ones(MODEL_SAMPLES)
    assert torch.equal(ms_clap_input(exact.numpy(), 44_100, "exact"), exact)  # 7 s exactly: kept, never cropped
    with pytest.raises(ValueError, match="finite"):
        ms_clap_input(np.array([np.nan, 0.0], dtype=np.float32), 44_100, "bad")


# ------------------------------------------------------------------------------------------ text
def test_pooling_index_counts_non_zero_ids_so_an_exclamation_mark_shifts_it(ms_clap_twin):
    """msclap pools at (ids != 0).sum() − 1 and '!' is id 0 (the pad): "a dog barks" pools its final
    <|endoftext|>; "a dog! barks" pools one position earlier (the space before <|endoftext|>), as msclap does."""
    _, path, gpt2 = ms_clap_twin
    clap = load_ms_clap(path, gpt2)
    plain, shouting = clap.tokens("a dog barks"), clap.tokens("a dog! barks")
    eos = clap.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert plain["input_ids"].shape == shouting["input_ids"].shape == (1, 77)
    assert int(plain["input_ids"][0, int(plain["attention_mask"].sum()) - 1]) == eos
    assert int((plain["input_ids"] != 0).sum()) == int(plain["attention_mask"].sum())
    last = int(shouting["attention_mask"].sum()) - 1
    assert int(shouting["input_ids"][0, last]) == eos and int((shouting["input_ids"] != 0).sum()) - 1 == last - 1

    with torch.no_grad():
        hidden = clap.text_model(**shouting).last_hidden_state[0]
        expected = clap.text_projection(hidden[last - 1][None])
        wrong = clap.text_projection(hidden[last][None])
        got = clap.text_embeddings(["a dog! barks"])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, wrong)
    long = clap.tokens("x" * 100)  # no truncation: 100 bytes + space + <|endoftext|>
    assert long["input_ids"].shape == (1, 102)
