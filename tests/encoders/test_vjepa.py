"""V-JEPA (V-JEPA 2 weights), a VTA-LDM Table 2 encoder: one token per tubelet time slot of each 64-frame window (the
slot's patches averaged), windows in time order, padding and masks, the preprocessing against VJEPA2VideoProcessor,
the frozen rule, and loading (the tiny twin through the real loader, a missing model, a folder without the encoder's
weights)."""

from __future__ import annotations

import copy
import json
from fractions import Fraction

import pytest
import torch
from transformers import VJEPA2Model
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import avgen.backbones.tiny
from avgen.encoders.vjepa import (
    FPS,
    HUB_ID,
    TINY_SOURCE,
    VJEPAEncoder,
    VJEPAModelMissing,
    load_vjepa,
    save_tiny_vjepa,
    vjepa_preprocessing,
)
from avgen.errors import ConfigError
from tests.encoders.common import (
    assert_frozen_in_eval_mode,
    assert_missing_model_names_the_fixes,
    assert_reversing_the_windows_reverses_the_tokens,
    noise,
)

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOW, SLOTS, PATCHES, WIDTH = 64, 32, 4, 48  # the twin: 64 frames / 2 per tubelet, (32 px / 16)², hidden size
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("vjepa")
    save_tiny_vjepa(path)
    return path


@pytest.fixture(scope="module")
def encoder(folder) -> VJEPAEncoder:
    return load_vjepa(folder)


def reference_tokens(encoder: VJEPAEncoder, window: torch.Tensor) -> torch.Tensor:
    """(32, D) for one 64-frame window: token k is the mean of the encoder's last_hidden_state rows 4k … 4k + 3
    (the patches of slot 0, slot 1, …; V-JEPA 2 has no CLS token), via the model's documented feature API."""
    with torch.no_grad():
        hidden = encoder.model.get_vision_features(encoder.preprocessing(window)[None])[0]
    return torch.stack([hidden[k * PATCHES:(k + 1) * PATCHES].mean(0) for k in range(SLOTS)])


def test_tokens_are_the_slot_means_of_each_window_in_time_order(encoder):
    frames = noise(2, 2 * WINDOW, 3, 40, 48)
    out = encoder(frames)
    assert out.embeds.shape == (2, 2 * SLOTS, encoder.embed_dim) == (2, 64, WIDTH)
    assert out.embeds.dtype == torch.float32 and out.mask.dtype == torch.bool and out.mask.all()
    assert out.seconds_per_token == Fraction(2, FPS) == Fraction(1, 4)
    for b in range(2):
        expected = torch.cat([reference_tokens(encoder, frames[b, :WINDOW]),
                              reference_tokens(encoder, frames[b, WINDOW:])])
        torch.testing.assert_close(out.embeds[b], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encoder(frames[1]).embeds, out.embeds[1:], rtol=1e-5, atol=1e-6)


def test_reversing_the_windows_reverses_the_tokens(encoder):
    assert_reversing_the_windows_reverses_the_tokens(encoder, WINDOW, SLOTS)


def test_token_k_pools_the_patches_of_frames_2k_and_2k_plus_1(encoder):
    # Without its attention layers the encoder embeds each tubelet on its own: only the token of the changed slot moves.
    model = copy.deepcopy(encoder.model)
    model.encoder.layer = torch.nn.ModuleList()
    local = VJEPAEncoder(model)
    frames = noise(WINDOW, 3, 32, 32, seed=3)
    changed = frames.clone()
    changed[20:22] = noise(2, 3, 32, 32, seed=4)
    moved = (local(changed).embeds[0] - local(frames).embeds[0]).abs().amax(-1)
    assert moved[10] > 1e-3 and torch.equal(torch.cat([moved[:10], moved[11:]]), torch.zeros(SLOTS - 1))


def test_clips_of_different_lengths_are_padded_with_their_last_frame_and_masked(encoder):
    long, short = noise(70, 3, 40, 48, seed=5), noise(9, 3, 36, 30, seed=6)
    out = encoder([long, short])
    assert out.embeds.shape == (2, 2 * SLOTS, WIDTH)
    assert out.mask.sum(1).tolist() == [35, 5] and out.mask[0, :35].all() and out.mask[1, :5].all()
    assert torch.equal(out.embeds[0, 35:], torch.zeros(29, WIDTH))
    assert torch.equal(out.embeds[1, 5:], torch.zeros(59, WIDTH))
    padded = torch.cat([long, long[-1:].expand(2 * WINDOW - 70, -1, -1, -1)])
    torch.testing.assert_close(out.embeds[0, :35], encoder(padded).embeds[0, :35], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.embeds[1, :5], encoder(short).embeds[0, :5], rtol=1e-5, atol=1e-6)


def test_the_encoder_is_frozen_and_stays_in_eval_mode(encoder):
    assert_frozen_in_eval_mode(encoder)


