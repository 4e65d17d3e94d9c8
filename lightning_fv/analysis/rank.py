"""Batched, exact rank correlation (Spearman), Pearson and cosine similarity on the device.

`dont-trust-your-eyes…` §3 and App. C.3 compare the flattened activations of many image
pairs per layer (up to 802,816 values per vector for Inception-V1's largest layer) with
Spearman's rank-order correlation. Here every vector is ranked **once** (average ranks
for ties, exactly as ``scipy.stats.spearmanr`` / ``scipy.stats.rankdata(method="average")``);
each ranked vector is then centred and scaled to unit norm, so that the correlation of
any pair is one dot product. All pairs of two sets are one chunked matrix product
(:func:`similarity_matrix`), chosen pairs are chunked row-wise dot products
(:func:`paired_similarity`): no Python loop over pairs.

Constant vectors. A constant vector has no defined correlation (zero variance).
``on_constant="nan"`` (the default, the same as SciPy, which returns ``nan`` and warns)
gives ``nan`` for every pair that involves a constant vector and emits a
``RuntimeWarning`` naming the constant rows; ``on_constant="raise"`` raises a
``ValueError`` naming them. Cosine similarity is undefined only for all-zero vectors and
follows the same policy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

METRICS = ("spearman", "pearson", "cosine")


def rankdata(x: Tensor, chunk_size: int = 64) -> Tensor:
    """Average ranks (1-based, ties get the mean of their ranks) along the last dim.

    Equal to ``scipy.stats.rankdata(x, method="average", axis=-1)``.

    Args:
        x: ``(N, D)`` (or ``(D,)``) real values; NaN is not allowed.
        chunk_size: rows ranked at once (bounds the memory of the sort).

    Returns:
        ``(N, D)`` float64 ranks in ``[1, D]`` on ``x``'s device.
    """
    squeeze = x.dim() == 1
    x2 = x.unsqueeze(0) if squeeze else x
    if x2.dim() != 2:
        raise ValueError(f"rankdata expects (N, D) or (D,), got shape {tuple(x.shape)}")
    if x2.is_floating_point() and torch.isnan(x2).any():
        raise ValueError("rankdata received NaN values; rank correlation is undefined for NaN")
    n, d = x2.shape
    out = torch.empty(n, d, dtype=torch.float64, device=x2.device)
    pos = torch.arange(d, device=x2.device)
    for s in range(0, n, max(1, chunk_size)):
        block = x2[s:s + chunk_size]
        sorted_vals, order = torch.sort(block, dim=1, stable=True)
        new = torch.ones_like(sorted_vals, dtype=torch.bool)
        new[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
        last = torch.ones_like(new)
        last[:, :-1] = new[:, 1:]
        # first / last position (0-based, in sorted order) of each element's tie group
        first_pos = torch.where(new, pos, torch.zeros_like(pos)).cummax(dim=1).values
        last_pos = torch.where(last, pos, torch.full_like(pos, d - 1))
        last_pos = last_pos.flip(1).cummin(dim=1).values.flip(1)
        avg = (first_pos + last_pos).to(torch.float64) / 2 + 1
        out[s:s + chunk_size].scatter_(1, order, avg)
    return out[0] if squeeze else out


def _unit_rows(z: Tensor, on_constant: str, what: str, name: str) -> Tensor:
    """Scale rows of ``z`` to unit norm; zero rows become NaN (or raise)."""
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    bad = (norm.squeeze(1) == 0) | ~torch.isfinite(norm.squeeze(1))
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        msg = (f"{name}: {len(rows)} {what} vector(s) in rows {rows[:10]} have no defined "
               f"{'cosine similarity (all zero)' if what == 'zero' else 'correlation (constant)'}")
        if on_constant == "raise":
            raise ValueError(msg + "; pass on_constant='nan' to get NaN for those pairs")
        warnings.warn(msg + "; their similarities are NaN", RuntimeWarning, stacklevel=3)
    return z / torch.where(bad.unsqueeze(1), torch.full_like(norm, float("nan")), norm)


def standardize(x: Tensor, metric: str = "spearman", dtype: torch.dtype = torch.float64,
                on_constant: str = "nan", name: str = "x") -> Tensor:
    """Map ``(N, D)`` vectors to unit vectors whose dot products are the ``metric``.

    - ``"spearman"`` (§3, C.3): average ranks, centred, unit norm.
    - ``"pearson"``: centred, unit norm.
    - ``"cosine"``: unit norm.

    Args:
        x: ``(N, D)`` vectors (e.g. flattened activations of ``N`` images).
        metric: one of ``"spearman"``, ``"pearson"``, ``"cosine"``.
        dtype: dtype of the returned unit vectors (float64 by default: exact to ~1e-12;
            ranking, centring and scaling always run in float64).
        on_constant: ``"nan"`` or ``"raise"`` (see the module docstring).
        name: used in warnings and errors.

    Returns:
        ``(N, D)`` tensor of ``dtype``; rows of undefined similarity are NaN.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {list(METRICS)}")
    if on_constant not in ("nan", "raise"):
        raise ValueError(f"on_constant must be 'nan' or 'raise', got {on_constant!r}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected (N, D) vectors, got shape {tuple(x.shape)}")
    if x.shape[1] < 2 and metric != "cosine":
        raise ValueError(f"{name}: {metric} needs vectors of length >= 2, got {x.shape[1]}")
    # centring and scaling always run in float64; only the unit vectors are cast to dtype
    if metric == "spearman":
        z = rankdata(x) - (x.shape[1] + 1) / 2.0
        # rows whose ranks are all tied (constant input) are exactly zero after centring
        return _unit_rows(z, on_constant, "constant", name).to(dtype)
    z = x.to(torch.float64)
    if metric == "pearson":
        if torch.isnan(z).any():
            raise ValueError(f"{name}: NaN values")
        const = (z == z[:, :1]).all(dim=1)
        z = z - z.mean(dim=1, keepdim=True)
        z[const] = 0
        return _unit_rows(z, on_constant, "constant", name).to(dtype)
    return _unit_rows(z, on_constant, "zero", name).to(dtype)


