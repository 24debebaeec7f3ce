"""The feature cache: its format (avgen/data/feature_cache.py), ``python -m avgen cache`` (avgen/caching.py) and
training from it with ``data.features`` (the datamodule and the streams), with a test system whose frozen parts
are small Linears (tests/helpers.py CachedPartsSystem)."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.caching import CacheOptions, cache_features
from avgen.commands import run_command
from avgen.data.datamodule import AVDataModule
from avgen.data.decode import decode_sample, to_model_batch
from avgen.data.feature_cache import (
    CACHE_FORMAT,
    EVAL_VIEW,
    CacheSplit,
    SidecarCursor,
    SidecarWriter,
    encode_part,
    namespace_id,
    read_sidecar,
)
from avgen.data.feature_store import FeatureStore
from avgen.data.geometry import ClipGeometry
from avgen.data.shards import read_shard_samples
from avgen.data.stream import EvalStream, Shard
from avgen.data.subset import manifest_sha256
from avgen.errors import ConfigError, NothingProduced
from tests.conftest import TINY_CLIP, compose
from tests.helpers import CachedPartsSystem

CLIP = ClipGeometry.from_config(TINY_CLIP)
PARTS = ("video_latents", "audio_latents", "text")


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def cache_cfg(tmp_path: Path, root: Path, *extra: str):
    return compose(["command=cache", "model=cached_parts_test", "scale=tiny", f"data.root={root}",
                    "data.auto_prepare=false", "data.num_workers=0", *extra], tmp_path, run_dir=tmp_path / "cache_run")


def datamodule(root: Path, **kwargs) -> AVDataModule:
    return AVDataModule("synthetic_hits", str(root), TINY_CLIP, batch_size=2, num_workers=0, pin_memory=False,
                        **kwargs)


@pytest.fixture(scope="module")
def cached(tmp_path_factory, tiny_shards) -> Path:
    """A copy of the tiny dataset with the caches ``default`` (float16) and ``exact`` (float32) of train and val."""
    tmp = tmp_path_factory.mktemp("cached")
    root = copy_data(tiny_shards, tmp / "data" / "synthetic_hits")
    run_command(cache_cfg(tmp, root))
    run_command(cache_cfg(tmp, root, "cache.name=exact", "cache.dtype=float32"))
    return root


@pytest.fixture(scope="module")
def system() -> CachedPartsSystem:
    return CachedPartsSystem(TINY_CLIP).eval()


def eval_view_features(root: Path, split: str, system: CachedPartsSystem) -> dict[str, dict[str, dict]]:
    """``{key: {part: {tensor: float32 array}}}``: compute_features on each clip's evaluation view, clip by clip."""
    out = {}
    for batch in EvalStream(datamodule(root).shards(split), CLIP, 1, split=split):
        batch = to_model_batch(batch)
        features = system.compute_features(batch, list(PARTS))
        out[batch["key"][0]] = {p: {t: v[0].numpy() for t, v in ts.items()} for p, ts in features.items()}
    return out


# ----------------------------------------------------------------------------------------------- the format
def test_namespace_id_is_the_feature_store_folder(tmp_path, system):
    description = system.feature_parts()["video_latents"].description("float16")
    assert FeatureStore(tmp_path).namespace(description).id == namespace_id(description)
    assert namespace_id(description) != namespace_id({**description, "dtype": "float32"})


