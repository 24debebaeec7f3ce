"""``evaluate`` through the feature store: reference features of fvd, fad and kl looked up per clip, only misses
decoded and extracted, bit-identical results from a cold and a warm store, ``evaluate.cache_pred``, and each
process's share merging to the one-process statistics."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.data.feature_store import FeatureStore
from avgen.data.geometry import ClipGeometry
from avgen.data.synthetic import generate_clip
from avgen.encoders.panns import TINY_CNN14, Cnn14
from avgen.encoders.vggish import TINY_VGGISH, VGGishFeatures
from avgen.evaluation import evaluate_folder, references, scorers
from avgen.media import write_mp4
from tests.metrics.test_frechet import TinyI3D

GEO = ClipGeometry(seconds=1.0, fps=8, height=32, width=32)
METRICS = ["fvd", "fad", "kl"]
pytestmark = [pytest.mark.usefixtures("one_thread"),  # measured 10x faster on the shared 2-core machine
              pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")]  # MeanKL takes add_pairs


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """ref: c0..c3; pred: c0..c2 (other clips, the same stems, for kl's pairs); tiny I3D, VGGish, CNN14 files."""
    root = tmp_path_factory.mktemp("store")
    pred, ref = root / "pred", root / "ref"
    pred.mkdir()
    ref.mkdir()
    for i in range(4):
        clip = generate_clip(10 + i, GEO)
        write_mp4(ref / f"c{i}.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate)
    for i in range(3):
        clip = generate_clip(30 + i, GEO)
        write_mp4(pred / f"c{i}.mp4", 255 - clip.frames, GEO.fps, audio=clip.audio * 0.3, sample_rate=GEO.sample_rate)
    i3d, vggish, cnn14 = root / "i3d_torchscript.pt", root / "vggish.pth", root / "cnn14.pth"
    torch.jit.script(TinyI3D()).save(str(i3d))
    torch.manual_seed(0)
    torch.save(VGGishFeatures.tiny().state_dict(), vggish)
    torch.save({"model": Cnn14.tiny().state_dict()}, cnn14)
    options = dict(fvd={"i3d_path": str(i3d), "num_frames": 8, "feature_dim": 10},
                   fad={"vggish_path": str(vggish), **TINY_VGGISH},
                   panns={"path": str(cnn14), "splits": 1, **TINY_CNN14})
    return {"root": root, "pred": pred, "ref": ref, "options": options}


@pytest.fixture
def counted(monkeypatch):
    """Which reference clips are decoded ((name, audio only)) and how often each extractor runs."""
    log: dict = {"loads": [], "extractions": {"fvd": 0, "fad": 0, "kl": 0}}
    load = references.ReferenceClip.load

    def counting_load(self):
        log["loads"].append((self.name, self.audio_only))
        return load(self)

    panns = scorers.PannsLogits.reference_features

    def counting(extract):
        def counting_extract(self, *args):
            log["extractions"][self.name] += 1
            return extract(self, *args)
        return counting_extract

    def counting_panns(self, *args):
        log["extractions"]["kl"] += 1
        return panns(self, *args)

    monkeypatch.setattr(references.ReferenceClip, "load", counting_load)
    for cls in (scorers.FrechetScorer, scorers.FVDScorer):  # fvd's features come from the I3D shared with kvd
        monkeypatch.setattr(cls, "reference_features", counting(cls.reference_features))
    monkeypatch.setattr(scorers.PannsLogits, "reference_features", counting_panns)

    def take():
        taken = {"loads": sorted(log["loads"]), "extractions": dict(log["extractions"])}
        log["loads"].clear()
        log["extractions"].update({k: 0 for k in log["extractions"]})
        return taken

    return take


def run(setup, out: Path, ref: Path, cache: Path, **extra) -> dict:
    return evaluate_folder(setup["pred"], out, metrics=METRICS, ref_dir=ref, cache_dir=cache, decode_threads=0,
                           **setup["options"], **extra)


def reference_counts(result: dict) -> dict:
    return {m: {k: result["extractors"][m]["feature_store"]["reference"][k] for k in ("hits", "misses")}
            for m in METRICS}


def test_only_new_or_changed_reference_clips_are_decoded_and_extracted(tmp_path, setup, counted):
    ref = tmp_path / "ref"
    shutil.copytree(setup["ref"], ref)
    cache = tmp_path / "cache"
    cold = run(setup, tmp_path / "cold", ref, cache)
    assert reference_counts(cold) == {"fvd": {"hits": 0, "misses": 4}, "fad": {"hits": 0, "misses": 4},
                                      "kl": {"hits": 0, "misses": 3}}
    # fvd and fad share one full decode per clip; kl (paired) reads the sound of the 3 clips named by pred
    assert counted()["loads"] == sorted([(f"c{i}.mp4", False) for i in range(4)] +
                                        [(f"c{i}.mp4", True) for i in range(3)])
    warm = run(setup, tmp_path / "warm", ref, cache)
    assert warm["metrics"] == cold["metrics"]  # bit-identical, not approximately
    assert reference_counts(warm) == {"fvd": {"hits": 4, "misses": 0}, "fad": {"hits": 4, "misses": 0},
                                      "kl": {"hits": 3, "misses": 0}}
    # nothing decoded on the reference side; the extractors ran on the 3 generated clips only
    assert counted() == {"loads": [], "extractions": {"fvd": 3, "fad": 3, "kl": 3}}
    namespaces = {m: warm["extractors"][m]["feature_store"]["reference"]["namespace"] for m in METRICS}
    assert len(set(namespaces.values())) == 3 and sorted(p.name for p in cache.iterdir()) == sorted(namespaces.values())

    clip = generate_clip(99, GEO)  # one reference clip changes
    write_mp4(ref / "c1.mp4", clip.frames, GEO.fps, audio=clip.audio, sample_rate=GEO.sample_rate, overwrite=True)
    changed = run(setup, tmp_path / "changed", ref, cache)
    assert reference_counts(changed) == {"fvd": {"hits": 3, "misses": 1}, "fad": {"hits": 3, "misses": 1},
                                         "kl": {"hits": 2, "misses": 1}}
    assert counted() == {"loads": [("c1.mp4", False), ("c1.mp4", True)], "extractions": {"fvd": 4, "fad": 4, "kl": 4}}
    assert all(changed["metrics"][m] != cold["metrics"][m] for m in METRICS)
    fresh = run(setup, tmp_path / "fresh", ref, tmp_path / "fresh_cache")  # a cold store on the changed folder
    assert fresh["metrics"] == changed["metrics"]
    assert fresh["extractors"]["fvd"]["reference_clips"] == changed["extractors"]["fvd"]["reference_clips"] == 4
    counted()

    # evaluate.cache_pred: generated features stored by file identity, reused, the same values
    first = run(setup, tmp_path / "pred1", ref, cache, cache_pred=True)
    second = run(setup, tmp_path / "pred2", ref, cache, cache_pred=True)
    assert first["metrics"] == second["metrics"] == changed["metrics"]
    assert first["extractors"]["fad"]["feature_store"]["generated"]["misses"] == 3
    assert {m: {k: second["extractors"][m]["feature_store"]["generated"][k] for k in ("hits", "misses")}
            for m in METRICS} == {m: {"hits": 3, "misses": 0} for m in METRICS}
    assert counted()["extractions"] == {"fvd": 3, "fad": 3, "kl": 3}  # the first run's only; none in the second
    # generated and reference features of one extractor share its namespace
    assert second["extractors"]["fvd"]["feature_store"]["generated"]["namespace"] == namespaces["fvd"]
    assert "generated" not in changed["extractors"]["fvd"]["feature_store"]


class OneOfTwo:
    """Process ``rank`` of two, alone: its own parts only (the merge is done by the test)."""

    def __init__(self, rank: int):
        self.rank, self.world = rank, 2

    def gather(self, obj):
        return [obj]

    def reduce(self, metric):
        pass


def test_each_process_extracts_its_share_and_the_merge_is_one_process(tmp_path, setup):
    ctx = scorers.BuildContext(setup["options"], None, "cpu", setup["ref"])
    store = FeatureStore(tmp_path / "cache")
    one = scorers.FVDScorer.build(ctx)
    references.set_references([one], setup["ref"], FeatureStore(tmp_path / "alone"), scorers.Processes())
    parts = []
    for rank in (0, 1):
        part = scorers.FVDScorer.build(ctx)
        references.set_references([part], setup["ref"], store, OneOfTwo(rank))
        assert part.store_report["misses"] == 2 and part.store_report["hits"] == 0  # clips rank, rank + 2
        parts.append(part)
    parts[0].reference_metric.merge_state(parts[1].reference_metric)
    merged, single = parts[0].reference_metric.stats(real=True), one.reference
    assert merged.count == single.count == 4
    assert torch.allclose(merged.mu, single.mu, rtol=0, atol=1e-12)
    assert torch.allclose(merged.sigma, single.sigma, rtol=0, atol=1e-12)
    # every entry the two processes wrote is the one the single process wrote
    for entry in sorted((tmp_path / "alone").glob("*/*/*.safetensors")):
        other = tmp_path / "cache" / entry.relative_to(tmp_path / "alone")
        assert other.read_bytes() == entry.read_bytes()
    assert np.isfinite(single.sigma.numpy()).all()


class MeanOfClip:
    """A reference user in the fewest lines: the mean frame value and the mean sample, counted."""

    def __init__(self, name: str):
        self.name, self.calls, self.added = name, 0, []

    def reference_features(self, frames, audio, sr):
        self.calls += 1
        return {"mean": np.array([frames.mean(), audio.mean()], np.float32)}

    def add_reference(self, features):
        self.added.append(features["mean"].tolist())


class StoredMean(MeanOfClip):
    def feature_namespace(self):
        return {"extractor": "mean", "weights_sha256": {}, "preprocessing": {"input": "as decoded"},
                "dtype": "float32"}


def test_users_of_one_namespace_share_one_extraction_and_unstored_users_always_extract(tmp_path, setup):
    """The mechanism is generic over scorers: any object with the protocol takes part (as fvd and kvd do with one
    I3D namespace); one without ``feature_namespace`` is fed every run, unstored."""
    store = FeatureStore(tmp_path)
    for run_ in range(2):
        first, second, unstored = StoredMean("a"), StoredMean("b"), MeanOfClip("c")
        references.set_references([first, second, unstored], setup["ref"], store, scorers.Processes())
        assert first.added == second.added == unstored.added and len(first.added) == 4
        assert (first.calls, second.calls, unstored.calls) == ((4, 0, 4) if run_ == 0 else (0, 0, 4))
        assert first.store_report["hits"] == second.store_report["hits"] == 4 * run_
        assert unstored.store_report == {"namespace": None, "folder": None, "hits": 0, "misses": 4,
                                                "damaged": 0}
    assert len(list(tmp_path.glob("*/*/*.safetensors"))) == 4


def test_damaged_read_only_and_unusable_stores(tmp_path, setup, monkeypatch, caplog):
    """A damaged entry is a miss, counted and rewritten; a read-only store is read, what it lacks extracted unstored,
    with the same values (reported ``writable: false``); a root that cannot be used is one ConfigError line."""
    from avgen.data import feature_store
    from avgen.errors import ConfigError

    def fad(out, cache, **extra):
        return evaluate_folder(setup["pred"], tmp_path / out, metrics=["fad"], ref_dir=setup["ref"], cache_dir=cache,
                               decode_threads=0, **setup["options"], **extra)

    cache = tmp_path / "cache"
    cold = fad("cold", cache)
    assert cold["extractors"]["fad"]["feature_store"]["writable"] is True
    entries = sorted(cache.glob("*/*/*.safetensors"))
    assert len(entries) == 4
    entries[0].unlink()
    entries[0].mkdir()  # damage: a folder where an entry belongs
    damaged = fad("damaged", cache)
    assert damaged["metrics"] == cold["metrics"]
    assert {k: damaged["extractors"]["fad"]["feature_store"]["reference"][k] for k in ("hits", "misses", "damaged")} \
        == {"hits": 3, "misses": 1, "damaged": 1}
    assert entries[0].is_file()  # written again

    entries[1].unlink()  # a read-only store that lacks one reference clip; cache_pred misses every generated clip
    real_access = os.access
    monkeypatch.setattr(feature_store.os, "access", lambda path, mode: not mode & os.W_OK and real_access(path, mode))
    monkeypatch.setattr(feature_store, "write_atomic", lambda *a: pytest.fail("a read-only store was written"))
    caplog.clear()
    read_only = fad("read_only", cache, cache_pred=True)
    assert read_only["metrics"] == cold["metrics"]
    report = read_only["extractors"]["fad"]["feature_store"]
    assert report["writable"] is False and report["write_error"] == "no write permission on the folder"
    assert {k: report["reference"][k] for k in ("hits", "misses")} == {"hits": 3, "misses": 1}
    assert report["generated"]["misses"] == 3 and not entries[1].exists()
    assert caplog.text.count("is not writable") == 1 and "evaluate.cache_dir" in caplog.text
    monkeypatch.undo()

    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ConfigError, match=r"^evaluate.cache_dir=\S+afile/store cannot be used as the feature store "
                                          r"\(NotADirectoryError: Not a directory\); set evaluate.cache_dir to"):
        fad("unusable", afile / "store")
