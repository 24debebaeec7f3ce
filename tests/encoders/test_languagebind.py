"""LanguageBind_Image as a VTA-LDM frame encoder: the published checkpoint layout (config.json, key names) read
through an explicit strict key map into transformers' CLIPVisionModelWithProjection, per-frame embeddings in time
order, padding, the frozen rule, and loading errors (missing model, missing / extra keys, other LanguageBind towers)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

import avgen.backbones.tiny
from avgen.encoders.clip4clip import preprocess
from avgen.encoders.languagebind import (
    FPS,
    HUB_ID,
    TINY_SOURCE,
    LanguageBindEncoder,
    LanguageBindModelMissing,
    key_map,
    load_languagebind,
    save_tiny_languagebind,
)
from avgen.errors import ConfigError
from tests.encoders.common import (
    assert_frozen_in_eval_mode,
    assert_missing_model_names_the_fixes,
    assert_one_token_per_frame,
    assert_padded_at_the_end,
    assert_permuting_frames_permutes_embeddings,
    noise,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# languagebind/image/processing_image.py (PKU-YuanGroup/LanguageBind): OPENAI_DATASET_MEAN / _STD
LANGUAGEBIND_MEAN = (0.48145466, 0.4578275, 0.40821073)
LANGUAGEBIND_STD = (0.26862954, 0.26130258, 0.27577711)


def published_keys(vision_layers: int, text_layers: int) -> set[str]:
    """LanguageBindImage.state_dict() keys as transformers 4.30 saved them, read off languagebind/image/
    modeling_image.py: CLIPVisionTransformer (embeddings, pre_layrnorm, encoder.layers, post_layernorm; PatchDropout
    has no weights), CLIPTextTransformer (embeddings, encoder.layers, final_layer_norm), the two projections without
    bias, logit_scale, and the persistent position_ids buffers of CLIP*Embeddings before transformers 4.31."""
    layer = [f"{m}.{w}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                                  "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2") for w in ("weight", "bias")]
    keys = {"vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
            "vision_model.embeddings.position_embedding.weight", "vision_model.embeddings.position_ids",
            "vision_model.pre_layrnorm.weight", "vision_model.pre_layrnorm.bias",
            "vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias",
            "text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
            "text_model.embeddings.position_ids", "text_model.final_layer_norm.weight",
            "text_model.final_layer_norm.bias", "visual_projection.weight", "text_projection.weight", "logit_scale"}
    keys |= {f"vision_model.encoder.layers.{i}.{k}" for i in range(vision_layers) for k in layer}
    keys |= {f"text_model.encoder.layers.{i}.{k}" for i in range(text_layers) for k in layer}
    return keys


@pytest.fixture(scope="module")
def encoder(tiny_dir) -> LanguageBindEncoder:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(avgen.backbones.tiny.TINY_BUILDERS, "languagebind", save_tiny_languagebind)
        return load_languagebind(TINY_SOURCE, tiny_dir=tiny_dir)


@pytest.fixture(scope="module")
def folder(encoder, tiny_dir):
    (found,) = tiny_dir.glob("languagebind-v*")
    return found


@pytest.fixture
def copy(folder, tmp_path):
    """A writable copy of the tiny folder, and its state dict."""
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target, torch.load(target / "pytorch_model.bin", map_location="cpu", weights_only=True)


def test_tiny_twin_has_the_published_key_names_and_config_format(folder):
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert set(state) == published_keys(2, 2)
    assert torch.equal(state["vision_model.embeddings.position_ids"], torch.arange(257)[None])
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == config["architectures"][0] == "LanguageBindImage"
    vision = config["vision_config"]
    assert vision["model_type"] == "clip_vision_model" and vision["patch_size"] == 14 and vision["image_size"] == 224
    assert (vision["add_time_attn"], vision["lora_r"], vision["num_mel_bins"], vision["target_length"]) == (
        False, 0, 0, 0)
    # the key map covers exactly the vision tower and its projection
    assert set(key_map(2)) == {k for k in published_keys(2, 0) if k.startswith(("vision_model.", "visual_"))} - {
        "vision_model.embeddings.position_ids"}
    save_tiny_languagebind(folder.parent / "again")  # seeded: the same bytes every time
    for name in ("config.json", "pytorch_model.bin"):
        assert (folder / name).read_bytes() == (folder.parent / "again" / name).read_bytes()


def test_embeds_are_the_image_features_of_the_published_weights(encoder, folder):
    # reference: the published state dict in a full transformers CLIPModel (LanguageBindImage's module tree);
    # LanguageBindImage.get_image_features = visual_projection(post_layernorm(CLS)), as CLIP's
    config = json.loads((folder / "config.json").read_text())
    clip = CLIPModel(CLIPConfig(
        text_config={k: v for k, v in config["text_config"].items() if k not in ("add_time_attn", "model_type")},
        vision_config={k: config["vision_config"][k] for k in ("hidden_size", "intermediate_size",
                                                               "num_hidden_layers", "num_attention_heads",
                                                               "image_size", "patch_size", "hidden_act")},
        projection_dim=config["projection_dim"])).eval()
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    clip.load_state_dict({k: v for k, v in state.items() if not k.endswith("position_ids")}, strict=True)
    assert encoder.embed_dim == 16
    assert encoder.fps == FPS == 2 and encoder.normalize and encoder.image_size == 224

    def image_features(frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return clip.get_image_features(pixel_values=preprocess(frames, 224)).pooler_output

    out = assert_one_token_per_frame(encoder, noise(2, 3, 3, 48, 80), image_features)
    assert out.seconds_per_token == 0.5


def test_languagebind_normalisation_is_openai_clips():
    assert LANGUAGEBIND_MEAN == tuple(OPENAI_CLIP_MEAN) and LANGUAGEBIND_STD == tuple(OPENAI_CLIP_STD)


def test_permuting_frames_permutes_embeddings(encoder):
    frames = noise(1, 4, 3, 40, 40, seed=1)
    order = [3, 1, 0, 2]
    assert_permuting_frames_permutes_embeddings(encoder, frames, order)


def test_clips_of_different_lengths_are_padded_at_the_end_and_masked(encoder):
    long, short = noise(3, 3, 40, 56, seed=2), noise(2, 3, 64, 30, seed=3)
    out = assert_padded_at_the_end(encoder, long, short)
    assert out.mask.tolist() == [[True, True, True], [True, True, False]]


def test_the_encoder_is_frozen_and_stays_in_eval_mode(encoder):
    assert_frozen_in_eval_mode(encoder)


def test_a_missing_model_names_the_config_key_the_hub_id_and_the_fixes(folder, tmp_path):
    assert HUB_ID == "LanguageBind/LanguageBind_Image"
    assert_missing_model_names_the_fixes(load_languagebind, LanguageBindModelMissing, tmp_path, HUB_ID,
                                         "models--LanguageBind--LanguageBind_Image", TINY_SOURCE)
    with pytest.raises(LanguageBindModelMissing, match="LocalEntryNotFoundError"):
        load_languagebind()  # the hub id, not in the local cache: never downloaded
    with pytest.raises(LanguageBindModelMissing, match=r"no model.safetensors or pytorch_model.bin"):
        (tmp_path / "config_only").mkdir()
        shutil.copy(folder / "config.json", tmp_path / "config_only")
        load_languagebind(tmp_path / "config_only")
    with pytest.raises(LanguageBindModelMissing, match=r"^no LanguageBind model is set \(config key model.encoder"):
        load_languagebind(None)


@pytest.mark.parametrize("change,problem", [
    (lambda s: s.pop("vision_model.encoder.layers.1.mlp.fc2.bias"),
     r"1 missing: vision_model.encoder.layers.1.mlp.fc2.bias"),
    (lambda s: s.pop("visual_projection.weight"), r"1 missing: visual_projection.weight"),
    # peft's LoRA on the image encoder (lora_r > 0) adds adapter weights: not LanguageBind_Image's layout
    (lambda s: s.update({"vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(2, 32)}),
     r"1 unexpected: vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight"),
    (lambda s: s.update({"vision_model.encoder.layers.2.layer_norm1.weight": torch.ones(32)}),
     r"1 unexpected: vision_model.encoder.layers.2.layer_norm1.weight"),
])
def test_the_key_map_is_strict(copy, change, problem):
    target, state = copy
    change(state)
    torch.save(state, target / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=rf"^model.encoder.path=.*: the weights do not fit LanguageBind's image "
                                          rf"tower of 2 layers \(config.json\): {problem}"):
        load_languagebind(target)


def test_mis_shaped_weights_are_refused(copy):
    target, state = copy
    state["visual_projection.weight"] = torch.zeros(8, 32)
    torch.save(state, target / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"do not fit the tower that config.json describes: 1 mis-shaped: "
                                          r"visual_projection.weight \(8, 32\) \(config.json: \(16, 32\)\)"):
        load_languagebind(target)


@pytest.mark.parametrize("change,problem", [
    ({"lora_r": 2}, "lora_r=2"),
    ({"add_time_attn": True}, "add_time_attn=True"),
    ({"num_mel_bins": 112, "target_length": 1036}, "num_mel_bins=112, target_length=1036"),
])
def test_other_languagebind_towers_are_refused_by_their_config(copy, change, problem):
    target, _ = copy
    config = json.loads((target / "config.json").read_text())
    config["vision_config"].update(change)
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=rf"config.json sets {problem}, a LanguageBind tower other than the image"):
        load_languagebind(target)


def test_a_plain_clip_config_is_refused(copy):
    target, _ = copy
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "model_type": "clip"}))
    with pytest.raises(ConfigError, match=r"model_type 'clip'; expected 'LanguageBindImage'"):
        load_languagebind(target)


def test_safetensors_weights_load_the_same(copy, encoder):
    target, state = copy
    (target / "pytorch_model.bin").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, target / "model.safetensors")
    frames = noise(1, 2, 3, 40, 40, seed=4)
    torch.testing.assert_close(load_languagebind(target)(frames).embeds, encoder(frames).embeds, rtol=0, atol=0)


@pytest.mark.parametrize("setting,key", [({"fps": -1}, "model.encoder.fps=-1"),
                                         ({"normalize": 1}, "model.encoder.normalize=1")])
def test_bad_settings_name_their_config_key(setting, key):
    with pytest.raises(ConfigError, match=key):
        load_languagebind(None, **setting)
