"""What the conditioning video encoders share (avgen.encoders.frames): the clip check names the encoder it guards,
per-clip tokens are zero-padded at the end with a mask of the real ones, and the settings checks name their keys."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from avgen.encoders.frames import check_clips, check_fps, check_normalize, padded_tokens
from avgen.errors import ConfigError
from tests.encoders.common import BAD_FRAMES, noise


def test_one_clip_is_a_batch_of_one_and_a_list_keeps_its_clips():
    clip = noise(2, 3, 8, 8)
    (only,) = check_clips(clip, "X")
    assert torch.equal(only, clip)
    clips = [noise(2, 3, 8, 8), noise(5, 3, 4, 6, seed=1)]
    assert all(a is b for a, b in zip(check_clips(clips, "X"), clips))
    assert [c.shape for c in check_clips(noise(3, 2, 3, 8, 8), "X")] == [(2, 3, 8, 8)] * 3


@pytest.mark.parametrize("who", ["CLIP4Clip", "ImageBind", "LanguageBind", "ViViT", "V-JEPA"])
@pytest.mark.parametrize("frames,problem", BAD_FRAMES)
def test_bad_frames_name_the_encoder(who, frames, problem):
    with pytest.raises(ValueError, match=rf"^{who} ") as err:
        check_clips(frames, who)
    assert problem in str(err.value)


def test_tokens_are_zero_padded_at_the_end_and_the_mask_marks_the_real_ones():
    tokens = [torch.full((3, 2), 1.0), torch.full((1, 2), 2.0)]
    out = padded_tokens(tokens, Fraction(1, 2))
    assert out.embeds.tolist() == [[[1, 1], [1, 1], [1, 1]], [[2, 2], [0, 0], [0, 0]]]
    assert out.mask.tolist() == [[True, True, True], [True, False, False]]
    assert out.seconds_per_token == Fraction(1, 2)
    # fewer real tokens than tokens (a window padded with its last frame): the rest is masked and zeroed
    out = padded_tokens(tokens, Fraction(1, 4), real=[2, 1])
    assert out.embeds.tolist() == [[[1, 1], [1, 1], [0, 0]], [[2, 2], [0, 0], [0, 0]]]
    assert out.mask.tolist() == [[True, True, False], [True, False, False]]


@pytest.mark.parametrize("fps", [2, 7.5, Fraction(30000, 1001)])
def test_positive_frame_rates_pass(fps):
    check_fps(fps, "model.encoder.path", 2)


@pytest.mark.parametrize("fps", [0, -1, True, "8", None])
def test_other_frame_rates_name_the_key_and_the_default(fps):
    with pytest.raises(ConfigError, match=rf"^model\.encoder\.fps={fps!r}: .*\(avgen's default: 8\)"):
        check_fps(fps, "model.encoder.path", 8)


def test_normalize_must_be_a_bool_and_the_message_says_what_either_value_feeds():
    check_normalize(False, "model.encoder.path", "mean/std", "[0, 1] pixels")
    with pytest.raises(ConfigError, match=r"^model\.encoder\.normalize=1: expected true \(mean/std\) or false "
                                          r"\(\[0, 1\] pixels\)$"):
        check_normalize(1, "model.encoder.path", "mean/std", "[0, 1] pixels")
