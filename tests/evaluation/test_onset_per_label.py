"""``evaluate`` with onset_acc / onset_ap (events from the clip's json or its reference) and per_label.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from avgen.errors import ConfigError
from avgen.evaluation import evaluate_folder
from avgen.evaluation.annotations import NO_LABEL, TOTAL


def split_meta(split: Path) -> dict[str, dict]:
    from avgen.data.shards import read_split_samples

    return {key: json.loads(parts["json"]) for key, parts in read_split_samples(split, {"json"})}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_the_datas_own_clips_score_perfectly_per_label(tmp_path, tiny_shards):
    """A synthetic_hits split scored as generated clips: every annotated hit is where its sound is (acc 1, AP 1);
    the export carries each clip's label and events, and per_label.csv has one row per label."""
    split = tiny_shards / "test"
    meta = split_meta(split)
    result = evaluate_folder(split, tmp_path / "out", metrics=["onset_acc", "onset_ap"], workers=1)
    assert result["failures"] == [] and result["clips"] == 5
    assert result["metrics"]["onset_acc"] == 1.0 and result["metrics"]["onset_ap"] == 1.0
    key = next(iter(meta))
    exported = json.loads((tmp_path / "out" / "clips" / f"{key.replace('/', '__')}.json").read_text())
    assert exported["events"] == meta[key]["events"] and exported["label"] == meta[key]["label"]
    per_clip = {r["clip"]: r for r in read_csv(tmp_path / "out" / "per_clip.csv")}
    assert sorted(int(r["onset_events"]) for r in per_clip.values()) == sorted(len(m["events"]) for m in meta.values())
    table = read_csv(tmp_path / "out" / "per_label.csv")
    labels = [m["label"] for m in meta.values()]
    assert [r["label"] for r in table] == [*sorted(set(labels)), TOTAL]
    assert [int(r["clips"]) for r in table] == [*(labels.count(x) for x in sorted(set(labels))), 5]
    # CondFoleyGen's ground truth, the onsets detected on each clip's reference (here the same audio)
    detected = evaluate_folder(split, tmp_path / "detected", metrics=["onset_acc", "onset_ap"], workers=1,
                               ref_dir=split, onset={"ground_truth": "detected"})
    assert detected["failures"] == [] and detected["extractors"]["onset_ap"]["ground_truth"] == "detected"
    assert detected["metrics"] == {"onset_acc": 1.0, "onset_count_acc": 1.0, "onset_ap": 1.0}
    # the reference onsets are stored like any extractor's features: a second run detects none again
    clips = detected["clips"]
    again = evaluate_folder(split, tmp_path / "again", metrics=["onset_acc", "onset_ap"], workers=1, ref_dir=split,
                            onset={"ground_truth": "detected"}, cache_dir=tmp_path / "detected" / "features")
    assert again["metrics"] == detected["metrics"]
    assert again["extractors"]["onset_ap"]["feature_store"]["reference"]["hits"] == clips
    assert again["extractors"]["onset_ap"]["feature_store"]["reference"]["misses"] == 0


def test_generated_clips_take_events_and_labels_from_their_reference(tmp_path, tiny_shards):
    """Generated clips naming their data clip as ``source`` (as ``sample`` writes): events and labels come from
    the shard split in evaluate.ref_dir; a silent clip scores accuracy 0; a clip whose source is not in the split
    is reported for the onset scores and still scored by AV-Align. Per label, the means weighted by their counts
    sum back to every per-clip metric of metrics.json."""
    from avgen.data.shards import Manifest
    from avgen.evaluation.references import reference_set
    from avgen.media import write_mp4

    split = tiny_shards / "test"
    meta = split_meta(split)
    pred = tmp_path / "pred"
    pred.mkdir()
    fps = float(Manifest.load(split).clip.fps)
    refs = [(clip.name, *clip.load()) for clip in reference_set(split)]
    refs = [(key, frames, fps, audio, sr) for key, frames, audio, sr in refs]
    for i, (key, frames, fps, audio, sr) in enumerate(refs[:4]):
        sound = np.zeros_like(audio) if i == 3 else audio
        write_mp4(pred / f"s{i}.mp4", frames, fps, audio=sound, sample_rate=sr)
        (pred / f"s{i}.json").write_text(json.dumps({"prompt": "", "source": key}))
    key, frames, fps, audio, sr = refs[4]
    write_mp4(pred / "orphan.mp4", frames, fps, audio=audio, sample_rate=sr)
    (pred / "orphan.json").write_text(json.dumps({"prompt": "", "source": "synthetic_hits/elsewhere/0"}))

    result = evaluate_folder(pred, tmp_path / "out", metrics=["av_align", "onset_acc", "onset_ap"], workers=1,
                             ref_dir=split)
    [failure] = result["failures"]
    assert failure["clip"] == "orphan.mp4" and "no annotated events" in failure["reason"]
    assert "onset_acc" in failure["reason"] and "onset_ap" in failure["reason"]
    assert result["metrics"]["onset_acc"] == pytest.approx(3 / 4)  # 3 perfect clips, the silent one 0
    assert result["extractors"]["onset_acc"]["clips"] == 4

    per_clip = {r["clip"]: r for r in read_csv(tmp_path / "out" / "per_clip.csv")}
    assert per_clip["s3.mp4"]["onset_acc"] == "0.0" and per_clip["s3.mp4"]["onset_detected"] == "0"
    assert per_clip["orphan.mp4"]["av_align_pr"] and not per_clip["orphan.mp4"]["onset_acc"]
    table = {r["label"]: r for r in read_csv(tmp_path / "out" / "per_label.csv")}
    expected = [meta[k]["label"] for k, *_ in refs[:4]]
    assert set(table) == {*expected, NO_LABEL, TOTAL}
    assert int(table[NO_LABEL]["clips"]) == 1 and int(table[TOTAL]["clips"]) == 5
    totals = {"onset_acc": result["metrics"]["onset_acc"], "onset_ap": result["metrics"]["onset_ap"],
              "onset_count_acc": result["metrics"]["onset_count_acc"],
              **{f"av_align_{v}": x for v, x in result["metrics"]["av_align"].items()}}
    assert set(totals) | {f"{c}_clips" for c in totals} | {"label", "group", "clips"} == set(table[TOTAL])
    for column, total in totals.items():
        rows = [r for label, r in table.items() if label != TOTAL and int(r[f"{column}_clips"])]
        count = sum(int(r[f"{column}_clips"]) for r in rows)
        assert count == int(table[TOTAL][f"{column}_clips"]) == (4 if column.startswith("onset") else 5)
        weighted = sum(float(r[column]) * int(r[f"{column}_clips"]) for r in rows) / count
        assert weighted == pytest.approx(total, abs=1e-12) and float(table[TOTAL][column]) == pytest.approx(total)


