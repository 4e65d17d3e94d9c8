"""Batched rank correlation equals scipy.stats to 1e-5 (ties, constant vectors)."""

import warnings

import numpy as np
import pytest
import scipy.stats as ss
import torch

from lightning_fv.analysis.rank import (
    paired_similarity,
    rankdata,
    similarity_matrix,
    standardize,
)


def _scipy_matrix(x: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    out = np.empty((len(x), len(y)))
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            if metric == "spearman":
                out[i, j] = ss.spearmanr(a, b)[0]
            elif metric == "pearson":
                out[i, j] = ss.pearsonr(a, b)[0]
            else:
                out[i, j] = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    return out


def test_rankdata_matches_scipy_average_ranks_with_many_ties():
    x = torch.randint(0, 4, (7, 300), generator=torch.Generator().manual_seed(0)).float()
    ref = ss.rankdata(x.numpy(), method="average", axis=1)
    assert np.array_equal(rankdata(x).numpy(), ref)


@pytest.mark.parametrize("metric", ["spearman", "pearson", "cosine"])
def test_similarity_matrix_matches_scipy_to_1e5_with_ties(metric):
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(6, 500, generator=g)).round(decimals=1)  # many tied zeros
    y = torch.relu(torch.randn(5, 500, generator=g)).round(decimals=1)
    got = similarity_matrix(x, y, metric=metric).numpy()
    ref = _scipy_matrix(x.double().numpy(), y.double().numpy(), metric)
    assert np.abs(got - ref).max() < 1e-5


def test_float32_large_vectors_match_scipy_to_1e5():
    g = torch.Generator().manual_seed(2)
    x = torch.relu(torch.randn(3, 200_000, generator=g))
    x[1] = x[0] + 0.3 * torch.relu(torch.randn(200_000, generator=g))  # correlated, ties at 0
    got = similarity_matrix(x, metric="spearman", dtype=torch.float32).numpy()
    ref = _scipy_matrix(x.numpy(), x.numpy(), "spearman")
    assert np.abs(got - ref).max() < 1e-5


def test_paired_similarity_equals_matrix_entries():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 64, generator=g), torch.randn(4, 64, generator=g)
    pairs = torch.tensor([[0, 0], [7, 3], [2, 1], [2, 1]])
    got = paired_similarity(x, y, pairs)
    full = similarity_matrix(x, y)
    assert torch.allclose(got, full[pairs[:, 0], pairs[:, 1]], atol=1e-12)


def test_constant_vector_gives_nan_with_warning_like_scipy():
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(4))
    x[1] = 2.5
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = similarity_matrix(x)
        ref = ss.spearmanr(x[0].numpy(), x[1].numpy())[0]
    assert np.isnan(ref)
    assert torch.isnan(s[1]).all() and torch.isnan(s[:, 1]).all()
    assert torch.isfinite(s[0, 2]) and any("rows [1]" in str(m.message) for m in w)


def test_constant_vector_raises_when_asked():
    x = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="constant"):
        standardize(x, "spearman", on_constant="raise")


def test_unknown_metric_names_valid_ones():
    with pytest.raises(ValueError, match="spearman"):
        similarity_matrix(torch.randn(2, 5), metric="kendall")
