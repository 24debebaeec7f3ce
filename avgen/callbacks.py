"""Callbacks every run gets: clip accounting (``DataHealthMonitor``), Ctrl-C saving (``InterruptCheckpoint``) and,
under SLURM, preemption saving and requeue (``SlurmRequeue``)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from avgen.data.datamodule import AVDataModule
from avgen.errors import PREEMPTED_EXIT, ConfigError, DataHealthError  # noqa: F401  (PREEMPTED_EXIT: re-exported)

log = logging.getLogger(__name__)


class DataHealthMonitor(pl.Callback):
    """Logs, per epoch and split, how many clips were used and skipped (``data/<split>_skipped``,
    ``data/<split>_skip_fraction``), summed over ranks; warns with the offending shards; stops the
    run when the fraction exceeds ``data.max_skip_fraction``.

    For val/test the skipped count is exact even when a worker received no usable clip at all:
    it is the number of clips the manifests promise to this rank minus the clips that arrived.
    """

    def __init__(self):
        self.last: dict[str, dict[str, float]] = {}

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, full_pass: bool) -> None:
        dm = trainer.datamodule
        if not isinstance(dm, AVDataModule):
            return
        health = dm.take_health(split)
        skipped = health.skipped
        if full_pass:
            skipped = max(skipped, dm.expected_eval_clips(split, trainer.global_rank, trainer.world_size) - health.seen)
        counts = torch.tensor([health.seen, skipped], dtype=torch.float64)
        counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        seen, skipped = int(counts[0]), int(counts[1])
        fraction = skipped / max(1, seen + skipped)
        self.last[split] = {"seen": seen, "skipped": skipped, "skip_fraction": fraction}
        pl_module.log(f"data/{split}_skipped", float(skipped), on_epoch=True, rank_zero_only=True)
        pl_module.log(f"data/{split}_skip_fraction", fraction, on_epoch=True, rank_zero_only=True)
        if skipped:
            detail = health.describe() if health.skipped else "clips missing from the stream"
            rank_zero_warn(f"data ({dm.name}, {split}): {skipped} of {seen + skipped} clips skipped this epoch; "
                           f"rank 0: {detail}")
        if fraction > dm.max_skip_fraction:
            raise DataHealthError(
                f"data ({dm.name}, {split}): {skipped} of {seen + skipped} clips skipped ({fraction:.1%}) exceeds "
                f"data.max_skip_fraction={dm.max_skip_fraction}; {health.describe()}. Re-create those shards "
                f"({dm.prepare_command()}) or raise data.max_skip_fraction.")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, pl_module, "train", full_pass=False)

    def _eval_end(self, trainer, pl_module, split: str, limit) -> None:
        if trainer.sanity_checking:
            if isinstance(trainer.datamodule, AVDataModule):
                trainer.datamodule.take_health(split)
            return
        # a whole pass only when nothing limits it: ``limit_*_batches=1`` (an int) is one batch, not 100 %
        whole = limit is None or (isinstance(limit, float) and limit == 1.0)
        self._report(trainer, pl_module, split, full_pass=whole and not trainer.fast_dev_run)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, pl_module, "val", trainer.limit_val_batches)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, pl_module, "test", trainer.limit_test_batches)


class InterruptCheckpoint(pl.Callback):
    """Ctrl-C during ``fit``: save ``<dirpath>/last.ckpt`` (atomically, through the trainer's checkpoint IO)
    and print the command that resumes the run from it.

    Lightning catches the ``KeyboardInterrupt``, calls this hook, then exits with status 1. In a
    multi-process run the other ranks may not have stopped at the same step, so no collective save
    is attempted there: the run resumes from its last periodic checkpoint (the message says which).
    The save happens wherever the interrupt landed in the step; the optimizer state is the one of the
    last completed step.
    """

    def __init__(self, dirpath: str, resume_command: str):
        self.dirpath, self.resume_command = dirpath, resume_command

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        if trainer.world_size > 1:
            if trainer.is_global_zero:
                print(f"\ninterrupted at step {trainer.global_step}; {trainer.world_size} processes: no checkpoint "
                      f"saved now, the run resumes from the newest one in {self.dirpath}\nresume with: "
                      f"{self.resume_command}", flush=True)
            return
        path = Path(self.dirpath) / "last.ckpt"
        trainer.save_checkpoint(path)
        print(f"\ninterrupted at step {trainer.global_step}: saved {path}\nresume with: {self.resume_command}",
              flush=True)



class FinalCheckpoint(pl.Callback):
    """At the end of a ``fit`` that ran to its end (``max_steps``, ``max_epochs`` or a stop such as preemption),
    make ``<dirpath>/last.ckpt`` hold the final step.

    Lightning's ``ModelCheckpoint`` writes ``last.ckpt`` only when it saves a periodic checkpoint (every
    ``every_n_train_steps``, or after a validation): a run whose ``max_steps`` is not a multiple of that interval,
    with no validation at its end, would otherwise leave the last steps' weights unsaved, and a sweep's
    ``sample`` step would read a stale ``last.ckpt``. Rank 0 decides (the step stored in ``last.ckpt``, read
    memory-mapped, against ``trainer.global_step``) and broadcasts, so every rank takes part in the same
    collective save. Nothing is written when ``last.ckpt`` already holds the step (e.g. saved by
    :class:`SlurmRequeue` or by ``ModelCheckpoint`` at that step). Not called when fit ends in an exception.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from avgen.checkpoint import checkpoint_step

        path = self.dirpath / "last.ckpt"
        stale = False
        if trainer.is_global_zero and trainer.global_step > 0:
            try:
                stale = checkpoint_step(path) != trainer.global_step
            except ValueError:  # missing or unreadable
                stale = True
        if trainer.strategy.broadcast(stale, src=0):
            trainer.save_checkpoint(path)
            log.info("saved %s at the final step %d", path, trainer.global_step)

