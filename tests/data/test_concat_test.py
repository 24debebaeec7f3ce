"""VTA-LDM's concatenated test set (``data.concat_test``, avgen.data.concat.ConcatTest and the test split's
ConcatEvalStream): a fixed list of pairs whatever the ranks, partners of another label, video and audio cut at the
same instant, validation left plain."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from avgen.cli import check_overrides
from avgen.data.concat import ConcatPair, ConcatTest, cut_frames
from avgen.data.datamodule import AVDataModule
from avgen.data.geometry import ClipGeometry
from avgen.data.shards import ShardWriter
from avgen.data.stream import ConcatEvalStream
from avgen.errors import ConfigError
from tests.conftest import TINY_CLIP, compose

GEO = ClipGeometry(**TINY_CLIP)  # 1 s, 8 fps, 32x32, 16 kHz: 2000 samples per frame, cut frames 2..6
LABELS = ["dog", "rain", "dog", "car", "rain", "dog", "car"]


def level(n: int) -> tuple[int, float]:
    """Clip n's planted marks: every pixel at grey ``30 n + 20``, every audio sample at ``0.1 n - 0.3``."""
    return 30 * n + 20, 0.1 * n - 0.3


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> Path:
    """A test split of 7 clips (3 shards) and a val split of 2, each clip a constant grey and a constant audio
    level (:func:`level`), events at 0.1 s and 0.9 s."""
    root = tmp_path_factory.mktemp("concat_test") / "synthetic_hits"
    for split, count in (("test", len(LABELS)), ("val", 2)):
        with ShardWriter(root, "synthetic_hits", split, GEO, clips_per_shard=3) as w:
            for n in range(count):
                grey, sound = level(n)
                frames = np.full((GEO.num_frames, GEO.height, GEO.width, 3), grey, np.uint8)
                w.write(f"clip{n}", 0.0, frames, np.full(GEO.num_samples, sound, np.float32),
                        {"label": LABELS[n], "caption": f"c{n}", "events": [0.1, 0.9]})
    return root


def datamodule(root: Path, **kw) -> AVDataModule:
    return AVDataModule(name="synthetic_hits", root=str(root), clip=TINY_CLIP, batch_size=3, num_workers=0,
                        shuffle_buffer=4, **kw)


def served(dm: AVDataModule, rank: int = 0, world: int = 1) -> list[dict]:
    """The clips a rank's ConcatEvalStream yields, one dict per clip (video (F, H, W, 3) uint8)."""
    pairs, refs, missing = dm.concat_set()
    stream = ConcatEvalStream(dm.shards("test"), dm.clip, 3, pairs=pairs, refs=refs, missing=missing, rank=rank,
                              world_size=world)
    out = []
    for batch in stream:
        for b, key in enumerate(batch["key"]):
            out.append({"key": key, "video": batch["video"][b].numpy(), "audio": batch["audio"][b].numpy(),
                         "caption": batch["caption"][b], "label": batch["label"][b],
                         "events": batch["events"][b].tolist()})
    return out


def test_pairs_are_fixed_by_the_seed_alone():
    keys = [f"k{n:02d}" for n in range(40)]
    labels = [["a", "b", "c"][n % 3] for n in range(40)]
    first = ConcatTest(seed=3).pairs(keys, labels, 8)
    shuffled = list(zip(keys, labels))
    random.Random(0).shuffle(shuffled)
    assert ConcatTest(seed=3).pairs([k for k, _ in shuffled], [lab for _, lab in shuffled], 8) == first
    assert [p.first for p in first] == sorted(keys)
    label_of = dict(zip(keys, labels))
    assert all(label_of[p.first] != label_of[p.second] and 2 <= p.cut <= 6 for p in first)
    assert ConcatTest(seed=4).pairs(keys, labels, 8) != first


def test_partner_and_cut_are_the_draws_of_the_clips_own_generator():
    """Reference: the (seed, i) generator's first draw indexes the clips of another label in key order, its
    second is the cut frame."""
    keys = [f"k{n}" for n in range(9)]
    labels = ["x", "x", "y", "x", "z", "y", "x", "x", "z"]
    for i, pair in enumerate(ConcatTest(seed=11, cut=(0.1, 0.9)).pairs(keys, labels, 10)):
        rng = np.random.default_rng([11, i])
        others = [keys[j] for j in range(9) if labels[j] != labels[i]]
        assert pair == ConcatPair(keys[i], others[int(rng.integers(len(others)))], int(rng.integers(1, 10)))
    assert cut_frames((0.1, 0.9), 10) == (1, 9)


def test_unlabelled_clips_pair_with_any_other_and_one_label_is_refused():
    pairs = ConcatTest().pairs(["a", "b", "c"], ["", "", ""], 8)
    assert all(p.first != p.second for p in pairs)
    with pytest.raises(ConfigError, match=r"data\.concat_test: the 3 clip\(s\) of the split share one label \('dog'\)"):
        ConcatTest().pairs(["a", "b", "c"], ["dog"] * 3, 8)


@pytest.mark.parametrize("cfg, message", [({"sed": 1}, r"data\.concat_test\.sed: not a concat_test setting; "
                                                       r"expected seed and cut"),
                                          ({"seed": -1}, r"data\.concat_test\.seed=-1"),
                                          ({"seed": 1.5}, r"data\.concat_test\.seed=1\.5"),
                                          ({"cut": [0.8, 0.2]}, r"data\.concat_test\.cut")])
