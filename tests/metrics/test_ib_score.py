"""IB-score as av-benchmark@050a5cd computes it: which frames at 0.5 fps, the uint8 bicubic resize against
Pillow, crop positions and pair order of the views, the score against the towers, ×100, the merge of
process states, and the refusal of clips too short to pair frames."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from avgen.encoders.imagebind import CLIP_MEAN, CLIP_STD, ImageBindAV
from avgen.errors import ConfigError
from avgen.media import decode_video, write_mp4
from avgen.metrics.imagebind import IBScore, av_cosine, ib_score_views, short_side_resize_uint8

BITS = 8  # the frame index is drawn as 8 black/white stripes, robust to H.264


def _indexed_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(count, H, W, 3) uint8: frame n shows n in binary, most significant bit in the leftmost stripe."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    stripe = width // BITS
    for n in range(count):
        for bit in range(BITS):
            if n >> (BITS - 1 - bit) & 1:
                frames[n, :, bit * stripe:(bit + 1) * stripe] = 255
    return frames


def _read_index(frame: np.ndarray) -> int:
    stripe = frame.shape[1] // BITS
    bits = [frame[:, b * stripe + 2:(b + 1) * stripe - 2].mean() > 128 for b in range(BITS)]
    return int("".join("1" if b else "0" for b in bits), 2)


def _normalised(resized_uint8: torch.Tensor) -> torch.Tensor:
    x = resized_uint8.float() / 255
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def tiny() -> ImageBindAV:
    torch.manual_seed(0)
    return ImageBindAV.tiny()


def test_half_fps_takes_the_fps_filter_slots_of_an_8s_25fps_clip(tmp_path):
    """FFmpeg's fps=0.5 (the harness's StreamingMediaDecoder(frame_rate=0.5)): slot k shows the last frame whose
    time rounds to <= k / 0.5, i.e. frames 24, 74, 124, 174 (0.96, 2.96, 4.96, 6.96 s); the clip gives 4 slots."""
    path = write_mp4(tmp_path / "indexed.mp4", _indexed_frames(200), 25)
    frames, rate = decode_video(path, fps=0.5, num_frames=4)
    assert rate == 0.5 and [_read_index(f) for f in frames] == [24, 74, 124, 174]
    assert len(decode_video(path, fps=0.5)[0]) == 4  # 8 s end → 4 slots, none past the end


@pytest.mark.parametrize("height, width", [(360, 640), (480, 320), (100, 150)])
def test_uint8_bicubic_resize_is_pillow_bicubic_within_two_levels(height, width):
    """Short side to 224, long side int(224 · long / short); Pillow's BICUBIC (antialiased when shrinking) on the
    same uint8 image differs by at most 2 levels (measured: 1 shrinking, 2 enlarging 100×150)."""
    from PIL import Image

    rng = np.random.default_rng(height)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[height // 3:height // 2, :, 0] = 255  # a sharp edge besides the noise
    out = short_side_resize_uint8(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(), 224)
    short, long = min(height, width), max(height, width)
    size = (224, int(224 * long / short)) if height <= width else (int(224 * long / short), 224)
    assert out.dtype == torch.uint8 and tuple(out.shape[-2:]) == size
    pil = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))
    diff = np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - pil.astype(int))
    assert diff.max() <= 2
    assert diff.mean() < 0.01


def test_views_are_three_crops_of_consecutive_pairs_pair_major():
    """4 frames of 60×100 → short side 28 (long int(28·100/60) = 46): crops at x = 0, ceil(18/2) = 9, 18; views
    (pair 0: crops 0 1 2, pair 1: ..., pair 2: ...), each (C, T=2, 28, 28) holding frames (p, p + 1)."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 60, 100, 3), dtype=np.uint8)
    views = ib_score_views(frames, size=28)
    assert views.shape == (9, 3, 2, 28, 28) and views.dtype == torch.float32
    resized = _normalised(short_side_resize_uint8(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), 28))
    assert resized.shape[-2:] == (28, 46)
    for j, view in enumerate(views):
        pair, left = j // 3, (0, 9, 18)[j % 3]
        for t in range(2):
            torch.testing.assert_close(view[:, t], resized[pair + t, :, :, left:left + 28], rtol=0, atol=0)

    portrait = ib_score_views(frames.transpose(0, 2, 1, 3).copy(), size=28)  # 100×60: top / centre / bottom
    resized_p = _normalised(short_side_resize_uint8(
        torch.from_numpy(frames.transpose(0, 2, 1, 3).copy()).permute(0, 3, 1, 2).contiguous(), 28))
    for j, view in enumerate(portrait):
        top = (0, 9, 18)[j % 3]
        torch.testing.assert_close(view[:, 0], resized_p[j // 3, :, top:top + 28], rtol=0, atol=0)

    flat = np.stack([np.full((60, 100, 3), 40 * (t + 1), np.uint8) for t in range(4)])  # frame t: level 40(t+1)
    levels = ib_score_views(flat, size=28)[:, 0, :, 0, 0] * CLIP_STD[0] + CLIP_MEAN[0]
    expected = torch.tensor([[40 * (j // 3 + 1), 40 * (j // 3 + 2)] for j in range(9)]) / 255
    torch.testing.assert_close(levels, expected, rtol=0, atol=1e-6)


def test_one_frame_is_refused():
    """The harness pairs consecutive frames (torch.cat of no pair fails); a clip short of int(fps·seconds)
    frames is dropped there and reported here, and a setting giving < 2 frames is a config error."""
    from avgen.evaluation.scorers import IBScoreScorer

    with pytest.raises(ValueError, match="at least 2 frames"):
        ib_score_views(np.zeros((1, 32, 32, 3), np.uint8), size=28)
    with pytest.raises(ConfigError, match=r"evaluate.ib_score.*1 frame\(s\).*raise evaluate.ib_score.seconds"):
        IBScoreScorer({"path": None, "seconds": 3, "fps": 0.5}, "cpu")


def test_clip_score_is_the_cosine_of_the_towers_on_the_same_views(tiny):
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (4, 36, 48, 3), dtype=np.uint8) for _ in range(2)]
    audio = [rng.standard_normal(16000 * 3).astype(np.float32) * 0.1 for _ in range(2)]
    metric = IBScore(tiny)
    views = [metric.views(f) for f in frames]
    scores = metric.clip_scores(views, audio, sample_rate=16000)
    for i in range(2):
        sight = tiny.embed_vision(views[i]).mean(0)  # per-view unit vectors, averaged (ImageBind's reduce_list)
        sound = tiny.embed_audio(tiny.audio_inputs([audio[i]])[0]).mean(0)
        direct = torch.cosine_similarity(sight, sound, dim=-1)  # what av_bench/evaluate.py:166 computes
        assert float(scores[i]) == pytest.approx(float(direct), abs=1e-6)
    torch.testing.assert_close(scores, av_cosine(tiny.audio_embedding(audio), torch.stack(
        [tiny({"vision": v[None]})["vision"][0] for v in views])))


def test_scaled_is_100_times_the_raw_mean_and_states_merge_like_ddp(tiny):
    rng = np.random.default_rng(3)
    views = [ib_score_views(rng.integers(0, 256, (4, 30, 40, 3), dtype=np.uint8), size=28) for _ in range(3)]
    audio = [rng.standard_normal(16000 * 2).astype(np.float32) * 0.1 for _ in range(3)]
    whole = IBScore(tiny)
    whole.update(views, audio, 16000)
    ranks = [IBScore(tiny), IBScore(tiny)]  # process 0 scores clip 0, process 1 clips 1 and 2
    for rank, part in zip(ranks, (slice(0, 1), slice(1, 3))):
        rank.update(views[part], audio[part], 16000)
    parts = torch.cat([ranks[0].clip_scores(views[:1], audio[:1]), ranks[1].clip_scores(views[1:], audio[1:])])
    torch.testing.assert_close(whole.compute(), parts.mean(), rtol=0, atol=1e-6)  # other batches: float32 rounding
    torch.testing.assert_close(whole.scaled(), 100 * whole.compute(), rtol=0, atol=0)
    summed = IBScore(tiny)  # DDP's reduction: every state is declared with dist_reduce_fx="sum"; emulate it
    for name in summed._defaults:
        assert summed._reductions[name].__name__ == "dim_zero_sum"
        setattr(summed, name, getattr(ranks[0], name) + getattr(ranks[1], name))
    ranks[0].merge_state(ranks[1])
    for merged in (summed, ranks[0]):
        assert merged.count.item() == 3
        with warnings.catch_warnings():  # torchmetrics: compute() of states set without update()
            warnings.simplefilter("ignore", UserWarning)
            value = merged.compute()
        torch.testing.assert_close(value, parts.mean(), rtol=0, atol=1e-15)
    info = whole.describe()
    assert info["protocol"] == "av-benchmark@050a5cd" and info["harness_key"] == "IB-Score" and info["scale"] == 100
