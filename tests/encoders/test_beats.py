"""BEATs audio encoder: front end, patch order, attention, official checkpoint layout and loading errors."""

from __future__ import annotations

import argparse
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

from avgen.encoders.beats import (
    CHECKPOINT_FILE,
    BEATs,
    BEATsCheckpointError,
    BEATsConfig,
    BEATsWeightsMissing,
    PatchEmbedding,
    load_beats,
    patchify,
    preprocess,
    relative_position_bucket,
    save_official_format,
)
from avgen.errors import ConfigError

SR = 16000


def hand_made_audio(seconds: float = 1.0) -> torch.Tensor:
    """(2, S): a two-tone chord, and a rising chirp whose second half is louder."""
    t = torch.arange(int(SR * seconds), dtype=torch.float32) / SR
    chord = 0.5 * torch.sin(2 * math.pi * 440 * t) + 0.25 * torch.sin(2 * math.pi * 3000 * t)
    chirp = 0.3 * torch.sin(2 * math.pi * (200 + 1500 * t) * t) * (1 + (t > seconds / 2).float())
    return torch.stack([chord, chirp])


def tiny_model(seed: int = 0) -> BEATs:
    """A tiny BEATs whose gates and norms are moved off their initial values, so a lost weight shows."""
    torch.manual_seed(seed)
    model = BEATs(BEATsConfig.tiny()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("grep_a", "weight_g", "layer_norm.weight", "layer_norm.bias")):
                param.add_(0.3 * torch.randn_like(param))
    return model


# --- front end -------------------------------------------------------------------------------------------------


def test_fbank_equals_direct_kaldi_call_with_beats_normalisation():
    audio = hand_made_audio()
    fbank = preprocess(audio)
    assert fbank.shape == (2, 98, 128)  # 1 + (16000 − 400) // 160 frames
    for clip, ours in zip(audio, fbank):
        reference = kaldi.fbank(clip[None] * 32768, num_mel_bins=128, sample_frequency=16000, frame_length=25,
                                frame_shift=10)
        torch.testing.assert_close(ours, (reference - 15.41663) / (2 * 6.55582), atol=1e-5, rtol=0)


def test_front_end_refuses_unbatched_or_too_short_audio():
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        preprocess(torch.zeros(SR))
    model = tiny_model()
    assert model.min_samples == 2800  # 400-sample window + 15 hops of 160: one row of 16 frames
    with pytest.raises(ValueError, match="at least 2800 samples"):
        model(torch.zeros(1, 2799))
    assert model(torch.zeros(1, 2800)).time_patches == 1


# --- patches -----------------------------------------------------------------------------------------------------


def test_patchify_is_time_major_and_drops_incomplete_rows():
    fbank = torch.randn(2, 98, 128)
    patches = patchify(fbank, 16)
    assert patches.shape == (2, 6 * 8, 256)
    for t in range(6):
        for f in range(8):
            expected = fbank[:, t * 16:(t + 1) * 16, f * 16:(f + 1) * 16].reshape(2, 256)
            assert torch.equal(patches[:, t * 8 + f], expected)


def test_patch_embedding_equals_the_official_strided_convolution():
    torch.manual_seed(0)
    embed = PatchEmbedding(embed_dim=8, patch_size=16, bias=True)
    with torch.no_grad():
        embed.bias.normal_()
    fbank = torch.randn(3, 98, 128)
    # beats/BEATs.py: Conv2d over (B, 1, T, 128), then reshape (B, C, T'·F') and transpose
    official = F.conv2d(fbank[:, None], embed.weight, embed.bias, stride=16).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed(fbank), official, atol=1e-5, rtol=1e-5)


# --- encoder -----------------------------------------------------------------------------------------------------


def test_tiny_model_shapes_grid_and_layer_selection():
    model = tiny_model()
    audio = hand_made_audio()
    with torch.no_grad():
        out = model(audio)
        last = model(audio, layers=[2])
        reordered = model(audio, layers=(2, 0, 1))
    assert out.hidden.shape == (2, 6 * 8, 2, 32) and out.layers == (1, 2)
    assert (out.time_patches, out.freq_patches, out.patch_seconds) == (6, 8, 0.16)
    grid = out.grid()
    assert grid.shape == (2, 6, 8, 2, 32)
    assert torch.equal(grid[:, 4, 3], out.hidden[:, 4 * 8 + 3])
    torch.testing.assert_close(last.hidden[:, :, 0], out.hidden[:, :, 1])
    torch.testing.assert_close(reordered.hidden[:, :, [2, 0]], out.hidden)
    assert not torch.allclose(reordered.hidden[:, :, 1], out.hidden[:, :, 0])  # 0 is the encoder input
    for bad in ([], [3], [-1]):
        with pytest.raises(ValueError, match=r"indices in 0\.\.2"):
            model(audio, layers=bad)


