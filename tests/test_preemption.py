"""Preemption under SLURM (:class:`avgen.callbacks.SlurmRequeue`): the pre-timeout signal (SIGUSR1) saves
``last.ckpt`` and requeues the job (``scontrol requeue``, a fake one here), SIGTERM saves in a one-process run,
``fit`` exits 75 and the same command resumes in the same run folder; Lightning's own requeue stays off."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from avgen.callbacks import PREEMPTED_EXIT, SlurmRequeue
from avgen.checkpoint import checkpoint_step
from tests.test_fit import fit_cfg, record

# what srun sets for one task; Lightning's SLURMEnvironment reads these
ONE_TASK = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "avgen", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_NODEID": "0"}


def fake_scontrol(folder: Path, *, exit_status: int = 0, terminate_caller: bool = False) -> Path:
    """A ``scontrol`` in ``folder``/bin that appends its arguments to ``folder``/scontrol.calls; with
    ``terminate_caller`` it sends SIGTERM to its caller and to itself, as slurmstepd does to every process of a job
    step it requeues (before ``scontrol`` has exited), then goes on to exit as it would. Returns the bin folder."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    lines = ["#!/bin/sh", f'echo "$@" >> {folder / "scontrol.calls"}']
    if terminate_caller:
        lines.append("kill -TERM $PPID $$")
    if exit_status:
        lines += ['echo "scontrol: error: Invalid job id specified" >&2', f"exit {exit_status}"]
    (bin_dir / "scontrol").write_text("\n".join(lines) + "\n")
    (bin_dir / "scontrol").chmod(0o755)
    return bin_dir


def scontrol_calls(folder: Path) -> list[str]:
    calls = folder / "scontrol.calls"
    return calls.read_text().splitlines() if calls.exists() else []


@pytest.fixture
def slurm(monkeypatch, tmp_path):
    """A faked one-task SLURM job 4242 with a fake scontrol first on PATH."""
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES",
                "AVGEN_REQUEUE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"SLURM_JOB_ID": "4242", **ONE_TASK}.items():
        monkeypatch.setenv(key, value)

    def use_scontrol(**kwargs) -> None:
        monkeypatch.setenv("PATH", f"{fake_scontrol(tmp_path, **kwargs)}{os.pathsep}{os.environ['PATH']}")

    return use_scontrol


def fit_exit_status(cfg) -> int | None:
    """``run_command(cfg)``'s exit status (None when it returned)."""
    from avgen.commands import run_command

    try:
        run_command(cfg)
    except SystemExit as exc:
        return exc.code
    return None


def test_trainer_under_slurm_turns_lightning_requeue_off(slurm, monkeypatch, tmp_path, tiny_shards):
    from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment

    from avgen.checkpoint import AtomicCheckpointIO
    from avgen.commands import build_trainer
    from avgen.errors import ConfigError

    cfg = fit_cfg(tmp_path, tiny_shards)
    trainer = build_trainer(cfg, interrupt_checkpoint=True)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # the configured plugin is kept
    requeue = [c for c in trainer.callbacks if isinstance(c, SlurmRequeue)]
    assert len(requeue) == 1 and requeue[0].route == "scontrol"
    assert requeue[0].dirpath == tmp_path / "run" / "checkpoints"
    # validate / test: Lightning's requeue off too, no avgen requeue (nothing to resume)
    trainer = build_trainer(cfg)
    assert trainer._accelerator_connector.cluster_environment.auto_requeue is False
    assert not any(isinstance(c, SlurmRequeue) for c in trainer.callbacks)

    monkeypatch.setenv("AVGEN_REQUEUE", "submitit")
    assert next(c for c in build_trainer(cfg, interrupt_checkpoint=True).callbacks
                if isinstance(c, SlurmRequeue)).route == "submitit"
    monkeypatch.setenv("AVGEN_REQUEUE", "sbatch")
    with pytest.raises(ConfigError, match=r"^AVGEN_REQUEUE=sbatch: expected one of scontrol, submitit, off"):
        build_trainer(cfg, interrupt_checkpoint=True)

    for key in ("SLURM_JOB_ID", *ONE_TASK):
        monkeypatch.delenv(key)
    trainer = build_trainer(cfg, interrupt_checkpoint=True)
    assert isinstance(trainer._accelerator_connector.cluster_environment, LightningEnvironment)
    assert not any(isinstance(c, SlurmRequeue) for c in trainer.callbacks)


SIGNAL_AT_2 = "+callbacks.signal={_target_: tests.helpers.SignalAt, step: 2, signum: SIGUSR1}"


