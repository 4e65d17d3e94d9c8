"""Grad-IFV's formulas against independent computations: hand-worked Z_k(y), numpy/scipy
eigenproblems for Opt. (3) with and without a critical space, the sign rule on hand-made
vectors, and the input checks (`inverse-feature-visualization` §2.1 and supp. S1)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from lightning_fv.ifv import (
    fix_sign,
    grad_ifv,
    gradient_residual,
    substitution_basis,
    z_matrix,
    z_matrix_inverse,
)

F64 = torch.float64


def _problem(seed: int = 0, b: int = 3, n_f: int = 4, n_p: int = 7):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(b, n_f, dtype=F64, generator=g)
    jac = torch.randn(b, n_f, n_p, dtype=F64, generator=g)
    return y, jac


def _np_z(y: np.ndarray, k: float) -> np.ndarray:
    yb = y / np.linalg.norm(y)
    return np.eye(len(y)) - k / (k + 1) * np.outer(yb, yb)


def _np_sign(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x if x @ y > 0 else -x


def _np_grad_ifv(y: np.ndarray, jac: np.ndarray, k: float,
                 critical: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Opt. (3) solved directly (§2.1, S1): x = Z⁻¹c for c ∈ C, minimize the Rayleigh
    quotient of Z Dy Dyᵀ Z over that space, a generalized symmetric eigenproblem (scipy)."""
    z = _np_z(y, k)
    a = z @ jac @ jac.T @ z
    basis = np.eye(len(y)) if critical is None else np.linalg.inv(z) @ critical
    w, v = scipy.linalg.eigh(basis.T @ a @ basis, basis.T @ basis)
    x = basis @ v[:, 0]
    return _np_sign(x / np.linalg.norm(x), y), np.sqrt(np.clip(w, 0, None))


def test_z_and_its_inverse_by_hand_for_one_vector_and_keep_the_dtype() -> None:
    """y = (3, 4): ȳ = (0.6, 0.8), Z_2 = Id − ⅔ȳȳᵀ, Z_2⁻¹ = Id + 2ȳȳᵀ (§2.1, S1)."""
    y = torch.tensor([3.0, 4.0], dtype=F64)
    z = torch.tensor([[1 - 2 / 3 * 0.36, -2 / 3 * 0.48], [-2 / 3 * 0.48, 1 - 2 / 3 * 0.64]],
                     dtype=F64)
    torch.testing.assert_close(z_matrix(y, 2.0), z, rtol=0, atol=1e-15)
    torch.testing.assert_close(z_matrix_inverse(y, 2.0),
                               torch.tensor([[1.72, 0.96], [0.96, 2.28]], dtype=F64),
                               rtol=0, atol=1e-15)
    for dtype in (torch.bfloat16, torch.float16):  # the identity is built in y's dtype
        assert z_matrix(y.to(dtype), 2.0).dtype == dtype
        assert z_matrix_inverse(y.to(dtype), 2.0).dtype == dtype


def test_a_response_of_norm_exactly_eps_is_refused() -> None:
    y = torch.tensor([[1e-30, 0.0]], dtype=F64)  # ‖y‖ = 1e-30 exactly: refused (n ≤ eps)
    assert float(y.norm()) == 1e-30
    with pytest.raises(ValueError, match="zero norm"):
        z_matrix(y, 1.0)
    z_matrix(torch.tensor([[2e-30, 0.0]], dtype=F64), 1.0)  # just above: accepted