def test_relative_position_buckets_of_beats():
    offsets = torch.tensor([0, -5, 5, -79, -80, 80, -200, 200, -799, -800, -5000, 5000])
    # 160 buckets per sign, 80 exact; beyond: 80 + ⌊log(d / 80) / log(10) · 80⌋, capped at 159 (+160 if d > 0)
    expected = [0, 5, 165, 79, 80, 240, 111, 271, 159, 159, 159, 319]
    assert relative_position_bucket(offsets, 320, 800).tolist() == expected


def official_attention(attn, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
    """beats/backbone.py MultiheadAttention.forward (self-attention, gru_rel_pos) written out for (B, L, D) input,
    with its float16 guard: q scaled by 1/32, max-subtracted logits rescaled by 32."""
    b, length, _ = x.shape
    h, d = attn.heads, attn.head_dim
    scaling, alpha = d ** -0.5, 32

    def heads(y):
        return y.view(b, length, h, d).transpose(1, 2)

    q = heads(attn.q_proj(x)) * scaling / alpha
    k, v = heads(attn.k_proj(x)), heads(attn.v_proj(x))
    logits = q @ k.transpose(-1, -2)
    logits = (logits - logits.max(dim=-1, keepdim=True)[0]) * alpha
    gate_a, gate_b = torch.sigmoid(attn.grep_linear(q * alpha / scaling).view(b, h, length, 2, 4).sum(-1)).chunk(2, -1)
    logits = logits + (gate_a * (gate_b * attn.grep_a - 1.0) + 2.0) * position_bias
    out = torch.softmax(logits, dim=-1) @ v
    return attn.out_proj(out.transpose(1, 2).reshape(b, length, h * d))


def test_attention_equals_the_official_formula():
    model = tiny_model()
    attn = model.encoder.layers[1].self_attn
    x = torch.randn(2, 48, 32)
    bias = model.encoder.position_bias(48, x.device)
    position = torch.arange(48)
    table = attn.relative_attention_bias.weight
    buckets = relative_position_bucket(position[None] - position[:, None], 32, 64)
    assert torch.equal(bias, table[buckets].permute(2, 0, 1))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, bias), official_attention(attn, x, bias), atol=1e-5, rtol=1e-5)


# --- official checkpoint layout ----------------------------------------------------------------------------------

# Keys and shapes of BEATs_iter3+ (official cfg: 12 layers, D 768, FFN 3072, 12 heads, embed_dim 512, conv_pos 128 /
# 16 groups, 320 buckets, gru_rel_pos), read from microsoft/unilm beats/BEATs.py @c68101b (BEATs: post_extract_proj,
# patch_embedding, encoder, layer_norm, predictor when fine-tuned) and beats/backbone.py @9102ed9
# (TransformerEncoder.pos_conv = Sequential(weight_norm(Conv1d, dim=2), SamePad, GELU); the relative bias table of
# layer 0 re-assigned to every layer, so state_dict stores it under each layer's name).
OFFICIAL_NON_LAYER = {
    "post_extract_proj.weight": (768, 512), "post_extract_proj.bias": (768,),
    "patch_embedding.weight": (512, 1, 16, 16),
    "encoder.pos_conv.0.weight_g": (1, 1, 128), "encoder.pos_conv.0.weight_v": (768, 48, 128),
    "encoder.pos_conv.0.bias": (768,),
    "encoder.layer_norm.weight": (768,), "encoder.layer_norm.bias": (768,),
    "layer_norm.weight": (512,), "layer_norm.bias": (512,),
}
OFFICIAL_LAYER = {
    "self_attn.grep_a": (1, 12, 1, 1),
    "self_attn.relative_attention_bias.weight": (320, 12),
    "self_attn.k_proj.weight": (768, 768), "self_attn.k_proj.bias": (768,),
    "self_attn.v_proj.weight": (768, 768), "self_attn.v_proj.bias": (768,),
    "self_attn.q_proj.weight": (768, 768), "self_attn.q_proj.bias": (768,),
    "self_attn.out_proj.weight": (768, 768), "self_attn.out_proj.bias": (768,),
    "self_attn.grep_linear.weight": (8, 64), "self_attn.grep_linear.bias": (8,),
    "self_attn_layer_norm.weight": (768,), "self_attn_layer_norm.bias": (768,),
    "fc1.weight": (3072, 768), "fc1.bias": (3072,),
    "fc2.weight": (768, 3072), "fc2.bias": (768,),
    "final_layer_norm.weight": (768,), "final_layer_norm.bias": (768,),
}


