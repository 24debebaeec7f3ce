"""ViViT, a VTA-LDM Table 2 encoder: one token per tubelet time slot of each 32-frame window (the slot's patches
averaged), windows in time order, padding and masks, the preprocessing against VivitImageProcessor, the frozen rule,
and loading (the tiny twin through the real loader, a missing model, a folder without the encoder's weights)."""

from __future__ import annotations

import copy
import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import VivitForVideoClassification, VivitImageProcessor

import avgen.backbones.tiny
from avgen.encoders.vivit import (
    FPS,
    HUB_ID,
    TINY_SOURCE,
    ViViTEncoder,
    ViViTModelMissing,
    load_vivit,
    save_tiny_vivit,
    vivit_preprocessing,
)
from avgen.errors import ConfigError
from tests.encoders.common import (
    BAD_FRAMES,
    BAD_SETTINGS,
    assert_frozen_in_eval_mode,
    assert_missing_model_names_the_fixes,
    assert_reversing_the_windows_reverses_the_tokens,
    noise,
    smooth,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SLOTS, PATCHES, WIDTH = 16, 4, 32  # the twin: 32 frames / 2 per tubelet, (32 px / 16)², hidden size


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("vivit")
    save_tiny_vivit(path)
    return path


@pytest.fixture(scope="module")
def encoder(folder) -> ViViTEncoder:
    return load_vivit(folder)


def reference_tokens(encoder: ViViTEncoder, window: torch.Tensor) -> torch.Tensor:
    """(16, D) for one 32-frame window: token k is the mean of last_hidden_state rows 1 + 4k … 4 + 4k (row 0 is CLS,
    then the patches of slot 0, slot 1, …)."""
    with torch.no_grad():
        hidden = encoder.model(pixel_values=encoder.preprocessing(window)[None]).last_hidden_state[0]
    return torch.stack([hidden[1 + k * PATCHES:1 + (k + 1) * PATCHES].mean(0) for k in range(SLOTS)])


def test_tokens_are_the_slot_means_of_each_window_in_time_order(encoder):
    frames = noise(2, 64, 3, 40, 48)
    out = encoder(frames)
    assert out.embeds.shape == (2, 2 * SLOTS, encoder.embed_dim) == (2, 32, WIDTH)
    assert out.embeds.dtype == torch.float32 and out.mask.dtype == torch.bool and out.mask.all()
    assert out.seconds_per_token == Fraction(2, FPS) == Fraction(1, 4)
    for b in range(2):
        expected = torch.cat([reference_tokens(encoder, frames[b, :32]), reference_tokens(encoder, frames[b, 32:])])
        torch.testing.assert_close(out.embeds[b], expected, rtol=1e-5, atol=1e-6)
    # one clip (F, 3, H, W) is a batch of one
    torch.testing.assert_close(encoder(frames[1]).embeds, out.embeds[1:], rtol=1e-5, atol=1e-6)


def test_reversing_the_windows_reverses_the_tokens(encoder):
    assert_reversing_the_windows_reverses_the_tokens(encoder, 32, SLOTS)


def test_token_k_pools_the_patches_of_frames_2k_and_2k_plus_1(encoder):
    # Without its attention layers the model embeds each tubelet on its own: only the token of the changed slot moves.
    model = copy.deepcopy(encoder.model)
    model.layers = torch.nn.ModuleList()
    local = ViViTEncoder(model)
    frames = noise(32, 3, 32, 32, seed=3)
    changed = frames.clone()
    changed[6:8] = noise(2, 3, 32, 32, seed=4)
    moved = (local(changed).embeds[0] - local(frames).embeds[0]).abs().amax(-1)
    assert moved[3] > 1e-3 and torch.equal(torch.cat([moved[:3], moved[4:]]), torch.zeros(SLOTS - 1))


def test_clips_of_different_lengths_are_padded_with_their_last_frame_and_masked(encoder):
    long, short = noise(40, 3, 40, 48, seed=5), noise(9, 3, 36, 30, seed=6)
    out = encoder([long, short])
    assert out.embeds.shape == (2, 32, WIDTH)
    assert out.mask.sum(1).tolist() == [20, 5]  # ⌈40 / 2⌉, ⌈9 / 2⌉: a slot with one real frame is real
    assert out.mask[0, :20].all() and out.mask[1, :5].all()
    assert torch.equal(out.embeds[0, 20:], torch.zeros(12, WIDTH))
    assert torch.equal(out.embeds[1, 5:], torch.zeros(27, WIDTH))
    padded = torch.cat([long, long[-1:].expand(24, -1, -1, -1)])
    torch.testing.assert_close(out.embeds[0, :20], encoder(padded).embeds[0, :20], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.embeds[1, :5], encoder(short).embeds[0, :5], rtol=1e-5, atol=1e-6)
    assert encoder(short).embeds.shape == (1, SLOTS, WIDTH)


def test_the_encoder_is_frozen_and_stays_in_eval_mode(encoder):
    assert_frozen_in_eval_mode(encoder)


@pytest.mark.parametrize("frames,problem", BAD_FRAMES)
def test_bad_frames_are_refused_with_the_expected_layout(encoder, frames, problem):
    with pytest.raises(ValueError, match="ViViT") as err:
        encoder(frames)
    assert problem in str(err.value)


# Measured against VivitImageProcessor (PIL's bilinear resize) on noise and smooth frames of 10 sizes (16 × 17 to
# 1920 × 1080, up- and downscaling, both orientations, 2 seeds; 6.0 M values): 0.57 % of the values differ by one grey
# level (1 / 63.75 = 0.016 in the model's [-3, 1] units), 32 by two, none by more; at most 4 % of one frame's values
# (14× upscaling of 17 × 16 frames), under 0.3 % from 96 px up; frames already 224 × 224 match to 2.4e-7.
MAX_GREY_LEVELS = 2
MAX_FRACTION_DIFFERENT = 0.05


@pytest.mark.parametrize("height,width", [(224, 224), (96, 160), (300, 225), (17, 16), (480, 640)])
@pytest.mark.parametrize("content", ["noise", "smooth"])
def test_preprocessing_matches_vivit_image_processor_with_the_checkpoint_config(height, width, content):
    # google/vivit-b-16x2-kinetics400's preprocessor_config.json
    processor = VivitImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=2,
                                    rescale_factor=1 / 127.5, offset=True, do_normalize=True, image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3)
    frame = noise(3, height, width, seed=7) if content == "noise" else smooth(height, width, seed=7)
    expected = processor([frame.permute(1, 2, 0).numpy()], return_tensors="np")["pixel_values"][0][0]
    ours = vivit_preprocessing(224)(frame[None])[0]
    assert ours.shape == expected.shape == (3, 224, 224)
    grey_levels = ((ours - torch.from_numpy(np.asarray(expected))).abs() * 63.75).round()
    assert grey_levels.max() <= MAX_GREY_LEVELS
    assert (grey_levels > 0).float().mean() <= MAX_FRACTION_DIFFERENT
    if (height, width) == (224, 224):  # no resize: crop, rescale and mean/std alone
        torch.testing.assert_close(ours, torch.from_numpy(np.asarray(expected)), rtol=0, atol=1e-6)