def test_grad_ifv_and_residual_match_scipy_with_the_default_power_two() -> None:
    """C = ℝ^{n_f}: x* is the eigenvector of Z Dy Dyᵀ Z to the smallest eigenvalue, the
    singular values of M are the square roots of its eigenvalues (§2.1)."""
    y, jac = _problem()
    x, sv = grad_ifv(y, jac, return_singular_values=True)  # default k = 2
    for b in range(y.shape[0]):
        ref_x, ref_sv = _np_grad_ifv(y[b].numpy(), jac[b].numpy(), 2.0)
        np.testing.assert_allclose(x[b].numpy(), ref_x, atol=1e-10)
        np.testing.assert_allclose(sv[b].numpy(), ref_sv, atol=1e-10)
        # ‖x*ᵀ Z Dy‖ from numpy is the smallest singular value
        res = np.linalg.norm(ref_x @ _np_z(y[b].numpy(), 2.0) @ jac[b].numpy())
        r = gradient_residual(x[b:b + 1], y[b:b + 1], jac[b:b + 1])
        assert abs(float(r) - res) < 1e-10
    assert sv[:, 0].min() < 1.0  # a value below 1 is compared (not clamped up to 1)
    # the residual of an arbitrary unit x, by Gram matrix, default k = 2
    u = torch.nn.functional.normalize(torch.arange(1.0, 5.0, dtype=F64), dim=0).expand(3, 4)
    gram = jac @ jac.transpose(1, 2)
    ref = [np.linalg.norm(u[b].numpy() @ _np_z(y[b].numpy(), 2.0) @ jac[b].numpy())
           for b in range(3)]
    np.testing.assert_allclose(gradient_residual(u, y, gram=gram).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("dim_c", [1, 2, 4])
def test_grad_ifv_with_a_critical_space_matches_the_generalized_eigenproblem(dim_c: int) -> None:
    """Z_k(y)x ∈ C (Opt. (3), S1 "Incorporating the linear constraint") solved as a
    generalized eigenproblem on Z⁻¹C (scipy); a float32, non-orthonormal basis of C."""
    y, jac = _problem(1)
    g = torch.Generator().manual_seed(5)
    critical = torch.randn(4, dim_c, dtype=F64, generator=g)
    k = 1.5
    x, sv = grad_ifv(y, jac, k=k, critical=critical.float(), return_singular_values=True)
    assert x.dtype == F64 and sv.shape == (3, dim_c)
    for b in range(3):
        ref_x, ref_sv = _np_grad_ifv(y[b].numpy(), jac[b].numpy(), k,
                                     critical.float().double().numpy())
        np.testing.assert_allclose(x[b].numpy(), ref_x, atol=1e-7)
        np.testing.assert_allclose(sv[b].numpy(), ref_sv, atol=1e-7)
        # the constraint: Z x lies in C
        zx = _np_z(y[b].numpy(), k) @ x[b].numpy()
        coef = np.linalg.lstsq(critical.numpy(), zx, rcond=None)[0]
        np.testing.assert_allclose(critical.numpy() @ coef, zx, atol=1e-6)
    if dim_c < 4:  # the constraint matters: the unconstrained answer differs
        assert not torch.allclose(x, grad_ifv(y, jac, k=k), atol=1e-3)


def test_substitution_basis_shapes_and_span() -> None:
    y, _ = _problem(2, b=3, n_f=5)
    u = substitution_basis(y, 2.0)
    assert u.shape == (3, 5, 5) and torch.equal(u[1], torch.eye(5, dtype=F64))
    c = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    u = substitution_basis(y, 2.0, c)
    assert u.shape == (3, 5, 2)
    torch.testing.assert_close(u.transpose(1, 2) @ u, torch.eye(2, dtype=F64).expand(3, 2, 2))
    for b in range(3):  # span(U) = Z_k(y)⁻¹ C: projecting Z⁻¹C onto span(U) changes nothing
        zc = np.linalg.inv(_np_z(y[b].numpy(), 2.0)) @ c.numpy()
        ub = u[b].numpy()
        np.testing.assert_allclose(ub @ ub.T @ zc, zc, atol=1e-12)
    # one vector y (n_f,) gives the basis of the batch of one
    torch.testing.assert_close(substitution_basis(y[0], 2.0, c), substitution_basis(y[:1], 2.0, c))


def test_input_checks() -> None:
    y, jac = _problem()
    with pytest.raises(ValueError, match="gram must be"):
        grad_ifv(y, gram=torch.ones(3, 4, 5, dtype=F64))
    with pytest.raises(ValueError, match="gram must be"):
        grad_ifv(y, gram=torch.ones(4, 4, dtype=F64))
    with pytest.raises(ValueError, match="y must be"):
        grad_ifv(torch.ones(3, 5, dtype=F64), jac)
    with pytest.raises(ValueError, match="pass exactly one"):
        gradient_residual(y, y, jac, gram=jac @ jac.transpose(1, 2))
    for bad in (torch.ones(5, 2), torch.ones(4, 0), torch.ones(4, 5), torch.ones(4, 2, 1)):
        with pytest.raises(ValueError, match="critical space basis must be"):
            grad_ifv(y, jac, critical=bad)


def test_sign_rule_on_hand_made_vectors() -> None:
    """xᵀy > 0; if |xᵀy| ≤ 1e-12‖y‖ the entry of largest magnitude is made positive."""
    x = torch.tensor([[0.6, -0.8],  # xᵀy = −0.2 < 0: flipped
                      [2.0, -1.0 - 1e-9],  # xᵀy = −2e-9 > 1e-12‖y‖: flipped by the dot
                      [-1e-15, 0.5],  # xᵀy = −1e-9 < 1e-12‖y‖ = 1e-6: largest entry > 0
                      [0.3, -0.9]], dtype=F64)  # y = 0: largest entry made positive
    y = torch.tensor([[1.0, 1.0], [1.0, 2.0], [1e6, 0.0], [0.0, 0.0]], dtype=F64)
    want = torch.tensor([[-0.6, 0.8], [-2.0, 1.0 + 1e-9], [-1e-15, 0.5], [-0.3, 0.9]],
                        dtype=F64)
    assert torch.equal(fix_sign(x, y), want)
    for b in range(4):  # one vector at a time, and as a 1-D pair
        assert torch.equal(fix_sign(x[b:b + 1], y[b:b + 1])[0], want[b])
        assert torch.equal(fix_sign(x[b], y[b]), want[b])
    # x in float32 with a float64 y: the result keeps x's dtype
    out = fix_sign(x[:1].float(), y[:1])
    assert out.dtype == torch.float32 and torch.equal(out, want[:1].float())
    # and the threshold is rounded to x's dtype like the dot product: xᵀy = fl32(−1e-12)·9
    # rounds to exactly −fl32(1e-12·‖y‖) = −fl32(9e-12) (> 9e-12), not above it in float32
    x32, y64 = torch.tensor([[-1e-12, 0.5]]), torch.tensor([[9.0, 0.0]], dtype=F64)
    assert float((x32 * y64.float()).sum()) == -float((1e-12 * y64.norm()).float())
    assert torch.equal(fix_sign(x32, y64), x32)