REQUEUE_ENV = "AVGEN_REQUEUE"
REQUEUE_ROUTES = ("scontrol", "submitit", "off")


#: ``scontrol requeue <job>`` with SIGTERM ignored (a disposition ``exec`` keeps): the requeue it asks for makes
#: slurmstepd send SIGTERM to every process of the job step, and a ``scontrol`` still running then (its reply not yet
#: read) would die of the signal its own request caused, reporting a requeue that happened as failed
REQUEUE_COMMAND = ["sh", "-c", "trap '' TERM; exec scontrol requeue \"$1\"", "scontrol-requeue"]


def requeue_route() -> str:
    """Who requeues a preempted SLURM job: env ``AVGEN_REQUEUE``, ``scontrol`` when unset.

    Raises:
        ConfigError: another value.
    """
    route = os.environ.get(REQUEUE_ENV) or "scontrol"
    if route not in REQUEUE_ROUTES:
        raise ConfigError(f"{REQUEUE_ENV}={route}: expected one of {', '.join(REQUEUE_ROUTES)} (scontrol: avgen runs "
                          f"scontrol requeue; submitit: the submitit launcher requeues; off: save only)")
    return route


class SlurmRequeue(pl.Callback):
    """Preemption under SLURM: on the pre-timeout signal (``sbatch --signal=USR1@120``) save
    ``<dirpath>/last.ckpt`` and have the job requeued; on SIGTERM save it too. The requeued job runs the same
    command in the same run folder and ``fit`` resumes from the newest complete checkpoint.

    SIGUSR1: the handler, installed in ``setup`` for ``fit`` (from the main thread only), only sets a flag (set at
    once when the signal came earlier in the process: :func:`avgen.parallel.hold_preemption_signal`). At the end of the
    next training batch that completes an optimizer step the flag is OR-reduced over the ranks (every rank
    calls this collective at the same batch, so one rank's signal is enough); if set, every rank takes part in
    ``trainer.save_checkpoint`` (atomic through the trainer's checkpoint IO), then rank 0 requeues by route
    (:func:`requeue_route`, env ``AVGEN_REQUEUE``; an environment variable rather than a config key because the
    launcher, not the experiment, knows who requeues):

    - ``scontrol`` (default): runs ``scontrol requeue <job>`` (:func:`avgen.parallel.slurm_job_id`; SIGTERM
      ignored, :data:`REQUEUE_COMMAND`). If that fails the
      failure is printed (stdout and stderr) and the checkpoint stays: submitting the same command again resumes.
    - ``submitit``: nothing; the submitit launcher's ``checkpoint()`` hook requeues the job.
    - ``off``: nothing; the run is only saved and stopped (a site's own requeue script takes over).

    Rank 0 prints one line, ``preempted at step N: saved <path>; requeued <job>``. Then ``trainer.should_stop`` is
    set and validation is switched off for the rest of this process (``should_stop`` alone would run a validation
    pass first, as for early stopping: time the job does not have). ``fit`` exits with :data:`PREEMPTED_EXIT` when
    :attr:`preempted` is set. The previous SIGUSR1 handler comes back at ``teardown``; after an exception Lightning's
    signal teardown re-installs the handlers it found at the start of the run (this one among them), so whoever ran
    ``trainer.fit`` calls :meth:`restore_signal_handler` (``avgen.commands.fit`` does, in a ``finally``). Data loader
    workers, which SLURM signals too, are forked after ``setup`` and inherit the flag-only handler.

    SIGTERM (sent by ``scontrol requeue`` itself, ``scancel`` and the time limit, ``KillWait`` seconds, 30 by
    default, before SIGKILL): Lightning's own handler makes the loop raise ``SIGTERMException`` at the end of the
    current batch (Lightning alone would then exit with status 0). In a one-process run this callback saves
    ``last.ckpt`` there (the step is complete; the atomic writer keeps the previous file if SIGKILL comes first),
    unless the SIGUSR1 path saved this step already; nothing is requeued (whoever sent SIGTERM decides). With
    several processes no collective save is attempted (the ranks may be at different batches): the run resumes
    from the newest checkpoint it has. Either way :attr:`preempted` is set, so ``fit`` exits with
    :data:`PREEMPTED_EXIT`.

    Args:
        dirpath: the run's checkpoint folder (``<output_dir>/checkpoints``).
        route: ``scontrol``, ``submitit`` or ``off``; None reads ``AVGEN_REQUEUE``.

    Raises:
        ConfigError: an unknown route.
    """

    def __init__(self, dirpath: str, route: str | None = None):
        self.dirpath = Path(dirpath)
        if route is not None and route not in REQUEUE_ROUTES:
            raise ConfigError(f"SlurmRequeue route={route}: expected one of {', '.join(REQUEUE_ROUTES)}")
        self.route = route or requeue_route()
        self.signalled = False
        self.preempted: str | None = None  # "SIGUSR1" or "SIGTERM" once the run stopped for one
        self.saved: tuple[Path, int] | None = None  # (path, step) of the checkpoint written for it
        self._previous: object = None
        self._installed = False

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        from avgen.parallel import take_early_preemption

        # a SIGUSR1 that came before this (held by avgen.parallel.hold_preemption_signal) is acted on at the first step
        self.signalled = False
        self._previous = signal.signal(signal.SIGUSR1, self._on_signal)
        self.signalled = take_early_preemption() or self.signalled
        self._installed = True

    def restore_signal_handler(self) -> None:
        """Put back the SIGUSR1 handler ``setup`` replaced (no-op when none was replaced)."""
        if self._installed:
            # None: a handler not installed from Python; the default is the closest there is
            signal.signal(signal.SIGUSR1, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore_signal_handler()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.preempted or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        self.preempted, self.saved = "SIGUSR1", (path, trainer.global_step)
        if trainer.is_global_zero:
            print(f"preempted at step {trainer.global_step}: saved {path}; {self._requeue()}", flush=True)
        trainer.should_stop = True
        trainer.limit_val_batches = 0

    def _requeue(self) -> str:
        """Requeue by route; what was done, as the end of the printed line."""
        if self.route == "submitit":
            return "submitit requeues the job"
        if self.route == "off":
            return f"not requeued ({REQUEUE_ENV}=off)"
        from avgen.parallel import slurm_job_id

        job = slurm_job_id()
        if job is None:
            return "not requeued (no SLURM_JOB_ID)"
        try:
            done = subprocess.run(REQUEUE_COMMAND + [job], capture_output=True, text=True, timeout=60)
            failure = f"exit status {done.returncode}: {' '.join((done.stderr or done.stdout).split())}" \
                if done.returncode else None
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = " ".join(str(exc).split())
        if failure is None:
            return f"requeued {job}"
        message = (f"scontrol requeue {job} failed ({failure}); the checkpoint is kept: submit the same command "
                   f"again to resume")
        print(f"avgen fit: {message}", file=sys.stderr, flush=True)
        return message

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if self.saved is not None and self.saved[1] == trainer.global_step:
            return  # the SIGTERM of the requeue this callback asked for
        self.preempted = "SIGTERM"
        if trainer.world_size > 1:
            if trainer.is_global_zero:
                print(f"terminated (SIGTERM) at step {trainer.global_step}; {trainer.world_size} processes: no "
                      f"checkpoint saved now, the run resumes from the newest one in {self.dirpath}", flush=True)
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved = (path, trainer.global_step)
        print(f"terminated (SIGTERM) at step {trainer.global_step}: saved {path}", flush=True)
