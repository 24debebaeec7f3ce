"""fit / validate / test through the generic commands, with the tiny test system."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avgen.checkpoint import AtomicCheckpointIO, read_checkpoint
from avgen.commands import run_command
from tests.conftest import compose


def fit_cfg(tmp_path, tiny_shards, *extra, run_dir=None):
    return compose(["command=fit", "model=tiny_test", "scale=tiny", f"data.root={tiny_shards}",
                    "data.auto_prepare=false", "trainer.max_steps=4",
                    "callbacks.model_checkpoint.every_n_train_steps=2",
                    f"model.record_dir={(run_dir or tmp_path / 'run')}/record", *extra], tmp_path, run_dir=run_dir)


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "record" / "rank0.json").read_text())


def test_fit_writes_trainable_only_checkpoint(tmp_path, tiny_shards):
    # 12 train clips / batch 2 = one 6-step epoch, then validation
    cfg = fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=6", "trainer.log_every_n_steps=1")
    run_command(cfg)
    run = tmp_path / "run"
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    # head + norm (with its buffers), never the frozen backbone
    assert set(ckpt["state_dict"]) == {"head.weight", "head.bias", "norm.weight", "norm.bias", "norm.running_mean",
                                       "norm.running_var", "norm.num_batches_tracked"}
    meta = ckpt["avgen"]
    assert meta["config"]["model"]["_target_"] == "tests.helpers.TinySystem"
    assert meta["config"]["data"]["clip"]["height"] == 32
    assert meta["versions"]["torch"].startswith("2.")
    assert meta["trainable"] == sorted(ckpt["state_dict"])
    assert "hyper_parameters" not in ckpt
    # every step saw a full batch of the configured size
    rec = record(run)
    assert rec["batches"] == 6 and len(rec["keys"]) == 6 * cfg.data.batch_size
    metrics = (run / "logs" / "metrics.csv").read_text()
    for column in ("train/loss", "val/loss", "data/train_skipped", "data/val_skipped"):
        assert column in metrics
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt", "step_0000006.ckpt"]


def test_resume_from_last_ckpt_continues_step(tmp_path, tiny_shards):
    run_command(fit_cfg(tmp_path, tiny_shards))
    first = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    # same run folder, longer schedule: resume=auto picks up last.ckpt
    run_command(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=8"))
    rec = record(tmp_path / "run")
    assert rec["first_step"] == 4 and rec["global_step"] == 8 and rec["batches"] == 4
    second = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert second["global_step"] == 8
    assert not torch.equal(first["state_dict"]["head.weight"], second["state_dict"]["head.weight"])


def test_resume_never_starts_over(tmp_path, tiny_shards, capsys):
    """resume=never starts over and sets the earlier run's checkpoints aside (kept), so a later resume=auto continues
    the new run, not the abandoned one's further step checkpoint; the resume command it prints continues (no
    resume=never in it)."""
    checkpoints = tmp_path / "run" / "checkpoints"
    run_command(fit_cfg(tmp_path, tiny_shards))  # 4 steps: step_2, step_4, last (4)
    old = read_checkpoint(checkpoints / "step_0000004.ckpt")["state_dict"]["head.weight"]
    capsys.readouterr()
    run_command(fit_cfg(tmp_path, tiny_shards, "resume=never", "trainer.max_steps=2"))
    assert record(tmp_path / "run")["first_step"] == 0
    out = capsys.readouterr().out
    aside = [p for p in checkpoints.iterdir() if p.is_dir()]
    assert len(aside) == 1 and aside[0].name.startswith("superseded-")
    assert f"resume=never: starting over; the earlier run's checkpoints moved to {aside[0]}" in out
    assert sorted(p.name for p in aside[0].iterdir()) == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"]
    assert torch.equal(read_checkpoint(aside[0] / "step_0000004.ckpt")["state_dict"]["head.weight"], old)
    resume_line = next(line for line in out.splitlines() if "resume with:" in line)
    assert "resume=never" not in resume_line and "trainer.max_steps=2" in resume_line
    run_command(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=6"))
    assert f"resuming from {checkpoints / 'last.ckpt'} (step 2" in capsys.readouterr().out
    assert record(tmp_path / "run")["first_step"] == 2


def test_resume_never_moves_nothing_when_the_run_is_refused_and_reads_init_from_first(tmp_path, tiny_shards,
                                                                                        monkeypatch, capsys):
    """The checkpoints are set aside only when the run is about to train: a refused run (no CUDA for trainer=gpu)
    leaves them in place, and init_from may name this folder's own last.ckpt."""
    import torch

    checkpoints = tmp_path / "run" / "checkpoints"
    run_command(fit_cfg(tmp_path, tiny_shards))
    before = sorted(p.name for p in checkpoints.iterdir())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        run_command(fit_cfg(tmp_path, tiny_shards, "resume=never", "trainer.accelerator=gpu"))
    assert "trainer.accelerator=gpu: this machine has no CUDA GPU" in capsys.readouterr().err
    assert sorted(p.name for p in checkpoints.iterdir()) == before
    run_command(fit_cfg(tmp_path, tiny_shards, "resume=never", f"init_from={checkpoints / 'last.ckpt'}",
                        "trainer.max_steps=1"))
    assert "resume=never: starting over; the earlier run's checkpoints moved to" in capsys.readouterr().out
    rec = record(tmp_path / "run")
    assert rec["first_step"] == 0 and rec["global_step"] == 1
    assert any(p.name.startswith("superseded-") for p in checkpoints.iterdir())


