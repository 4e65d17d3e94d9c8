"""Hoyer sparseness and the S2 sampler, principal angles against scipy, Algorithm 1 on a
network with a known trivial direction, and the evaluation measures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor, nn

from lightning_fv.ifv import (
    angular_distance,
    critical_space,
    critical_spaces,
    feature_jacobian,
    grad_ifv,
    hoyer,
    merge_subspaces,
    principal_angles,
    projected_target,
    sample_targets,
    slerp,
    sparse_unit_vectors,
    ssim,
)
from lightning_fv.optvis.objectives import OUTPUT


def test_hoyer_is_one_for_canonical_and_zero_for_constant_vectors() -> None:
    eye = torch.eye(9, dtype=torch.float64)
    assert torch.allclose(hoyer(eye), torch.ones(9, dtype=torch.float64))
    assert torch.allclose(hoyer(-3 * eye), torch.ones(9, dtype=torch.float64))
    assert torch.allclose(hoyer(torch.full((2, 9), 0.7, dtype=torch.float64)),
                          torch.zeros(2, dtype=torch.float64), atol=1e-12)
    # (√n − ‖x‖₁/‖x‖₂)/(√n − 1) for x = (1, 1, 0, 0): (2 − √2)/1
    assert math.isclose(float(hoyer(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))),
                        2 - math.sqrt(2), rel_tol=1e-12)


def test_sampler_hits_the_asked_sparsity_with_non_negative_unit_vectors() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.linspace(0, 1, 11)
    for n in (10, 64):
        x = sparse_unit_vectors(s, n, g, tol=1e-3)
        assert (hoyer(x) - s.double()).abs().max() < 2e-3
        assert (x >= 0).all()
        assert torch.allclose(x.norm(dim=1), torch.ones(11, dtype=torch.float64), atol=1e-12)


def test_sample_targets_appends_canonical_vectors_and_rejects_bad_sparsity() -> None:
    g = torch.Generator().manual_seed(1)
    x, s = sample_targets(5, 12, g, n_canonical=3)
    assert x.shape == (8, 12) and torch.equal(s[5:], torch.ones(3))
    assert torch.equal((x[5:] > 0).sum(1), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\]"):
        sparse_unit_vectors(torch.tensor([1.5]), 4)


def test_principal_angles_match_scipy_subspace_angles() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((10, 3))
    b = rng.standard_normal((10, 4))
    near = a + 1e-7 * rng.standard_normal((10, 3))  # tiny angles need the sine formula
    for p, q in ((a, b), (a, near), (b, a)):
        ang, pa, pb = principal_angles(torch.from_numpy(p), torch.from_numpy(q))
        ref = np.sort(scipy.linalg.subspace_angles(p, q))
        np.testing.assert_allclose(ang.numpy(), ref, atol=1e-12, rtol=1e-6)
        # principal vectors are unit, in their spaces, and pair up at the angles
        np.testing.assert_allclose((pa * pb).sum(0).numpy(), np.cos(ref), atol=1e-10)
        proj = torch.from_numpy(p) @ torch.linalg.lstsq(torch.from_numpy(p), pa).solution
        assert torch.allclose(proj, pa, atol=1e-10)


def test_slerp_keeps_unit_length_and_interpolates_the_angle() -> None:
    p = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    q = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    m = slerp(p, q, 1 / 3)
    assert torch.allclose(m.flatten(), torch.tensor([math.cos(math.pi / 6),
                                                      math.sin(math.pi / 6)],
                                                     dtype=torch.float64))


def test_merge_drops_principal_pairs_at_45_degrees_or_more() -> None:
    e = torch.eye(4, dtype=torch.float64)
    a = e[:, [0, 1]]
    b = torch.stack([e[:, 0], (e[:, 1] + 2 * e[:, 2]) / math.sqrt(5)], 1)  # angle 63°
    merged, w = merge_subspaces(a, 1.0, b, 3.0)
    assert merged.shape[1] == 1 and w == 4.0
    assert torch.allclose(merged[:, 0].abs(), e[:, 0])


class CenteredLogits(nn.Module):
    """Logits minus their mean: softmax-invariant, so (1, …, 1) is in every co-kernel
    (§3.5, DNcl). ``dead`` inserts a constant (dead) feature at that index (DN4cl's e_4):
    then (1, …, 1) and e_dead span the common co-kernel."""

    def __init__(self, n_in: int = 12, n_f: int = 6, dead: int | None = None) -> None:
        super().__init__()
        n_live = n_f if dead is None else n_f - 1
        self.body = nn.Sequential(nn.Linear(n_in, 16), nn.Tanh(), nn.Linear(16, n_live))
        self.dead = dead

    def forward(self, x: Tensor) -> Tensor:
        z = self.body(x)
        z = z - z.mean(1, keepdim=True)
        if self.dead is not None:
            zero = z.new_zeros(z.shape[0], 1)
            z = torch.cat([z[:, :self.dead], zero, z[:, self.dead:]], 1)
        return z


def _jacobians(net: nn.Module, n: int = 12) -> tuple[Tensor, Tensor]:
    v = torch.randn(n, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return feature_jacobian(net, OUTPUT, v, aggregation="identity")


def test_algorithm1_finds_the_critical_space_removing_the_softmax_shift_direction() -> None:
    torch.manual_seed(0)
    net = CenteredLogits().double()
    y, jac = _jacobians(net)
    spaces = critical_spaces(jac)
    by_dim = {s.dim: s for s in spaces}
    assert 5 in by_dim
    trivial = by_dim[5].trivial[:, 0]
    ones = torch.ones(6, dtype=torch.float64) / math.sqrt(6)
    assert float(angular_distance(trivial, ones)) < 1.0
    # with C, Grad-IFV no longer returns the trivial direction: for a realization-free
    # check, the ideal prediction lies in Z_k(y)⁻¹C and C ⊥ (1, …, 1)
    c = by_dim[5].basis
    assert torch.allclose(c.T @ ones, torch.zeros(5, dtype=torch.float64), atol=1e-8)
    pred_plain = grad_ifv(y, jac, k=2.0)
    assert angular_distance(pred_plain, ones.expand(12, 6)).max() < 1e-3  # trivial solution


def test_algorithm1_with_a_dead_neuron_finds_span_of_ones_and_the_dead_axis() -> None:
    torch.manual_seed(0)
    net = CenteredLogits(dead=4).double()
    _, jac = _jacobians(net)
    c, t = critical_space(0.01, jac)
    assert c.shape[1] == 4 and t.shape[1] == 2
    ref = torch.stack([torch.ones(6, dtype=torch.float64), torch.eye(6, dtype=torch.float64)[4]], 1)
    ang, _, _ = principal_angles(t, ref)
    assert torch.rad2deg(ang).max() < 1.0


def test_grad_ifv_with_critical_space_recovers_projected_target(on_sphere: tuple) -> None:
    """Exact optima of S_x on the sphere for the centered-logit net: with C = 1^⊥ the
    prediction equals the projected target of §2.2."""
    torch.manual_seed(0)
    net = CenteredLogits().double()
    k = 2.0
    x = torch.rand(3, 6, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    sphere, maximize_on_sphere = on_sphere
    v = maximize_on_sphere(net, x, k, 12)
    y, jac = feature_jacobian(net, OUTPUT, v, sphere, aggregation="identity")
    _, vj = _jacobians(net)
    c, _ = critical_space(0.01, vj)
    pred = grad_ifv(y, jac, k=k, critical=c)
    assert angular_distance(pred, projected_target(x, y, k, c)).max() < 0.5


def test_angular_distance_is_sign_invariant_in_degrees() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[-2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    assert torch.allclose(angular_distance(a, b), torch.tensor([0.0, 90.0, 45.0],
                                                                dtype=torch.float64), atol=1e-6)


def test_ssim_is_one_for_identical_images_and_lower_for_noise() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 16, 16, generator=g)
    assert torch.allclose(ssim(img, img), torch.ones(2), atol=1e-5)
    assert (ssim(img, torch.rand(2, 3, 16, 16, generator=g)) < 0.3).all()


def test_rho_outside_unit_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"rho must lie in \(0, 1\), got 1.5"):
        critical_space(1.5, torch.randn(2, 3, 4))
