"""``python -m avgen filter`` and ``data.subset``: per-clip scores through the evaluation code, saved and
reused; thresholds (VTA-LDM's "score > 0.3"); the subset read by the datamodule without copying shards."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import avgen.evaluation as evaluation
from avgen.curation import Thresholds, filter_dataset
from avgen.data.datamodule import AVDataModule
from avgen.data.shards import MANIFEST, Manifest, read_split_samples
from avgen.data.stream import Health, Shard, iter_shard
from avgen.data.subset import Subset
from avgen.errors import ConfigError, DataHealthError, MissingShardsError, NothingProduced
from avgen.samples import export_samples
from tests.conftest import TINY_CLIP, compose
from tests.metrics.test_semantic import clap_dir  # noqa: F401  (fixture)

# the evaluate block the tests score with: AV-Align in this process (workers=1), so it can be watched
EVALUATE = {"av_align": {}, "workers": 1, "decode_threads": 0, "device": "cpu"}


@pytest.fixture
def root(tmp_path, tiny_shards) -> Path:
    """A private copy of the session's tiny dataset (train 12 clips in 3 shards, val 5, test 5)."""
    out = tmp_path / "synthetic_hits"
    shutil.copytree(tiny_shards, out)
    return out


@pytest.fixture
def counted(monkeypatch) -> list[str]:
    """The clips AV-Align scores (avgen.evaluation.processes.score_clip calls) in this process."""
    import avgen.evaluation.processes as processes

    calls: list[str] = []
    original = processes.score_clip

    def spy(job):
        calls.append(Path(job[0]).name)
        return original(job)

    monkeypatch.setattr(processes, "score_clip", spy)
    return calls


def saved_scores(root: Path, split: str, metric: str) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for folder in (root / "scores" / split).glob(f"{metric}-*"):
        for path in sorted(folder.glob("shard-*.csv")):
            with open(path, newline="") as f:
                rows.update({r["key"]: r for r in csv.DictReader(f)})
    return rows


def test_thresholds_keep_clips_strictly_above_every_minimum():
    t = Thresholds(min_av_align=0.2, min_clap=0.3)
    assert t.metrics() == ["av_align", "clap"] and t.column("av_align") == "av_align_official"
    assert t.name() == "av_align-official-0.2_clap-0.3"
    assert t.decide({"av_align_official": "0.21", "clap": 0.31}) == []
    assert t.decide({"av_align_official": 0.2, "clap": 0.5}) == ["min_av_align"]  # "score > 0.2": 0.2 is out
    assert t.decide({"av_align_official": 0.9, "clap": ""}) == ["unscored:clap"]
    assert t.decide({"av_align_official": float("nan"), "clap": 0.1}) == ["unscored:av_align", "min_clap"]
    assert t.decide({"av_align_paper": 0.9, "clap": 0.9}) == ["unscored:av_align"]  # the variant's column only
    lenient = Thresholds(min_clap=0.3, keep_unscored=True, av_align_variant="pr")
    assert lenient.decide({}) == [] and lenient.name() == "clap-0.3_keep-unscored"
    with pytest.raises(ConfigError, match="no threshold set.*filter.min_av_align"):
        Thresholds()
    with pytest.raises(ConfigError, match="filter.min_clap='0.3'"):
        Thresholds(min_clap="0.3")
    with pytest.raises(ConfigError, match="filter.min_imagebind=inf"):
        Thresholds(min_imagebind=math.inf)
    with pytest.raises(ConfigError, match="filter.av_align_variant='best'"):
        Thresholds(min_av_align=0.2, av_align_variant="best")


def test_a_subset_shard_yields_only_its_keys_and_counts_the_promised_ones_it_lacks(tiny_shards):
    url = str(tiny_shards / "train" / "shard-000000.tar")
    keys = [k for k, _ in read_split_samples(tiny_shards / "train")][:4]
    health = Health()
    got = [s["__key__"] for s in iter_shard(Shard(url, 2, frozenset([keys[1], keys[3]])), health)]
    assert got == [keys[1], keys[3]] and health.skipped == 0
    got = [s["__key__"] for s in iter_shard(Shard(url, 2, frozenset([keys[2], "synthetic_hits/gone/0"])), health)]
    assert got == [keys[2]] and health.skipped == 1 and health.shards == {url: 1}


