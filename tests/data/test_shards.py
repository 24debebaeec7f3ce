"""Shard writer and manifest."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from avgen.data.geometry import ClipGeometry
from avgen.data.shards import Manifest, ShardWriter, clip_key

GEO = ClipGeometry(seconds=0.5, fps=8, height=16, width=16, sample_rate=16000)


def _clip(i):
    frames = np.full((GEO.num_frames, GEO.height, GEO.width, 3), 20 * i, np.uint8)
    return frames, np.zeros(GEO.num_samples, np.float32)


def test_writer_rotates_shards_and_writes_manifest(tmp_path):
    with ShardWriter(tmp_path, "toy", "train", GEO, clips_per_shard=3, prepare={"command": "x"}) as w:
        for i in range(7):
            w.write(f"src{i}", 1.5, *_clip(i), {"label": "l", "caption": f"c{i}", "events": [0.1]})
    m = Manifest.load(tmp_path / "train")
    assert [s.clips for s in m.shards] == [3, 3, 1] and m.num_clips == 7 and m.clip == GEO
    assert m.prepare == {"command": "x"}
    with tarfile.open(tmp_path / "train" / m.shards[0].name) as tar:
        names = tar.getnames()
        record = json.loads(tar.extractfile("toy/src0/1500.json").read())
    assert sorted(names[:3]) == ["toy/src0/1500.flac", "toy/src0/1500.json", "toy/src0/1500.mp4"]
    assert record["caption"] == "c0" and record["start"] == 1.5 and record["end"] == 2.0 and record["fps"] == 8


def test_keys_are_sanitised_for_webdataset():
    # WebDataset splits member names at the first dot: ids must not contain dots or slashes
    assert clip_key("vgg.sound", "a.b/c", 0.25) == "vgg%2Esound/a%2Eb%2Fc/250"
    ids = ["a.b", "a_b", "a b", "a/b", "犬", "猫", "café", "cafè"]
    assert len({clip_key("d", i, 0) for i in ids}) == len(ids)  # different ids never share a key
    assert all("." not in clip_key("d", i, 0) for i in ids)


def test_failed_prepare_leaves_no_split_and_existing_split_is_kept(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "toy", "val", GEO, clips_per_shard=2) as w:
            w.write("a", 0, *_clip(0), {})
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with ShardWriter(tmp_path, "toy", "val", GEO, clips_per_shard=2) as w:
        w.write("a", 0, *_clip(0), {})
    with pytest.raises(FileExistsError, match="overwrite"):
        ShardWriter(tmp_path, "toy", "val", GEO)
    with ShardWriter(tmp_path, "toy", "val", GEO, overwrite=True) as w:
        w.write("b", 0, *_clip(1), {})
        w.write("c", 0, *_clip(2), {})
    assert Manifest.load(tmp_path / "val").num_clips == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val"]


def test_writer_rejects_wrong_geometry_and_duplicate_keys(tmp_path):
    with ShardWriter(tmp_path, "toy", "test", GEO) as w:
        frames, audio = _clip(0)
        with pytest.raises(ValueError, match="geometry"):
            w.write("a", 0, frames[:-1], audio, {})
        with pytest.raises(ValueError, match="audio"):
            w.write("a", 0, frames, audio[:-5], {})
        w.write("a", 0, frames, audio, {})
        with pytest.raises(ValueError, match="duplicate"):
            w.write("a", 0, frames, audio, {})
