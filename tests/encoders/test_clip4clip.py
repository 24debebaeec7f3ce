"""CLIP4Clip, VTA-LDM's frame encoder: CLIP's preprocessing against CLIPImageProcessor, per-frame embeddings in
time order, padding, the normalize flag, the frozen rule, and loading (the tiny twin through the real loader, a
missing model, a folder without the vision tower)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessorPil, CLIPModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from avgen.backbones.tiny import save_tiny_clip_vision
from avgen.encoders.clip4clip import (
    FPS,
    HUB_ID,
    TINY_SOURCE,
    CLIP4ClipEncoder,
    CLIP4ClipModelMissing,
    load_clip4clip,
    preprocess,
)
from avgen.errors import ConfigError
from tests.encoders.common import (
    BAD_FRAMES,
    BAD_SETTINGS,
    assert_frozen_in_eval_mode,
    assert_missing_model_names_the_fixes,
    assert_one_token_per_frame,
    assert_padded_at_the_end,
    assert_permuting_frames_permutes_embeddings,
    noise,
    smooth,
)

MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> CLIP4ClipEncoder:
    return load_clip4clip(TINY_SOURCE, tiny_dir=tmp_path_factory.mktemp("tiny"))


def reference_embeds(encoder: CLIP4ClipEncoder, clip: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(F, D): the model's image_embeds of each preprocessed frame, one call per frame."""
    with torch.no_grad():
        return torch.cat([encoder.model(pixel_values=preprocess(frame[None], 224, normalize)).image_embeds
                          for frame in clip])


def test_embeds_are_each_frames_image_embeds_in_time_order(encoder):
    assert encoder.embed_dim == 16
    assert_one_token_per_frame(encoder, noise(2, 3, 3, 64, 80), lambda clip: reference_embeds(encoder, clip))


def test_permuting_frames_permutes_embeddings(encoder):
    frames = noise(1, 4, 3, 48, 64, seed=1)
    order = [2, 0, 3, 1]
    assert_permuting_frames_permutes_embeddings(encoder, frames, order)


def test_normalize_is_exactly_clips_mean_std_map_of_the_unit_range_pixels(encoder):
    frames = noise(2, 3, 100, 150, seed=2)
    unit = preprocess(frames, 224, normalize=False)
    assert unit.min() >= 0 and unit.max() <= 1
    assert torch.equal((unit * 255).round() / 255, unit)  # 8-bit values, as PIL's
    assert torch.equal(preprocess(frames, 224, normalize=True), (unit - MEAN) / STD)
    # the flag reaches the model: normalize=False feeds it the [0, 1] pixels (the public VTA-LDM code)
    raw = CLIP4ClipEncoder(encoder.model, normalize=False)
    torch.testing.assert_close(raw(frames).embeds[0], reference_embeds(encoder, frames, normalize=False),
                               rtol=1e-5, atol=1e-6)
    assert (raw(frames).embeds - encoder(frames).embeds).abs().max() > 1e-3


# Measured against CLIPImageProcessorPil on noise and smooth frames of 12 sizes (16 × 16 to 1080 × 1920, up- and
# downscaling, both orientations, 3 seeds; 10.8 M values): 0.10 % of the values differ by 1 grey level (0.015 after
# the mean/std map), 17 by 2 (0.030); mean absolute difference 1.5e-5. PIL computes the bicubic weights in fixed
# point, which rounds some values near .5 the other way; the most are at 14× upscaling of smooth frames (up to 1 %
# of a frame's values, 17 × 16 here), under 0.15 % from 96 px up. A single float resize pass without PIL's 8-bit
# rounding differs in 12–24 % of the values, by up to 23 grey levels on noise frames.
MAX_GREY_LEVELS = 2
MAX_FRACTION_DIFFERENT = 0.02


