"""AVDataModule and the shard streams: batch contract, geometry, epochs under DDP, exactly-once eval, seeds, bad
data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from avgen.data.datamodule import AVDataModule
from avgen.data.decode import decode_sample
from avgen.data.geometry import ClipGeometry
from avgen.data.shards import MANIFEST, Manifest, ShardInfo, ShardWriter
from avgen.data.stream import EvalStream, Health, TrainStream
from avgen.data.synthetic import generate_clip
from avgen.errors import DataHealthError, GeometryMismatchError, MissingShardsError
from tests.conftest import TINY_CLIP


def datamodule(root, **kw) -> AVDataModule:
    args = dict(name="synthetic_hits", root=str(root), clip=TINY_CLIP, batch_size=2, num_workers=0, shuffle_buffer=4)
    args.update(kw)
    dm = AVDataModule(**args)
    return dm


def keys_of(loader, dm=None) -> list[str]:
    out = []
    for batch in loader:
        if dm is not None:
            batch = dm.on_before_batch_transfer(batch, 0)
        out += batch["key"]
    return out


def test_batch_contract(tiny_shards):
    dm = datamodule(tiny_shards)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0), 0)
    assert batch["video"].shape == (2, 8, 3, 32, 32) and batch["video"].dtype == torch.float32
    assert -1.0 <= batch["video"].min() < batch["video"].max() <= 1.0
    assert batch["audio"].shape == (2, 16000) and batch["audio"].dtype == torch.float32
    assert batch["audio"].abs().max() <= 1.0
    for name in ("caption", "label", "key"):
        assert isinstance(batch[name], list) and len(batch[name]) == 2 and all(isinstance(x, str) for x in batch[name])
    assert all(e.dtype == torch.float32 and e.ndim == 1 for e in batch["events"])
    assert batch["caption"][0] and batch["label"][0] and batch["key"][0].startswith("synthetic_hits/train")


def test_decode_window_and_crops(tiny_shards):
    sample = next(iter(wds.WebDataset(str(tiny_shards / "train" / "shard-000000.tar"), shardshuffle=False)))
    meta = json.loads(sample["json"])
    short = ClipGeometry(seconds=0.5, fps=8, height=24, width=16, sample_rate=16000)
    eval_a, eval_b = decode_sample(sample, short, None), decode_sample(sample, short, None)
    assert eval_a["video"].shape == (4, 24, 16, 3) and eval_a["audio"].shape == (8000,)
    assert np.array_equal(eval_a["video"], eval_b["video"])  # centre crop, window at 0
    np.testing.assert_allclose(eval_a["events"], [t for t in meta["events"] if t < 0.5], atol=1e-6)
    crops = {decode_sample(sample, short, np.random.default_rng(s))["video"].tobytes() for s in range(6)}
    assert len(crops) > 1  # random window / crop in training
    # a random window shifts the events and the audio with it
    for seed in range(6):
        clip = decode_sample(sample, short, np.random.default_rng(seed))
        full = decode_sample(sample, ClipGeometry(**TINY_CLIP), None)
        start = int(np.argmin([np.abs(full["audio"][i * 2000:i * 2000 + 8000] - clip["audio"]).max()
                               for i in range(5)]))
        assert np.abs(full["audio"][start * 2000:start * 2000 + 8000] - clip["audio"]).max() == 0
        expected = [t - start / 8 for t in meta["events"] if 0 <= t - start / 8 < 0.5]
        np.testing.assert_allclose(clip["events"], expected, atol=1e-6)


def test_missing_shards_name_path_and_prepare_command(tmp_path):
    dm = datamodule(tmp_path / "nowhere")
    with pytest.raises(MissingShardsError) as err:
        dm.setup("fit")
    assert str(tmp_path / "nowhere" / "train" / MANIFEST) in str(err.value)
    assert "python -m avgen prepare data=synthetic_hits" in str(err.value)


def test_manifest_geometry_mismatch_lists_both(tiny_shards):
    dm = datamodule(tiny_shards, clip={**TINY_CLIP, "fps": 16})  # a lower rate is served, a higher one is not
    with pytest.raises(GeometryMismatchError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert "fps: shards have 8, config asks for 16" in msg and "'fps': 8" in msg and "'fps': 16" in msg
    with pytest.raises(GeometryMismatchError, match="seconds"):
        datamodule(tiny_shards, clip={**TINY_CLIP, "seconds": 2.0}).setup("fit")
    # a different frame size is served by resizing
    datamodule(tiny_shards, clip={**TINY_CLIP, "height": 16, "width": 24}).setup("fit")


def _write_split(root: Path, split: str, sizes: list[int]) -> None:
    """Shards of the given sizes (synthetic clips)."""
    geo = ClipGeometry(**TINY_CLIP)
    shards = []
    folder = root / split
    folder.mkdir(parents=True)
    n = 0
    for s, size in enumerate(sizes):
        with ShardWriter(root / f".tmp{s}", "synthetic_hits", split, geo, clips_per_shard=size) as w:
            for _ in range(size):
                clip = generate_clip(1000 + n, geo)
                w.write(f"{split}{n:04d}", 0.0, clip.frames, clip.audio, clip.meta)
                n += 1
        shutil.move(root / f".tmp{s}" / split / "shard-000000.tar", folder / f"shard-{s:06d}.tar")
        shutil.rmtree(root / f".tmp{s}")
        shards.append(ShardInfo(f"shard-{s:06d}.tar", size))
    (folder / MANIFEST).write_text(json.dumps(Manifest("synthetic_hits", split, geo, shards, {}).to_json()))


@pytest.fixture(scope="module")
def unequal_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unequal")
    _write_split(root, "train", [7, 2])
    _write_split(root, "val", [5, 1, 3])
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_every_rank_gets_the_same_number_of_full_batches(unequal_shards, workers):
    counts = []
    for rank in range(3):
        dm = datamodule(unequal_shards, num_workers=workers)
        shards = dm.shards("train")
        stream = TrainStream(shards, dm.clip, 2, batches_per_worker=dm.batches_per_worker(3), shuffle_buffer=4,
                             seed=0, rank=rank, world_size=3, num_workers=workers)
        batches = list(dm._loader(stream))
        assert all(len(b["key"]) == 2 for b in batches)  # no partial batches
        counts.append(len(batches))
    # 9 clips / (batch 2 x 3 ranks x workers) -> ceil, per worker
    per_worker = -(-9 // (2 * 3 * max(1, workers)))
    assert counts == [per_worker * max(1, workers)] * 3


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 2)])
def test_eval_sees_every_clip_exactly_once(unequal_shards, world, workers):
    seen = []
    for rank in range(world):
        dm = datamodule(unequal_shards, num_workers=workers, eval_batch_size=2)
        stream = EvalStream(dm.shards("val"), dm.clip, 2, rank=rank, world_size=world)
        keys = keys_of(dm._loader(stream))
        assert len(keys) == dm.expected_eval_clips("val", rank, world)
        seen += keys
    assert len(seen) == 9 and len(set(seen)) == 9
    # deterministic: the same order again
    dm = datamodule(unequal_shards)
    assert keys_of(dm._loader(EvalStream(dm.shards("val"), dm.clip, 2))) == \
        keys_of(dm._loader(EvalStream(dm.shards("val"), dm.clip, 2)))


def test_train_seed_mixes_rank_worker_step_and_epoch(unequal_shards):
    dm = datamodule(unequal_shards)

    def stream(**kw):
        args = dict(batches_per_worker=4, shuffle_buffer=4, seed=0, rank=0, world_size=2)
        args.update(kw)
        return TrainStream(dm.shards("train"), dm.clip, 2, **args)

    base = stream()
    seeds = {base.seed_for(w, e) for w in range(3) for e in range(3)}
    seeds |= {stream(rank=1).seed_for(0, 0), stream(start_step=100).seed_for(0, 0), stream(seed=1).seed_for(0, 0)}
    assert len(seeds) == 12
    first = keys_of(stream())
    assert keys_of(stream()) == first  # reproducible
    assert keys_of(stream(start_step=8)) != first  # a resumed run does not replay the stream
    persistent = stream()
    assert keys_of(persistent) == first and keys_of(persistent) != first  # next epoch, new order


def _bad_shard(root: Path) -> None:
    """Add to val/ a shard with: a good clip, a zero-byte mp4, a clip without audio, a good clip, and a
    truncated last member; the manifest promises 5 clips."""
    geo = ClipGeometry(**TINY_CLIP)
    members = []
    for i in range(5):
        clip = generate_clip(500 + i, geo)
        from avgen.data.shards import encode_clip

        mp4, flac = encode_clip(geo, clip.frames, clip.audio)
        meta = {"dataset": "synthetic_hits", "start": 0.0, "end": 1.0, "fps": 8, "label": "x", "caption": "x",
                "events": clip.meta["events"]}
        sample = {"__key__": f"synthetic_hits/bad{i}/0", "mp4": mp4, "flac": flac, "json": json.dumps(meta).encode()}
        if i == 1:
            sample["mp4"] = b""
        if i == 2:
            del sample["flac"]
        members.append(sample)
    path = root / "val" / "shard-bad.tar"
    with wds.TarWriter(str(path)) as tar:
        for sample in members:
            tar.write(sample)
    size_before_last = None
    import tarfile

    with tarfile.open(path) as tar:
        last = [m for m in tar.getmembers() if m.name.startswith("synthetic_hits/bad4/")][0]
        size_before_last = last.offset_data + last.size // 2
    with open(path, "r+b") as f:
        f.truncate(size_before_last)
    manifest = json.loads((root / "val" / MANIFEST).read_text())
    manifest["shards"].append({"name": "shard-bad.tar", "clips": 5})
    manifest["clips"] += 5
    (root / "val" / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def bad_shards(tmp_path, unequal_shards) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(unequal_shards, root)
    _bad_shard(root)
    shutil.copy(root / "val" / "shard-bad.tar", root / "train" / "shard-bad.tar")
    manifest = json.loads((root / "train" / MANIFEST).read_text())
    manifest["shards"].append({"name": "shard-bad.tar", "clips": 5})
    (root / "train" / MANIFEST).write_text(json.dumps(manifest))
    return root


def test_bad_clips_are_skipped_and_counted(bad_shards):
    dm = datamodule(bad_shards, max_skip_fraction=0.5)
    dm.setup("validate")
    keys = keys_of(dm.val_dataloader(), dm)
    health = dm.take_health("val")
    assert sorted(k for k in keys if "bad" in k) == ["synthetic_hits/bad0/0", "synthetic_hits/bad3/0"]
    assert health.seen == 11 == len(keys) and health.skipped == 3
    assert dict(health.shards) == {str(bad_shards / "val" / "shard-bad.tar"): 3}
    assert any("missing member(s) ['flac']" in r for r in health.reasons)
    assert any("unreadable" in r for r in health.reasons)


def test_too_many_bad_clips_stop_the_run_naming_the_shard(bad_shards):
    dm = datamodule(bad_shards, max_skip_fraction=0.05, min_clips_for_check=8)
    dm.setup("fit")
    with pytest.raises(DataHealthError) as err:
        keys_of(dm.train_dataloader(), dm)
    assert "shard-bad.tar" in str(err.value) and "data.max_skip_fraction=0.05" in str(err.value)


def test_health_merge_and_fraction():
    a, b = Health(), Health()
    a.seen, b.seen = 8, 1
    a.skip("s1", "r1")
    b.skip("s2", "r2", 2)
    a.merge(b.to_dict())
    assert (a.seen, a.skipped, dict(a.shards)) == (9, 3, {"s1": 1, "s2": 2})
    assert a.fraction == pytest.approx(0.25)
