"""VTA-LDM's concat augmentation (avgen.data.concat): video and audio cut at the same instant, partners of another
label, deterministic under the stream's seed, off by default."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from avgen.data.concat import ConcatAugment
from avgen.data.geometry import ClipGeometry
from avgen.errors import ConfigError

CLIP = ClipGeometry(seconds=2.0, fps=4, height=2, width=2, sample_rate=100)  # 8 frames, 200 samples, 25 per frame


def batch(labels: list[str]) -> tuple[list[dict], torch.Tensor]:
    """Clip i: every frame pixel = 10·i + frame index; audio sample s = 1000·i + s; an event at 0.3 s and 1.7 s."""
    frames = CLIP.num_frames
    video = torch.zeros(len(labels), frames, 2, 2, 3, dtype=torch.uint8)
    clips = []
    for i, label in enumerate(labels):
        video[i] = (10 * i + torch.arange(frames)).view(frames, 1, 1, 1).to(torch.uint8)
        clips.append({"audio": (1000 * i + np.arange(CLIP.num_samples)).astype(np.float32), "caption": f"c{i}",
                      "label": label, "key": f"k{i}", "events": np.array([0.3, 1.7], np.float32)})
    return clips, video


def test_video_and_audio_are_cut_at_the_same_instant():
    clips, video = batch(["dog", "rain", "dog"])
    made = ConcatAugment(p=1.0).apply(clips, video, CLIP, np.random.default_rng(0))
    assert {i for i, _, _ in made} == {0, 1, 2}
    for i, j, k in made:
        assert j != i and ["dog", "rain", "dog"][j] != ["dog", "rain", "dog"][i]
        assert 2 <= k <= 6  # 0.25 · 8 ... 0.75 · 8
        frames = video[i, :, 0, 0, 0].tolist()
        assert frames == [10 * i + f for f in range(k)] + [10 * j + f for f in range(k, 8)]
        a = round(Fraction(k) * 100 / 4)
        assert a == 25 * k
        expected = np.concatenate([1000 * i + np.arange(a), 1000 * j + np.arange(a, 200)])
        assert np.array_equal(clips[i]["audio"], expected.astype(np.float32))
        cut_s = k / 4
        assert clips[i]["caption"] == f"c{i}, c{j}" and clips[i]["key"] == f"k{i}+k{j}@{k}"
        assert clips[i]["events"].tolist() == pytest.approx([e for e in (0.3,) if e < cut_s] +
                                                            [e for e in (1.7,) if e >= cut_s])


def test_same_labels_and_p_zero_leave_the_batch_alone():
    clips, video = batch(["dog", "dog"])
    before = video.clone()
    assert ConcatAugment(p=1.0).apply(clips, video, CLIP, np.random.default_rng(0)) == []
    assert torch.equal(video, before)
    clips, video = batch(["dog", "rain"])
    assert ConcatAugment(p=0.0).apply(clips, video, CLIP, np.random.default_rng(0)) == []


def test_deterministic_under_the_seed():
    runs = []
    for _ in range(2):
        clips, video = batch(["a", "b", "c", "d"])
        runs.append((ConcatAugment(p=0.5).apply(clips, video, CLIP, np.random.default_rng(7)), video))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    many = [ConcatAugment(p=0.5).apply(*batch(["a", "b"] * 8), CLIP, np.random.default_rng(s)) for s in range(20)]
    share = sum(len(m) for m in many) / (20 * 16)
    assert 0.35 < share < 0.65  # p = 0.5


@pytest.mark.parametrize("cfg, message", [({"p": 1.5}, r"data\.concat\.p=1\.5"),
                                          ({"cut": [0.8, 0.2]}, r"data\.concat\.cut"),
                                          ({"prob": 0.5}, r"data\.concat\.prob: not a concat setting")])
def test_bad_settings(cfg, message):
    with pytest.raises(ConfigError, match=message):
        ConcatAugment.from_config(cfg)


def test_the_training_stream_applies_it(tmp_path):
    """data.concat.p=1 on the synthetic dataset: every training clip of a batch with two labels is a concatenation."""
    from hydra.utils import instantiate

    from avgen.data.datamodule import AVDataModule  # noqa: F401  (the class the config builds)
    from tests.conftest import compose

    cfg = compose(["scale=tiny", "+data.concat={p:1.0}", "data.batch_size=4", f"paths.data_dir={tmp_path}/data"],
                  tmp_path)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batch_ = next(iter(dm.train_dataloader()))
    mixed = [k for k, label in zip(batch_["key"], batch_["label"]) if "+" in label]
    assert mixed and all("@" in k for k in mixed)
