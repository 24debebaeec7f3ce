"""LAION-CLAP read into transformers' ClapModel: a tiny twin written in the published layout round-trips exactly; the
loader refuses other files in one line naming the key; the checkpoint's front end against librosa; the harness's
audio rule and laion_clap's repeatpad on hand cases."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
import torchaudio

from avgen.backbones.tiny import roberta_tokenizer
from avgen.encoders.audio_input import AudioInput
from avgen.encoders.laion_clap import (
    DROPPED,
    MODEL_SAMPLES,
    LaionClapCheckpointError,
    LaionClapMel,
    LaionClapWeightsMissing,
    laion_clap_input,
    load_laion_clap,
    repeatpad,
    save_laion_format,
    tiny_clap_config,
)
from avgen.errors import ConfigError
from avgen.pretrained import ORIGINS, sha256_file

KEY = "evaluate.clap_laion.path"


def tiny_clap_model():
    """A tiny ClapModel (:func:`tiny_clap_config`) whose projections' ReLUs are not dead at random init (a positive
    first bias), so the cosines tested are not trivially zero."""
    from transformers import ClapModel

    torch.manual_seed(0)
    model = ClapModel(tiny_clap_config(len(roberta_tokenizer()))).eval()
    with torch.no_grad():
        for projection in (model.audio_projection, model.text_projection):
            projection.linear1.bias.fill_(0.5)
        # non-trivial BatchNorm statistics, so bn0 → batch_norm is checked too
        model.audio_model.audio_encoder.batch_norm.running_mean.uniform_(-30, -10)
        model.audio_model.audio_encoder.batch_norm.running_var.uniform_(50, 200)
    return model


@pytest.fixture(scope="module")
def laion_clap_twin(tmp_path_factory) -> tuple[object, Path, Path]:
    """(the tiny ClapModel, its file in LAION's layout, a tiny RoBERTa tokenizer folder)."""
    folder = tmp_path_factory.mktemp("laion_clap")
    model = tiny_clap_model()
    roberta_tokenizer(model_max_length=77).save_pretrained(folder / "tokenizer")
    return model, save_laion_format(model, folder / ORIGINS["laion_clap"].file), folder / "tokenizer"


def _rewrite(path: Path, out: Path, edit) -> Path:
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint["state_dict"])
    torch.save(checkpoint, out)
    return out


def test_published_layout_round_trips_exactly(laion_clap_twin):
    model, path, tokenizer = laion_clap_twin
    written = torch.load(path, weights_only=True)
    keys = written["state_dict"]
    assert written["epoch"] == 15 and all(k.startswith("module.") for k in keys)
    assert "module.audio_branch.layers.0.blocks.0.attn.qkv.weight" in keys
    assert "module.audio_branch.layers.0.blocks.1.attn_mask" in keys  # the shifted block's mask
    assert "module.audio_branch.bn0.running_mean" in keys and "module.text_projection.2.weight" in keys

    clap = load_laion_clap(path, tokenizer)
    original, converted = model.state_dict(), clap.model.state_dict()
    assert original.keys() == converted.keys()
    assert all(torch.equal(original[k], converted[k]) for k in original)
    assert clap.model.config.audio_config.depths == [2, 1, 1, 1]
    assert clap.model.config.text_config.layer_norm_eps == 1e-5
    assert clap.weights["laion_clap"] == (str(path), sha256_file(path))
    front = written["state_dict"]
    assert torch.equal(clap.front_end.logmel_extractor.melW, front["module.audio_branch.logmel_extractor.melW"])


def test_qkv_is_split_in_query_key_value_order(laion_clap_twin):
    model, path, tokenizer = laion_clap_twin
    qkv = torch.load(path, weights_only=True)["state_dict"]["module.audio_branch.layers.1.blocks.0.attn.qkv.weight"]
    attention = load_laion_clap(path, tokenizer).model.audio_model.audio_encoder.layers[1].blocks[0].attention.self
    width = qkv.shape[0] // 3
    for i, part in enumerate((attention.query, attention.key, attention.value)):
        assert torch.equal(part.weight, qkv[i * width:(i + 1) * width])