def test_onset_ground_truth_detected_needs_a_reference(tmp_path, tiny_shards):
    with pytest.raises(ConfigError, match="evaluate.onset.ground_truth=detected .* evaluate.ref_dir"):
        evaluate_folder(tiny_shards / "test", tmp_path / "out", metrics=["onset_ap"], workers=1,
                        onset={"ground_truth": "detected"})
    with pytest.raises(ConfigError, match="evaluate.onset: .*window"):
        evaluate_folder(tiny_shards / "test", tmp_path / "out2", metrics=["onset_ap"], workers=1,
                        onset={"window": -1})


def test_annotations_beside_the_clip_win_over_a_reference_folder(tmp_path):
    from avgen.evaluation.annotations import ClipAnnotations

    pred, refs = tmp_path / "pred", tmp_path / "refs"
    pred.mkdir()
    refs.mkdir()
    (pred / "a.json").write_text(json.dumps({"events": [0.5], "label": "wood"}))
    (refs / "a.json").write_text(json.dumps({"events": [0.1, 0.2], "label": "metal"}))
    (refs / "b.json").write_text(json.dumps({"events": [0.3], "label": "metal"}))
    (pred / "c.json").write_text("not json")
    found = ClipAnnotations(refs, [pred / "a.mp4", pred / "b.mp4", pred / "c.mp4"])
    assert found.events(pred / "a.mp4")[0].tolist() == [0.5] and found.label(pred / "a.mp4") == "wood"
    events, where = found.events(pred / "b.mp4")
    assert events.tolist() == [0.3] and where == str(refs / "b.json")
    assert found.label(pred / "b.mp4") == "metal" and found.label(pred / "c.mp4") is None
    with pytest.raises(ValueError, match="no annotated events: no 'events' in c.json .*refs/c.json"):
        found.events(pred / "c.mp4")
    assert ClipAnnotations(None, []).label(pred / "b.mp4") is None


def test_per_label_columns_are_the_metrics_of_metrics_json():
    from avgen.evaluation.annotations import per_label_rows

    rows = [{"clip": "x", "kl_softmax": 1.0, "ib_score_raw": 0.2, "audio_seconds": 8.0, "onset_events": 3,
             "ib_score_audio": "x.wav"},
            {"clip": "y", "kl_softmax": 3.0, "error": "ib_score: too short"},
            {"clip": "z", "kl_softmax": float("nan")}]
    values = {"kl": {"softmax": 2.0, "sigmoid": 1.5}, "ib_score": 20.0, "ib_score_raw": 0.2}
    table = per_label_rows(rows, {"x": "a", "y": "a"}, values)
    assert table == [
        {"label": "a", "group": "label", "clips": 2, "ib_score_raw": 0.2, "ib_score_raw_clips": 1, "kl_softmax": 2.0,
         "kl_softmax_clips": 2},
        {"label": "(no label)", "group": "no label", "clips": 1, "ib_score_raw": None, "ib_score_raw_clips": 0,
         "kl_softmax": None, "kl_softmax_clips": 0},
        {"label": "(all)", "group": "total", "clips": 3, "ib_score_raw": 0.2, "ib_score_raw_clips": 1,
         "kl_softmax": 2.0, "kl_softmax_clips": 2}]
    # labels spelled like the unlabelled and total rows stay labels of their own
    clash = per_label_rows(rows, {"x": "(all)", "y": "(no label)"}, values)
    assert [(r["label"], r["group"], r["clips"]) for r in clash] == [
        ("(all)", "label", 1), ("(no label)", "label", 1), ("(no label)", "no label", 1), ("(all)", "total", 3)]


@pytest.mark.parametrize("events", [[0.5, float("nan")], [0.5, -1], ["0.5"], [True]])
def test_event_times_that_are_not_seconds_are_refused_naming_the_file(tmp_path, events):
    from avgen.evaluation.annotations import ClipAnnotations

    (tmp_path / "a.json").write_text(json.dumps({"events": events}))
    with pytest.raises(ValueError, match=r"'events' in a.json: .* is not a time in seconds >= 0"):
        ClipAnnotations(None, [tmp_path / "a.mp4"]).events(tmp_path / "a.mp4")
