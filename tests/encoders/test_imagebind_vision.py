"""ImageBind's vision tower as a VTA-LDM frame encoder: each frame through ImageBind's image path (CLIP preprocessing,
PadIm2Video repeat, unit-norm output) in time order, padding, the frozen rule, and loading (the tiny twin in the
official file format through the real loader, a missing file, a file whose keys do not fit)."""

from __future__ import annotations

import pytest
import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

import avgen.backbones.tiny
from avgen.encoders.clip4clip import preprocess
from avgen.encoders.imagebind import CLIP_MEAN, CLIP_STD, TINY_IMAGEBIND, ImageBindAV
from avgen.encoders.imagebind_vision import (
    FPS,
    TINY_FILE,
    TINY_SOURCE,
    ImageBindVisionEncoder,
    ImageBindWeightsMissing,
    load_imagebind_vision,
    save_tiny_imagebind,
)
from avgen.errors import ConfigError
from tests.encoders.common import (
    BAD_SETTINGS,
    assert_frozen_in_eval_mode,
    assert_one_token_per_frame,
    assert_padded_at_the_end,
    assert_permuting_frames_permutes_embeddings,
    noise,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(tiny_dir) -> ImageBindVisionEncoder:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(avgen.backbones.tiny.TINY_BUILDERS, "imagebind", save_tiny_imagebind)
        return load_imagebind_vision(TINY_SOURCE, tiny_dir=tiny_dir)


def reference_embeds(encoder: ImageBindVisionEncoder, clip: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(F, D): ImageBind's vision output of each frame as a 2-frame clip of itself (PadIm2Video's repeat), one call
    per frame."""
    with torch.no_grad():
        return torch.cat([encoder.model.embed_vision(
            preprocess(frame[None], encoder.image_size, normalize)[:, :, None].repeat(1, 1, 2, 1, 1))
            for frame in clip])


def test_embeds_are_each_frames_imagebind_image_embedding_in_time_order(encoder):
    assert encoder.embed_dim == 16
    out = assert_one_token_per_frame(encoder, noise(2, 3, 3, 40, 64), lambda clip: reference_embeds(encoder, clip))
    assert out.seconds_per_token == 0.5 and encoder.fps == FPS == 2
    # the official vision postprocessor: unit norm
    torch.testing.assert_close(out.embeds.norm(dim=-1), torch.ones(2, 3), rtol=0, atol=1e-5)


def test_permuting_frames_permutes_embeddings(encoder):
    frames = noise(1, 4, 3, 36, 48, seed=1)
    order = [2, 0, 3, 1]
    assert_permuting_frames_permutes_embeddings(encoder, frames, order)


def test_imagebind_mean_std_are_the_constants_preprocess_applies(encoder):
    # ImageBind's load_and_transform_vision_data normalises with CLIP's constants, the ones clip4clip.preprocess uses
    assert CLIP_MEAN == tuple(OPENAI_CLIP_MEAN) and CLIP_STD == tuple(OPENAI_CLIP_STD)
    assert encoder.model.image_mean == CLIP_MEAN and encoder.model.image_std == CLIP_STD
    frames = noise(2, 3, 30, 45, seed=2)
    raw = ImageBindVisionEncoder(encoder.model, normalize=False)
    torch.testing.assert_close(raw(frames).embeds[0], reference_embeds(encoder, frames, normalize=False),
                               rtol=1e-5, atol=1e-6)
    assert (raw(frames).embeds - encoder(frames).embeds).abs().max() > 1e-3


def test_clips_of_different_lengths_are_padded_at_the_end_and_masked(encoder):
    long, short = noise(3, 3, 40, 50, seed=4), noise(1, 3, 60, 45, seed=5)
    out = assert_padded_at_the_end(encoder, long, short)
    assert out.embeds.shape == (2, 3, 16)
    assert out.mask.tolist() == [[True, True, True], [True, False, False]]


def test_the_encoder_is_frozen_and_stays_in_eval_mode(encoder):
    assert_frozen_in_eval_mode(encoder)


def test_bad_frames_are_refused(encoder):
    with pytest.raises(ValueError, match="uint8"):
        encoder(torch.zeros(1, 2, 3, 32, 32))


def test_a_missing_file_names_the_config_key_the_file_and_the_fixes(tmp_path):
    with pytest.raises(ImageBindWeightsMissing) as err:
        load_imagebind_vision(tmp_path / "absent.pth", "model.video_encoder.path")
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and "\n" not in message
    assert message.startswith(f"ImageBind weights missing: {tmp_path / 'absent.pth'} does not exist "
                              f"(config key model.video_encoder.path). Expected imagebind_huge.pth")
    for part in ("https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth", "avgen never downloads",
                 "model.video_encoder.path=/path/to/imagebind_huge.pth", "scale=tiny"):
        assert part in message
    # a folder is looked into for the official file name
    with pytest.raises(ImageBindWeightsMissing, match=rf"{tmp_path / 'imagebind_huge.pth'} does not exist"):
        load_imagebind_vision(tmp_path)
    with pytest.raises(ImageBindWeightsMissing, match=r"no path is set \(config key model.encoder.path\)"):
        load_imagebind_vision(None)


@pytest.fixture
def tiny_state(encoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.model.state_dict().items()}


def _load_tiny_file(state, folder, monkeypatch):
    """``state`` written as the tiny twin's file and loaded as ``tiny:imagebind``."""
    monkeypatch.setitem(avgen.backbones.tiny.TINY_BUILDERS, "imagebind",
                        lambda f: torch.save(state, f"{f}/{TINY_FILE}"))
    return load_imagebind_vision(TINY_SOURCE, tiny_dir=folder)


def test_a_file_missing_a_vision_key_is_refused_by_name(tiny_state, tmp_path, monkeypatch):
    del tiny_state["modality_trunks.vision.blocks.1.mlp.fc2.bias"]
    with pytest.raises(ConfigError, match=r"^model.encoder.path=tiny:imagebind: .* 1 missing: "
                                          r"modality_trunks.vision.blocks.1.mlp.fc2.bias"):
        _load_tiny_file(tiny_state, tmp_path, monkeypatch)


def test_a_file_with_an_extra_vision_key_is_refused_by_name(tiny_state, tmp_path, monkeypatch):
    tiny_state["modality_trunks.vision.blocks.2.norm_1.weight"] = torch.ones(32)
    with pytest.raises(ConfigError, match=r"1 unexpected: modality_trunks.vision.blocks.2.norm_1.weight"):
        _load_tiny_file(tiny_state, tmp_path, monkeypatch)


def test_the_huge_sizes_refuse_a_tiny_file_listing_shapes(tmp_path):
    save_tiny_imagebind(tmp_path)
    with pytest.raises(ConfigError, match=r"model.encoder.path=.*imagebind_tiny.pth: .* does not fit "
                                          r"ImageBindAV\(Huge\).*missing.*shape mismatched"):
        load_imagebind_vision(tmp_path / TINY_FILE)


@pytest.mark.parametrize("setting,key", BAD_SETTINGS)
def test_bad_settings_name_their_config_key(setting, key):
    with pytest.raises(ConfigError, match=key):
        load_imagebind_vision(None, **setting)


def test_tiny_twin_is_an_official_format_file_loaded_through_the_real_loader(encoder, tiny_dir, tmp_path):
    (file,) = tiny_dir.glob(f"imagebind-v*/{TINY_FILE}")
    save_tiny_imagebind(tmp_path)  # seeded: the same bytes every time
    assert file.read_bytes() == (tmp_path / TINY_FILE).read_bytes()
    torch.manual_seed(0)
    expected = ImageBindAV.tiny().state_dict()
    saved = torch.load(file, map_location="cpu", weights_only=True)
    assert list(saved) == list(expected)  # the official key names (tests/encoders/test_imagebind.py checks them)
    assert all(torch.equal(encoder.model.state_dict()[k], v) for k, v in expected.items())
    assert encoder.image_size == TINY_IMAGEBIND["image_size"] == 28 and encoder.normalize
    # the vision tower is what runs: the audio tower's weights do not change the tokens
    frames = noise(1, 2, 3, 32, 40, seed=7)
    other = ImageBindAV.tiny()
    other.load_state_dict({k: v if ".vision" in k else torch.zeros_like(v) for k, v in expected.items()})
    torch.testing.assert_close(ImageBindVisionEncoder(other)(frames).embeds, encoder(frames).embeds, rtol=0, atol=0)