def test_normalize_false_gives_the_original_vivits_unit_range_pixels(encoder):
    frames = noise(4, 3, 50, 60, seed=8)
    unit = vivit_preprocessing(32, normalize=False)(frames)
    assert unit.min() >= -1 and unit.max() <= 1
    torch.testing.assert_close(vivit_preprocessing(32)(frames), (unit - 0.5) / 0.5, rtol=0, atol=1e-6)
    raw = ViViTEncoder(encoder.model, normalize=False)
    assert raw.preprocessing == vivit_preprocessing(32, normalize=False)
    assert (raw(frames).embeds - encoder(frames).embeds).abs().max() > 1e-3


def test_a_missing_model_names_the_config_key_the_hub_id_and_the_fixes(tmp_path):
    assert HUB_ID == "google/vivit-b-16x2-kinetics400"
    assert_missing_model_names_the_fixes(load_vivit, ViViTModelMissing, tmp_path, HUB_ID,
                                         "models--google--vivit-b-16x2-kinetics400", TINY_SOURCE)
    with pytest.raises(ViViTModelMissing, match=r"^no ViViT model is set \(config key model.encoder.path\)"):
        load_vivit(None)


@pytest.mark.parametrize("setting,key", BAD_SETTINGS)
def test_bad_settings_name_their_config_key(setting, key):
    with pytest.raises(ConfigError, match=key):
        load_vivit(None, **setting)


def test_a_folder_without_the_encoder_weights_is_refused(encoder, tmp_path):
    state = {k: v for k, v in encoder.model.state_dict().items() if k != "layernorm.weight"}
    encoder.model.save_pretrained(tmp_path, state_dict=state)
    with pytest.raises(ConfigError, match=r"model.encoder.path=.* lacks weights of the ViViT encoder "
                                          r"\(layernorm.weight, 1 in all\)"):
        load_vivit(tmp_path)


def test_tiny_twin_is_a_classification_folder_loaded_through_the_real_loader(encoder, folder, tmp_path,
                                                                              monkeypatch):
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["VivitForVideoClassification"]
    save_tiny_vivit(tmp_path / "again")  # seeded: the same bytes every time
    assert (folder / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()
    # the encoder of the classification checkpoint, its classifier left out
    assert any(key.startswith("classifier.") for key in load_file(folder / "model.safetensors"))
    classifier = VivitForVideoClassification.from_pretrained(folder)
    assert classifier.vivit.state_dict().keys() == encoder.model.state_dict().keys()
    for key, value in classifier.vivit.state_dict().items():
        assert torch.equal(value, encoder.model.state_dict()[key]), key
    assert encoder.fps == FPS == 8 and encoder.window_frames == 32 and encoder.tubelet_frames == 2
    frames = noise(1, 32, 3, 40, 48, seed=9)
    with torch.no_grad():
        hidden = classifier.vivit(pixel_values=encoder.preprocessing(frames[0])[None]).last_hidden_state
    torch.testing.assert_close(encoder(frames).embeds[0], hidden[0, 1:].view(SLOTS, PATCHES, WIDTH).mean(1),
                               rtol=1e-5, atol=1e-6)
    # tiny:vivit goes through avgen.backbones.tiny.materialize to the same loader
    monkeypatch.setitem(avgen.backbones.tiny.TINY_BUILDERS, "vivit", save_tiny_vivit)
    tiny = load_vivit(TINY_SOURCE, tiny_dir=tmp_path / "tiny", fps=4)
    assert tiny.fps == 4 and tiny(frames).seconds_per_token == Fraction(1, 2)
    torch.testing.assert_close(tiny(frames).embeds, encoder(frames).embeds, rtol=0, atol=0)
