"""The feature store's format: exact round trips, namespaces, atomic and concurrent writes, damaged entries."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import numpy as np
import pytest

from avgen.data import feature_store
from avgen.data.feature_store import (
    FORMAT,
    FeatureStore,
    canonical_json,
    decode_entry,
    digest,
    encode_entry,
    file_identity,
    split_identity,
)
from avgen.errors import ConfigError

DESCRIPTION = {"extractor": "i3d", "weights_sha256": {"i3d": "ab" * 32},
               "preprocessing": {"num_frames": 16, "input": "uint8 to [-1, 1]"}, "dtype": "float32"}


def test_round_trip_is_exact_for_every_dtype_and_shape(tmp_path):
    store = FeatureStore(tmp_path)
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float16", "float64", "int64", "uint8"):
        ns = store.namespace({**DESCRIPTION, "dtype": dtype})
        features = {"features": (rng.standard_normal((3, 7)) * 100).astype(dtype),
                    "logits": (rng.standard_normal((1, 527)) * 10).astype(dtype), "scalar": np.array(5, dtype)}
        identity = split_identity("cd" * 32, f"synthetic/{dtype}/0")
        assert ns.get(identity) is None
        ns.put(identity, features)
        got = ns.get(identity)
        assert set(got) == set(features)
        for name, value in features.items():
            assert got[name].dtype == value.dtype and got[name].shape == value.shape
            assert got[name].tobytes() == value.tobytes()
        assert ns.stats()["hits"] == 1 and ns.stats()["misses"] == 1 and ns.stats()["writes"] == 1
        assert ns.stats()["bytes_read"] == ns.stats()["bytes_written"] == ns.path(identity).stat().st_size
    with pytest.raises(ValueError, match="holds float32 tensors, got {'features': 'float64'}"):
        store.namespace(DESCRIPTION).put({"k": 1}, {"features": np.zeros(3)})  # never cast silently


def test_layout_and_entry_bytes_follow_the_documented_format(tmp_path):
    ns = FeatureStore(tmp_path).namespace(DESCRIPTION)
    full = {"format": FORMAT, **DESCRIPTION}
    namespace_id = digest(full)[:16]
    assert ns.folder == tmp_path / namespace_id and ns.id == namespace_id
    assert json.loads((ns.folder / "namespace.json").read_text()) == full
    identity = split_identity("cd" * 32, "synthetic/test000000/0")
    path = ns.put(identity, {"features": np.arange(4, dtype=np.float32)[None]})
    name = digest(identity)
    assert path == ns.folder / name[:2] / f"{name}.safetensors"
    # the bytes alone say what they hold (the sidecar shards of the training cache carry them as tar members)
    meta, tensors = decode_entry(path.read_bytes())
    assert meta == {"format": FORMAT, "namespace": namespace_id, "identity": canonical_json(identity)}
    assert tensors["features"].tolist() == [[0, 1, 2, 3]]
    assert encode_entry(namespace_id, identity, tensors) == path.read_bytes()


def test_namespaces_separate_weights_preprocessing_and_dtype(tmp_path):
    store = FeatureStore(tmp_path)
    identity = {"kind": "split", "manifest_sha256": "0" * 64, "key": "a"}
    base = store.namespace(DESCRIPTION)
    base.put(identity, {"features": np.ones((1, 2), np.float32)})
    others = [{**DESCRIPTION, "weights_sha256": {"i3d": "ef" * 32}},
              {**DESCRIPTION, "preprocessing": {**DESCRIPTION["preprocessing"], "num_frames": 8}},
              {**DESCRIPTION, "dtype": "float16"}, {**DESCRIPTION, "extractor": "c3d"}]
    ids = {base.id}
    for description in others:
        ns = store.namespace(description)
        assert ns.get(identity) is None
        ids.add(ns.id)
    assert len(ids) == 5 and len(list(tmp_path.iterdir())) == 5
    # the same description in another key order is the same namespace
    reordered = store.namespace(dict(reversed(list(DESCRIPTION.items()))))
    assert reordered.id == base.id and reordered.get(identity) is not None
    with pytest.raises(ValueError, match="exactly the keys"):
        store.namespace({**DESCRIPTION, "split": "test"})
    with pytest.raises(ValueError, match="weights_sha256 is"):
        store.namespace({**DESCRIPTION, "weights_sha256": "ab" * 32})
    assert store.namespace({**DESCRIPTION, "weights_sha256": None}).description["weights_sha256"] is None


@pytest.mark.parametrize("damage", ["garbage", "other", "folder"])
def test_a_damaged_namespace_json_is_written_again_and_its_entries_still_read(tmp_path, damage, caplog):
    store = FeatureStore(tmp_path)
    identity = {"key": "a"}
    store.namespace(DESCRIPTION).put(identity, {"features": np.ones((1, 2), np.float32)})
    info = tmp_path / digest({"format": FORMAT, **DESCRIPTION})[:16] / "namespace.json"
    info.unlink()
    if damage == "folder":
        info.mkdir()
    else:
        info.write_text('{"format": "x"' if damage == "garbage" else json.dumps({**DESCRIPTION, "dtype": "int8"}))
    ns = FeatureStore(tmp_path).namespace(DESCRIPTION)
    assert "damaged" in caplog.text and str(info) in caplog.text
    assert json.loads(info.read_text()) == {"format": FORMAT, **DESCRIPTION}
    assert ns.get(identity)["features"].tolist() == [[1, 1]]


def test_file_identity_changes_with_the_file_and_damaged_entries_are_misses(tmp_path):
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"12345")
    first = file_identity(clip, audio="stream")
    assert first == {"kind": "file", "files": [[str(clip.absolute()), 5, clip.stat().st_mtime_ns]], "audio": "stream"}
    os.utime(clip, ns=(1, clip.stat().st_mtime_ns + 1000))
    assert file_identity(clip, audio="stream") != first  # same bytes, rewritten: a miss, never a stale hit
    ns = FeatureStore(tmp_path / "store").namespace(DESCRIPTION)
    path = ns.put(first, {"features": np.ones((1, 2), np.float32)})
    path.write_bytes(path.read_bytes()[:-3])  # truncated by hand
    assert ns.get(first) is None and ns.stats()["damaged"] == 1
    other = {**first, "audio": "file"}
    ns.path(other).parent.mkdir(parents=True, exist_ok=True)
    ns.path(other).write_bytes(encode_entry(ns.id, first, {"features": np.ones((1, 2), np.float32)}))  # wrong name
    assert ns.get(other) is None and ns.stats()["damaged"] == 2
    ns.put(first, {"features": np.full((1, 2), 2, np.float32)})
    assert ns.get(first)["features"].tolist() == [[2, 2]]


@pytest.mark.parametrize("damage", ["folder", "unreadable"])
def test_an_entry_path_that_cannot_be_read_is_a_miss_and_is_replaced(tmp_path, monkeypatch, damage):
    ns = FeatureStore(tmp_path).namespace(DESCRIPTION)
    identity = {"key": "a"}
    path = ns.path(identity)
    if damage == "folder":
        path.mkdir(parents=True)
    else:  # a permission error (the machine runs as root: chmod does not block it)
        ns.put(identity, {"features": np.zeros((1, 2), np.float32)})
        real = feature_store.Path.read_bytes

        def refused(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)
        monkeypatch.setattr(feature_store.Path, "read_bytes", refused)
    assert ns.get(identity) is None and ns.stats()["damaged"] == ns.stats()["misses"] == 1
    assert ns.put(identity, {"features": np.full((1, 2), 3, np.float32)}) == path
    monkeypatch.undo()
    assert ns.get(identity)["features"].tolist() == [[3, 3]]


def test_a_failed_write_leaves_no_entry_and_no_temporary(tmp_path, monkeypatch):
    ns = FeatureStore(tmp_path).namespace(DESCRIPTION)
    identity = {"key": "a"}
    moves = []
    real_replace = os.replace

    def checked_replace(src, dst):
        moves.append((src, dst))
        assert os.path.dirname(src) == os.path.dirname(dst) and src != dst
        assert decode_entry(open(src, "rb").read())[1]["features"].shape == (2, 3)  # complete before renamed
        real_replace(src, dst)

    monkeypatch.setattr(feature_store.os, "replace", checked_replace)
    ns.put(identity, {"features": np.zeros((2, 3), np.float32)})
    assert len(moves) == 1 and os.listdir(ns.path(identity).parent) == [ns.path(identity).name]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(feature_store.os, "replace", failing_replace)
    other = {"key": "b"}
    with pytest.raises(OSError, match="disk full"):  # a namespace outside a store raises
        feature_store.Namespace(ns.folder, ns.description).put(other, {"features": np.zeros((2, 3), np.float32)})
    assert not ns.path(other).parent.exists() or os.listdir(ns.path(other).parent) == []
    # in a store, the first failed write makes it read-only (logged once): nothing written, nothing left behind
    assert ns.put(other, {"features": np.zeros((2, 3), np.float32)}) is None
    assert not ns.store.writable and "disk full" in ns.store.write_error
    assert not ns.path(other).parent.exists() or os.listdir(ns.path(other).parent) == []
    assert ns.stats()["unwritten"] == 1 and ns.stats()["writes"] == 1


def test_a_read_only_store_is_read_and_never_written(tmp_path, monkeypatch, caplog):
    identity = {"key": "a"}
    FeatureStore(tmp_path).namespace(DESCRIPTION).put(identity, {"features": np.ones((1, 2), np.float32)})
    real_access = os.access
    monkeypatch.setattr(feature_store.os, "access",  # as a non-root user on a read-only shared store
                        lambda path, mode: not mode & os.W_OK and real_access(path, mode))
    monkeypatch.setattr(feature_store, "write_atomic", lambda *a: pytest.fail("a read-only store was written"))
    store = FeatureStore(tmp_path, key="evaluate.cache_dir")
    ns = store.namespace(DESCRIPTION)
    assert ns.get(identity)["features"].tolist() == [[1, 1]]  # what is there is read
    assert ns.get({"key": "b"}) is None and ns.put({"key": "b"}, {"features": np.ones((1, 2), np.float32)}) is None
    fresh = store.namespace({**DESCRIPTION, "dtype": "float16"})  # a new namespace: all misses, nothing created
    assert fresh.get(identity) is None and fresh.put(identity, {"features": np.ones(2, np.float16)}) is None
    assert not fresh.folder.exists()
    assert not store.writable and store.write_error == "no write permission on the folder"
    assert caplog.text.count("not writable") == 1 and "evaluate.cache_dir" in caplog.text
    assert ns.stats()["unwritten"] == fresh.stats()["unwritten"] == 1


def test_an_unusable_root_is_a_one_line_config_error_naming_the_key(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("")
    for root in (afile, afile / "store"):  # a file, a path under a file
        store = FeatureStore(root, key="evaluate.cache_dir")
        with pytest.raises(ConfigError, match=r"^evaluate.cache_dir=.* cannot be used as the feature store \(\w+Error"
                                              r".*set evaluate.cache_dir to a folder") as err:
            store.namespace(DESCRIPTION)
        assert "\n" not in str(err.value)
    monkeypatch.setattr(feature_store.os, "access", lambda path, mode: False)  # a folder that cannot be read
    with pytest.raises(ConfigError, match="PermissionError: the folder cannot be read"):
        FeatureStore(tmp_path / "unreadable", key="evaluate.cache_dir").namespace(DESCRIPTION)


def _write_many(args):
    root, worker = args
    ns = FeatureStore(root).namespace(DESCRIPTION)
    for round_ in range(8):
        for key in range(4):  # every process writes the same four entries, with its own values
            ns.put({"key": key}, {"features": np.full((64, 64), worker * 1000 + round_, np.float32)})
            got = ns.get({"key": key})
            assert got is not None and len(np.unique(got["features"])) == 1  # one writer's complete entry
    return ns.stats()["damaged"]


def test_processes_writing_the_same_entries_never_corrupt_them(tmp_path):
    with mp.get_context("forkserver").Pool(3) as pool:  # no fork of a process that runs threads
        damaged = pool.map(_write_many, [(str(tmp_path), w) for w in range(3)])
    assert damaged == [0, 0, 0]
    ns = FeatureStore(tmp_path).namespace(DESCRIPTION)
    for key in range(4):
        value = ns.get({"key": key})["features"]
        assert value.shape == (64, 64) and len(np.unique(value)) == 1 and int(value[0, 0]) % 1000 == 7
    assert not [p for p in ns.folder.rglob("*") if ".tmp-" in p.name]
