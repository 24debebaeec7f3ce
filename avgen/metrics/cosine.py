"""The mean per-clip cosine shared by CLIPSIM, the CLAP score and the ImageBind audio-video score."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from avgen.pretrained import HoldsFrozen


class MeanCosine(HoldsFrozen, Metric):
    """Mean over clips of a per-clip cosine score computed by a frozen pretrained ``model``; states are
    the score sum and the clip count (float64, summed across processes). Subclasses give
    ``clip_scores(...)`` and ``update`` = ``add_scores(clip_scores(...))``."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    name = ""

    def __init__(self, model: torch.nn.Module, **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model
        self.hold_frozen(model)
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def add_scores(self, scores: torch.Tensor) -> None:
        """Add per-clip scores computed by ``clip_scores`` (so a caller can keep them per clip)."""
        self.score_sum = self.score_sum + scores.to(self.score_sum).sum()
        self.count = self.count + scores.numel()

    def compute(self) -> torch.Tensor:
        """Mean per-clip cosine (raw, in [-1, 1]); a 0-dim float64 tensor."""
        if self.count.item() == 0:
            raise ValueError(f"{type(self).__name__} has no clips: call update(...) before compute()")
        return self.score_sum / self.count
