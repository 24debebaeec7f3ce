"""``AVAlign``: AV-Align as a torchmetrics ``Metric`` (mean score per variant, correct under DDP).

The algorithm and its variants are documented in ``avgen/metrics/av_align.py``; this file only
accumulates per-clip scores (kept apart so that importing the algorithm does not import torchmetrics).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from avgen.media import frames_to_uint8
from avgen.metrics.av_align import AVAlignConfig, align_clip


def _to_audio(audio) -> np.ndarray:
    y = audio.detach().cpu().float().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
    if y.ndim != 1:
        raise ValueError(f"audio must be mono (S,), got shape {y.shape}")
    return y


def _per_clip(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)) or (isinstance(value, (torch.Tensor, np.ndarray)) and np.ndim(value) == 1):
        if len(value) != n:
            raise ValueError(f"{what}: {len(value)} values for {n} clips")
        return [float(v) for v in value]
    return [float(value)] * n


class AVAlign(Metric):
    """Mean AV-Align per variant over clips; ``compute()`` returns ``{variant: mean score}``.

    ``update(frames, fps, audio, sample_rate)`` takes one clip (video ``(F, 3, H, W)`` float in
    [-1, 1] or ``(F, H, W, 3)`` uint8; audio ``(S,)``) or several: lists of clips, or batches
    ``(B, F, ...)`` / ``(B, S)``; ``fps`` and ``sample_rate`` are one number or one per clip.
    The states are score sums and a clip count, summed across processes, so the DDP result is the
    mean over all clips. Scoring runs on the CPU (OpenCV, librosa). With no clip, every mean is NaN.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, variants: Sequence[str] | None = None, cfg: AVAlignConfig | Mapping | None = None, **kwargs):
        super().__init__(**kwargs)
        cfg = cfg if isinstance(cfg, AVAlignConfig) else AVAlignConfig(**(cfg or {}))
        self.cfg = replace(cfg, variants=tuple(variants)) if variants is not None else cfg
        for v in self.cfg.variants:
            self.add_state(f"score_sum_{v}", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, frames, fps, audio, sample_rate) -> None:
        batched = isinstance(frames, (list, tuple)) or np.ndim(frames) == 5
        videos = list(frames) if batched else [frames]
        audios = list(audio) if batched else [audio]
        if len(audios) != len(videos):
            raise ValueError(f"AVAlign.update: {len(videos)} videos but {len(audios)} audio tracks")
        rates = _per_clip(fps, len(videos), "fps")
        srs = _per_clip(sample_rate, len(videos), "sample_rate")
        for video, track, f, sr in zip(videos, audios, rates, srs):
            result = align_clip(frames_to_uint8(video), f, _to_audio(track), int(sr), self.cfg)
            for v, s in result.scores.items():
                state = getattr(self, f"score_sum_{v}")
                setattr(self, f"score_sum_{v}", state + s)
            self.clips += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.clips.to(torch.float64)
        return {v: getattr(self, f"score_sum_{v}") / n for v in self.cfg.variants}