def test_filter_scores_each_clip_once_through_evaluate_and_reuses_the_scores(tmp_path, root, counted):
    report = filter_dataset(root, dataset="synthetic_hits", splits=["train"],
                            thresholds=Thresholds(min_av_align=0.55), evaluate=EVALUATE)
    assert len(counted) == 12  # every train clip once
    scores = saved_scores(root, "train", "av_align")
    assert len(scores) == 12 and not any(r["error"] for r in scores.values())
    # the same numbers as `evaluate` on the split (one scoring path)
    evaluation.evaluate_folder(root / "train", tmp_path / "ev", metrics=["av_align"], workers=1)
    with open(tmp_path / "ev" / "per_clip.csv", newline="") as f:
        evaluated = {r["clip"]: r for r in csv.DictReader(f)}
    for key, row in scores.items():
        for variant in ("official", "paper", "pr"):
            column = f"av_align_{variant}"
            assert float(row[column]) == float(evaluated[key.replace("/", "__") + ".mp4"][column])
    official = {k: float(r["av_align_official"]) for k, r in scores.items()}
    expected = [k for k in official if official[k] > 0.55]
    assert 0 < len(expected) < 12
    subset = Subset.load(root, "av_align-official-0.55", "train")
    assert [k for s in subset.shards for k in s["keys"]] == [k for k, _ in read_split_samples(root / "train")
                                                              if k in expected]
    assert subset.clips == len(expected) and subset.total == 12
    folder = root / "subsets" / "av_align-official-0.55"
    assert (folder / "train.txt").read_text().split() == [k for s in subset.shards for k in s["keys"]]
    split_report = report["splits"]["train"]
    assert split_report["kept"] == len(expected) and split_report["removed"] == 12 - len(expected)
    criteria = split_report["criteria"]["av_align"]
    assert criteria["below"] == criteria["only"] == criteria["in_order"] == 12 - len(expected)
    assert criteria["quantiles"]["p50"] == pytest.approx(float(np.median(list(official.values()))))
    assert json.loads((folder / "report.json").read_text()) == report

    # other thresholds: read from the saved scores, nothing scored again
    counted.clear()
    strict = filter_dataset(root, dataset="synthetic_hits", splits=["train"], thresholds=Thresholds(min_av_align=0.6),
                            evaluate=EVALUATE)
    assert counted == [] and strict["splits"]["train"]["kept"] == sum(v > 0.6 for v in official.values())
    # an interrupted run (a shard without scores) scores that shard only
    store_folder = next((root / "scores" / "train").glob("av_align-*"))
    (store_folder / "shard-000001.csv").unlink()
    filter_dataset(root, dataset="synthetic_hits", splits=["train"], thresholds=Thresholds(min_av_align=0.6),
                   evaluate=EVALUATE)
    assert len(counted) == 4 and saved_scores(root, "train", "av_align") == scores
    # another AV-Align setting scores into a folder of its own; the first scores stay
    counted.clear()
    filter_dataset(root, dataset="synthetic_hits", splits=["train"], thresholds=Thresholds(min_av_align=0.6),
                   evaluate={**EVALUATE, "av_align": {"onset_delta": 0.15}}, name="tuned")
    assert len(counted) == 12 and len(list((root / "scores" / "train").iterdir())) == 2
    # the same name with other thresholds is refused unless asked
    with pytest.raises(FileExistsError, match="filter.overwrite=true"):
        filter_dataset(root, dataset="synthetic_hits", splits=["train"], thresholds=Thresholds(min_av_align=0.3),
                       evaluate=EVALUATE, name="tuned")
    with pytest.raises(ConfigError, match="evaluate.av_align.variants"):
        filter_dataset(root, dataset="synthetic_hits", splits=["train"],
                       thresholds=Thresholds(min_av_align=0.3, av_align_variant="pr"),
                       evaluate={**EVALUATE, "av_align": {"variants": ["official"]}})
    with pytest.raises(MissingShardsError, match="no dev split"):
        filter_dataset(root, dataset="synthetic_hits", splits=["dev"], thresholds=Thresholds(min_av_align=0.3),
                       evaluate=EVALUATE)