def test_sidecar_round_trip_and_lockstep_gaps(tmp_path):
    path = tmp_path / "shard-000000.tar"
    writer = SidecarWriter(path)
    writer.add("ds/a/0", "text", b"A")
    writer.add("ds/a/0", "encoder", b"AA")
    writer.add("ds/c/0", "text", b"C")
    assert not path.exists()  # only the temporary until commit
    writer.commit()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["ds/a/0.text.safetensors", "ds/a/0.encoder.safetensors", "ds/c/0.text.safetensors"]
    assert list(read_sidecar(path)) == [("ds/a/0", {"text": b"A", "encoder": b"AA"}), ("ds/c/0", {"text": b"C"})]
    cursor = SidecarCursor(path)
    assert cursor.take("ds/a/0") == {"text": b"A", "encoder": b"AA"}
    assert cursor.take("ds/b/0") == f"clip ds/b/0 is not in the feature cache ({path} holds no member for it)"
    assert cursor.take("ds/c/0") == {"text": b"C"}
    assert "ds/d/0 is not in the feature cache" in cursor.take("ds/d/0")
    missing = SidecarCursor(tmp_path / "shard-000001.tar").take("ds/a/0")
    assert missing.startswith("clip ds/a/0: sidecar ") and "FileNotFoundError" in missing
    aborted = SidecarWriter(tmp_path / "shard-000002.tar")
    aborted.add("ds/a/0", "text", b"A")
    aborted.abort()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_sidecar_reader_checks_namespace_identity_and_shape(cached):
    cache = CacheSplit.load(cached / "cache" / "exact" / "train")
    reader = cache.reader(["text"])
    ns, sha = cache.parts["text"]["namespace"], cache.manifest["data_manifest_sha256"]
    good = {"clip": np.arange(3, dtype=np.float32)}
    decoded = reader.decode("k/0", {"text": encode_part(ns, sha, "k/0", good)})
    assert np.array_equal(decoded["text"]["clip"], good["clip"])
    cases = {
        "namespace": {"text": encode_part("0" * 16, sha, "k/0", good)},
        "another clip": {"text": encode_part(ns, sha, "k/1", good)},
        "tensors": {"text": encode_part(ns, sha, "k/0", {"clip": np.zeros(4, np.float32)})},
        "no member": {"encoder": encode_part(ns, sha, "k/0", good)},
        "not a safetensors": {"text": b"garbage!"},
    }
    for words, members in cases.items():
        with pytest.raises(ValueError, match=words):
            reader.decode("k/0", members)


def test_cache_command_writes_sidecars_keyed_like_the_data_shards(cached, system):
    folder = cached / "cache" / "exact" / "train"
    manifest = json.loads((folder / "manifest.json").read_text())
    data = json.loads((cached / "train" / "manifest.json").read_text())
    parts = system.feature_parts()
    assert manifest["format"] == CACHE_FORMAT and manifest["name"] == "exact" and manifest["split"] == "train"
    assert manifest["data_manifest_sha256"] == manifest_sha256(cached / "train")
    assert manifest["clip"] == CLIP.to_dict() and manifest["store"] == data["store"] and manifest["view"] == EVAL_VIEW
    assert manifest["system"] == "tests.helpers.CachedPartsSystem" and manifest["dtype"] == "float32"
    assert {p: v["namespace"] for p, v in manifest["parts"].items()} == {
        p: namespace_id(parts[p].description("float32")) for p in PARTS}
    assert manifest["parts"]["video_latents"]["tensors"] == {"mean": {"shape": [8, 4]}, "std": {"shape": [8, 4]}}
    assert manifest["parts"]["text"]["fp16_error"] is None
    assert [s["name"] for s in manifest["shards"]] == [s["name"] for s in data["shards"]]
    assert (manifest["clips"], manifest["skipped"]) == (12, 0)
    assert manifest["bytes"] == sum((folder / s["name"]).stat().st_size for s in data["shards"])
    expected = eval_view_features(cached, "train", system)
    for shard in data["shards"]:
        keys = [k for k, _ in read_shard_samples(cached / "train" / shard["name"], {"json"})]
        members = list(read_sidecar(folder / shard["name"]))
        assert [k for k, _ in members] == keys  # the data shard's clips, in its order
        reader = CacheSplit.load(folder).reader(list(PARTS))
        for key, parts_bytes in members:
            got = reader.decode(key, parts_bytes)
            for part in PARTS:
                for name, value in expected[key][part].items():
                    # equal up to float summation order (a batch of 1 here, of 2 in the cache run)
                    np.testing.assert_allclose(got[part][name], value, rtol=1e-6, atol=1e-7, err_msg=key)


