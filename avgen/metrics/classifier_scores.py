"""Inception Score and paired KL divergence over an audio classifier's outputs, audioldm_eval's way.

Both take the classifier's logits (for the PANNs CNN14 of :mod:`avgen.encoders.panns`, the 527
pre-sigmoid AudioSet outputs, which audioldm_eval calls ``"logits"``); running the classifier is the
caller's job, so one forward pass per clip feeds both metrics.

- :class:`InceptionScore` (Salimans et al. 2016): ``IS = exp(E_x KL(p(y|x) || p(y)))`` with
  ``p(y|x) = softmax(logits)``, computed on ``splits`` disjoint parts of the set, reported as the
  mean and standard deviation over the parts (audioldm_eval ``calculate_isc``).
- :class:`MeanKL`: for each generated clip paired with its reference clip (same name),
  ``KL(p_ref || p_gen)`` of the classifier outputs, averaged over pairs, with both softmax and
  sigmoid outputs (audioldm_eval ``calculate_kl``; AudioGen, AudioLDM and VTA-LDM report these), or
  with ``eps=0`` as av-benchmark computes it for PaSST (``av_bench/metrics/kl.py:7-45@050a5cd``).

Audio goes to the classifier as audioldm_eval's ``WaveDataset`` prepares it (:class:`ClassifierInput`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

# torchaudio.functional.resample with its defaults, as audioldm_eval's WaveDataset calls it
RESAMPLER = "torchaudio.functional.resample (sinc_interp_hann, lowpass_filter_width=6, rolloff=0.99)"


@dataclass(frozen=True)
class ClassifierInput:
    """How a clip is fed to the classifier, as audioldm_eval's ``WaveDataset`` does: the clip's mean is
    subtracted (``remove_dc``), it is resampled to ``sample_rate`` with :data:`RESAMPLER`, then
    zero-padded at the end to ``min_seconds`` (audioldm_eval: 32000 samples at 16 kHz). Longer clips
    are not cut."""

    sample_rate: int = 16000
    remove_dc: bool = True
    min_seconds: float = 2.0

    def __call__(self, audio: Any, sample_rate: int) -> torch.Tensor:
        """mono audio (S,) at ``sample_rate`` → (S',) float32 at ``self.sample_rate``."""
        wave = torch.as_tensor(audio, dtype=torch.float32).cpu()
        if wave.ndim != 1 or wave.numel() == 0:
            raise ValueError(f"expected non-empty mono audio (S,), got shape {tuple(wave.shape)}")
        if self.remove_dc:
            wave = wave - wave.mean()
        if sample_rate != self.sample_rate:
            import torchaudio

            wave = torchaudio.functional.resample(wave, int(sample_rate), int(self.sample_rate))
        short = round(self.min_seconds * self.sample_rate) - wave.shape[0]
        return torch.nn.functional.pad(wave, (0, short)) if short > 0 else wave

    def describe(self) -> dict[str, Any]:
        """The settings and the resampler, for ``metrics.json``."""
        return {**asdict(self), "resampler": RESAMPLER}


def kl_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per row ``Σ_c p_c · (log p_c − log(q_c + eps))`` with ``0 · log 0 = 0``; p, q (N, C) → (N,).

    The same sum as ``torch.nn.functional.kl_div((q + eps).log(), p, reduction="none").sum(1)``
    (and ``scipy.special.rel_entr(p, q + eps).sum(1)``). The rows need not sum to 1 (the sigmoid
    variant of :class:`MeanKL` feeds it per-class probabilities).
    """
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q + eps)).sum(dim=-1)


class InceptionScore(Metric):
    """Inception Score of a set of clips from classifier logits, with audioldm_eval's conventions.

    For clips ``x`` with class posteriors ``p(y|x) = softmax(logits(x))`` (softmax over the 527
    AudioSet logits, as audioldm_eval, although CNN14 was trained multi-label with sigmoids) and a
    part ``P`` of the set with marginal ``p_P(y) = mean_{x∈P} p(y|x)``::

        IS_P = exp( mean_{x∈P} Σ_y p(y|x) (log p(y|x) − log p_P(y)) )

    The clips, in a fixed order, are permuted with ``numpy.random.RandomState(shuffle_seed)`` (2020 in
    audioldm_eval; ``None`` keeps the order) and cut into ``splits`` parts, part ``i`` holding
    positions ``[i·N // splits, (i+1)·N // splits)``. :meth:`compute` returns ``{"mean", "std"}`` of
    the ``IS_P`` (``std`` with divisor ``splits``, ``numpy.std``).

    The fixed order is that of ``index`` passed to :meth:`update` (e.g. each clip's position in the
    sorted file list, the order audioldm_eval reads them in). The states are the logits and the
    indices, concatenated across processes (``dist_reduce_fx="cat"``), and :meth:`compute` sorts
    by index, so the parts, and the value, do not depend on how clips were spread over DDP ranks.
    Without ``index`` a clip's index is its arrival position in this process (exact in one process;
    under DDP, ties between ranks keep the gathered order).

    Args:
        splits: number of parts (audioldm_eval: 10); needs at least ``splits`` clips.
        shuffle_seed: seed of the permutation before splitting, or ``None``.
        **kwargs: torchmetrics ``Metric`` options.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, splits: int = 10, shuffle_seed: int | None = 2020, **kwargs: Any):
        super().__init__(**kwargs)
        if splits < 1:
            raise ValueError(f"InceptionScore splits={splits}: expected >= 1")
        self.splits, self.shuffle_seed = int(splits), shuffle_seed
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Add logits (N, C) of N clips; ``index`` (N,) int their positions in the evaluated set."""
        logits = torch.as_tensor(logits)
        if logits.ndim != 2:
            raise ValueError(f"InceptionScore.update expects logits (N, C), got {tuple(logits.shape)}")
        if index is None:
            start = self.num_clips()
            index = torch.arange(start, start + logits.shape[0])
        index = torch.as_tensor(index, dtype=torch.int64, device=self.device).reshape(-1)
        if index.shape[0] != logits.shape[0]:
            raise ValueError(f"InceptionScore.update got {logits.shape[0]} rows of logits and {index.shape[0]} indices")
        self.logits.append(logits.detach().to(self.device, torch.float64))
        self.index.append(index)

    def num_clips(self) -> int:
        """Clips added so far (in this process, or in all of them once synced)."""
        return sum(int(t.shape[0]) for t in self.index) if isinstance(self.index, list) else int(self.index.shape[0])

    def ordered_logits(self) -> torch.Tensor:
        """All logits (N, C) float64, sorted by index (stable) and then permuted by ``shuffle_seed``."""
        logits, index = dim_zero_cat(self.logits), dim_zero_cat(self.index)
        logits = logits[torch.sort(index, stable=True).indices]
        if self.shuffle_seed is not None:
            perm = np.random.RandomState(self.shuffle_seed).permutation(logits.shape[0])
            logits = logits[torch.from_numpy(perm).to(logits.device)]
        return logits

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"mean": IS mean over parts, "std": IS standard deviation over parts}``, 0-dim float64."""
        n = self.num_clips()
        if n < self.splits:
            raise ValueError(f"InceptionScore with splits={self.splits} needs at least {self.splits} clips, got {n}; "
                             f"score more clips or lower splits (evaluate.panns.splits)")
        p = torch.softmax(self.ordered_logits(), dim=1)
        scores = []
        for i in range(self.splits):
            part = p[i * n // self.splits:(i + 1) * n // self.splits]
            scores.append(kl_divergence(part, part.mean(dim=0, keepdim=True)).mean().exp())
        scores = torch.stack(scores)
        return {"mean": scores.mean(), "std": scores.std(correction=0)}


class MeanKL(Metric):
    """Mean over (generated, reference) pairs of ``KL(p_ref || p_gen)`` of classifier outputs (audioldm_eval).

    For a pair with logits ``g`` (generated) and ``r`` (reference)::

        softmax:  KL_i = Σ_c p_c (log p_c − log(q_c + eps)),   p = softmax(r), q = softmax(g)
        sigmoid:  KL_i = Σ_c p_c (log p_c − log(q_c + eps)),   p = sigmoid(r), q = sigmoid(g)

    and the metric is ``mean_i KL_i``. The direction (reference first) and ``eps = 1e-6`` added to the
    generated side only follow audioldm_eval (``kl_div((q + eps).log(), p, reduction="sum") / N``).
    The sigmoid variant treats the 527 per-class probabilities as one unnormalised vector, as
    audioldm_eval does; it is not a sum of Bernoulli KLs and can be negative.

    With ``eps=0`` the sums are taken from log-probabilities, ``Σ_c p_c (log p_c − log q_c)`` with
    ``log_softmax`` / ``logsigmoid``, as av-benchmark does (``F.kl_div(log_softmax(g), log_softmax(r),
    reduction="sum", log_target=True) / N``, ``av_bench/metrics/kl.py:22-29@050a5cd``): the same value
    without the underflow of a probability rounded to 0.

    States are one sum per variant and the pair count, float64 with ``dist_reduce_fx="sum"`` (exact
    under DDP).

    Args:
        eps: added to the generated probabilities inside the log (0: the log-space form above).
        variants: which of ``"sigmoid"`` and ``"softmax"`` to compute (av-benchmark reports softmax only).
        **kwargs: torchmetrics ``Metric`` options.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    def __init__(self, eps: float = 1e-6, variants: tuple[str, ...] = ("sigmoid", "softmax"), **kwargs: Any):
        super().__init__(**kwargs)
        if eps < 0 or not variants or set(variants) - {"sigmoid", "softmax"}:
            raise ValueError(f"MeanKL eps={eps}, variants={variants}: expected eps >= 0 and variants from "
                             f"('sigmoid', 'softmax')")
        self.eps, self.variants = float(eps), tuple(variants)
        for variant in self.variants:
            self.add_state(f"{variant}_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def pair_divergences(self, generated: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pair KL (N,) float64 of each variant; logits (N, C), row i of both is one pair."""
        g, r = torch.as_tensor(generated), torch.as_tensor(reference)
        if g.ndim != 2 or g.shape != r.shape:
            raise ValueError(f"MeanKL expects paired logits (N, C) of equal shape, got {tuple(g.shape)} (generated) "
                             f"and {tuple(r.shape)} (reference)")
        g, r = g.to(self.device, torch.float64), r.to(self.device, torch.float64)
        if self.eps == 0:
            logs = {"sigmoid": torch.nn.functional.logsigmoid, "softmax": lambda x: torch.log_softmax(x, dim=1)}
            return {v: (logs[v](r).exp() * (logs[v](r) - logs[v](g))).sum(dim=1) for v in self.variants}
        probs = {"sigmoid": torch.sigmoid, "softmax": lambda x: torch.softmax(x, dim=1)}
        return {v: kl_divergence(probs[v](r), probs[v](g), self.eps) for v in self.variants}

    def update(self, generated: torch.Tensor, reference: torch.Tensor) -> None:
        """Add N pairs: logits of the generated clips (N, C) and of their reference clips (N, C)."""
        self.add_pairs(self.pair_divergences(generated, reference))

    def add_pairs(self, divergences: dict[str, torch.Tensor]) -> None:
        """Add per-pair divergences computed by :meth:`pair_divergences` (so a caller can keep them per clip)."""
        for variant, values in divergences.items():
            setattr(self, f"{variant}_sum", getattr(self, f"{variant}_sum") + values.sum())
        self.count = self.count + divergences[self.variants[0]].shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        """``{variant: mean KL}`` (``"sigmoid"``, ``"softmax"``), 0-dim float64."""
        if self.count.item() == 0:
            raise ValueError("MeanKL has no pairs: call update(generated, reference) before compute()")
        return {variant: getattr(self, f"{variant}_sum") / self.count for variant in self.variants}
