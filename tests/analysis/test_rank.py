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


def test_chunked_computation_equals_one_chunk_and_scipy():
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 3, (7, 40), generator=g).double()  # ties everywhere
    y = torch.randn(5, 40, generator=g)
    ref = ss.rankdata(x.numpy(), method="average", axis=1)
    for chunk in (1, 2, 3):
        assert np.array_equal(rankdata(x, chunk_size=chunk).numpy(), ref)
    assert np.array_equal(rankdata(x[2]).numpy(), ss.rankdata(x[2].numpy()))  # (D,) input
    full = similarity_matrix(x, y, chunk_size=256)
    assert np.abs(full.numpy() - _scipy_matrix(x.numpy(), y.double().numpy(), "spearman")
                  ).max() < 1e-12
    torch.testing.assert_close(similarity_matrix(x, y, chunk_size=2), full, rtol=0, atol=1e-15)
    pairs = torch.tensor([[0, 4], [6, 0], [3, 3], [1, 2], [5, 1]])
    torch.testing.assert_close(paired_similarity(x, y, pairs, chunk_size=2),
                               full[pairs[:, 0], pairs[:, 1]], rtol=0, atol=1e-15)


def test_named_wrappers_and_row_wise_pairs():
    from lightning_fv.analysis.rank import (
        SIMILARITIES,
        cosine_matrix,
        pearson_matrix,
        spearman_matrix,
    )

    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(4, 30, generator=g), torch.randn(4, 30, generator=g)
    for name, fn in (("spearman", spearman_matrix), ("pearson", pearson_matrix),
                     ("cosine", cosine_matrix)):
        ref = _scipy_matrix(x.double().numpy(), y.double().numpy(), name)
        assert np.abs(fn(x, y).numpy() - ref).max() < 1e-12
        assert SIMILARITIES[name] is fn
        diag = paired_similarity(x, y, metric=name)  # row i with row i
        assert np.abs(diag.numpy() - np.diag(ref)).max() < 1e-12
    with pytest.raises(ValueError, match="equal counts"):
        paired_similarity(x, y[:3])


def test_similarities_are_clamped_to_the_unit_interval_and_keep_dtype():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 1001, generator=g, dtype=torch.float64) * 1e3
    both = torch.cat([x, -x, 3 * x])
    for metric in ("spearman", "pearson", "cosine"):
        s = similarity_matrix(both, metric=metric)
        assert s.max().item() == 1.0 and s.min().item() == -1.0  # exactly, not 1 + 2e-16
        assert s.dtype == torch.float64
        p = paired_similarity(both, both, metric=metric)
        assert p.max().item() == 1.0 and p.min().item() > 1 - 1e-12
    assert similarity_matrix(x, dtype=torch.float32).dtype == torch.float32


def test_pearson_of_a_constant_row_is_nan_even_with_rounding_and_nan_input_raises():
    x = torch.randn(3, 9, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    x[1] = 0.1  # 0.1 - mean(0.1, …) is not exactly 0 in float64
    with pytest.warns(RuntimeWarning, match=r"rows \[1\]"):
        s = similarity_matrix(x, metric="pearson")
    assert torch.isnan(s[1]).all() and torch.isfinite(s[0, 2])
    x[1, 3] = float("nan")
    for metric in ("pearson", "spearman"):
        with pytest.raises(ValueError, match="NaN"):
            similarity_matrix(x, metric=metric)
    with pytest.raises(ValueError, match="length >= 2"):
        similarity_matrix(torch.randn(3, 1))
    assert similarity_matrix(torch.tensor([[2.0], [-3.0]]), metric="cosine").tolist() == \
        [[1.0, -1.0], [-1.0, 1.0]]


def test_float32_products_are_summed_in_float64_blocks_exactly_like_one_product():
    from lightning_fv.analysis.rank import _dot_blocks

    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(3, 10, generator=g), torch.randn(4, 10, generator=g)
    ref = (a.double() @ b.double().T)
    for block in (4, 9, 10):
        out = _dot_blocks(a, b, block=block)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref.float(), rtol=0, atol=2e-6)
    # a first block of zeros would be missed by a loop that starts at 1
    a[:, 0], b[:, 0] = 100.0, 100.0
    torch.testing.assert_close(_dot_blocks(a, b, block=4), (a.double() @ b.double().T).float())


def test_rows_beyond_the_vector_length_and_wrapper_options_are_honoured():
    from lightning_fv.analysis.rank import pearson_matrix, spearman_matrix

    g = torch.Generator().manual_seed(10)
    x = torch.randn(6, 3, generator=g)  # more rows than values per row
    ref = _scipy_matrix(x.double().numpy(), x.double().numpy(), "spearman")
    assert np.abs(similarity_matrix(x, chunk_size=1).numpy() - ref).max() < 1e-12
    assert spearman_matrix(x, dtype=torch.float32).dtype == torch.float32
    assert pearson_matrix(x, dtype=torch.float32).dtype == torch.float32
    from lightning_fv.analysis.rank import cosine_matrix

    assert cosine_matrix(x, dtype=torch.float32).dtype == torch.float32
    # two values per row is enough for a rank correlation (±1)
    two = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    torch.testing.assert_close(similarity_matrix(two),
                               torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64))


def test_shape_errors_and_constant_policies_name_what_is_wrong():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(11))
    with pytest.raises(ValueError, match="same D"):
        similarity_matrix(x, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"shape \(P, 2\)"):
        paired_similarity(x, x, torch.zeros(2, 3, dtype=torch.long))
    const = torch.zeros(12, 5)
    const[0] = torch.arange(5.0)
    with pytest.raises(ValueError, match=r"11 constant vector\(s\) in rows \[1, 2, 3, 4, 5, 6, "
                                         r"7, 8, 9, 10\] have no defined correlation"):
        standardize(const, "spearman", on_constant="raise")
    with pytest.raises(ValueError, match=r"have no defined cosine similarity \(all zero\)"):
        standardize(const, "cosine", on_constant="raise")
    with pytest.raises(ValueError, match="no defined correlation"):
        standardize(const, "pearson", on_constant="raise")
    with pytest.warns(RuntimeWarning, match="their similarities are NaN"):
        z = standardize(const)  # default: NaN rows, no error
    assert torch.isnan(z[1:]).all() and torch.isfinite(z[0]).all()


def test_a_paired_similarity_that_rounds_below_minus_one_is_clamped_to_exactly_minus_one():
    # this vector's unit vector has a dot product with itself of 1 + 2^-52 in float64, so
    # the pair (v, -v) sums to -1 - 2^-52 before the clamp
    v = torch.tensor([[-1.3985953953708767, 0.4033468476292993, 0.8380263329976598,
                       -0.7192575784693592, -0.40334352493217457]], dtype=torch.float64)
    z = standardize(v, "cosine")
    assert (z * -z).sum(1, dtype=torch.float64).item() < -1.0
    assert paired_similarity(v, -v, metric="cosine").tolist() == [-1.0]
    assert paired_similarity(v, v, metric="cosine").tolist() == [1.0]
