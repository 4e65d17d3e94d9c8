"""Invariant-set metrics (thesis §4.1.2, App. .4) against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy.spatial.distance import pdist
from scipy.stats import entropy

from lightning_fv.analysis.invariance import (
    ActivationFidelity,
    ClassifierFeatures,
    SetDiversity,
    SpectralSweep,
    activation_fidelity,
    fid_metric,
    pairwise_diversity,
    probability_kl,
    query_distance,
    spectral_sweep,
    spectral_sweep_figure,
)
from lightning_fv.diffusion.lowpass import lowpass
from lightning_fv.models.sae import TopKSAE, layer_tokens, train_sae


def test_fidelity_kl_and_distances_match_numpy_and_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    r, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    fid = activation_fidelity(r, t)
    np.testing.assert_allclose(fid["l1"].numpy(), np.abs(r - t).sum(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(fid["l2"].numpy(), np.linalg.norm((r - t).numpy(), axis=1),
                               rtol=1e-6)
    p_star = torch.softmax(t.double(), 1).numpy()
    p = torch.softmax(r.double(), 1).numpy()
    np.testing.assert_allclose(probability_kl(t, r).numpy(),
                               [entropy(a, b) for a, b in zip(p_star, p)], rtol=1e-5)
    imgs = torch.rand(5, 3, 4, 4, generator=g)
    flat = imgs.reshape(5, -1).double().numpy()
    assert abs(float(pairwise_diversity(imgs)) - pdist(flat).mean() / np.sqrt(48)) < 1e-6
    q = torch.rand(1, 3, 4, 4, generator=g)
    np.testing.assert_allclose(query_distance(imgs, q).numpy(),
                               np.sqrt(((flat - q.reshape(1, -1).numpy()) ** 2).mean(1)),
                               rtol=1e-6)


def test_metric_wrappers_equal_the_functions() -> None:
    g = torch.Generator().manual_seed(1)
    r, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    m = ActivationFidelity(with_kl=True)
    m.update(r[:2], t[:2])
    m.update(r[2:], t[2:])
    out = m.compute()
    assert abs(float(out["l1"]) - float(activation_fidelity(r, t)["l1"].mean())) < 1e-6
    assert abs(float(out["l2"]) - float(activation_fidelity(r, t)["l2"].mean())) < 1e-6
    assert abs(float(out["kl"]) - float(probability_kl(t, r).mean())) < 1e-6
    dev = torch.rand(9, 6, generator=g)
    s = SpectralSweep()
    s.update(dev[:, :4])
    s.update(dev[:, 4:])
    torch.testing.assert_close(s.compute().float(), dev.mean(1))
    sets = [torch.rand(3, 3, 4, 4, generator=g) for _ in range(2)]
    d = SetDiversity()
    for x in sets:
        d.update(x)
    expect = sum(float(pairwise_diversity(x)) for x in sets) / 2
    assert abs(float(d.compute()) - expect) < 1e-6


def test_spectral_sweep_equals_a_loop_over_filtered_responses() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 48, generator=g)
    obj = lambda x: x.flatten(1) @ w.t()  # noqa: E731
    x, t = torch.rand(4, 3, 4, 4, generator=g), torch.randn(1, 3, generator=g)
    cut = (0.2, 0.6, 1.0)
    dev = spectral_sweep(obj, x, t, cut)
    assert dev.shape == (3, 4)
    for i, c in enumerate(cut):
        torch.testing.assert_close(dev[i], (obj(lowpass(x, c)) - t).pow(2).sum(1))
    fig = spectral_sweep_figure(cut, {"a": dev, "b": dev * 2})
    assert len(fig.axes[0].lines) == 2


def test_fid_with_classifier_features_matches_the_closed_form(tiny_net) -> None:
    feat = ClassifierFeatures(tiny_net.eval(), layer="bn")
    assert feat.num_features == 6
    g = torch.Generator().manual_seed(3)
    real, fake = torch.rand(40, 3, 8, 8, generator=g), torch.rand(40, 3, 8, 8, generator=g) ** 2
    m = fid_metric(feat)
    m.update(real, real=True)
    m.update(fake, real=False)
    with torch.no_grad():
        a, b = feat(real).double().numpy(), feat(fake).double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expect = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert float(m.compute()) == pytest.approx(expect, rel=1e-3, abs=1e-6)


def test_topk_sae_keeps_exactly_the_k_largest_pre_activations() -> None:
    torch.manual_seed(0)
    sae = TopKSAE(8, 32, 5)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive → exactly k non-zero
        a = torch.randn(50, 8)
        f = sae.encode(a)
        pre = sae.pre_activations(a)
    assert torch.all((f != 0).sum(1) == 5)
    top = pre.topk(5, dim=1).indices.sort(1).values
    assert torch.equal((f != 0).nonzero()[:, 1].reshape(50, 5), top)
    torch.testing.assert_close(f.gather(1, top), pre.gather(1, top))
    with torch.no_grad():
        sae.b_enc.fill_(-1e3)
        assert torch.all(sae.encode(a) == 0)  # never more than k, none when all negative
    with pytest.raises(ValueError, match="k must be"):
        TopKSAE(8, 4, 5)


def test_trained_sae_reconstructs_layer_activations(tiny_net) -> None:
    imgs = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    tokens = layer_tokens(tiny_net, "relu2", imgs)
    assert tokens.shape == (16 * 64, 6)
    sae, stats = train_sae(tokens, d_hidden=12, k=3, steps=150, lr=1e-2)
    assert stats["fvu"] < 0.5
    assert not sae.training