def test_clap_and_imagebind_thresholds_use_the_evaluation_scorers(root, clap_dir):  # noqa: F811
    """Tiny CLAP (save_pretrained folder) and ImageBind (official checkpoint layout) through the real loaders:
    the saved CLAP score is CLAPScore(audio, the clip's label); ImageBind's is ImageBindScore on the clip."""
    from avgen.encoders.imagebind import TINY_IMAGEBIND, ImageBindAV, save_official_format
    from avgen.media import decode_flac, read_clip
    from avgen.metrics.imagebind import ImageBindScore
    from avgen.metrics.semantic import CLAPScore

    torch.manual_seed(0)
    weights = root.parent / "imagebind_huge.pth"
    save_official_format(ImageBindAV.tiny(), weights)
    evaluate = {**EVALUATE, "clap": {"model": str(clap_dir)}, "imagebind": {"path": str(weights), **TINY_IMAGEBIND}}
    first = filter_dataset(root, dataset="synthetic_hits", splits=["val"],
                           thresholds=Thresholds(min_clap=-1.0, min_imagebind=-1.0), evaluate=evaluate)
    assert first["splits"]["val"]["kept"] == 5  # every cosine is > -1
    clap, imagebind = saved_scores(root, "val", "clap"), saved_scores(root, "val", "imagebind")
    direct_clap = CLAPScore.from_pretrained(str(clap_dir))
    direct_ib = ImageBindScore.from_file(weights, sizes=TINY_IMAGEBIND)
    samples = list(read_split_samples(root / "val"))
    for key, parts in samples:
        audio, sr = decode_flac(parts["flac"])
        direct_clap.sample_rate = sr
        label = json.loads(parts["json"])["label"]
        assert float(clap[key]["clap"]) == pytest.approx(float(direct_clap.clip_scores([audio], [label])[0]), abs=1e-5)
    exported = export_samples(iter(samples[:1]), root.parent / "one")
    clip = read_clip(exported[samples[0][0]])
    expected = direct_ib.clip_scores([clip.frames], [clip.audio], sample_rate=clip.sample_rate, fps=float(clip.fps))
    assert float(imagebind[samples[0][0]]["imagebind"]) == pytest.approx(float(expected[0]), abs=1e-5)
    # a threshold between the scores: kept = the clips above both, counted per threshold
    c = {k: float(r["clap"]) for k, r in clap.items()}
    ib = {k: float(r["imagebind"]) for k, r in imagebind.items()}
    t_clap, t_ib = sorted(c.values())[2], sorted(ib.values())[1]
    report = filter_dataset(root, dataset="synthetic_hits", splits=["val"],
                            thresholds=Thresholds(min_clap=t_clap, min_imagebind=t_ib), evaluate=evaluate)
    val = report["splits"]["val"]
    assert val["kept"] == sum(c[k] > t_clap and ib[k] > t_ib for k in c)
    assert val["criteria"]["clap"]["below"] == 3 and val["criteria"]["imagebind"]["below"] == 2
    assert val["criteria"]["clap"]["only"] == sum(c[k] <= t_clap and ib[k] > t_ib for k in c)
    info = json.loads(next((root / "scores" / "val").glob("imagebind-*/info.json")).read_text())
    assert info["scored_by"]["sha256"] and info["manifest_sha256"]


