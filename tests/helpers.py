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


class SignalAt(pl.Callback):
    """Sends this process ``signum`` (a signal name, e.g. ``SIGUSR1``) at the end of training step ``step``."""

    def __init__(self, step: int, signum: str = "SIGUSR1"):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import signal

            os.kill(os.getpid(), getattr(signal, self.signum))


class StepDelay(pl.Callback):
    """Slows training down for a test that signals a running fit from outside: at the end of each training step,
    writes the step reached (``trainer.global_step``) into the file ``progress``, then sleeps ``seconds``."""

    def __init__(self, progress: str, seconds: float):
        self.progress, self.seconds = Path(progress), seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        self.progress.parent.mkdir(parents=True, exist_ok=True)
        self.progress.write_text(str(trainer.global_step))
        time.sleep(self.seconds)


class CachedPartsSystem(AVSystem):
    """A system with three frozen parts the feature cache can store (tests of ``cache`` and ``data.features``
    before the real systems' parts; :mod:`avgen.data.feature_cache`):

    - ``video_latents``: a frozen Linear over each frame's mean colour: ``mean`` (F, hidden), ``std`` (F, hidden)
      (softplus); reads video.
    - ``audio_latents``: a frozen Linear over the RMS of 8 equal chunks of the audio: ``mean``, ``std`` (hidden,);
      reads audio.
    - ``text``: ``clip`` (3,) = caption length, byte sum mod 97, 1; reads the caption only.

    ``weights_seed`` seeds the frozen weights (another seed: another model's weights). The trainable ``head`` reads
    the parts' ``mean`` tensors, from ``batch["features"]`` when present (computing the rest); each training batch's
    video frame count, audio sample count and cached parts are recorded (``record_dir``/rank0.json at train end).
    """

    def __init__(self, clip, hidden: int = 4, weights_seed: int = 0, optimizer=None, scheduler=None, ema_decay=None,
                 cond_drop_prob: float = 0.0, record_dir: str | None = None):
        from avgen.data.feature_cache import FeaturePart, module_weights_sha256
        from avgen.data.geometry import ClipGeometry

        super().__init__(optimizer=optimizer, scheduler=scheduler, ema_decay=ema_decay, cond_drop_prob=cond_drop_prob)
        self.clip = ClipGeometry.from_config(dict(clip))
        generator = torch.Generator().manual_seed(weights_seed)
        self.video_encoder, self.audio_encoder = nn.Linear(3, hidden), nn.Linear(8, hidden)
        for module in (self.video_encoder, self.audio_encoder):
            for param in module.parameters():
                param.data.copy_(torch.randn(param.shape, generator=generator))
        self.freeze(self.video_encoder, self.audio_encoder)
        self.head = nn.Linear(2 * hidden + 3, 1)
        self.record_dir = record_dir
        self.seen: list[dict] = []
        geometry = {"height": self.clip.height, "width": self.clip.width, "fps": str(self.clip.fps),
                    "frames": self.clip.num_frames}
        self._parts = {
            "video_latents": FeaturePart("video_latents", "test_video_encoder",
                                         {"encoder": module_weights_sha256(self.video_encoder)}, geometry, ("video",)),
            "audio_latents": FeaturePart("audio_latents", "test_audio_encoder",
                                         {"encoder": module_weights_sha256(self.audio_encoder)},
                                         {"sample_rate": self.clip.sample_rate, "samples": self.clip.num_samples,
                                          "chunks": 8}, ("audio",)),
            "text": FeaturePart("text", "test_caption_bytes", {}, {"max_length": None}),
        }

    def feature_parts(self):
        return dict(self._parts)

    @torch.no_grad()
    def compute_features(self, batch, parts):
        out = {}
        b = len(batch["key"])
        if "video_latents" in parts:
            h = self.video_encoder(batch["video"].float().mean(dim=(3, 4)))  # (B, F, hidden)
            out["video_latents"] = {"mean": h, "std": F.softplus(h)}
        if "audio_latents" in parts:
            rms = batch["audio"].float().reshape(b, 8, -1).pow(2).mean(-1).sqrt()
            h = self.audio_encoder(rms)
            out["audio_latents"] = {"mean": h, "std": F.softplus(h)}
        if "text" in parts:
            rows = [[len(c), sum(c.encode()) % 97, 1.0] for c in batch["caption"]]
            out["text"] = {"clip": torch.tensor(rows, dtype=torch.float32, device=self.head.weight.device)}
        return out

    def features(self, batch):
        """``{part: {tensor: (B, ...)}}``: the cached parts from the batch, the others computed."""
        cached = dict(batch.get("features") or {})
        missing = [p for p in self._parts if p not in cached]
        return {**cached, **self.compute_features(batch, missing)}

    def _loss(self, batch):
        f = self.features(batch)
        x = torch.cat([f["video_latents"]["mean"].mean(1), f["audio_latents"]["mean"], f["text"]["clip"]], dim=1)
        return self.head(x).pow(2).mean()

    def training_step(self, batch, batch_idx):
        self.seen.append({"video_frames": batch["video"].shape[1], "audio_samples": batch["audio"].shape[1],
                          "parts": sorted(batch.get("features") or {}), "keys": list(batch["key"])})
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["key"]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.seen.append({"split": "val", "video_frames": batch["video"].shape[1],
                          "parts": sorted(batch.get("features") or {})})
        self.log("val/loss", self._loss(batch), batch_size=len(batch["key"]))

    def on_train_end(self) -> None:
        if self.record_dir:
            Path(self.record_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.record_dir) / f"rank{self.global_rank}.json").write_text(
                json.dumps({"global_step": self.global_step, "batches": self.seen}))