def test_float16_cache_and_its_reported_error(cached):
    half = CacheSplit.load(cached / "cache" / "default" / "train")
    full = CacheSplit.load(cached / "cache" / "exact" / "train")
    assert half.manifest["dtype"] == "float16"
    err, sq_err, sq_ref = {}, {}, {}
    for shard in half.manifest["shards"]:
        pairs = zip(read_sidecar(half.sidecar(shard["name"])), read_sidecar(full.sidecar(shard["name"])))
        for (key, h), (key2, f) in pairs:
            assert key == key2
            h, f = half.reader(list(PARTS)).decode(key, h), full.reader(list(PARTS)).decode(key, f)
            for part in PARTS:
                for name in f[part]:
                    assert h[part][name].dtype == np.float16
                    d = h[part][name].astype(np.float64) - f[part][name].astype(np.float64)
                    k = (part, name)
                    err[k] = max(err.get(k, 0.0), float(np.abs(d).max()))
                    sq_err[k] = sq_err.get(k, 0.0) + float((d ** 2).sum())
                    sq_ref[k] = sq_ref.get(k, 0.0) + float((f[part][name].astype(np.float64) ** 2).sum())
    for (part, name), value in err.items():
        reported = half.parts[part]["fp16_error"][name]
        assert reported["max_abs"] == pytest.approx(value, rel=1e-12, abs=0)
        assert reported["rel_rms"] == pytest.approx(np.sqrt(sq_err[part, name] / sq_ref[part, name]), rel=1e-9)
    assert 0 < half.parts["video_latents"]["fp16_error"]["mean"]["rel_rms"] < 2 ** -10
    assert half.parts["text"]["fp16_error"]["clip"] == {"max_abs": 0.0, "rel_rms": 0.0}  # small integers are exact


# ----------------------------------------------------------------------------------------------- reading
def test_decode_skips_the_modalities_asked(tiny_shards):
    key, sample = next(read_shard_samples(tiny_shards / "train" / "shard-000000.tar"))
    sample = {"__key__": key, **sample}
    full = decode_sample(sample, CLIP, None)
    both = decode_sample({k: v for k, v in sample.items() if k not in ("mp4", "flac")}, CLIP, None,
                         skip={"video", "audio"})
    assert full["video"].shape == (8, 32, 32, 3) and full["audio"].shape == (16000,)
    assert both["video"].shape == (0, 32, 32, 3) and both["audio"].shape == (0,)
    assert (both["caption"], both["key"]) == (full["caption"], full["key"])
    assert np.array_equal(both["events"], full["events"])
    audio = decode_sample(sample, CLIP, None, skip={"audio"})
    assert np.array_equal(audio["video"], full["video"]) and audio["audio"].shape == (0,)


def test_batches_carry_the_cached_features_and_skip_decoding(cached, system):
    dm = datamodule(cached, features="exact")
    dm.use_features(system.feature_parts())
    dm.setup("fit")
    assert dm.train_skip == {"video", "audio"}
    expected = eval_view_features(cached, "train", system)
    batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0), 0)
    assert batch["video"].shape == (2, 0, 3, 32, 32) and batch["audio"].shape == (2, 0)
    for part in PARTS:
        for name, value in batch["features"][part].items():
            assert value.dtype == torch.float32
            want = torch.from_numpy(np.stack([expected[k][part][name] for k in batch["key"]]))
            torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-7)
    val = to_model_batch(next(iter(dm.val_dataloader())))  # val decodes everything and carries its cache
    assert val["video"].shape == (2, 8, 3, 32, 32) and val["audio"].shape == (2, 16000)
    assert sorted(val["features"]) == sorted(PARTS)
    half = datamodule(cached, features="default")
    half.use_features(system.feature_parts())
    half.setup("fit")
    feats = half.on_after_batch_transfer(next(iter(half.train_dataloader())), 0)["features"]
    assert feats["video_latents"]["mean"].dtype == torch.float32  # float16 on disk and through the loader


def test_only_cached_parts_skip_their_modality(cached, system):
    """A cache of the text part only: training still decodes video and audio (their parts run)."""
    root = copy_data(cached, cached.parent / "text_only")
    run_command(cache_cfg(root.parent, root, "cache.parts=[text]", "cache.splits=[train]"))
    dm = datamodule(root, features="default")
    dm.use_features(system.feature_parts())
    dm.setup("fit")
    batch = to_model_batch(next(iter(dm.train_dataloader())))
    assert dm.train_skip == frozenset() and batch["video"].shape[1] == 8 and batch["audio"].shape[1] == 16000
    assert list(batch["features"]) == ["text"]


def test_a_clip_missing_from_the_sidecar_is_a_counted_skip_and_subsets_stay_in_step(cached):
    cache = CacheSplit.load(cached / "cache" / "exact" / "train")
    shard = cached / "train" / "shard-000000.tar"
    clips = list(read_sidecar(cache.sidecar(shard.name)))
    keys = [k for k, _ in clips]
    gap = tmp = cached.parent / "gap"
    gap.mkdir(exist_ok=True)
    writer = SidecarWriter(tmp / shard.name)
    for key, parts in clips:
        if key != keys[1]:
            for part, data in parts.items():
                writer.add(key, part, data)
    writer.commit()
    reader = cache.reader(list(PARTS))
    subset = frozenset([keys[1], keys[2], keys[3]])  # keys[0] is outside the subset, keys[1] not cached
    stream = EvalStream([Shard(str(shard), 3, subset, str(tmp / shard.name))], CLIP, 4, split="val")
    stream.features = reader
    batches = list(stream)
    assert [b["key"] for b in batches] == [[keys[2], keys[3]]]
    health = batches[0]["_health"]
    assert health["seen"] == 2 and health["skipped"] == 1
    assert keys[1] in health["reasons"][0] and "not in the feature cache" in health["reasons"][0]