def test_the_datamodule_reads_only_the_kept_clips(root):
    filter_dataset(root, dataset="synthetic_hits", splits=["train", "val"], thresholds=Thresholds(min_av_align=0.55),
                   evaluate=EVALUATE, name="clean")
    kept = {split: set((root / "subsets" / "clean" / f"{split}.txt").read_text().split()) for split in ("train", "val")}
    dm = AVDataModule("synthetic_hits", str(root), TINY_CLIP, batch_size=2, num_workers=0, shuffle_buffer=4,
                      subset="clean")
    dm.setup(None)
    assert dm.num_clips("train") == len(kept["train"]) and dm.num_clips("test") == 5  # test: not in the subset
    assert dm.batches_per_worker(1) == math.ceil(len(kept["train"]) / 2)
    seen = [k for batch in dm.train_dataloader() for k in batch["key"]]
    assert len(seen) == 2 * dm.batches_per_worker(1) and set(seen) <= kept["train"]
    val = [k for batch in dm.val_dataloader() for k in batch["key"]]
    assert sorted(val) == sorted(kept["val"])  # each kept clip exactly once
    assert dm.expected_eval_clips("val", 0, 1) == len(kept["val"])
    from avgen.data.stream import EvalStream

    ranks = [[k for b in EvalStream(dm.shards("val"), dm.clip, 2, rank=r, world_size=2) for k in b["key"]]
             for r in (0, 1)]  # two DDP ranks: equal shares of the kept clips, each once
    assert sorted(ranks[0] + ranks[1]) == sorted(kept["val"]) and abs(len(ranks[0]) - len(ranks[1])) <= 1
    assert [len(r) for r in ranks] == [dm.expected_eval_clips("val", r, 2) for r in (0, 1)]
    # a subset made before the split was prepared again is refused, as is an unknown name
    manifest = json.loads((root / "train" / MANIFEST).read_text())
    (root / "train" / MANIFEST).write_text(json.dumps({**manifest, "created": "later"}))
    stale = AVDataModule("synthetic_hits", str(root), TINY_CLIP, batch_size=2, num_workers=0, subset="clean")
    with pytest.raises(ConfigError, match="another version of .*filter.name=clean filter.overwrite=true"):
        stale.setup("fit")
    with pytest.raises(ConfigError, match="no subset of that name .*known: clean"):
        AVDataModule("synthetic_hits", str(root), TINY_CLIP, batch_size=2, num_workers=0, subset="other").setup("fit")


def test_filter_command_writes_the_subset_and_fails_when_it_keeps_nothing(tmp_path, tiny_shards, capsys):
    from avgen.cli import check_overrides
    from avgen.commands import filter_clips, run_command

    check_overrides(["filter.min_clap=0.3", "filter.av_align_variant=pr", "data.subset=clean"])
    with pytest.raises(ConfigError, match="filter.min_clapp"):
        check_overrides(["filter.min_clapp=0.3"])
    overrides = ["scale=tiny", "evaluate.workers=1", "evaluate.decode_threads=0"]
    cfg = compose([*overrides, "filter.min_av_align=0.55"], tmp_path)
    shutil.copytree(tiny_shards, cfg.data.root)
    report = filter_clips(cfg)
    out = capsys.readouterr().out
    assert f"train: kept {report['splits']['train']['kept']} of 12 clips" in out
    assert "train on it: data=synthetic_hits data.subset=av_align-official-0.55" in out
    assert "av_align_official > 0.55:" in out
    subset = json.loads((Path(cfg.data.root) / "subsets" / "av_align-official-0.55" / "train.json").read_text())
    assert subset["command"].startswith("python -m avgen filter") and subset["dataset"] == "synthetic_hits"
    with pytest.raises(NothingProduced, match="keeps no clip"):
        filter_clips(compose([*overrides, "filter.min_av_align=1.0"], tmp_path))
    with pytest.raises(SystemExit) as exit_:
        run_command(compose([*overrides, "command=filter"], tmp_path))
    assert exit_.value.code == 1 and "no threshold set" in capsys.readouterr().err
    # the scores of one filter run serve the next: nothing is written outside scores/ and subsets/
    assert sorted(p.name for p in Path(cfg.data.root).iterdir()) == sorted(
        [p.name for p in tiny_shards.iterdir()] + ["scores", "subsets"])
    assert Manifest.load(Path(cfg.data.root) / "train").num_clips == 12  # the shards are untouched


def test_each_threshold_reads_its_own_metrics_scores(root, clap_dir):  # noqa: F811
    """Changing the AV-Align settings rescores AV-Align only; the CLAP scores saved beside the old AV-Align
    scores never stand in for the new ones (each store holds its own metric's columns)."""
    evaluate = {**EVALUATE, "clap": {"model": str(clap_dir)}}
    both = dict(min_av_align=0.55, min_clap=-1.0)
    filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(**both), evaluate=evaluate)
    clap_store = next((root / "scores" / "val").glob("clap-*"))
    with open(clap_store / "shard-000000.csv", newline="") as f:
        assert csv.DictReader(f).fieldnames == ["key", "clap", "error"]
    retuned = {**evaluate, "av_align": {"onset_delta": 0.5}}
    mixed = filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(**both),
                           evaluate=retuned, name="retuned")
    alone = filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.55),
                           evaluate=retuned, name="alone")
    assert mixed["splits"]["val"]["kept"] == alone["splits"]["val"]["kept"]
    assert mixed["splits"]["val"]["criteria"]["av_align"] == alone["splits"]["val"]["criteria"]["av_align"]
    # the same name and thresholds with other scoring settings is another subset: refused unless asked
    with pytest.raises(FileExistsError, match="scoring settings"):
        filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.55),
                       evaluate=EVALUATE, name="alone")


