"""Algorithm 1 and the ρ search of `inverse-feature-visualization` §2.2 / §3.5 on
hand-worked examples: lines in a plane at known angles (SLERP, merging, its order and
weights), diagonal Gram matrices with known singular values, principal angles against
scipy and closed forms, and the nested-intervals bookkeeping with a stubbed Algorithm 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import lightning_fv.ifv.critical as critical_mod
from lightning_fv.ifv import (
    critical_space,
    critical_spaces,
    merge_subspaces,
    principal_angles,
    slerp,
)
from lightning_fv.ifv.critical import (
    approximate_cokernel,
    left_singular,
    orthogonal_complement,
    small_singular_subspaces,
)

F64 = torch.float64


def _line(deg: float, n: int = 3) -> torch.Tensor:
    """Unit column (n, 1) at ``deg`` degrees from e_0 in the (e_0, e_1) plane."""
    v = torch.zeros(n, 1, dtype=F64)
    v[0, 0], v[1, 0] = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return v


def _same_line(a: torch.Tensor, deg: float) -> bool:
    return a.shape[1] == 1 and abs(abs(float((a[:, 0] * _line(deg, a.shape[0])[:, 0]).sum()))
                                   - 1) < 1e-12


def test_slerp_by_hand_per_column_and_the_antipodal_linear_case() -> None:
    # 60° apart, t = 1/4: 15° from p (the SLERP of §2.2)
    torch.testing.assert_close(slerp(_line(0), _line(60), 0.25), _line(15), rtol=0, atol=1e-15)
    # two columns interpolated separately: 60° and 20° pairs in orthogonal planes
    p = torch.zeros(4, 2, dtype=F64)
    q = torch.zeros(4, 2, dtype=F64)
    p[0, 0] = p[2, 1] = 1.0
    q[0, 0], q[1, 0] = math.cos(math.pi / 3), math.sin(math.pi / 3)
    q[2, 1], q[3, 1] = math.cos(math.pi / 9), math.sin(math.pi / 9)
    want = torch.zeros(4, 2, dtype=F64)
    want[0, 0], want[1, 0] = math.cos(math.pi / 12), math.sin(math.pi / 12)
    want[2, 1], want[3, 1] = math.cos(math.pi / 36), math.sin(math.pi / 36)
    torch.testing.assert_close(slerp(p, q, 0.25), want, rtol=0, atol=1e-15)
    # antipodal pair (its computed cosine is −1 − 2⁻⁵², clamped): the linear branch,
    # (1 − t)p + t(−p) = −p/2 at t = 3/4, returned at unit length
    u = torch.ones(3, 1, dtype=F64) / math.sqrt(3)
    assert float((u * -u).sum()) < -1
    torch.testing.assert_close(slerp(u, -u, 0.75), -u, rtol=0, atol=1e-15)


def test_principal_angles_of_unnormalized_lines_near_orthogonal_and_empty() -> None:
    a = torch.tensor([[3.0], [4.0], [0.0]], dtype=F64)  # not unit: orthonormalized first
    b = torch.tensor([[1.0], [0.0], [2.0]], dtype=F64)
    ang, pa, pb = principal_angles(a, b)
    ref = scipy.linalg.subspace_angles(a.numpy(), b.numpy())
    np.testing.assert_allclose(ang.numpy(), ref, atol=1e-14)
    np.testing.assert_allclose((pa * pb).sum(0).numpy(), np.cos(ref), atol=1e-14)
    # 90° − 1e-9: the cosine formula keeps the 1e-9 (the sine one would round it away)
    d = 1e-9
    c = torch.tensor([[math.sin(d)], [math.cos(d)], [0.0]], dtype=F64)
    ang, _, _ = principal_angles(torch.eye(3, dtype=F64)[:, :1], c)
    assert abs(float(ang[0]) - (math.pi / 2 - d)) < 1e-15
    # an empty space: no angles, empty principal vectors of the ambient dimension
    ang, pa, pb = principal_angles(torch.zeros(5, 0, dtype=F64), torch.eye(5, dtype=F64)[:, :2])
    assert ang.shape == (0,) and pa.shape == (5, 0) and pb.shape == (5, 0)
    assert ang.dtype == pa.dtype == pb.dtype == F64


def test_merge_weights_and_the_angle_threshold() -> None:
    """t = w_b/(w_a + w_b) (Algorithm 1): weights 1 and 3 of lines at 0° and 30° merge at
    22.5°; a pair at exactly the threshold angle is dropped ("45° or higher", §2.2)."""
    merged, w = merge_subspaces(_line(0), 1.0, _line(30), 3.0)
    assert w == 4.0 and _same_line(merged, 22.5)
    merged, _ = merge_subspaces(_line(0), 1.0, _line(90), 1.0, max_angle_deg=90.0)
    assert merged.shape == (3, 0)
    merged, _ = merge_subspaces(_line(0), 1.0, _line(30), 1.0, max_angle_deg=20.0)
    assert merged.shape == (3, 0)


def test_merge_loop_order_weights_and_threshold() -> None:
    """Lines at 0°, 20°, 40°: (0°, 20°) → 10° of weight 2, then (40°, 10°) with
    t = 2/3 → 20°. Two lines give their bisector; max_angle_deg reaches every merge."""
    assert _same_line(approximate_cokernel([_line(0), _line(20), _line(40)]), 20.0)
    assert _same_line(approximate_cokernel([_line(0), _line(40)]), 20.0)
    assert _same_line(approximate_cokernel([_line(5)]), 5.0)
    assert approximate_cokernel([_line(0), _line(30)], max_angle_deg=20.0).shape == (3, 0)


def test_orthogonal_complement_of_nothing_is_the_identity_in_its_dtype() -> None:
    out = orthogonal_complement(torch.zeros(5, 0, dtype=F64))
    assert out.dtype == F64 and torch.equal(out, torch.eye(5, dtype=F64))
    t = _line(30, 4)
    c = orthogonal_complement(t)
    assert c.shape == (4, 3)
    torch.testing.assert_close(c.T @ c, torch.eye(3, dtype=F64))
    torch.testing.assert_close(c.T @ t, torch.zeros(3, 1, dtype=F64), rtol=0, atol=1e-15)


def _diag_grams(*diags: tuple[float, ...]) -> torch.Tensor:
    return torch.stack([torch.diag(torch.tensor(d, dtype=F64)) for d in diags])


def test_small_singular_subspaces_use_a_strict_threshold_relative_to_the_largest() -> None:
    """Step 1 of Algorithm 1: Σ_jj < ρ‖Dy‖₂. Singular values (2, 1, 4) and (1, 3, 4) with
    ρ = ½ (threshold 2, which the first sample's value 2 does not pass)."""
    grams = _diag_grams((4.0, 1.0, 16.0), (1.0, 9.0, 16.0))
    subs = small_singular_subspaces(0.5, grams=grams)
    assert len(subs) == 2
    e = torch.eye(3, dtype=F64)
    assert torch.equal(subs[0].abs(), e[:, [1]]) and torch.equal(subs[1].abs(), e[:, [0]])
    for rho in (0.0, 1.0):
        with pytest.raises(ValueError, match="rho must lie in"):
            small_singular_subspaces(rho, grams=grams)


def test_left_singular_values_and_vectors_match_numpy() -> None:
    jac = torch.randn(2, 3, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    vecs, sv = left_singular(jac)
    for b in range(2):
        u, s, _ = np.linalg.svd(jac[b].numpy())
        np.testing.assert_allclose(sv[b].numpy(), s[::-1], rtol=1e-12)
        np.testing.assert_allclose(np.abs(vecs[b].numpy()), np.abs(u[:, ::-1]), atol=1e-10)


def _two_sample_grams(deg: float) -> torch.Tensor:
    """Two samples with singular values (1e-3, 1, 1): the small one along e_0 and along
    the line at ``deg`` degrees."""
    out = []
    for v in (_line(0), _line(deg)):
        out.append(torch.eye(3, dtype=F64) + (1e-6 - 1) * v @ v.T)
    return torch.stack(out)


def test_critical_space_passes_the_angle_threshold_on() -> None:
    grams = _two_sample_grams(30.0)
    c, t = critical_space(0.01, grams=grams)  # 30° < 45°: T = the bisector at 15°
    assert c.shape == (3, 2) and _same_line(t, 15.0)
    c, t = critical_space(0.01, grams=grams, max_angle_deg=20.0)  # dropped: C = ℝ³
    assert t.shape == (3, 0) and torch.equal(c, torch.eye(3, dtype=F64))


def test_critical_spaces_brackets_the_true_thresholds_with_the_default_tolerance() -> None:
    """Identical samples with singular values (1e-3, 0.1, 1): dim C = 3 for ρ ≤ 1e-3, 2 for
    1e-3 < ρ ≤ 0.1, 1 above (§3.5); the default search brackets each change to 0.02 in
    log10 ρ and each space is Algorithm 1 at its reported ρ."""
    grams = _diag_grams((1e-6, 1e-2, 1.0), (1e-6, 1e-2, 1.0))
    spaces = critical_spaces(grams=grams)
    assert [s.dim for s in spaces] == [3, 2, 1]
    s3, s2, s1 = spaces
    assert math.isclose(s3.rho_low, 1e-6, rel_tol=1e-12)
    assert math.isclose(s1.rho_high, 0.999, rel_tol=1e-12)
    for low, high, edge in ((s3.rho_high, s2.rho_low, -3.0), (s2.rho_high, s1.rho_low, -1.0)):
        assert -0.02 < math.log10(low) - edge <= 0 < math.log10(high) - edge < 0.02
    for s in spaces:
        assert s.rho_low <= s.rho <= s.rho_high
        c, t = critical_space(s.rho, grams=grams)
        assert torch.equal(c, s.basis) and torch.equal(t, s.trivial)
    e = torch.eye(3, dtype=F64)
    assert torch.equal(s2.trivial.abs(), e[:, [0]])


def _stubbed_search(monkeypatch, edges: list[tuple[float, int]], top: int) -> tuple[list, list]:
    """critical_spaces over ρ ∈ [1e-5, 0.1] with tol = ¼ and Algorithm 1 replaced by a step
    function of log10 ρ: dimension ``d`` below each ``edge``, ``top`` above the last."""
    seen: list[tuple[float, float]] = []

    def fake(rho: float, jacobians=None, *, grams=None, max_angle_deg=45.0):
        lr = math.log10(rho)
        seen.append((lr, max_angle_deg))
        d = next((d for e, d in edges if lr < e), top)
        return torch.full((6, d), lr, dtype=F64), torch.zeros(6, 6 - d, dtype=F64)

    monkeypatch.setattr(critical_mod, "critical_space", fake)
    out = critical_spaces(grams=torch.eye(6, dtype=F64)[None], rho_min=1e-5, rho_max=0.1,
                          tol=0.25, max_angle_deg=30.0)
    return out, seen


def _check(out: list, want: list[tuple[int, float, float, float]]) -> None:
    got = [(s.dim, math.log10(s.rho), math.log10(s.rho_low), math.log10(s.rho_high))
           for s in out]
    assert [g[0] for g in got] == [w[0] for w in want]
    for g, w in zip(got, want):
        assert np.allclose(g[1:], w[1:], rtol=0, atol=1e-12), (g, w)
    for s in out:  # the returned space is the one computed at s.rho
        assert torch.allclose(s.basis, torch.full_like(s.basis, math.log10(s.rho)))


def test_nested_intervals_by_hand_equal_runs_keep_the_first(monkeypatch) -> None:
    """Hand-worked (log10 ρ): the search evaluates −5, −1, −3, −4, −4.5, −4.25, −4.375,
    −3.5, −3.25, −3.375, −2, −2.5, −2.25, −2.375, −1.5, −1.25, −1.375 (an interval of
    exactly tol = ¼ is still halved). Runs: 5 on [−5, −4.375], 4 on [−4.25, −3.375],
    3 on [−3.25, −2.375], 4 on [−2.25, −1.375], 2 on [−1.25, −1]. Dimension 4's two runs
    are equally wide: the first is kept. ρ is the run's point nearest its log-middle
    (5: middle −4.6875 → −4.5; 2: middle −1.125, a tie → the first, −1.25)."""
    out, seen = _stubbed_search(monkeypatch, [(-4.3, 5), (-3.3, 4), (-2.3, 3), (-1.3, 4)], 2)
    assert sorted(lr for lr, _ in seen) == sorted(
        [-5, -1, -3, -4, -4.5, -4.25, -4.375, -3.5, -3.25, -3.375, -2, -2.5, -2.25, -2.375,
         -1.5, -1.25, -1.375])
    assert all(m == 30.0 for _, m in seen)
    _check(out, [(5, -4.5, -5.0, -4.375), (4, -4.0, -4.25, -3.375),
                 (3, -3.0, -3.25, -2.375), (2, -1.25, -1.25, -1.0)])


def test_nested_intervals_by_hand_the_wider_run_wins(monkeypatch) -> None:
    """As above with the last edge at −1.1: dimension 4's second run [−2.25, −1.125]
    (points −2.25, −2, −1.5, −1.25, −1.125; middle −1.6875 → −1.75 is not
    evaluated, −1.5 is nearest) is wider than its first [−4.25, −3.375]; dimension 2 is
    the single point −1."""
    out, _ = _stubbed_search(monkeypatch, [(-4.3, 5), (-3.3, 4), (-2.3, 3), (-1.1, 4)], 2)
    _check(out, [(5, -4.5, -5.0, -4.375), (4, -1.5, -2.25, -1.125),
                 (3, -3.0, -3.25, -2.375), (2, -1.0, -1.0, -1.0)])
