"""Algorithm 1 of thesis App. .1: loss, per-sample freezing, gradients, objectives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _invariant_helpers import TinyClassifier, make_pipeline
from scipy.stats import entropy

from lightning_fv.diffusion.invariant import (
    InvariantObjective,
    invariant_loss,
    invariant_set_sample,
    logits_response,
    probability_response,
    sae_response,
    unit_response,
)
from lightning_fv.models.sae import TopKSAE


def _np_lowpass(x: np.ndarray, c: float) -> np.ndarray:
    fy, fx = np.fft.fftfreq(x.shape[-2])[:, None], np.fft.fftfreq(x.shape[-1])[None, :]
    r = np.sqrt(fy ** 2 + fx ** 2)
    return np.real(np.fft.ifft2(np.fft.fft2(x) * (r <= c * r.max() * (1 + 1e-9))))


def test_loss_matches_hand_computation_with_a_linear_objective() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3 * 8 * 8, generator=g, dtype=torch.float64)
    obj = InvariantObjective(lambda x: x.flatten(1) @ w.t())
    x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randn(3, 5, generator=g, dtype=torch.float64)
    total, d1, d2 = invariant_loss(obj, x, t, step_size=0.3, cutoff=0.4)
    wn, xn, tn = w.numpy(), x.numpy(), t.numpy()
    e1 = ((xn.reshape(3, -1) @ wn.T - tn) ** 2).sum(1)
    e2 = ((_np_lowpass(xn, 0.4).reshape(3, -1) @ wn.T - tn) ** 2).sum(1)
    np.testing.assert_allclose(d1.numpy(), e1, rtol=1e-10)
    np.testing.assert_allclose(d2.numpy(), e2, rtol=1e-10)
    np.testing.assert_allclose(total.numpy(), 0.3 * (e1 + e2), rtol=1e-10)
    only, _, zero = invariant_loss(obj, x, t, step_size=0.3, cutoff=None)
    np.testing.assert_allclose(only.numpy(), 0.3 * e1, rtol=1e-10)
    assert torch.all(zero == 0)


def test_first_recorded_loss_is_the_loss_of_the_drawn_latent(pipe, clf) -> None:
    q = torch.rand(2, 3, 8, 8)
    obj = logits_response(clf)
    res = invariant_set_sample(pipe, obj, q, num_samples=2, budget=0, lr=1.0, step_size=2.0,
                               cutoff=0.5, seed=3)
    with torch.no_grad():
        z0 = torch.cat([pipe.noise(1, torch.Generator().manual_seed(3 + i)) for i in range(4)])
        x = pipe.generate(z0, None)
        t = clf(q).repeat_interleave(2, 0)
        exp = 2.0 * ((clf(x) - t).pow(2).sum(1) + (clf(_lp(x, 0.5)) - t).pow(2).sum(1))
    torch.testing.assert_close(res.z_init, z0)
    torch.testing.assert_close(res.history[0], exp, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(res.images, x, rtol=1e-4, atol=1e-6)
    assert res.steps.tolist() == [0, 0, 0, 0]


def _lp(x: torch.Tensor, c: float) -> torch.Tensor:
    return torch.from_numpy(_np_lowpass(x.double().numpy(), c)).float()


@pytest.mark.parametrize("optimizer,momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)])
def test_sample_reaching_tau_stops_changing(pipe, clf, optimizer: str, momentum: float
                                            ) -> None:
    q = torch.rand(1, 3, 8, 8)
    obj = logits_response(clf)
    probe = invariant_set_sample(pipe, obj, q, num_samples=4, budget=0, cutoff=None)
    first = probe.history[0]
    tau = float(first.sort().values[1:3].mean())  # two samples start below τ, two above
    res = invariant_set_sample(pipe, obj, q, num_samples=4, budget=4, tau=tau, lr=0.5,
                               cutoff=None, optimizer=optimizer, momentum=momentum)
    below = first < tau
    assert below.sum() == 2
    assert torch.equal(res.reached[below], torch.ones(2, dtype=torch.bool))
    assert torch.equal(res.z_T[below], res.z_init[below])        # bit-identical: frozen
    assert torch.all(res.steps[below] == 0)
    assert torch.isnan(res.history[1:, below]).all()
    moved = (res.z_T[~below] - res.z_init[~below]).flatten(1).abs().amax(1)
    assert torch.all(moved > 0)
    # a sample frozen mid-run keeps the latent and the image of its freezing step
    for i in torch.nonzero(~below).flatten().tolist():
        h = res.history[:, i]
        last = int(torch.nonzero(~torch.isnan(h)).max())
        assert res.losses[i] == h[last]
        assert res.steps[i] == last
        assert bool(res.reached[i]) == bool(h[last] < tau)


def test_reached_tau_and_loss_decreases_with_sgd(pipe, clf) -> None:
    q = torch.rand(1, 3, 8, 8)
    obj = logits_response(clf)
    res = invariant_set_sample(pipe, obj, q, num_samples=2, budget=20, tau=0.0, lr=50.0,
                               cutoff=0.5, seed=1)
    assert torch.all(res.history[-1] < 0.5 * res.history[0])
    assert res.steps.tolist() == [20, 20]
    assert not res.reached.any()


def test_gradient_reaches_z_T_and_checkpointing_gives_the_same_gradient(clf) -> None:
    pipe = make_pipeline(size=4, factor=2, num_steps=4)  # 3×4×4 latents → 8×8 images
    obj = logits_response(clf)
    z = pipe.noise(3, torch.Generator().manual_seed(0))
    t = torch.randn(3, 3)
    grads = []
    for ck in (False, True):
        zz = z.clone().requires_grad_(True)
        x = pipe.generate(zz, None, checkpoint=ck, enable_grad=True, clamp=False)
        invariant_loss(obj, x, t, cutoff=0.5)[0].sum().backward()
        grads.append(zz.grad)
    assert grads[0].abs().min() > 0 or grads[0].abs().mean() > 1e-6
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-8)
    # the gradient is the derivative: compare with a central finite difference
    d = torch.randn_like(z)
    eps = 1e-2

    def loss(zz: torch.Tensor) -> float:
        with torch.no_grad():
            x = pipe.generate(zz, None, clamp=False)
            return float(invariant_loss(obj, x, t, cutoff=0.5)[0].sum())

    fd = (loss(z + eps * d) - loss(z - eps * d)) / (2 * eps)
    assert abs(fd - float((grads[0] * d).sum())) < 2e-2 * abs(fd) + 1e-5


def test_kl_objective_matches_scipy_and_its_target_gives_zero(clf) -> None:
    obj = probability_response(clf)
    assert obj.distance == "kl"
    x, q = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        kl = obj.compare(obj(x), obj(q))
        p, p_star = F.softmax(clf(x), 1).double().numpy(), F.softmax(clf(q), 1).double().numpy()
    np.testing.assert_allclose(kl.numpy(), [entropy(a, b) for a, b in zip(p_star, p)],
                               rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        assert obj.compare(obj(q), obj(q)).abs().max() < 1e-6


def test_unit_and_sae_responses_equal_direct_computation(clf) -> None:
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        act = clf.relu(clf.conv(x))                    # (2, 4, 8, 8)
        u = unit_response(clf, ["conv:1", "relu:2@3,4", "fc:0"])(x)
        torch.testing.assert_close(u[:, 0], clf.conv(x)[:, 1].mean((1, 2)))
        torch.testing.assert_close(u[:, 1], act[:, 2, 3, 4])
        torch.testing.assert_close(u[:, 2], clf(x)[:, 0])
        torch.manual_seed(0)
        sae = TopKSAE(4, 6, 2)
        r = sae_response(clf, "relu", sae, [1, 5])(x)
        codes = sae.encode(act.permute(0, 2, 3, 1))     # (2, 8, 8, 6)
        torch.testing.assert_close(r, codes[..., [1, 5]].mean((1, 2)))
    with pytest.raises(IndexError, match="out of range"):
        sae_response(clf, "relu", sae, 6)


def test_class_label_is_used_and_models_are_restored(pipe) -> None:
    clf = TinyClassifier().train()
    q = torch.rand(1, 3, 8, 8)
    flags = [p.requires_grad for p in clf.parameters()]
    res = invariant_set_sample(pipe, logits_response(clf), q, labels=[2], num_samples=2,
                               budget=1, lr=0.1)
    assert res.labels.tolist() == [2, 2]
    assert clf.training and [p.requires_grad for p in clf.parameters()] == flags
    assert all(p.grad is None for p in clf.parameters())
    assert all(p.grad is None for p in pipe.parameters())
    with torch.no_grad():
        x_cond = pipe.generate(res.z_init, torch.tensor([2, 2]))
    assert not torch.allclose(x_cond, pipe.generate(res.z_init, None).detach())
    with pytest.raises(ValueError, match="one entry per query"):
        invariant_set_sample(pipe, logits_response(clf), q, labels=[1, 2], budget=0)


# ---------------------------------------------------------------- mutation-testing follow-ups
# (docs/testing.md §4)


def test_loss_defaults_are_lambda_1_and_the_half_cutoff_filter() -> None:
    """App. .3/.4: λ = 1 and the ideal low-pass filter at relative cutoff 0.5 by default."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 3 * 6 * 6, generator=g, dtype=torch.float64)
    obj = InvariantObjective(lambda x: x.flatten(1) @ w.t())
    x = torch.rand(2, 3, 6, 6, generator=g, dtype=torch.float64)
    t = torch.randn(2, 2, generator=g, dtype=torch.float64)
    total, d1, d2 = invariant_loss(obj, x, t)
    wn, xn, tn = w.numpy(), x.numpy(), t.numpy()
    e1 = ((xn.reshape(2, -1) @ wn.T - tn) ** 2).sum(1)
    e2 = ((_np_lowpass(xn, 0.5).reshape(2, -1) @ wn.T - tn) ** 2).sum(1)
    np.testing.assert_allclose(d2.numpy(), e2, rtol=1e-10)
    np.testing.assert_allclose(total.numpy(), e1 + e2, rtol=1e-10)


def test_objective_reads_a_vector_as_one_response_and_refuses_other_shapes() -> None:
    x = torch.rand(3, 3, 4, 4)
    obj = InvariantObjective(lambda im: im.mean((1, 2, 3)))
    out = obj(x)
    assert out.shape == (3, 1) and torch.equal(out[:, 0], x.mean((1, 2, 3)))
    with pytest.raises(ValueError, match=r"must return \(B, m\) responses for 3 images, got "
                                         r"\(3, 2, 2\)"):
        InvariantObjective(lambda im: im[:, :2, :2, 0])(x)
    with pytest.raises(ValueError, match=r"got \(2, 4\)"):
        InvariantObjective(lambda im: im[:2, 0, 0])(x)
    assert repr(InvariantObjective(lambda im: im)) == "InvariantObjective(objective, distance='l2')"
