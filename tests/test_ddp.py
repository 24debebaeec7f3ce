"""Two CPU processes under DDP (gloo), launched the way users launch it: `python -m avgen fit trainer=ddp_cpu`.

Lightning re-launches the rank-1 child with the rewritten argv (`command=fit ...`); the shards have
unequal sizes (7 and 2 clips), and both ranks must still run the same number of full batches.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import TEST_CONFIGS, run_cli
from tests.data.test_datamodule import unequal_shards  # noqa: F401  (fixture)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ddp_cpu_equal_batches_per_rank_and_no_hang(tmp_path, unequal_shards):  # noqa: F811
    record = tmp_path / "record"
    run_dir = tmp_path / "run"
    proc = run_cli("fit", f"hydra.searchpath=[file://{TEST_CONFIGS}]", "model=tiny_test", "scale=tiny",
                   "trainer=ddp_cpu", f"data.root={unequal_shards}", "data.auto_prepare=false", "data.num_workers=1",
                   "trainer.max_steps=-1", "trainer.max_epochs=2", f"model.record_dir={record}",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"]
    # 9 clips / (batch 2 x 2 ranks x 1 worker) = 3 batches per epoch, 2 epochs, on every rank
    assert [r["batches"] for r in ranks] == [6, 6]
    assert all(r["global_step"] == 6 for r in ranks)
    # ranks draw different streams (seed mixes the rank)
    assert ranks[0]["keys"] != ranks[1]["keys"]
    # both ranks wrote into the one run folder; validation counted every val clip once over both ranks
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    rows = (run_dir / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    skipped = [r.split(",")[header.index("data/val_skipped")] for r in rows[1:]]
    assert [s for s in skipped if s] == ["0.0", "0.0"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ddp_joint_connector_only_steps_and_teacher_forcing(tmp_path):
    """model.video_connector_events under DDP (find_unused_parameters false): connector-only steps, which leave
    the U-Nets out, and teacher-forced batches, whose diffusion loss skips the video connector, still give every
    trainable parameter a gradient, so the reducer neither hangs nor errors; the diffusion losses are logged only
    once the connector-only steps are over."""
    import re

    import torch

    run_dir = tmp_path / "run"
    # 4 steps: DDP reports a parameter left without a gradient at the *next* forward, so the teacher-forced step 3
    # needs a step 4 after it
    proc = run_cli("fit", "experiment=joint_cmcpe", "scale=tiny", "trainer=ddp_cpu", "trainer.max_steps=4",
                   "trainer.log_every_n_steps=1", "model.validation.samples=0", "trainer.limit_val_batches=0",
                   "logger=csv", "model.video_connector_events.weight=1",
                   "model.video_connector_events.connector_only_steps=2",
                   "model.video_connector_events.teacher_forcing=1", f"paths.data_dir={tmp_path}/data",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (run_dir / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = {name: [r.split(",")[header.index(f"train/{name}")] != "" for r in rows[1:]]
              for name in ("loss_events", "loss_audio")}
    assert sum(logged["loss_events"]) == 4 and sum(logged["loss_audio"]) == 2
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    blocks = [k for k in state if re.fullmatch(r"denoiser\.(video|audio)_blocks\.\w+\.proj_out\.\w+", k)]
    assert blocks and any(state[k].any() for k in blocks)  # the joint step moved the zero-initialised blocks