def test_bad_frames_are_refused_naming_the_encoder(encoder):
    with pytest.raises(ValueError, match=r"V-JEPA clip 0: expected frames \(F, 3, H, W\) uint8"):
        encoder(torch.zeros(1, 2, 3, 32, 32))


def test_preprocessing_is_the_processors_rule_for_the_checkpoint_and_the_twin():
    # VJEPA2VideoProcessor(crop_size=c) resizes the short side to int(c · 256 / 224)
    assert vjepa_preprocessing(256).resize == 292 and vjepa_preprocessing(256).crop == 256
    assert vjepa_preprocessing(32).resize == 36
    # frames whose short side is already 292: no resize, so crop, / 255 and mean/std alone, exactly
    frames = noise(2, 3, 292, 400, seed=7)
    expected = (frames[..., 18:274, 72:328].float() / 255 - MEAN) / STD
    torch.testing.assert_close(vjepa_preprocessing(256)(frames), expected, rtol=0, atol=1e-6)


# Measured against VJEPA2VideoProcessor(crop_size=256) (torchvision 0.26's resize, on the CPU) on noise and smooth
# frames of 10 sizes (16 × 17 to 1920 × 1080, up- and downscaling, both orientations; 7.9 M values): no pixel differs
# in grey levels, the largest difference is 4.8e-7 (float rounding of the fused rescale and mean/std). The processor
# needs torchvision, which avgen does not depend on; the test runs where it is installed.
@pytest.mark.parametrize("height,width", [(96, 160), (300, 225), (17, 16), (720, 1280)])
def test_preprocessing_matches_vjepa2_video_processor(height, width):
    pytest.importorskip("torchvision")
    from transformers import VJEPA2VideoProcessor

    frames = noise(2, 3, height, width, seed=8)
    expected = VJEPA2VideoProcessor(crop_size=256)(frames.permute(0, 2, 3, 1).numpy(),
                                                   return_tensors="pt")["pixel_values_videos"][0]
    torch.testing.assert_close(vjepa_preprocessing(256)(frames), expected, rtol=0, atol=1e-5)


def test_a_missing_model_names_the_config_key_the_hub_id_and_the_fixes(tmp_path):
    assert HUB_ID == "facebook/vjepa2-vitl-fpc64-256"
    assert_missing_model_names_the_fixes(load_vjepa, VJEPAModelMissing, tmp_path, HUB_ID,
                                         "models--facebook--vjepa2-vitl-fpc64-256", TINY_SOURCE)
    with pytest.raises(VJEPAModelMissing, match=r"^no V-JEPA 2 model is set \(config key model.encoder.path\)"):
        load_vjepa(None)
    with pytest.raises(ConfigError, match="model.encoder.fps=-1"):
        load_vjepa(None, fps=-1)


def test_a_folder_without_the_encoder_weights_is_refused_but_the_predictor_is_optional(encoder, tmp_path):
    state = encoder.model.state_dict()
    encoder.model.save_pretrained(tmp_path / "no_predictor",
                                  state_dict={k: v for k, v in state.items() if not k.startswith("predictor.")})
    torch.testing.assert_close(load_vjepa(tmp_path / "no_predictor")(noise(4, 3, 32, 32)).embeds,
                               encoder(noise(4, 3, 32, 32)).embeds, rtol=0, atol=0)
    encoder.model.save_pretrained(tmp_path / "no_norm",
                                  state_dict={k: v for k, v in state.items() if k != "encoder.layernorm.weight"})
    with pytest.raises(ConfigError, match=r"model.encoder.path=.* lacks weights of the V-JEPA 2 encoder "
                                          r"\(encoder.layernorm.weight, 1 in all\)"):
        load_vjepa(tmp_path / "no_norm")


def test_tiny_twin_is_a_vjepa2_folder_loaded_through_the_real_loader(encoder, folder, tmp_path, monkeypatch):
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["VJEPA2Model"]
    save_tiny_vjepa(tmp_path / "again")  # seeded: the same bytes every time
    assert (folder / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()
    stored = VJEPA2Model.from_pretrained(folder).state_dict()
    assert stored.keys() == encoder.model.state_dict().keys()
    assert all(torch.equal(value, encoder.model.state_dict()[key]) for key, value in stored.items())
    assert encoder.fps == FPS == 8 and encoder.window_frames == WINDOW and encoder.tubelet_frames == 2
    monkeypatch.setitem(avgen.backbones.tiny.TINY_BUILDERS, "vjepa", save_tiny_vjepa)
    tiny = load_vjepa(TINY_SOURCE, tiny_dir=tmp_path / "tiny", fps=16)
    frames = noise(1, 10, 3, 40, 48, seed=9)
    assert tiny.fps == 16 and tiny(frames).seconds_per_token == Fraction(1, 8)
    torch.testing.assert_close(tiny(frames).embeds, encoder(frames).embeds, rtol=0, atol=0)