def similarity_matrix(x: Tensor, y: Tensor | None = None, metric: str = "spearman",
                      dtype: torch.dtype = torch.float64, chunk_size: int = 256,
                      on_constant: str = "nan") -> Tensor:
    """All-pairs similarity ``S[i, j] = Γ(x_i, y_j)`` without a loop over pairs.

    Args:
        x: ``(N, D)`` vectors; ``y``: ``(K, D)`` vectors (default ``x``).
        metric: ``"spearman"`` (default, exact ``scipy.stats.spearmanr``), ``"pearson"``,
            ``"cosine"``.
        dtype: computation dtype (float64 default; float32 is faster on GPUs and still
            accurate to ~1e-6 for 10^6-value vectors).
        chunk_size: rows of ``x`` per matrix product.
        on_constant: policy for constant vectors, see the module docstring.

    Returns:
        ``(N, K)`` float tensor of ``dtype`` in ``[-1, 1]`` (NaN for constant vectors).
    """
    zx = standardize(x, metric, dtype, on_constant, "x")
    zy = zx if y is None else standardize(_same_width(x, y), metric, dtype, on_constant, "y")
    out = torch.empty(zx.shape[0], zy.shape[0], dtype=dtype, device=zx.device)
    for s in range(0, zx.shape[0], max(1, chunk_size)):
        out[s:s + chunk_size] = _dot_blocks(zx[s:s + chunk_size], zy)
    return out.clamp_(-1, 1)


def _dot_blocks(a: Tensor, b: Tensor, block: int = 8192) -> Tensor:
    """``a @ b.T``; below float64 the inner dimension is cut into blocks whose partial
    products are summed in float64, which keeps float32 results within ~1e-7 of exact
    for 10^6-value unit vectors."""
    if a.dtype == torch.float64 or a.shape[1] <= block:
        return a @ b.T
    acc = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for k in range(0, a.shape[1], block):
        acc += (a[:, k:k + block] @ b[:, k:k + block].T).double()
    return acc.to(a.dtype)


def paired_similarity(x: Tensor, y: Tensor, pairs: Tensor | None = None,
                      metric: str = "spearman", dtype: torch.dtype = torch.float64,
                      chunk_size: int = 4096, on_constant: str = "nan") -> Tensor:
    """Similarity of chosen pairs ``Γ(x[p0], y[p1])`` (or of rows ``x_i``, ``y_i``).

    Each vector is ranked/standardized once, however many pairs it is in.

    Args:
        x: ``(N, D)``; y: ``(K, D)``.
        pairs: ``(P, 2)`` int64 indices into ``x`` and ``y``; ``None`` pairs row ``i`` of
            ``x`` with row ``i`` of ``y`` (needs ``N == K``).
        metric, dtype, on_constant: see :func:`similarity_matrix`.
        chunk_size: pairs per batched dot product.

    Returns:
        ``(P,)`` similarities.
    """
    zx = standardize(x, metric, dtype, on_constant, "x")
    zy = zx if y is x else standardize(_same_width(x, y), metric, dtype, on_constant, "y")
    if pairs is None:
        if zx.shape[0] != zy.shape[0]:
            raise ValueError(f"row-wise pairing needs equal counts, got {zx.shape[0]} and "
                             f"{zy.shape[0]}; pass pairs=(P, 2) indices")
        pairs = torch.arange(zx.shape[0], device=zx.device).unsqueeze(1).expand(-1, 2)
    pairs = pairs.to(zx.device, torch.long)
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (P, 2), got {tuple(pairs.shape)}")
    out = torch.empty(pairs.shape[0], dtype=dtype, device=zx.device)
    for s in range(0, pairs.shape[0], max(1, chunk_size)):
        p = pairs[s:s + chunk_size]
        out[s:s + chunk_size] = (zx[p[:, 0]] * zy[p[:, 1]]).sum(dim=1, dtype=torch.float64)
    return out.clamp_(-1, 1)


def _same_width(x: Tensor, y: Tensor) -> Tensor:
    if y.dim() != 2 or y.shape[1] != x.shape[1]:
        raise ValueError(f"x and y must be (N, D) and (K, D) with the same D, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return y


def spearman_matrix(x: Tensor, y: Tensor | None = None, **kw: object) -> Tensor:
    """:func:`similarity_matrix` with ``metric="spearman"``."""
    return similarity_matrix(x, y, metric="spearman", **kw)


def pearson_matrix(x: Tensor, y: Tensor | None = None, **kw: object) -> Tensor:
    """:func:`similarity_matrix` with ``metric="pearson"``."""
    return similarity_matrix(x, y, metric="pearson", **kw)


def cosine_matrix(x: Tensor, y: Tensor | None = None, **kw: object) -> Tensor:
    """:func:`similarity_matrix` with ``metric="cosine"``."""
    return similarity_matrix(x, y, metric="cosine", **kw)


SIMILARITIES: dict[str, Callable[..., Tensor]] = {
    "spearman": spearman_matrix,
    "pearson": pearson_matrix,
    "cosine": cosine_matrix,
}
