"""KVD's kernel distance: the unbiased polynomial-kernel MMD² of JavisBench (eval/javisbench/src/utils.py:246-262
@b505b37) on hand cases, against scikit-learn's kernel as JavisBench calls it, its known values, and the feature
rows merged across processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avgen.metrics.kernel_distance import FeatureSet, polynomial_kernel, polynomial_mmd


def test_hand_case_with_the_default_cubic_kernel():
    # D = 1 so gamma = 1: K(a, b) = (a b + 1)^3. XX off-diagonal: K(0, 1) = 1 (twice) -> 2 / 2 = 1;
    # YY: K(2, 3) = 7^3 = 343 (twice) -> 343; XY: 1 + 1 + 27 + 64 = 93 -> 93 / 4 = 23.25, twice 46.5.
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [3.0]])
    assert float(polynomial_mmd(x, y)) == 1 + 343 - 46.5
    assert polynomial_kernel(x, y).tolist() == [[1.0, 1.0], [27.0, 64.0]]
    # gamma defaults to 1 / D: with two equal columns ⟨x, y⟩ doubles and gamma = 1 / 2 halves it back
    assert float(polynomial_mmd(x.repeat(1, 2), y.repeat(1, 2))) == 297.5


def test_equals_javisbench_formula_with_sklearn_kernel():
    from sklearn.metrics.pairwise import polynomial_kernel as sk_kernel

    g = np.random.default_rng(0)
    x, y = g.standard_normal((7, 5)), g.standard_normal((4, 5)) + 0.3
    k_xx, k_yy, k_xy = sk_kernel(x), sk_kernel(y), sk_kernel(x, y)
    expected = ((k_xx.sum() - np.trace(k_xx)) / (7 * 6) + (k_yy.sum() - np.trace(k_yy)) / (4 * 3)
                - 2 * k_xy.sum() / (7 * 4))
    assert float(polynomial_mmd(torch.from_numpy(x), torch.from_numpy(y))) == pytest.approx(expected, rel=1e-12)
    # other kernels, as evaluate.kvd can set them
    expected = sk_kernel(x, y, degree=2, gamma=0.5, coef0=0.0)
    torch.testing.assert_close(polynomial_kernel(x, y, degree=2, gamma=0.5, coef0=0.0), torch.from_numpy(expected))


def test_known_values_of_the_unbiased_estimator():
    g = np.random.default_rng(1)
    x = torch.from_numpy(g.standard_normal((6, 3)))
    k = polynomial_kernel(x, x)
    total, diagonal = float(k.sum()), float(k.diagonal().sum())
    # identical sets: the unbiased estimate is 2 (S − d) / (m (m − 1)) − 2 S / m², not 0
    assert float(polynomial_mmd(x, x)) == pytest.approx(2 * (total - diagonal) / 30 - 2 * total / 36, rel=1e-12)
    # symmetric in its arguments; invariant to the order of the rows
    y = torch.from_numpy(g.standard_normal((5, 3)))
    assert float(polynomial_mmd(x, y)) == pytest.approx(float(polynomial_mmd(y.flip(0), x)), rel=1e-12)
    # unbiased: over many pairs of small sets from one distribution the mean is 0 (the estimate that keeps
    # the diagonals is biased upwards by far more)
    draws = torch.from_numpy(g.standard_normal((400, 2, 5, 2)))
    values = torch.stack([polynomial_mmd(a, b) for a, b in draws])
    assert abs(float(values.mean())) < 3 * float(values.std()) / 20
    biased = torch.stack([polynomial_kernel(a, a).mean() + polynomial_kernel(b, b).mean()
                          - 2 * polynomial_kernel(a, b).mean() for a, b in draws])
    assert float(biased.mean()) > 10 * float(values.std()) / 20
    with pytest.raises(ValueError, match="at least 2 feature rows per side"):
        polynomial_mmd(x[:1], y)


def test_feature_rows_merged_across_processes_give_the_one_process_value():
    g = np.random.default_rng(2)
    rows = torch.from_numpy(g.standard_normal((5, 4)))
    one, first, second = FeatureSet(), FeatureSet(), FeatureSet()
    for i, row in enumerate(rows):
        one.update(row)
        (first if i % 2 == 0 else second).update(row[None])
    first.merge_state(second)
    assert first.count() == one.count() == 5
    reference = torch.from_numpy(g.standard_normal((3, 4)))
    merged, single = polynomial_mmd(first.value(), reference), polynomial_mmd(one.value(), reference)
    assert float(merged) == pytest.approx(float(single), rel=1e-12)
    assert FeatureSet().value().shape == (0, 0)