def test_broken_shards_stop_filter_with_the_shard_and_the_fix(root):
    report = filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.3),
                            evaluate=EVALUATE)
    assert report["splits"]["val"]["clips"] == 5
    store = next((root / "scores" / "val").glob("av_align-*"))
    tar = root / "val" / "shard-000001.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 3])
    (store / "shard-000001.csv").write_text("key,av_align_official,error\n")  # no row for its clip
    # saved scores that do not cover the shard are scored again, and the short shard is named
    with pytest.raises(DataHealthError, match=r"val/shard-000001.tar (holds \d clips, its manifest 1|is unreadable)"
                                              r".*python -m avgen prepare"):
        filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.2),
                       evaluate=EVALUATE)
    tar.write_bytes(data)
    filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.2),
                   evaluate=EVALUATE)
    tar.unlink()  # scores all saved, a shard gone: still refused
    with pytest.raises(DataHealthError, match="val/shard-000001.tar is missing"):
        filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.1),
                       evaluate=EVALUATE)


def test_overwrite_keeps_the_splits_made_by_the_same_rule_and_bad_values_are_refused(root):
    t = Thresholds(min_av_align=0.55)
    filter_dataset(root, dataset="synthetic_hits", splits="train", thresholds=t, evaluate=EVALUATE, name="n")
    filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=t, evaluate=EVALUATE, name="n")
    again = filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=t, evaluate=EVALUATE, name="n",
                           overwrite=True)
    assert sorted(p.name for p in (root / "subsets" / "n").iterdir()) == [
        "report.json", "train.json", "train.txt", "val.json", "val.txt"]
    assert set(again["splits"]) == {"train", "val"} and again["removed_splits"] == []
    other = filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.3),
                           evaluate=EVALUATE, name="n", overwrite=True)
    assert other["removed_splits"] == ["train"] and set(other["splits"]) == {"val"}
    assert not (root / "subsets" / "n" / "train.json").exists()
    with pytest.raises(ConfigError, match="filter.overwrite='no'"):
        filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=t, evaluate=EVALUATE, overwrite="no")
    with pytest.raises(ConfigError, match="filter.keep_unscored='maybe'"):
        Thresholds(min_clap=0.3, keep_unscored="maybe")


def test_non_finite_scores_count_as_unscored_and_the_report_is_strict_json(root):
    filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.3),
                   evaluate=EVALUATE)
    store = next((root / "scores" / "val").glob("av_align-*"))
    path = store / "shard-000000.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["av_align_official"], rows[1]["av_align_official"] = "nan", "inf"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.1),
                            evaluate=EVALUATE, name="finite")
    c = report["splits"]["val"]["criteria"]["av_align"]
    assert c["unscored"] == 2 and c["below"] == 0 and report["splits"]["val"]["kept"] == 3
    assert c["only"] == c["in_order"] == 2 and all(math.isfinite(v) for v in c["quantiles"].values())

    def no_constants(name):
        raise ValueError(name)

    json.loads((root / "subsets" / "finite" / "report.json").read_text(), parse_constant=no_constants)
    lenient = filter_dataset(root, dataset="synthetic_hits", splits=["val"], evaluate=EVALUATE,
                             thresholds=Thresholds(min_av_align=0.1, keep_unscored=True))
    assert lenient["splits"]["val"]["kept"] == 5


def test_a_killed_runs_export_folder_is_removed(root, counted):
    dead = root / "scores" / ".export-999999999-abc"
    dead.mkdir(parents=True)
    (dead / "clip.mp4").write_bytes(b"x")
    filter_dataset(root, dataset="synthetic_hits", splits=["val"], thresholds=Thresholds(min_av_align=0.3),
                   evaluate=EVALUATE)
    assert not dead.exists() and len(counted) == 5
    assert [p.name for p in (root / "scores").iterdir()] == ["val"]