def test_a_requeued_slurm_job_continues_despite_resume_never(tmp_path, tiny_shards, monkeypatch, capsys):
    """A requeue re-runs the job's command line: resume=never meant its first start, so the requeued job
    (SLURM_RESTART_COUNT >= 1) continues from its checkpoint instead of starting over again."""
    run_command(fit_cfg(tmp_path, tiny_shards, "resume=never"))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    capsys.readouterr()
    run_command(fit_cfg(tmp_path, tiny_shards, "resume=never", "trainer.max_steps=6"))
    out = capsys.readouterr().out
    assert "resume=never applied to this SLURM job's first start; requeued (SLURM_RESTART_COUNT=1), it continues" in out
    assert record(tmp_path / "run")["first_step"] == 4
    assert not any(p.is_dir() for p in (tmp_path / "run" / "checkpoints").iterdir())


def test_a_resume_with_no_steps_left_makes_last_ckpt_hold_the_final_step(tmp_path, tiny_shards, capsys):
    """Killed after step_4.ckpt was written and before last.ckpt was (here: last.ckpt replaced by step 2's): the same
    command resumes from step_4, trains nothing, and leaves last.ckpt at step 4, not 2."""
    import shutil

    from avgen.checkpoint import checkpoint_step

    checkpoints = tmp_path / "run" / "checkpoints"
    run_command(fit_cfg(tmp_path, tiny_shards))
    shutil.copyfile(checkpoints / "step_0000002.ckpt", checkpoints / "last.ckpt")
    assert checkpoint_step(checkpoints / "last.ckpt") == 2
    run_command(fit_cfg(tmp_path, tiny_shards))
    assert checkpoint_step(checkpoints / "last.ckpt") == 4
    assert torch.equal(read_checkpoint(checkpoints / "last.ckpt")["state_dict"]["head.weight"],
                       read_checkpoint(checkpoints / "step_0000004.ckpt")["state_dict"]["head.weight"])
    assert "now holds step 4" in capsys.readouterr().out
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]


def test_only_the_first_process_sets_checkpoints_aside(tmp_path, monkeypatch):
    """srun starts one task per GPU with SLURM_PROCID only (no RANK): only task 0 moves the files."""
    from avgen.checkpoint import set_checkpoints_aside

    (tmp_path / "last.ckpt").write_bytes(b"x")
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.setenv(name, "1")
        assert set_checkpoints_aside(tmp_path) is None and (tmp_path / "last.ckpt").is_file()
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_PROCID", "0")
    aside = set_checkpoints_aside(tmp_path)
    assert aside is not None and (aside / "last.ckpt").read_bytes() == b"x"
    (tmp_path / "last.ckpt").write_bytes(b"y")  # a second start over in the same second: its own folder
    again = set_checkpoints_aside(tmp_path)
    assert again is not None and again != aside and (again / "last.ckpt").read_bytes() == b"y"


def test_init_from_starts_new_run_from_weights(tmp_path, tiny_shards):
    run_command(fit_cfg(tmp_path, tiny_shards))
    src = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run2 = tmp_path / "run2"
    cfg = fit_cfg(tmp_path, tiny_shards, f"init_from={src}", "trainer.max_steps=1", run_dir=run2)
    from avgen.commands import build_model

    run_command(cfg)
    rec = record(run2)
    assert rec["first_step"] == 0 and rec["global_step"] == 1
    # the new run started from the source weights: one Adam step (lr 1e-2) moves each weight by <= ~1e-2
    a = read_checkpoint(src)["state_dict"]["head.weight"]
    b = read_checkpoint(run2 / "checkpoints" / "last.ckpt")["state_dict"]["head.weight"]
    fresh = build_model(cfg).head.weight.detach()
    assert (a - b).abs().max() < 0.02 < (fresh - a).abs().max()