def test_default_config_has_the_official_iter3_keys_shapes_and_size():
    with torch.device("meta"):
        model = BEATs()
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    official = dict(OFFICIAL_NON_LAYER)
    for layer in (0, 11):
        official.update({f"encoder.layers.{layer}.{key}": shape for key, shape in OFFICIAL_LAYER.items()})
    assert {k: shapes[k] for k in official} == official
    layer_keys = {k.split(".", 3)[3] for k in shapes if k.startswith("encoder.layers.")}
    assert layer_keys == set(OFFICIAL_LAYER)
    layers = {f"encoder.layers.{i}.{k}" for i in range(12) for k in OFFICIAL_LAYER}
    assert set(shapes) == set(OFFICIAL_NON_LAYER) | layers
    per_layer = 4 * (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) + 4 * 768 + (64 * 8 + 8) + 12
    front = 512 * 256 + (512 * 768 + 768) + 2 * 512 + (768 * 48 * 128 + 128 + 768) + 2 * 768
    total = front + 12 * per_layer + 320 * 12  # the relative bias table is one tensor shared by all layers
    assert sum(p.numel() for p in model.parameters()) == total == 90_311_792


def test_official_format_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_model()
    path = save_official_format(model, tmp_path / "tiny_beats.pt")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"cfg", "model"} and raw["cfg"]["encoder_layers"] == 2
    assert raw["cfg"]["finetuned_model"] is False
    loaded = load_beats(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    audio = hand_made_audio()
    with torch.no_grad():
        assert torch.equal(loaded(audio).hidden, model(audio).hidden)
    with pytest.raises(FileExistsError):
        save_official_format(model, path)


def test_finetuned_checkpoint_is_checked_and_its_classifier_dropped(tmp_path):
    model = tiny_model()
    cfg = {**BEATsConfig.tiny().to_official(), "finetuned_model": True, "predictor_class": 5}
    state = dict(model.state_dict())
    torch.save({"cfg": cfg, "model": {**state, "predictor.weight": torch.randn(5, 32),
                                      "predictor.bias": torch.zeros(5)},
                "label_dict": {0: "/m/09x0r", 1: "/m/05zppz"}}, tmp_path / "finetuned.pt")
    loaded = load_beats(tmp_path / "finetuned.pt")
    assert "predictor.weight" not in loaded.state_dict()
    torch.save({"cfg": cfg, "model": state}, tmp_path / "no_classifier.pt")
    with pytest.raises(BEATsCheckpointError, match=r"missing keys \[predictor\.bias, predictor\.weight\]"):
        load_beats(tmp_path / "no_classifier.pt")


# --- loading errors ----------------------------------------------------------------------------------------------


def test_missing_file_names_the_config_key_the_file_and_scale_tiny(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_beats(tmp_path / "absent.pt")
    message = str(info.value)
    assert isinstance(info.value, BEATsWeightsMissing)
    assert "model.encoder.path" in message and "scale=tiny" in message and CHECKPOINT_FILE in message
    assert "microsoft/unilm" in message
    with pytest.raises(BEATsWeightsMissing, match="experiment.beats"):
        load_beats(None, config_key="experiment.beats")


def test_wrong_key_and_wrong_shape_are_listed(tmp_path):
    state = dict(tiny_model().state_dict())
    state["encoder.layers.1.fc_1.weight"] = state.pop("encoder.layers.1.fc1.weight")
    state["layer_norm.bias"] = torch.zeros(7)
    torch.save({"cfg": BEATsConfig.tiny().to_official(), "model": state}, tmp_path / "renamed.pt")
    with pytest.raises(BEATsCheckpointError) as info:
        load_beats(tmp_path / "renamed.pt", config_key="model.encoder.path")
    message = str(info.value)
    assert "missing keys [encoder.layers.1.fc1.weight]" in message
    assert "unexpected keys [encoder.layers.1.fc_1.weight]" in message
    assert "layer_norm.bias (7,) (expected (16,))" in message and "model.encoder.path" in message


def test_files_outside_the_official_layout_are_refused(tmp_path):
    torch.save({"cfg": argparse.Namespace(encoder_layers=2), "model": {}}, tmp_path / "pickled.pt")
    with pytest.raises(BEATsCheckpointError, match=r"weights_only=True"):
        load_beats(tmp_path / "pickled.pt")
    torch.save({"state_dict": {}}, tmp_path / "lightning.pt")
    with pytest.raises(BEATsCheckpointError, match=r"holds \['state_dict'\], not an official BEATs checkpoint"):
        load_beats(tmp_path / "lightning.pt")


def test_config_from_official_cfg(caplog):
    with caplog.at_level(logging.INFO, logger="avgen.encoders.beats"):
        config = BEATsConfig.from_official({"encoder_layers": 2, "label_smoothing": 0.1})
    assert config.encoder_layers == 2 and config.encoder_embed_dim == 768 and config.max_distance == 800
    assert "label_smoothing" in caplog.text
    tiny = BEATsConfig.tiny()
    assert BEATsConfig.from_official(tiny.to_official()) == tiny
    with pytest.raises(ConfigError, match=r"cfg\['layer_norm_first'\]"):
        BEATs(BEATsConfig(layer_norm_first=True))