def test_sigusr1_saves_requeues_the_array_task_and_resumes(slurm, monkeypatch, tmp_path, tiny_shards, capsys):
    """SIGUSR1 at step 2 of array task 77_1: last.ckpt holds step 2, ``scontrol requeue 77_1`` runs (and, as
    slurmctld would, sends SIGTERM back: the run ends there, with no second save), fit exits 75, the SIGUSR1 handler
    is restored; the same command then resumes from step 2 and finishes."""
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    slurm(terminate_caller=True)
    before = signal.getsignal(signal.SIGUSR1)
    run = tmp_path / "run"
    # 12 clips / batch 2: one 6-step epoch, then validation; 8 steps
    assert fit_exit_status(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=8", SIGNAL_AT_2)) == PREEMPTED_EXIT
    assert signal.getsignal(signal.SIGUSR1) is before
    out = capsys.readouterr().out
    ckpt = run / "checkpoints" / "last.ckpt"
    assert f"preempted at step 2: saved {ckpt}; requeued 77_1\n" in out
    assert "terminated (SIGTERM)" not in out
    assert not (run / "record").exists()  # SIGTERMException: on_train_end never ran
    assert scontrol_calls(tmp_path) == ["requeue 77_1"]
    assert checkpoint_step(ckpt) == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step_0000002.ckpt"]
    assert not list(tmp_path.rglob("hpc_ckpt_*"))

    assert fit_exit_status(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=8")) is None
    assert f"resuming from {ckpt} (step 2" in capsys.readouterr().out
    assert record(run)["first_step"] == 2 and record(run)["global_step"] == 8
    assert scontrol_calls(tmp_path) == ["requeue 77_1"]


@pytest.mark.parametrize("route, said", [("submitit", "submitit requeues the job"),
                                         ("off", "not requeued (AVGEN_REQUEUE=off)")])
def test_other_routes_save_without_scontrol(slurm, monkeypatch, tmp_path, tiny_shards, capsys, route, said):
    """No scontrol; the run stops at the saved step without the validation pass ``should_stop`` would start."""
    monkeypatch.setenv("AVGEN_REQUEUE", route)
    slurm()
    run = tmp_path / "run"
    cfg = fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=8", SIGNAL_AT_2)
    assert fit_exit_status(cfg) == PREEMPTED_EXIT
    ckpt = run / "checkpoints" / "last.ckpt"
    assert f"preempted at step 2: saved {ckpt}; {said}\n" in capsys.readouterr().out
    assert checkpoint_step(ckpt) == 2 and scontrol_calls(tmp_path) == []
    assert record(run)["global_step"] == 2 and "val/loss" not in (run / "logs" / "metrics.csv").read_text()


def test_failed_scontrol_is_said_and_the_checkpoint_kept(slurm, tmp_path, tiny_shards, capsys):
    slurm(exit_status=1)
    assert fit_exit_status(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=8", SIGNAL_AT_2)) == PREEMPTED_EXIT
    captured = capsys.readouterr()
    failure = ("scontrol requeue 4242 failed (exit status 1: scontrol: error: Invalid job id specified); the "
               "checkpoint is kept: submit the same command again to resume")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"preempted at step 2: saved {ckpt}; {failure}\n" in captured.out
    assert f"avgen fit: {failure}\n" in captured.err
    assert checkpoint_step(ckpt) == 2 and scontrol_calls(tmp_path) == ["requeue 4242"]


def test_sigusr1_before_fit_starts_is_held_and_acted_on_at_the_first_step(slurm, monkeypatch, tmp_path, tiny_shards,
                                                                          capsys):
    """The pre-timeout signal while the command is still starting (importing, composing, loading weights) does not
    kill it (SIGUSR1's default action): ``avgen.cli.main`` holds it under SLURM, and fit saves and requeues at
    step 1; outside SLURM nothing is installed."""
    from avgen.parallel import _early_preemption, hold_preemption_signal

    slurm()
    before = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        hold_preemption_signal()
        held = signal.getsignal(signal.SIGUSR1)
        assert held is not signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGUSR1)
        assert _early_preemption == [signal.SIGUSR1]
        assert fit_exit_status(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=8")) == PREEMPTED_EXIT
        ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
        assert f"preempted at step 1: saved {ckpt}; requeued 4242\n" in capsys.readouterr().out
        assert checkpoint_step(ckpt) == 1 and scontrol_calls(tmp_path) == ["requeue 4242"]
        assert _early_preemption == [] and signal.getsignal(signal.SIGUSR1) is held
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    monkeypatch.delenv("SLURM_JOB_ID")
    hold_preemption_signal()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    signal.signal(signal.SIGUSR1, before)


def test_sigterm_saves_a_one_process_run(slurm, tmp_path, tiny_shards, capsys):
    """SIGTERM (scancel, the time limit) at step 2: Lightning stops at the end of the batch, last.ckpt holds step 2,
    nothing is requeued, fit exits 75; the same command resumes from step 2."""
    slurm()
    signal_at = SIGNAL_AT_2.replace("SIGUSR1", "SIGTERM")
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert fit_exit_status(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=8", signal_at)) == PREEMPTED_EXIT
    assert f"terminated (SIGTERM) at step 2: saved {ckpt}\n" in capsys.readouterr().out
    assert checkpoint_step(ckpt) == 2 and scontrol_calls(tmp_path) == []
    assert fit_exit_status(fit_cfg(tmp_path, tiny_shards, "trainer.max_steps=8")) is None
    assert record(run)["first_step"] == 2 and record(run)["global_step"] == 8


def _wait_for_step(proc: subprocess.Popen, progress: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and progress.read_text().strip() and int(progress.read_text()) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"fit never reached step {step} (exit status {proc.poll()})")