# ----------------------------------------------------------------------------------------------- fit and refusals
def test_fit_trains_from_the_cache_without_decoding(cached, tmp_path):
    run = tmp_path / "run"
    cfg = compose(["command=fit", "model=cached_parts_test", "scale=tiny", f"data.root={cached}",
                   "data.auto_prepare=false", "trainer.max_steps=2", "data.features=default",
                   f"model.record_dir={run}/record"], tmp_path, run_dir=run)
    run_command(cfg)
    record = json.loads((run / "record" / "rank0.json").read_text())
    train = [b for b in record["batches"] if "split" not in b]
    assert record["global_step"] == 2 and len(train) == 2
    assert all(b["video_frames"] == 0 and b["audio_samples"] == 0 and b["parts"] == sorted(PARTS) for b in train)


def refused(tmp_path, capsys, root, *extra) -> str:
    cfg = compose(["command=fit", "model=cached_parts_test", "scale=tiny", f"data.root={root}",
                   "data.auto_prepare=false", "trainer.max_steps=1", *extra], tmp_path, run_dir=tmp_path / "r")
    with pytest.raises(SystemExit) as exit_info:
        run_command(cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_a_cache_that_does_not_fit_is_refused(cached, tmp_path, capsys):
    folder = cached / "cache" / "default" / "train"
    err = refused(tmp_path, capsys, cached, "data.features=default", "model.weights_seed=1")
    assert f"the cache {folder} does not fit the model" in err
    assert "part video_latents: weights_sha256.encoder is " in err
    assert "part audio_latents: weights_sha256.encoder is " in err
    assert "cache.name=default cache.overwrite=true" in err and "python -m avgen cache data=synthetic_hits" in err
    err = refused(tmp_path, capsys, cached, "data.features=default", "data.clip.fps=4")
    assert "clip.fps is 8, data.clip.fps is 4" in err and "part video_latents: preprocessing.fps is '8', the model's " \
                                                          "is '4'" in err
    assert "part video_latents: preprocessing.frames is 8, the model's is 4" in err
    err = refused(tmp_path, capsys, cached, "data.features=nothing")
    assert "data.features=nothing" in err and "(no such cache)" in err and "cache.name=nothing" in err
    err = refused(tmp_path, capsys, cached, "data.features=default", "+data.concat={p:0.5}")
    assert "data.features=default with data.concat.p=0.5" in err and "set data.concat.p=0" in err


def test_a_reprepared_split_is_refused(cached, tmp_path, capsys):
    root = copy_data(cached, tmp_path / "data" / "synthetic_hits")
    shutil.copytree(cached / "cache", root / "cache")
    manifest = json.loads((root / "train" / "manifest.json").read_text())
    manifest["created"] = "later"
    (root / "train" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    err = refused(tmp_path, capsys, root, "data.features=default")
    assert "data_manifest_sha256 is " in err and "the train split's is " in err and "prepared again since" in err


def test_a_model_without_parts_refuses_data_features(cached, tmp_path, capsys):
    err = refused(tmp_path, capsys, cached, "data.features=default", "model=tiny_test")
    assert "data.features=default: TinySystem reads no feature cache" in err


# ----------------------------------------------------------------------------------------------- the command
def test_cache_resumes_at_the_missing_shard_and_refuses_another_making(tmp_path, tiny_shards, capsys):
    root = copy_data(tiny_shards, tmp_path / "data" / "synthetic_hits")
    run_command(cache_cfg(tmp_path, root, "cache.splits=[train]"))
    folder = root / "cache" / "default" / "train"
    tars = sorted(folder.glob("*.tar"))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tars}
    tars[1].unlink()  # as if killed before this shard was renamed into place, leaving a temporary
    stale = folder / f".{tars[2].name}.tmp-999999"
    stale.write_bytes(b"half a tar")
    capsys.readouterr()
    report = run_command(cache_cfg(tmp_path, root, "cache.splits=[train]"))
    assert report["computed"] == 1 and report["clips"] == 4
    assert not stale.exists()
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.glob("*.tar"))}
    assert after[tars[1].name][0] == before[tars[1].name][0]  # the same bytes again
    assert {k: v for k, v in after.items() if k != tars[1].name} == {
        k: v for k, v in before.items() if k != tars[1].name}  # the others untouched
    out = capsys.readouterr().out
    assert "train: 12 clips cached, 0 skipped" in out and "data.features=default" in out
    with pytest.raises(SystemExit):
        run_command(cache_cfg(tmp_path, root, "cache.splits=[train]", "cache.dtype=float32"))
    err = capsys.readouterr().err
    assert f"{folder} holds a cache made otherwise (differs in: dtype" in err and "cache.overwrite=true" in err
    report = run_command(cache_cfg(tmp_path, root, "cache.splits=[train]", "cache.dtype=float32",
                                   "cache.overwrite=true"))
    assert report["computed"] == 3 and report["splits"]["train"]["dtype"] == "float32"


