"""evaluate.metrics=[desync]: a tiny Synchformer written in MMAudio's layout, read through load_synchformer;
each clip's per-clip columns equal desync_offsets on the clip decoded again at 25 fps, a short clip is
reported, and metrics.json says what was measured."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from avgen.encoders.synchformer import (
    TINY_SYNCHFORMER,
    Synchformer,
    load_synchformer,
    save_official_format,
    sync_audio,
    sync_audio_segments,
    sync_video_segments,
)
from avgen.evaluation import evaluate_folder
from avgen.media import decode_video, read_clip, write_mp4
from avgen.metrics.desync import desync_offsets
from avgen.pretrained import ExtractorWeightsMissing, sha256_file


def test_desync_scorer_on_a_tiny_published_layout_file(tmp_path):
    g = np.random.default_rng(0)
    pred = tmp_path / "pred"
    pred.mkdir()
    for name, seconds in (("long.mp4", 8.4), ("short.mp4", 6.0)):
        frames = g.integers(0, 256, (int(25 * seconds), 40, 48, 3), dtype=np.uint8)
        write_mp4(pred / name, frames, 25, audio=0.1 * g.standard_normal(int(16000 * seconds)).astype(np.float32),
                  sample_rate=16000)
    torch.manual_seed(0)
    weights = tmp_path / "synchformer_state_dict.pth"
    save_official_format(Synchformer.tiny(), weights)
    heads = {k: v for k, v in TINY_SYNCHFORMER.items() if k.endswith("_heads")}
    result = evaluate_folder(pred, tmp_path / "out", metrics=["desync"], desync={"path": str(weights), **heads})
    with open(tmp_path / "out" / "per_clip.csv") as f:
        rows = {r["clip"]: r for r in csv.DictReader(f)}
    model = load_synchformer(weights, **heads)
    clip = read_clip(pred / "long.mp4")
    video, _ = decode_video(pred / "long.mp4", fps=25, num_frames=200)
    first, last = desync_offsets(model, sync_video_segments(video, 32),
                                 sync_audio_segments(sync_audio(clip.audio, clip.sample_rate, 8.0)))
    row = rows["long.mp4"]
    assert float(row["desync_first"]) == pytest.approx(first, abs=1e-9)
    assert float(row["desync_last"]) == pytest.approx(last, abs=1e-9)
    assert result["metrics"]["desync"] == pytest.approx((abs(first) + abs(last)) / 2, abs=1e-9)
    info = result["extractors"]["desync"]
    assert info["sha256"] == {"synchformer": sha256_file(weights)} and info["offsets"] == 2
    assert info["protocol"] == "av-benchmark@050a5cd" and info["seconds"] == 8.0
    assert [f["clip"] for f in result["failures"]] == ["short.mp4"]
    assert "fewer than 200" in result["failures"][0]["reason"]
    with pytest.raises(ExtractorWeightsMissing, match="evaluate.desync.path"):
        evaluate_folder(pred, tmp_path / "b", metrics=["desync"], desync={"path": None})


def test_two_processes_merge_to_the_one_process_value(tmp_path):
    """Each process scores part of the clips; the summed float64 states give the one-process DeSync (as
    avgen.evaluation.processes.Processes.reduce merges them under torchrun)."""
    from avgen.evaluation.scorers import SCORERS, BuildContext, feed_scorers

    g = np.random.default_rng(1)
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in range(3):
        frames = g.integers(0, 256, (200, 32, 40, 3), dtype=np.uint8)
        write_mp4(pred / f"c{i}.mp4", frames, 25, audio=0.1 * g.standard_normal(16000 * 8).astype(np.float32),
                  sample_rate=16000)
    torch.manual_seed(1)
    weights = tmp_path / "synchformer_state_dict.pth"
    save_official_format(Synchformer.tiny(), weights)
    heads = {k: v for k, v in TINY_SYNCHFORMER.items() if k.endswith("_heads")}
    clips = sorted(pred.glob("*.mp4"))

    def run(part):
        scorer = SCORERS["desync"].build(BuildContext({"desync": {"path": str(weights), **heads}}, None, "cpu",
                                                      None, part, clips))
        feed_scorers([scorer], part, [])
        return scorer

    one, ranks = run(clips), [run(clips[0::2]), run(clips[1::2])]
    for a, b in zip(ranks[0].states(), ranks[1].states()):
        a.merge_state(b)
    assert ranks[0].result()[1]["offsets"] == 6  # two windows per clip
    assert ranks[0].result()[0] == pytest.approx(one.result()[0], abs=1e-12)
