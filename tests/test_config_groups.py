"""The evaluate presets (paper tables) and the debug group (fast_dev_run, overfit, profile)."""

from __future__ import annotations

import pytest

from avgen.commands import run_command
from avgen.data.datamodule import AVDataModule
from tests.conftest import TINY_CLIP, compose
from tests.test_fit import fit_cfg, record


def test_evaluate_presets_select_the_tables_metrics_over_the_default_settings(tmp_path):
    default = compose(["command=evaluate"], tmp_path).evaluate
    tempotokens = compose(["command=evaluate", "evaluate=tempotokens_table1"], tmp_path).evaluate
    svg = compose(["command=evaluate", "evaluate=svg_table1", "evaluate.plots=2"], tmp_path).evaluate
    assert list(default.metrics) == ["av_align"]
    assert list(tempotokens.metrics) == ["fvd", "clipsim", "is_video", "av_align"]
    assert list(svg.metrics) == ["fvd", "fad", "av_align"] and svg.plots == 2
    assert svg.av_align.variants[0] == "pr" and svg.av_align.onset_delta == 0.15 and svg.av_align.flow_levels == 3
    v2a = compose(["command=evaluate", "evaluate=v2a_benchmark"], tmp_path).evaluate
    assert list(v2a.metrics) == ["fd_passt", "kl_passt", "is_passt", "fd_vggish_frames", "ib_score",
                                  "clap_laion", "clap_ms", "desync"]
    assert v2a.passt.seconds == 8 and v2a.fd_vggish_frames.seconds == 8 and v2a.passt.shuffle_seed == 2020
    for preset in (tempotokens, svg, v2a):  # everything else is the default block
        assert preset.fvd == default.fvd and preset.panns == default.panns and preset.cache_dir == default.cache_dir


def test_debug_configs_compose_at_any_scale(tmp_path):
    fdr = compose(["command=fit", "experiment=joint_cmcpe", "scale=tiny", "debug=fdr"], tmp_path)
    assert fdr.trainer.fast_dev_run == 1 and fdr.scale_name == "tiny"
    overfit = compose(["command=fit", "experiment=tempotokens_vggsound", "debug=overfit"], tmp_path)
    assert overfit.data.fixed_stream is True and overfit.trainer.limit_train_batches == 4
    assert overfit.trainer.limit_val_batches == 0
    assert compose(["command=fit", "debug=profile"], tmp_path).trainer.profiler == "simple"
    assert compose(["command=fit"], tmp_path).data.fixed_stream is False


def test_a_fixed_stream_replays_its_first_epoch(tiny_shards):
    def epochs(fixed: bool) -> list[list[str]]:
        dm = AVDataModule("synthetic_hits", str(tiny_shards), TINY_CLIP, batch_size=2, num_workers=0,
                          shuffle_buffer=4, fixed_stream=fixed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [[k for batch in loader for k in batch["key"]] for _ in range(2)]

    first, second = epochs(True)
    assert first == second and len(first) == 12
    moving = epochs(False)
    assert moving[0] != moving[1]


@pytest.mark.slow
def test_debug_overfit_trains_on_the_same_batches_and_fdr_runs_one(tmp_path, tiny_shards):
    run = tmp_path / "overfit"
    run_command(fit_cfg(tmp_path, tiny_shards, "debug=overfit", "trainer.max_steps=8", run_dir=run))
    keys = record(run)["keys"]
    assert len(keys) == 16 and keys[:8] == keys[8:]  # 4 batches of 2, twice
    run = tmp_path / "fdr"
    run_command(fit_cfg(tmp_path, tiny_shards, "debug=fdr", run_dir=run))
    assert record(run)["batches"] == 1


def test_one_validation_batch_is_not_counted_as_skipped_clips(tmp_path, tiny_shards):
    """``trainer.limit_val_batches=1`` is one batch (an int), not the whole split: the clips it did not read
    are not missing (they were counted as skipped, and over data.max_skip_fraction stopped the run)."""
    run = tmp_path / "one"
    run_command(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=6", "trainer.limit_val_batches=1", run_dir=run))
    assert record(run)["batches"] == 6


def test_fixed_stream_must_be_a_bool(tiny_shards):
    from avgen.errors import ConfigError

    with pytest.raises(ConfigError, match="data.fixed_stream='maybe'"):
        AVDataModule("synthetic_hits", str(tiny_shards), TINY_CLIP, fixed_stream="maybe")