def test_init_from_strict_false_loads_what_both_models_share(tmp_path, tiny_shards, capsys):
    """A checkpoint of a model with other parts (VTA-LDM's pretraining rows): strict refuses it naming the way out;
    init_from_strict=false loads the shared tensors and lists the rest."""
    run_command(fit_cfg(tmp_path, tiny_shards))
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    names = sorted(ckpt["state_dict"])
    assert len(names) >= 3
    dropped, reshaped, kept = names[0], names[1], names[2:]
    ckpt["state_dict"].pop(dropped)
    ckpt["state_dict"][reshaped] = torch.zeros(7, 3)
    ckpt["state_dict"]["extra.weight"] = torch.zeros(2)
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(SystemExit):  # a user error: one line, exit 1
        run_command(fit_cfg(tmp_path, tiny_shards, f"init_from={other}", "trainer.max_steps=1", run_dir=tmp_path / "a"))
    err = capsys.readouterr().err
    assert "init_from=" in err and "missing ['" in err and "init_from_strict=false" in err
    cfg = fit_cfg(tmp_path, tiny_shards, f"init_from={other}", "init_from_strict=false", "trainer.max_steps=1",
                  run_dir=tmp_path / "b")
    run_command(cfg)
    out = capsys.readouterr().out
    assert f"loaded {len(kept)} trainable tensors" in out
    assert f"1 kept their initialisation (not in the checkpoint): {dropped}" in out
    assert "1 in the checkpoint only, not loaded: extra.weight" in out
    assert f"1 skipped: another shape in the checkpoint: {reshaped}" in out


def test_checkpoint_write_is_atomic(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"x": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("crash while saving")

    with pytest.raises(RuntimeError, match="crash while saving"):
        io.save_checkpoint({"x": torch.zeros(3), "boom": Boom()}, path)
    assert torch.equal(torch.load(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_ema_is_saved(tmp_path, tiny_shards):
    # export of the EMA weights: tests/test_export.py
    run_command(fit_cfg(tmp_path, tiny_shards, "model.ema_decay=0.5"))
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    ema = ckpt["avgen"]["ema"]
    assert set(ema) == set(ckpt["state_dict"])
    assert not torch.equal(ema["head.weight"], ckpt["state_dict"]["head.weight"])


def test_validate_and_test_from_checkpoint(tmp_path, tiny_shards):
    run_command(fit_cfg(tmp_path, tiny_shards))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    for command, key in (("validate", "val/loss"), ("test", "test/loss")):
        cfg = compose([f"command={command}", f"ckpt_path={ckpt}", "scale=tiny", f"data.root={tiny_shards}",
                       "data.auto_prepare=false"], tmp_path, run_dir=tmp_path / command)
        results = run_command(cfg)
        split = "val" if command == "validate" else "test"
        assert key in results[0] and results[0][f"data/{split}_skipped"] == 0


def test_checkpoint_from_other_model_is_refused(tmp_path, tiny_shards):
    run_command(fit_cfg(tmp_path, tiny_shards))
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    from tests.helpers import TinySystem

    other = TinySystem(hidden=4)
    del ckpt["state_dict"]["norm.running_var"]
    with pytest.raises(KeyError, match="missing"):
        other.load_trainable(ckpt)


from tests.data.test_datamodule import bad_shards, unequal_shards  # noqa: E402,F401  (fixtures)


def test_fit_over_bad_shards_finishes_and_reports_skips(tmp_path, bad_shards, capsys):  # noqa: F811
    """Train and val shards holding a truncated member, a zero-byte mp4 and a clip without audio."""
    cfg = fit_cfg(tmp_path, bad_shards, "data.max_skip_fraction=0.5", "data.min_clips_for_check=1000",
                  "trainer.max_steps=-1", "trainer.max_epochs=2", "data.epoch_clips=12")
    run_command(cfg)
    rows = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    def col(name):
        return [float(r.split(",")[header.index(name)]) for r in rows[1:] if r.split(",")[header.index(name)]]
    assert col("data/val_skipped") == [3.0, 3.0]  # exactly the three bad val clips, each epoch
    assert len(col("data/train_skipped")) == 2 and sum(col("data/train_skipped")) > 0


def test_fit_stops_when_skips_exceed_the_fraction(tmp_path, bad_shards):  # noqa: F811
    from avgen.errors import DataHealthError

    cfg = fit_cfg(tmp_path, bad_shards, "data.max_skip_fraction=0.1", "data.min_clips_for_check=1000",
                  "trainer.max_steps=-1", "trainer.max_epochs=1")
    with pytest.raises(SystemExit) as exit_info:
        run_command(cfg)  # the command line: a message and status 1
    assert exit_info.value.code == 1
    with pytest.raises(DataHealthError, match="shard-bad.tar"):
        from avgen.commands import fit

        fit(cfg)
