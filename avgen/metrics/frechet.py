"""Fréchet distance between feature distributions (FVD, FAD, FID-style), exact under DDP.

    FD = ||μ_r − μ_f||² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^{1/2})

the Fréchet (2-Wasserstein) distance between the Gaussians fitted to real and generated features
(Heusel et al. 2017, eq. 6; FVD: Unterthiner et al. 2018; FAD: Kilgour et al. 2019). μ is the mean
and Σ the sample covariance (divisor N − 1) of the features.

:class:`FrechetDistance` is a torchmetrics ``Metric`` whose states are, per side, the feature sum
(D,), the sum of outer products (D, D) and the count, all float64 with ``dist_reduce_fx="sum"``:
summing them over processes gives exactly the single-process statistics, so the value does not
depend on how clips are split across ranks. Reference statistics (:class:`ReferenceStats`) can be given
to the metric instead of real samples; evaluation computes them from per-clip features kept in the
feature store (:mod:`avgen.data.feature_store`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torchmetrics import Metric


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> torch.Tensor:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); a 0-dim float64 tensor.

    The trace of the matrix square root is computed without forming (Σ1 Σ2)^{1/2}: with
    S = Σ1^{1/2} (eigen-decomposition of the symmetric Σ1), Σ1 Σ2 = S (S Σ2) has the same
    eigenvalues as the symmetric positive semi-definite S Σ2 S, so
    Tr((Σ1 Σ2)^{1/2}) = Σ_i sqrt(λ_i(S Σ2 S)). Both decompositions are of symmetric matrices
    (``torch.linalg.eigh``, float64), so there are no complex parts to discard, and singular
    covariances (fewer samples than dimensions) need no ε offset. Eigenvalues that rounding makes
    slightly negative are clipped to 0, and so is the result (≥ 0 by construction; rounding can
    give about −1e-12 for identical statistics).
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s, dtype=torch.float64).to(mu1.device) for s in (sigma1, sigma2))
    mu2 = mu2.to(mu1.device)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance expects mu (D,) and sigma (D, D) on both sides, got mu "
                         f"{tuple(mu1.shape)}, {tuple(mu2.shape)} and sigma {tuple(sigma1.shape)}, "
                         f"{tuple(sigma2.shape)}")
    evals, evecs = torch.linalg.eigh((sigma1 + sigma1.T) / 2)
    sqrt1 = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T
    inner = sqrt1 @ sigma2 @ sqrt1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return (diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_covmean).clamp(min=0)


@dataclass
class ReferenceStats:
    """Gaussian statistics of one feature set: mean (D,), sample covariance (D, D), count, and the
    ``key`` that says what they were computed from (extractor, weight hash, data, split)."""

    mu: torch.Tensor
    sigma: torch.Tensor
    count: int
    key: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: torch.Tensor, key: dict[str, Any] | None = None) -> ReferenceStats:
        """features (N, D) → statistics (float64, covariance with N − 1)."""
        f = torch.as_tensor(features, dtype=torch.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"reference statistics need features (N >= 2, D), got {tuple(f.shape)}")
        return cls(f.mean(0), torch.cov(f.T, correction=1).reshape(f.shape[1], f.shape[1]), f.shape[0], key or {})


class FrechetDistance(Metric):
    """Fréchet distance between real and generated features of any extractor (FVD, FAD, ...).

    ``update(x, real)`` runs ``extractor`` on the batch ``x`` (or takes ``x`` as features (N, D) when
    ``extractor`` is ``None``) and adds the features to the real or the generated side;
    ``compute()`` returns the distance as a 0-dim float64 tensor. The extractor runs without
    gradients and with autocast disabled, and its features are accumulated in float64.

    Args:
        extractor: an ``nn.Module`` or callable mapping a batch to features (N, D), or ``None``.
        num_features: D; taken from ``extractor.num_features`` or ``reference`` when omitted.
        reference: statistics of the real set (:meth:`stats` of another metric); then only
            generated samples are updated and ``update(x, real=True)`` is an error.
        **kwargs: torchmetrics ``Metric`` options (``compute_on_cpu``, ``sync_on_compute``, ...).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, extractor: nn.Module | Callable[[Any], torch.Tensor] | None = None,
                 num_features: int | None = None, reference: ReferenceStats | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.extractor = extractor
        dims = {"num_features": num_features, "extractor.num_features": getattr(extractor, "num_features", None),
                "reference": None if reference is None else int(reference.mu.shape[0])}
        known = {k: int(v) for k, v in dims.items() if v is not None}
        if not known:
            raise ValueError("FrechetDistance needs the feature width: pass num_features, an extractor with a "
                             "num_features attribute, or reference statistics")
        if len(set(known.values())) > 1:
            raise ValueError(f"FrechetDistance: inconsistent feature widths {known}")
        self.num_features = next(iter(known.values()))
        d = self.num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.has_reference = reference is not None
        if reference is not None:
            if reference.sigma.shape != (d, d):
                raise ValueError(f"reference sigma is {tuple(reference.sigma.shape)}, expected ({d}, {d})")
            self.register_buffer("ref_mu", reference.mu.to(torch.float64), persistent=False)
            self.register_buffer("ref_sigma", reference.sigma.to(torch.float64), persistent=False)
            self.reference_count = int(reference.count)
            self.reference_key = reference.key

    def features(self, x: Any) -> torch.Tensor:
        """The batch's features (N, D) float64, with the extractor applied when there is one."""
        if self.extractor is None:
            feats = torch.as_tensor(x)
        else:
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                feats = self.extractor(x)
        if feats.ndim != 2 or feats.shape[1] != self.num_features:
            raise ValueError(f"features must be (N, {self.num_features}), got {tuple(feats.shape)}")
        return feats.detach().to(device=self.device, dtype=torch.float64)

    def update(self, x: Any, real: bool) -> None:
        """Add a batch to the real (``real=True``) or generated side."""
        if real and self.has_reference:
            raise ValueError("this FrechetDistance was given reference statistics for the real side; "
                             "update it with generated samples only (real=False)")
        feats = self.features(x)
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + feats.sum(dim=0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + feats.T @ feats)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + feats.shape[0])

    def _side_stats(self, real: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        side = "real" if real else "fake"
        total, outer = getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer")
        n = int(getattr(self, f"{side}_count").item())
        if n < 2:
            raise ValueError(f"FrechetDistance needs at least 2 {'real' if real else 'generated'} samples to "
                             f"estimate a covariance, got {n}; call update(x, real={real}) with more clips "
                             f"(published FVD/FAD use thousands)")
        mu = total / n
        sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu, sigma, n

    def stats(self, real: bool) -> ReferenceStats:
        """The accumulated statistics of one side, summed over all processes (call it on every rank).

        Use it to build reference statistics: update a metric with real clips only and pass
        ``metric.stats(real=True)`` as another metric's ``reference``.
        """
        with self.sync_context():
            mu, sigma, n = self._side_stats(real)
        return ReferenceStats(mu.clone(), sigma.clone(), n)

    def compute(self) -> torch.Tensor:
        if self.has_reference:
            mu_r, sigma_r = self.ref_mu, self.ref_sigma
        else:
            mu_r, sigma_r, _ = self._side_stats(real=True)
        mu_f, sigma_f, _ = self._side_stats(real=False)
        return frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