def test_bad_settings(cfg, message):
    with pytest.raises(ConfigError, match=message):
        ConcatTest.from_config(cfg)
    assert ConcatTest.from_config(None) is None and ConcatTest.from_config({}) == ConcatTest(0, (0.25, 0.75))


def test_the_config_takes_it_and_refuses_an_unknown_sub_key(tmp_path):
    cfg = compose(["scale=tiny", "data.concat_test={seed:5}"], tmp_path)
    assert instantiate(cfg.data).concat_test == ConcatTest(seed=5)
    assert compose(["scale=tiny"], tmp_path).data.concat_test is None
    with pytest.raises(ConfigError, match=r"unknown key data\.concat_tset; .*did you mean concat_test\?"):
        check_overrides(["scale=tiny", "data.concat_tset={seed:5}"])
    cfg = compose(["scale=tiny", "data.concat_test={seed:5,pairs:2}"], tmp_path)
    with pytest.raises(InstantiationException, match=r"data\.concat_test\.pairs: not a concat_test setting"):
        instantiate(cfg.data)


def test_video_and_audio_cut_at_the_same_instant(marked):
    clips = served(datamodule(marked, concat_test={"seed": 0}))
    assert len(clips) == len(LABELS)
    for clip in clips:
        first, rest = clip["key"].split("+")
        second, cut = rest.split("@")
        i, j, k = int(first.split("/")[1][4:]), int(second.split("/")[1][4:]), int(cut)
        assert LABELS[i] != LABELS[j] and 2 <= k <= 6
        grey = clip["video"].reshape(GEO.num_frames, -1).mean(axis=1)
        expected = [level(i)[0]] * k + [level(j)[0]] * (GEO.num_frames - k)
        assert np.abs(grey - expected).max() < 3  # h264 keeps a flat grey within a level or two
        a = k * GEO.sample_rate // GEO.fps  # frame k's instant: k / 8 s
        step = np.flatnonzero(np.abs(np.diff(clip["audio"])) > 0.05)
        assert step.tolist() == [a - 1]
        assert clip["audio"][a - 1] == pytest.approx(level(i)[1], abs=1e-3)
        assert clip["audio"][a] == pytest.approx(level(j)[1], abs=1e-3)
        assert clip["caption"] == f"c{i}, c{j}" and clip["label"] == f"{LABELS[i]}+{LABELS[j]}"
        assert clip["events"] == pytest.approx([0.1, 0.9])  # i's before the cut (0.25-0.75 s), j's after


def test_ranks_share_one_list_and_validation_stays_plain(marked):
    dm = datamodule(marked, concat_test={"seed": 0})
    dm.setup("test")
    whole = [c["key"] for c in served(dm)]
    assert [c["key"] for c in served(datamodule(marked, concat_test={"seed": 0}))] == whole  # a second build
    ranks = [[c["key"] for c in served(dm, rank, 2)] for rank in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(whole) and ranks[0] == whole[0::2] and ranks[1] == whole[1::2]
    assert sum(dm.expected_eval_clips("test", rank, 2) for rank in (0, 1)) == len(whole)
    assert whole == [f"{p.first}+{p.second}@{p.cut}" for p in dm.concat_set()[0]]
    keys = [k for batch in dm.test_dataloader() for k in batch["key"]]
    assert keys == whole
    dm.setup("validate")
    assert [k for batch in dm.val_dataloader() for k in batch["key"]] == ["synthetic_hits/clip0/0",
                                                                          "synthetic_hits/clip1/0"]
    assert all("+" not in k for batch in datamodule(marked).test_dataloader() for k in batch["key"])


def test_a_test_split_of_one_label_is_refused_at_setup(tmp_path):
    root = tmp_path / "one"
    with ShardWriter(root, "synthetic_hits", "test", GEO, clips_per_shard=4) as w:
        for n in range(2):
            w.write(f"clip{n}", 0.0, np.zeros((8, 32, 32, 3), np.uint8), np.zeros(16000, np.float32),
                    {"label": "dog"})
    with pytest.raises(ConfigError, match=r"data\.concat_test: the 2 clip\(s\) of the split share one label"):
        datamodule(root, concat_test={"seed": 0}).setup("test")


def test_the_concat_test_command_writes_a_sample_folder(marked, tmp_path):
    import json

    from avgen.commands import concat_test
    from avgen.media import scan_media

    with pytest.raises(ConfigError, match=r"set data\.concat_test=\{seed:0\}"):
        concat_test(compose(["scale=tiny", f"data.root={marked}"], tmp_path))
    cfg = compose(["scale=tiny", f"data.root={marked}", "data.concat_test={seed:0}"], tmp_path)
    written = concat_test(cfg)
    pairs = datamodule(marked, concat_test={"seed": 0}).concat_set()[0]
    assert [p.name for p in written] == [f"sample_{n:04d}.mp4" for n in range(len(pairs))]
    sources = [json.loads(p.with_suffix(".json").read_text())["source"] for p in written]
    assert sources == [f"{p.first}+{p.second}@{p.cut}" for p in pairs]
    assert written[0].with_suffix(".txt").read_text() == "c{}, c{}".format(
        *(int(k.split("/")[1][4:]) for k in (pairs[0].first, pairs[0].second)))
    assert len(scan_media(written[0].parent, "video").files) == len(pairs)
    with pytest.raises(FileExistsError, match="sample.overwrite=true"):  # nothing a user made is replaced unasked
        concat_test(cfg)
    again = compose(["scale=tiny", f"data.root={marked}", "data.concat_test={seed:0}", "sample.overwrite=true"],
                    tmp_path)
    assert concat_test(again) == written
