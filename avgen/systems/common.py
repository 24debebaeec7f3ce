"""What the generating systems share: AV-Align of generated clips and sending sounding videos to the
loggers (sample files: :mod:`avgen.samples`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avgen.data.geometry import ClipGeometry
from avgen.media import unit_range_to_uint8

log = logging.getLogger("avgen")


def av_align_scores(video: torch.Tensor, audio: torch.Tensor, clip: ClipGeometry) -> dict[str, float]:
    """Mean AV-Align (every variant) of generated clips: video (B, F, 3, H, W) in [-1, 1] at ``clip.fps``,
    audio (B, S) in [-1, 1] at ``clip.sample_rate``."""
    from avgen.metrics.av_align import align_clip

    frames = unit_range_to_uint8(video)
    waves = audio.detach().cpu().float().numpy()
    totals: dict[str, list[float]] = {}
    for f, w in zip(frames, waves):
        result = align_clip(f, float(clip.fps), w, clip.sample_rate)
        for variant, value in result.scores.items():
            totals.setdefault(variant, []).append(value)
    return {k: float(np.mean(v)) for k, v in totals.items()}


def log_sounding_videos(loggers: Sequence[Any], paths: Sequence[Path], step: int) -> None:
    """Send validation samples (mp4 files with sound) to the loggers that can show media (TensorBoard audio
    and video, wandb video); a logger that fails is warned about, never fatal."""
    from avgen.metrics.av_align import load_av

    for logger in loggers:
        name = type(logger).__name__
        try:
            if name == "WandbLogger":
                logger.log_video("val/samples", videos=[str(p) for p in paths], step=step)
            elif name == "TensorBoardLogger":
                for i, path in enumerate(paths):
                    frames, fps, audio, rate = load_av(path)
                    logger.experiment.add_audio(f"val/sample_{i}", torch.from_numpy(audio)[None], step, rate)
                    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]
                    logger.experiment.add_video(f"val/sample_{i}", video, step, fps=float(fps))
        except Exception as exc:  # media logging is a convenience; the mp4s are on disk regardless
            log.warning("could not log validation samples to %s (%s); they are in %s", name, exc,
                        Path(paths[0]).parent if paths else "?")


