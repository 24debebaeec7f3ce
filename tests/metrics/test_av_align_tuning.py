"""Tuning AV-Align's detection against annotated event times (avgen.metrics.av_align_tuning)."""

from __future__ import annotations

import json

import pytest

from avgen.errors import ConfigError
from avgen.metrics.av_align import AVAlignConfig
from avgen.metrics.av_align_tuning import (
    annotated_clips,
    detection_errors,
    evaluate_setting,
    grid_search,
    main,
    override,
    parse_grid,
)
from tests.conftest import compose


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """8 annotated synthetic clips of 2 s, 64x64 at 8 fps."""
    from avgen.data.synthetic_prepare import prepare_synthetic_hits

    root = tmp_path_factory.mktemp("tune") / "hits"
    prepare_synthetic_hits(str(root), {"seconds": 2.0, "fps": 8, "height": 64, "width": 64, "sample_rate": 16000},
                           clips={"val": 8}, splits=["val"], clips_per_shard=4, preview=0, workers=1, seed=3)
    return root / "val"


def test_detection_errors_hand_cases():
    # window: |t - e| < 1/8 s; one-to-one
    assert detection_errors([0.5, 1.0], [0.52, 1.3], fps=8) == {"hits": 1, "missed": 1, "spurious": 1}
    assert detection_errors([0.5, 0.55], [0.52], fps=8) == {"hits": 1, "missed": 0, "spurious": 1}
    assert detection_errors([], [0.3], fps=8) == {"hits": 0, "missed": 1, "spurious": 0}
    assert detection_errors([0.3], [0.3 + 0.125], fps=8) == {"hits": 0, "missed": 1, "spurious": 1}  # open window


def test_grid_search_ranks_the_tuned_setting_above_the_official_one(split):
    clips = annotated_clips(split)
    events = sum(len(c[5]) for c in clips)
    assert len(clips) == 8 and events > 0
    official = evaluate_setting(clips, AVAlignConfig())
    assert official["onsets"]["hits"] + official["onsets"]["missed"] == events
    assert official["onsets"]["spurious"] >= 1  # the start-of-audio onset of the official envelope
    rows = grid_search(clips, {"onset_pad_mode": ["constant", "reflect"], "onset_delta": [0.07, 0.15],
                               "pr_min_magnitude": [0.0, 0.05]})
    assert len(rows) == 8
    keys = [(r["errors"], -r["ground_truth_score"]) for r in rows]
    assert keys == sorted(keys)
    worst_official = next(r for r in rows if r["setting"] == {"onset_pad_mode": "constant", "onset_delta": 0.07,
                                                                "pr_min_magnitude": 0.0})
    assert rows[0]["errors"] < worst_official["errors"]
    assert rows[0]["ground_truth_score"] > worst_official["ground_truth_score"]
    assert rows[0]["setting"]["onset_pad_mode"] == "reflect"
    with pytest.raises(ConfigError, match="unknown config keys"):
        grid_search(clips, {"onset_thresh": [0.1]})


def test_command_prints_a_usable_override(split, tmp_path, capsys):
    assert main([str(split), "--grid", "onset_pad_mode=constant,reflect", "--grid", "onset_delta=0.07,0.15",
                 "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    best = out.strip().splitlines()[-1]
    assert best.startswith("best: 'evaluate.av_align={")
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 4 and rows[0]["config"]["onset_pad_mode"] == rows[0]["setting"]["onset_pad_mode"]
    # the printed override composes into the evaluate config and builds the same AVAlignConfig
    cfg = compose(["command=evaluate", best.removeprefix("best: ").strip("'")], tmp_path)
    assert AVAlignConfig(**cfg.evaluate.av_align) == AVAlignConfig(**rows[0]["setting"])


def test_parse_grid_and_bad_inputs(tmp_path):
    assert parse_grid(["onset_delta=0.07,0.1", "onset_pad_mode=reflect", "audio_sample_rate=null"]) == {
        "onset_delta": [0.07, 0.1], "onset_pad_mode": ["reflect"], "audio_sample_rate": [None]}
    assert override({"onset_pad_mode": "reflect", "onset_delta": 0.15}) == \
        "'evaluate.av_align={onset_pad_mode: \"reflect\", onset_delta: 0.15}'"
    with pytest.raises(ConfigError, match="key=value"):
        parse_grid(["onset_delta"])
    with pytest.raises(ConfigError, match="not a prepared shard split"):
        annotated_clips(tmp_path)


def test_config_tree_lists_every_av_align_field_at_its_default(tmp_path):
    """evaluate.av_align in configs/evaluate/default.yaml holds every AVAlignConfig field (so any one can be
    overridden on the command line) at the dataclass default (the official script's values)."""
    from dataclasses import asdict

    cfg = compose(["command=evaluate"], tmp_path)
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(AVAlignConfig()).items()}
    assert dict(cfg.evaluate.av_align) == expected