def test_plain_state_dict_without_prefix_loads_the_same(laion_clap_twin, tmp_path):
    model, path, tokenizer = laion_clap_twin
    state = {k[len("module."):]: v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}
    state["text_branch.embeddings.position_ids"] = torch.arange(80)[None]  # older transformers saved it
    torch.save(state, tmp_path / "plain.pt")
    converted = load_laion_clap(tmp_path / "plain.pt", tokenizer).model.state_dict()
    assert all(torch.equal(v, converted[k]) for k, v in model.state_dict().items())


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_refusals_name_the_key_in_one_line(laion_clap_twin, tmp_path):
    _, path, tokenizer = laion_clap_twin
    missing = _rewrite(path, tmp_path / "missing.pt", lambda sd: sd.pop("module.audio_branch.norm.weight"))
    with pytest.raises(LaionClapCheckpointError) as err:
        load_laion_clap(missing, tokenizer)
    message = _one_line(err)
    assert "missing keys [audio_branch.norm.weight]" in message and KEY in message and str(missing) in message

    def add(sd):
        sd["module.audio_branch.extra.weight"] = torch.zeros(2)
    unexpected = _rewrite(path, tmp_path / "unexpected.pt", add)
    with pytest.raises(LaionClapCheckpointError) as err:
        load_laion_clap(unexpected, tokenizer)
    assert "unexpected keys [audio_branch.extra.weight]" in _one_line(err)

    no_mel = _rewrite(path, tmp_path / "no_mel.pt", lambda sd: sd.pop("module.audio_branch.logmel_extractor.melW"))
    with pytest.raises(LaionClapCheckpointError, match=r"missing keys \[audio_branch.logmel_extractor.melW\]"):
        load_laion_clap(no_mel, tokenizer)

    torch.save({"conv1.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(LaionClapCheckpointError) as err:
        load_laion_clap(tmp_path / "other.pt", tokenizer)
    assert "has no tensor audio_branch.patch_embed.proj.weight" in _one_line(err) and KEY in str(err.value)
    torch.save({"model": {"conv1.weight": torch.zeros(2)}}, tmp_path / "nested.pt")
    with pytest.raises(LaionClapCheckpointError, match="holds a dict that is not a state dict of tensors"):
        load_laion_clap(tmp_path / "nested.pt", tokenizer)

    torch.save({"state_dict": {}, "args": torch.nn.Linear(1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(LaionClapCheckpointError) as err:
        load_laion_clap(tmp_path / "pickled.pt", tokenizer)
    assert "weights_only=True" in _one_line(err) and "torch.save({'state_dict'" in str(err.value)

    with pytest.raises(LaionClapWeightsMissing, match=KEY):
        load_laion_clap(tmp_path / "absent.pt", tokenizer)
    with pytest.raises(ConfigError) as err:
        load_laion_clap(path, None)
    assert "evaluate.clap_laion.tokenizer is not set" in _one_line(err)


def test_dropped_keys_are_the_documented_ones():
    assert set(DROPPED) == {"audio_branch.tscam_conv.*", "audio_branch.head.*",
                            "audio_branch.layers.*.blocks.*.attn_mask", "audio_transform.*", "text_transform.*",
                            "text_branch.embeddings.position_ids"}


# ------------------------------------------------------------------------------------------ front end
def test_front_end_from_the_file_matches_librosa(laion_clap_twin, tmp_path):
    """Power STFT (hann 1024, hop 480, centred, reflect) → slaney mel 50–14 000 Hz, 64 bands → 10·log10(max(·, 1e-10)),
    computed independently in float64 numpy; and the mel matrix really comes from the file (doubled → +3.0103 dB)."""
    _, path, tokenizer = laion_clap_twin
    rng = np.random.default_rng(0)
    t = np.arange(48_000) / 48_000
    y = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    power = np.abs(librosa.stft(y.astype(np.float64), n_fft=1024, hop_length=480, win_length=1024, window="hann",
                                center=True, pad_mode="reflect")) ** 2
    mel = librosa.filters.mel(sr=48_000, n_fft=1024, n_mels=64, fmin=50, fmax=14_000, dtype=np.float64) @ power
    expected = 10 * np.log10(np.maximum(mel, 1e-10)).T  # (T, 64)

    front = load_laion_clap(path, tokenizer).front_end
    with torch.no_grad():
        got = front(torch.from_numpy(y)[None])
    assert got.shape == (1, 1, 1 + 48_000 // 480, 64)
    np.testing.assert_allclose(got[0, 0].double().numpy(), expected, atol=2e-3)

    def double_mel(sd):
        sd["module.audio_branch.logmel_extractor.melW"] = sd["module.audio_branch.logmel_extractor.melW"] * 2
    doubled = load_laion_clap(_rewrite(path, tmp_path / "doubled.pt", double_mel), tokenizer).front_end
    with torch.no_grad():
        shift = doubled(torch.from_numpy(y)[None]) - got
    np.testing.assert_allclose(shift.numpy(), 10 * np.log10(2), atol=1e-4)


def test_full_clip_gives_the_1001_frames_clap_model_takes():
    with torch.no_grad():
        assert LaionClapMel()(torch.zeros(2, MODEL_SAMPLES)).shape == (2, 1, 1001, 64)


# ------------------------------------------------------------------------------------------ input rule
def test_harness_rule_on_a_12_s_stereo_44k_clip():
    """mono mean → DC removal over the whole 12 s → Resample(44100, 48000) → first 8 s; repeatpad: the 8 s once, then
    2 s of zeros."""
    rng = np.random.default_rng(1)
    signal = rng.standard_normal(12 * 44_100).astype(np.float32) * 0.1
    stereo = np.stack([signal + 0.3, signal - 0.1])           # mono = signal + 0.1
    mono = torch.from_numpy(signal + np.float32(0.1))
    expected = torchaudio.transforms.Resample(44_100, 48_000)(mono - mono.mean())[:8 * 48_000]

    cut = AudioInput(48_000, seconds=8.0)(stereo, 44_100)
    assert cut.shape == (8 * 48_000,) and cut.dtype == torch.float32
    torch.testing.assert_close(cut, expected, rtol=0, atol=1e-6)

    model_input = laion_clap_input(stereo, 44_100)
    assert model_input.shape == (MODEL_SAMPLES,)
    assert torch.equal(model_input[:8 * 48_000], cut)
    assert torch.count_nonzero(model_input[8 * 48_000:]) == 0 and model_input[8 * 48_000:].numel() == 2 * 48_000


def test_repeatpad_repeats_a_3_s_clip_three_times_then_pads():
    clip = torch.arange(1, 3 * 48_000 + 1, dtype=torch.float32)
    padded = repeatpad(clip)
    assert padded.shape == (MODEL_SAMPLES,)
    for i in range(3):
        assert torch.equal(padded[i * 144_000:(i + 1) * 144_000], clip)
    assert torch.count_nonzero(padded[432_000:]) == 0
    assert torch.equal(repeatpad(torch.ones(MODEL_SAMPLES)), torch.ones(MODEL_SAMPLES))
    with pytest.raises(ValueError, match="evaluate.clap_laion.seconds"):
        repeatpad(torch.ones(MODEL_SAMPLES + 1))
    at_48k = AudioInput(48_000, seconds=None)(np.ones(48_000, dtype=np.float32) * 0.2, 48_000)
    assert at_48k.abs().max() < 1e-7  # a constant is all DC
