"""A tiny avgen system for exercising the generic commands (fit/validate/test/export) in tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from avgen.systems.base import AVSystem


class TinySystem(AVSystem):
    """Predicts the clip's mean absolute audio level from its mean colour.

    ``backbone`` is frozen (must stay out of checkpoints and in eval mode); ``head`` and ``norm``
    are trainable (``norm`` has buffers, which checkpoints must keep).
    """

    def __init__(self, hidden: int = 8, optimizer=None, scheduler=None, ema_decay=None, cond_drop_prob: float = 0.0,
                 record_dir: str | None = None):
        super().__init__(optimizer=optimizer, scheduler=scheduler, ema_decay=ema_decay, cond_drop_prob=cond_drop_prob)
        self.backbone = nn.Sequential(nn.Linear(3, hidden), nn.Dropout(0.5))
        self.norm = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, 1)
        self.freeze(self.backbone)
        self.record_dir = record_dir
        self.train_batches = 0
        self.first_step: int | None = None
        self.keys: list[str] = []

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, F, 3, H, W) → (B,)"""
        return self.head(self.norm(self.backbone(video.mean(dim=(1, 3, 4))))).squeeze(-1)

    def _loss(self, batch) -> torch.Tensor:
        return F.mse_loss(self(batch["video"]), batch["audio"].abs().mean(dim=1) * 10)

    def training_step(self, batch, batch_idx):
        if self.first_step is None:
            self.first_step = self.global_step
        assert not self.backbone.training, "frozen parts must stay in eval mode"
        self.train_batches += 1
        self.keys.extend(batch["key"])
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch), batch_size=len(batch["key"]), sync_dist=False)

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch), batch_size=len(batch["key"]))

    def on_train_end(self) -> None:
        if self.record_dir:
            Path(self.record_dir).mkdir(parents=True, exist_ok=True)
            record = {"rank": self.global_rank, "world": self.trainer.world_size, "batches": self.train_batches,
                      "first_step": self.first_step, "global_step": self.global_step, "pid": os.getpid(),
                      "keys": self.keys}
            (Path(self.record_dir) / f"rank{self.global_rank}.json").write_text(json.dumps(record))


class KeyboardInterruptAt(pl.Callback):
    """Raises ``KeyboardInterrupt`` (what Ctrl-C does) at the end of training step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt
