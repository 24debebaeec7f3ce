"""Callbacks every run gets: clip accounting (``DataHealthMonitor``)."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from avgen.data.datamodule import AVDataModule
from avgen.errors import DataHealthError

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
        from pathlib import Path

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