@pytest.mark.parametrize("height,width", [(224, 224), (96, 160), (300, 225), (720, 1280), (17, 16)])
@pytest.mark.parametrize("content", ["noise", "smooth"])
def test_preprocessing_matches_clip_image_processor(height, width, content):
    # CLIPImageProcessor is this PIL backend without torchvision (as here); PIL is what CLIP itself used.
    processor = CLIPImageProcessorPil(do_center_crop=True, resample=PILImageResampling.BICUBIC)
    frame = noise(3, height, width, seed=3) if content == "noise" else smooth(height, width, seed=3)
    expected = processor(images=frame.permute(1, 2, 0).numpy(), return_tensors="np")["pixel_values"][0]
    ours = preprocess(frame[None], 224)[0]
    assert ours.shape == expected.shape == (3, 224, 224)
    grey_levels = ((ours - torch.from_numpy(np.asarray(expected))).abs() * STD * 255).round()
    assert grey_levels.max() <= MAX_GREY_LEVELS
    assert (grey_levels > 0).float().mean() <= MAX_FRACTION_DIFFERENT


def test_clips_of_different_lengths_are_padded_at_the_end_and_masked(encoder):
    long, short = noise(3, 3, 64, 80, seed=4), noise(1, 3, 120, 90, seed=5)
    out = assert_padded_at_the_end(encoder, long, short)
    assert out.embeds.shape == (2, 3, 16)
    assert out.mask.tolist() == [[True, True, True], [True, False, False]]
    assert encoder([long, long]).mask.all()


def test_the_encoder_is_frozen_and_stays_in_eval_mode(encoder):
    assert_frozen_in_eval_mode(encoder)


@pytest.mark.parametrize("frames,problem", [*BAD_FRAMES,
                                            (torch.zeros(3, 32, 32, dtype=torch.uint8), "got shape (3, 32, 32)")])
def test_bad_frames_are_refused_with_the_expected_layout(encoder, frames, problem):
    with pytest.raises(ValueError, match="CLIP4Clip") as err:
        encoder(frames)
    assert problem in str(err.value)


def test_a_missing_model_names_the_config_key_the_hub_id_and_the_fixes(tmp_path):
    assert HUB_ID == "openai/clip-vit-large-patch14"
    assert_missing_model_names_the_fixes(load_clip4clip, CLIP4ClipModelMissing, tmp_path, HUB_ID,
                                         "models--openai--clip-vit-large-patch14", TINY_SOURCE)
    with pytest.raises(CLIP4ClipModelMissing, match=r"^no CLIP model is set \(config key model.encoder.path\)"):
        load_clip4clip(None)


def test_a_folder_without_the_vision_projection_is_refused(encoder, tmp_path):
    state = {k: v for k, v in encoder.model.state_dict().items() if k != "visual_projection.weight"}
    encoder.model.save_pretrained(tmp_path, state_dict=state)
    with pytest.raises(ConfigError, match=r"model.encoder.path=.* lacks weights of the CLIP vision tower "
                                          r"\(visual_projection.weight, 1 in all\)"):
        load_clip4clip(tmp_path)


@pytest.mark.parametrize("setting,key", BAD_SETTINGS)
def test_bad_settings_name_their_config_key(setting, key):
    with pytest.raises(ConfigError, match=key):
        load_clip4clip(None, **setting)


def test_tiny_twin_is_a_full_clip_folder_loaded_through_the_real_loader(encoder, tmp_path):
    folder = tmp_path / "a"
    save_tiny_clip_vision(folder)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["CLIPModel"]
    save_tiny_clip_vision(tmp_path / "b")  # seeded: the same bytes every time
    assert (folder / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    # the vision tower and projection of the CLIPModel, the text tower left out
    clip = CLIPModel.from_pretrained(folder, local_files_only=True)
    loaded = load_clip4clip(folder)
    assert loaded.fps == FPS == 2 and loaded.normalize and loaded.image_size == 224
    frames = noise(2, 3, 40, 60, seed=6)
    with torch.no_grad():
        features = clip.get_image_features(pixel_values=preprocess(frames, 224)).pooler_output  # projected
    torch.testing.assert_close(loaded(frames).embeds[0], features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encoder(frames).embeds, loaded(frames).embeds, rtol=0, atol=0)
    # a CLIPVisionModelWithProjection folder (the model's own save_pretrained) loads as well
    loaded.model.save_pretrained(tmp_path / "vision")
    torch.testing.assert_close(load_clip4clip(tmp_path / "vision")(frames).embeds, loaded(frames).embeds,
                               rtol=0, atol=0)