def test_ranks_split_the_shards_and_the_last_writes_the_manifest(tmp_path, tiny_shards, monkeypatch):
    root = copy_data(tiny_shards, tmp_path / "data" / "synthetic_hits")
    system = CachedPartsSystem(TINY_CLIP)
    options = CacheOptions(name="ddp", dtype="float32")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    first = cache_features(datamodule(root), system, options)
    # shards numbered over train (3) then val (2): rank 0 has train 0, 2 and val 1
    assert first["computed"] == 3 and first["splits"] == {"train": None, "val": None}
    folder = root / "cache" / "ddp"
    assert sorted(p.name for p in (folder / "train").glob("*.tar")) == ["shard-000000.tar", "shard-000002.tar"]
    assert [p.name for p in (folder / "val").glob("*.tar")] == ["shard-000001.tar"]
    monkeypatch.setenv("RANK", "1")
    second = cache_features(datamodule(root), system, options)
    assert second["computed"] == 2
    assert second["splits"]["train"]["clips"] == 12 and second["splits"]["val"]["clips"] == 5
    assert (folder / "train" / "manifest.json").is_file() and (folder / "val" / "manifest.json").is_file()


def test_bad_clips_are_skipped_and_nothing_cached_fails(tmp_path, tiny_shards, monkeypatch):
    root = copy_data(tiny_shards, tmp_path / "data" / "synthetic_hits")
    system = CachedPartsSystem(TINY_CLIP)
    real = system.compute_features

    def first_clip_nan(batch, parts):
        out = real(batch, parts)
        out["text"]["clip"][0] = float("nan")
        return out

    monkeypatch.setattr(system, "compute_features", first_clip_nan)
    report = cache_features(datamodule(root, eval_batch_size=4), system, CacheOptions(name="nan", splits=("train",)))
    manifest = report["splits"]["train"]
    assert (manifest["clips"], manifest["skipped"]) == (9, 3)  # the first clip of each 4-clip shard
    assert "non-finite features in ['text.clip']" in manifest["skipped_items"][0]["reason"]
    monkeypatch.setattr(system, "compute_features", lambda batch, parts: {
        p: {t: v * float("nan") for t, v in ts.items()} for p, ts in real(batch, parts).items()})
    with pytest.raises(NothingProduced, match="no clip could be cached"):
        cache_features(datamodule(root), system, CacheOptions(name="none", splits=("train",)))


def test_cache_options_and_parts_are_checked(tmp_path, tiny_shards, capsys):
    with pytest.raises(ConfigError, match="cache.dtype='bfloat16'"):
        CacheOptions(dtype="bfloat16")
    with pytest.raises(ConfigError, match="cache.name='../x'"):
        CacheOptions(name="../x")
    with pytest.raises(ConfigError, match="cache.batch_size=0"):
        CacheOptions(batch_size=0)
    root = copy_data(tiny_shards, tmp_path / "data" / "synthetic_hits")
    with pytest.raises(SystemExit):
        run_command(cache_cfg(tmp_path, root, "cache.parts=[flow]"))
    err = capsys.readouterr().err
    assert "cache.parts=['flow']" in err and "['video_latents', 'audio_latents', 'text']" in err
    assert not (root / "cache").exists() or not any((root / "cache").rglob("*.tar"))
    assert os.environ.get("WORLD_SIZE") is None
