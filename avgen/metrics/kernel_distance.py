"""Kernel distance between feature sets (KVD on I3D features, KID-style), exact under DDP.

    K(x, y) = (γ ⟨x, y⟩ + c)^d,  γ = 1 / D, c = 1, d = 3
    MMD²_u(X, Y) = Σ_{i≠j} K(x_i, x_j) / (m (m − 1)) + Σ_{i≠j} K(y_i, y_j) / (n (n − 1)) − 2 Σ_{i,j} K(x_i, y_j) / (m n)

the unbiased estimator of the squared maximum mean discrepancy (Gretton et al. 2012, "A Kernel
Two-Sample Test", eq. 3 / Lemma 6) with the cubic polynomial kernel of the Kernel Inception Distance
(Bińkowski et al. 2018, "Demystifying MMD GANs", §4). On I3D features this is the KVD column of
JavisBench: JavisVerse/JavisDiT ``eval/javisbench/src/utils.py:246-262@b505b37`` (``polynomial_mmd``:
scikit-learn's ``polynomial_kernel`` with its defaults degree 3, ``gamma=None`` → 1 / D, ``coef0=1``; the
diagonals of K_XX and K_YY left out; one estimate over all clips, no subsets, no scaling), called as
``polynomial_mmd(fake, real)`` at ``eval/javisbench/src/metrics.py:55@b505b37``.

The estimate can be slightly negative when the two sets come from one distribution (it is unbiased,
not clipped). :class:`FeatureSet` keeps per-clip features as a list state concatenated across
processes, so the value does not depend on how clips are split over ranks (the estimator is a sum
over pairs, invariant to the order of the rows).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> torch.Tensor:
    """K (N, M) float64 with ``K[i, j] = (gamma · ⟨x_i, y_j⟩ + coef0) ** degree`` for features x (N, D) and
    y (M, D); ``gamma=None`` is ``1 / D`` (scikit-learn's ``polynomial_kernel``).

    Raises:
        ValueError: x or y not 2-D, or different widths.
    """
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64).to(
        torch.as_tensor(x).device)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"polynomial_kernel expects features (N, D) and (M, D), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    g = 1.0 / x.shape[1] if gamma is None else float(gamma)
    return (g * (x @ y.T) + float(coef0)) ** int(degree)


def polynomial_mmd(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None,
                   coef0: float = 1.0) -> torch.Tensor:
    """Unbiased MMD² (0-dim float64) between features x (m, D) and y (n, D) under :func:`polynomial_kernel`:
    the off-diagonal means of K_XX and K_YY minus twice the mean of K_XY (JavisBench's ``polynomial_mmd``,
    ``eval/javisbench/src/utils.py:246-262@b505b37``, which computes it in the features' float32; here
    float64).

    >>> x = torch.tensor([[0.0], [1.0]]); y = torch.tensor([[2.0], [3.0]])
    >>> float(polynomial_mmd(x, y, degree=1, gamma=1.0, coef0=0.0))  # 0 / 2 + 12 / 2 − 2 · 5 / 4
    3.5

    Raises:
        ValueError: fewer than 2 rows on a side (the off-diagonal means need 2), or shapes as
            :func:`polynomial_kernel`.
    """
    m, n = int(torch.as_tensor(x).shape[0]), int(torch.as_tensor(y).shape[0])
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased kernel distance needs at least 2 feature rows per side, got {m} and {n}")
    k_xx = polynomial_kernel(x, x, degree, gamma, coef0)
    k_yy = polynomial_kernel(y, y, degree, gamma, coef0)
    k_xy = polynomial_kernel(x, y, degree, gamma, coef0)
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return xx + yy - 2 * k_xy.sum() / (m * n)


class FeatureSet(Metric):
    """Per-clip feature rows, kept as they come (float64): the state of a kernel distance's side.

    ``update(features)`` appends (N, D) rows; ``value()`` returns them all (R, D) float64. The list state
    ``features`` is concatenated across processes (``dist_reduce_fx="cat"``; avgen's
    :meth:`~avgen.evaluation.processes.Processes.reduce` concatenates in rank order), so two processes'
    merged rows are one process's rows, possibly reordered.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("features", default=[], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor) -> None:
        """Add feature rows (N, D) (or one row (D,))."""
        rows = torch.as_tensor(features).detach().to(self.device, torch.float64)
        self.features.append(rows.reshape(1, -1) if rows.ndim == 1 else rows)

    def count(self) -> int:
        """Rows held (this process's, or all after a reduction)."""
        return sum(int(t.shape[0]) for t in self.features)

    def value(self) -> torch.Tensor:
        """All rows (R, D) float64 (R = 0 gives (0, 0))."""
        if not self.features:
            return torch.zeros(0, 0, dtype=torch.float64, device=self.device)
        feats = self.features if isinstance(self.features, list) else [self.features]
        return torch.cat(feats)

    def compute(self) -> torch.Tensor:
        return self.value()
