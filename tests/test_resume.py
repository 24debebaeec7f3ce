"""Resume from the newest complete checkpoint; stale temporary files; run history (metrics.csv) kept."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avgen.checkpoint import (
    KILL_AFTER_TEMPORARY_ENV,
    checkpoint_entry,
    checkpoint_step,
    newest_checkpoint,
    remove_stale_temporaries,
)
from tests.conftest import TEST_CONFIGS, run_cli


def _ckpt(path: Path, step: int) -> Path:
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(2)}}, path)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_newest_complete_checkpoint_wins_and_last_keeps_a_tie(tmp_path):
    assert newest_checkpoint(tmp_path / "none") is None and newest_checkpoint(tmp_path) is None
    _ckpt(tmp_path / "step_0000002.ckpt", 2)
    _ckpt(tmp_path / "last.ckpt", 2)
    assert newest_checkpoint(tmp_path) == (tmp_path / "last.ckpt", 2)
    _ckpt(tmp_path / "step_0000004.ckpt", 4)  # killed while writing last.ckpt after this one completed
    assert newest_checkpoint(tmp_path) == (tmp_path / "step_0000004.ckpt", 4)
    _ckpt(tmp_path / "preempted.ckpt", 5)  # e.g. written by a SLURM pre-timeout handler: the same rule
    assert newest_checkpoint(tmp_path) == (tmp_path / "preempted.ckpt", 5)
    # a truncated newer file is not complete: skipped, the previous one is used
    data = (tmp_path / "step_0000004.ckpt").read_bytes()
    (tmp_path / "step_0000006.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        checkpoint_step(tmp_path / "step_0000006.ckpt")
    assert newest_checkpoint(tmp_path) == (tmp_path / "preempted.ckpt", 5)


def test_checkpoint_entry_reads_plain_entries_from_the_pickle_and_tensors_by_loading(tmp_path, monkeypatch):
    """checkpoint_entry: Lightning's hyper_parameters (plain containers) come from the pickle alone, torch.load never
    called; an entry holding tensors is loaded; a missing one is None; a truncated file is refused."""
    hparams = {"config": {"block_out_channels": [8, 16]}, "betas": (0.9, 0.99), "lr": 1e-3, "seed": 0, "name": None}
    path = tmp_path / "a.ckpt"
    torch.save({"global_step": 3, "hyper_parameters": hparams, "state_dict": {"w": torch.arange(4.0)}}, path)
    loaded = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(a) or real_load(*a, **k))
    assert checkpoint_entry(path, "hyper_parameters") == hparams and loaded == []
    assert checkpoint_entry(path, "missing") is None and loaded == []
    assert torch.equal(checkpoint_entry(path, "state_dict")["w"], torch.arange(4.0)) and len(loaded) == 1
    data = path.read_bytes()
    (tmp_path / "b.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="b.ckpt: not a complete checkpoint"):
        checkpoint_entry(tmp_path / "b.ckpt", "hyper_parameters")


def test_paths_output_dir_is_the_run_folder():
    from avgen.cli import one_run_folder
    from avgen.errors import ConfigError

    argv = ["command=fit", "paths.output_dir=/r/a"]
    assert one_run_folder(argv, [], argv) == [*argv, "hydra.run.dir=/r/a"]
    both = ["command=fit", "paths.output_dir=/r/a", "hydra.run.dir=/r/a"]
    assert one_run_folder(both, [], both) == both
    with pytest.raises(ConfigError, match="two run folders"):
        both = ["paths.output_dir=/r/a", "hydra.run.dir=/r/b"]
        one_run_folder(both, [], both)
    with pytest.raises(ConfigError, match="hydra.sweep.dir"):
        one_run_folder(argv, ["-m"], argv)
    assert one_run_folder(["command=fit", "seed=2"], [], ["command=fit", "seed=2"]) == ["command=fit", "seed=2"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f".last.ckpt.tmp-{_dead_pid()}"
    alive = tmp_path / f".step_0000002.ckpt.tmp-{os.getppid()}"  # another process still writing it
    own = tmp_path / f".last.ckpt.tmp-{os.getpid()}"
    for path in (dead, alive, own, tmp_path / "last.ckpt"):
        path.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, own.name, "last.ckpt"])


@pytest.mark.slow
def test_killed_while_writing_last_resumes_from_the_step_checkpoint(tmp_path, tiny_shards):
    """SIGKILL right after last.ckpt's temporary file is written at step 4 (step_0000004.ckpt is complete, the
    previous last.ckpt is from step 2): the same command resumes from step 4, says so, removes the temporary
    file, writes no second checkpoint under one step name, and metrics.csv keeps both runs' rows."""
    run = tmp_path / "run"
    args = ("fit", f"hydra.searchpath=[file://{TEST_CONFIGS}]", "model=tiny_test", "scale=tiny",
            f"data.root={tiny_shards}", "data.auto_prepare=false", "trainer.max_steps=6",
            "trainer.log_every_n_steps=1", "trainer.check_val_every_n_epoch=100",
            "callbacks.model_checkpoint.every_n_train_steps=2", f"model.record_dir={run}/record",
            f"paths.output_dir={run}")
    killed = run_cli(*args, cwd=tmp_path, env={KILL_AFTER_TEMPORARY_ENV: "last.ckpt@4"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = run / "checkpoints"
    stale = [p.name for p in ckpts.iterdir() if p.name.startswith(".last.ckpt.tmp-")]
    assert len(stale) == 1 and checkpoint_step(ckpts / "last.ckpt") == 2
    first_rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"removed {ckpts / stale[0]}" in again.stdout
    assert f"resuming from {ckpts / 'step_0000004.ckpt'} (step 4" in again.stdout
    # paths.output_dir is the one run folder: Hydra's config and log are there, no runs/ folder appears
    assert (run / ".hydra" / "overrides.yaml").is_file() and not (tmp_path / "runs").exists()
    record = json.loads((run / "record" / "rank0.json").read_text())
    assert record["first_step"] == 4 and record["global_step"] == 6
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt",
                                                       "step_0000006.ckpt"]
    assert checkpoint_step(ckpts / "last.ckpt") == 6
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    # the killed run's history is still there (the resumed run may add columns, empty in the old rows)
    assert first_rows and [{k: r[k] for k in first_rows[0]} for r in rows[:len(first_rows)]] == first_rows
    assert max(steps) == 5 and 0 in steps


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, tiny_shards, capsys):
    """Ctrl-C at step 3 of a fit (KeyboardInterrupt, handled by Lightning): last.ckpt holds step 3, the
    command that resumes it is printed (at the start too), and running it continues from step 3."""
    import signal

    from avgen.commands import run_command
    from tests.test_fit import fit_cfg, record

    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores further Ctrl-C once it caught one
    try:
        cfg = fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=4",
                      "+callbacks.ctrl_c={_target_: tests.helpers.KeyboardInterruptAt, step: 3}")
        with pytest.raises(SystemExit):
            run_command(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 3
    assert f"interrupted at step 3: saved {run / 'checkpoints' / 'last.ckpt'}" in out
    assert out.count("resume with: python -m avgen fit") == 2 and f"hydra.run.dir={run}" in out
    assert f"avgen fit: run folder {run}" in out and f"avgen fit: data synthetic_hits in {tiny_shards}" in out
    run_command(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=6"))
    assert record(run)["first_step"] == 3 and record(run)["global_step"] == 6


def test_last_checkpoint_holds_the_final_step(tmp_path, tiny_shards):
    """max_steps=5 with a periodic checkpoint every 4 steps and no validation at the end: Lightning's
    ModelCheckpoint leaves last.ckpt at step 4; avgen's FinalCheckpoint saves step 5 (and nothing when last.ckpt
    already holds the final step)."""
    from avgen.commands import run_command
    from tests.test_fit import fit_cfg

    run_command(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=5", "trainer.check_val_every_n_epoch=100",
                        "callbacks.model_checkpoint.every_n_train_steps=4"))
    ckpts = tmp_path / "run" / "checkpoints"
    assert checkpoint_step(ckpts / "last.ckpt") == 5 and checkpoint_step(ckpts / "step_0000004.ckpt") == 4
    run_command(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=8", "trainer.check_val_every_n_epoch=100",
                        "callbacks.model_checkpoint.every_n_train_steps=4"))
    assert checkpoint_step(ckpts / "last.ckpt") == 8
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step_0000004.ckpt", "step_0000008.ckpt"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_step_reads_the_pickle_without_running_it(tmp_path):
    """The step comes from the record's pickle with no class resolved: a file that would run code when loaded
    (here: a shell command) gives its step and runs nothing; tensors are never built."""
    import pickle
    import zipfile

    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"global_step": 7, "payload": _Evil(marker)}))
    assert checkpoint_step(path) == 7
    assert not marker.exists()
    _ckpt(tmp_path / "real.ckpt", 3)
    assert checkpoint_step(tmp_path / "real.ckpt") == 3
    (tmp_path / "two.ckpt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        checkpoint_step(tmp_path / "two.ckpt")
