"""Silent units (`dont-trust-your-eyes…` §2.2 Eq. 1–2, App. D)."""

from __future__ import annotations

import pytest
import torch

from lightning_fv.manipulation import (
    SilentUnits,
    load_manipulated,
    natural_change,
    orthogonal_perturbation,
    pattern_from_unit,
    save_manipulated,
    silence_block,
)
from lightning_fv.models import SmallCNN


@pytest.fixture
def net() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=5, widths=(4, 6, 8, 8)).eval()


def _data(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_perturbation_is_orthogonal_to_every_filter_to_1e6() -> None:
    theta = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    for pattern in (torch.randn(16, 3, 3), theta[5] + 0.1, torch.randn(32, 16, 3, 3)):
        perp = orthogonal_perturbation(theta, pattern)
        cos = (perp.flatten(1) * theta.flatten(1)).sum(1) / (
            perp.flatten(1).norm(dim=1) * theta.flatten(1).norm(dim=1))
        assert cos.abs().max() < 1e-6
        torch.testing.assert_close(perp.flatten(1).norm(dim=1), theta.flatten(1).norm(dim=1))
    with pytest.raises(ValueError, match="parallel"):
        orthogonal_perturbation(theta, theta[5])
    zeroed = orthogonal_perturbation(theta, theta[5], on_parallel="zero")
    assert zeroed[5].abs().max() == 0 and zeroed[4].abs().max() > 0


def test_max_bias_keeps_natural_outputs_exactly_and_accuracy_unchanged(net: SmallCNN) -> None:
    natural = _data(64, 1)
    silent = silence_block(net, "block2", natural, pattern=pattern_from_unit(net.block2.conv, 0),
                           alpha=1.0, beta=4.0)
    assert isinstance(silent.block2.conv, SilentUnits)
    with torch.no_grad():
        assert torch.equal(silent.block2(net.pool1(net.block1(net.normalize(natural)))),
                           net.block2(net.pool1(net.block1(net.normalize(natural)))))
        assert torch.equal(silent(natural), net(natural))
        val = _data(64, 2)
        labels = net(val).argmax(1)  # accuracy of the original on these labels is 1
        assert torch.equal(silent(val).argmax(1), labels)
    assert natural_change(silent, natural)["block2.conv/active_fraction"] == 0.0


def test_silent_units_switch_on_for_strong_activations(net: SmallCNN) -> None:
    natural = _data(32, 1)
    silent = silence_block(net, "block1", natural, pattern="random", alpha=1.0, beta=4.0)
    strong = torch.rand(4, 3, 16, 16) * 40 - 20  # far outside natural images
    with torch.no_grad():
        assert not torch.equal(silent.block1(strong), net.block1(strong))


def test_percentile_bias_reports_the_change(net: SmallCNN) -> None:
    natural = _data(100, 1)
    silent = silence_block(net, "block3", natural, pattern="random", alpha=1.0, beta=4.0,
                           bias="percentile", percentile=90)
    change = natural_change(silent, natural)
    assert 0.0 < change["block3.conv/active_fraction"] <= 0.2
    assert change["block3.conv/max_delta"] > 0


def test_torchvision_resnet_blocks_keep_natural_outputs_and_refuse_the_last_conv() -> None:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    x = torch.rand(6, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    for block, ok, bad in ((BasicBlock(16, 16), ["conv1"], "conv2"),
                           (Bottleneck(16, 4), ["conv1", "conv2"], "conv3")):
        model = torch.nn.Sequential(block).eval()
        for name in ok:
            silent = silence_block(model, f"0.{name}", x, pattern="random")
            with torch.no_grad():
                assert torch.equal(silent(x), model(x))
        with pytest.raises(ValueError, match="residual"):
            silence_block(model, f"0.{bad}", x, pattern="random")


@pytest.mark.slow
def test_full_torchvision_and_timm_resnets() -> None:
    import timm
    import torchvision

    x = _data(4, 3)
    for model, ok, bad in (
        (torchvision.models.resnet18(num_classes=4), "layer2.0.conv1", "layer2.0.conv2"),
        (timm.create_model("resnet18", num_classes=4), "layer1.1.conv1", "layer1.1.conv2"),
    ):
        model.eval()
        silent = silence_block(model, ok, x, pattern="random")
        with torch.no_grad():
            assert torch.equal(silent(x), model(x))
        with pytest.raises(ValueError, match="residual"):
            silence_block(model, bad, x, pattern="random")


def test_bad_layer_and_bias_are_named(net: SmallCNN) -> None:
    with pytest.raises(ValueError, match="'median'"):
        silence_block(net, "block1", _data(4, 0), bias="median")
    with pytest.raises(ValueError, match="Linear"):
        silence_block(net, "fc", _data(4, 0))


def test_silent_model_saves_and_reloads(net: SmallCNN, tmp_path) -> None:
    x = _data(16, 1)
    silent = silence_block(net, "block2", x, pattern="random", beta=3.0)
    again = load_manipulated(net, save_manipulated(silent, tmp_path / "s.safetensors"))
    strong = torch.rand(4, 3, 16, 16) * 40 - 20
    with torch.no_grad():
        assert torch.equal(again(strong), silent(strong))


def test_mean_pattern_is_the_filter_the_image_activates_most(net: SmallCNN) -> None:
    """Closed form: for unit-norm filters w, Σ_positions ⟨w, patch⟩ = ⟨w, Σ patches⟩ is
    largest at w ∝ mean patch, where it equals ‖Σ patches‖."""
    from lightning_fv.manipulation import pattern_from_image
    from lightning_fv.manipulation.silent import conv_inputs

    image = _data(1, 3)[0]
    conv = net.block3.conv
    pat = pattern_from_image(net, "block3.conv", image)
    assert pat.shape == conv.weight.shape[1:]
    x = conv_inputs(net, "block3.conv", image[None])[0]

    def summed(w: torch.Tensor) -> torch.Tensor:  # (K, C, 3, 3) -> (K,)
        w = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return torch.nn.functional.conv2d(x, w, padding=conv.padding).sum((0, 2, 3))

    patches = torch.nn.functional.unfold(x, conv.kernel_size, padding=conv.padding)
    best = summed(pat[None])[0]
    torch.testing.assert_close(best, patches.sum(2).norm(), rtol=1e-5, atol=1e-5)
    rand = torch.randn(200, *pat.shape, generator=torch.Generator().manual_seed(0))
    near = pat[None] + 0.05 * pat.norm() * rand / rand.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert (summed(rand) < best).all() and (summed(near) <= best + 1e-5).all()
    centre = pattern_from_image(net, "block3.conv", image, region="centre")
    h, w = x.shape[-2:]
    torch.testing.assert_close(centre, x[0, :, (h - 3) // 2:(h - 3) // 2 + 3,
                                         (w - 3) // 2:(w - 3) // 2 + 3])
    with pytest.raises(ValueError, match="region"):
        pattern_from_image(net, "block3.conv", image, region="corner")
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        pattern_from_image(net, "block3.conv", image[None])


def test_original_branch_relu_is_a_module_and_delta_is_not_redirected(net: SmallCNN) -> None:
    """The original ReLU of ``y`` is an ``nn.ReLU`` (so FV heuristics treat ``y`` exactly as
    in the original model); the silent branch is never opened by a redirected gradient."""
    from lightning_fv.manipulation.silent import conv_inputs
    from lightning_fv.optvis.relu import redirect_relus

    natural = _data(32, 1)
    silent = silence_block(net, "block2", natural, pattern="random")
    mod = silent.block2.conv
    assert isinstance(mod.relu, torch.nn.ReLU)
    inp = conv_inputs(net, "block2.conv", natural)[0].requires_grad_(True)
    assert torch.relu(mod.delta(inp)).max() == 0  # silent on the natural inputs
    with redirect_relus(silent) as mods:
        assert mod.relu in mods
        mod(inp).square().sum().backward()
    g_full = inp.grad.clone()
    inp2 = inp.detach().clone().requires_grad_(True)
    with redirect_relus(silent):
        mod.original(inp2).square().sum().backward()
    assert torch.equal(g_full, inp2.grad)  # no gradient through the closed Δy branch


def test_default_pattern_is_the_rendered_target_with_the_notebooks_alpha_and_beta(
        net: SmallCNN) -> None:
    """Defaults = the authors' recipe: pattern from a visualization of unit 0 of the layer
    (``pattern_from_image``), α = 100 (weight factor), β = 300 (lbd 3 × 100)."""
    import inspect

    from lightning_fv.manipulation import pattern_from_image
    from lightning_fv.manipulation.silent import effective_filter
    from lightning_fv.optvis.render import render_units

    params = inspect.signature(silence_block).parameters
    assert (params["pattern"].default, params["alpha"].default, params["beta"].default,
            params["pattern_unit"].default, params["pattern_steps"].default) == (
        "visualization", 100.0, 300.0, 0, 512)
    natural = _data(16, 1)
    silent = silence_block(net, "block3", natural, pattern_steps=3)
    target = render_units(net, ["block3:0"], thresholds=(3,), image_size=(16, 16)).final[0]
    pat = pattern_from_image(net, "block3.conv", target)
    perp = orthogonal_perturbation(effective_filter(net.block3.conv, net.block3.bn), pat,
                                   on_parallel="zero")
    theta = effective_filter(net.block3.conv, net.block3.bn)
    torch.testing.assert_close(silent.block3.conv.delta.weight, 100.0 * theta + 300.0 * perp)
    random = silence_block(net, "block3", natural, pattern="random")
    assert not torch.allclose(random.block3.conv.delta.weight, silent.block3.conv.delta.weight)
    with pytest.raises(ValueError, match="'stripes'"):
        silence_block(net, "block3", natural, pattern="stripes")


def test_max_bias_is_exact_on_its_images_and_held_out_change_is_measured(net: SmallCNN
                                                                         ) -> None:
    """Bit identity is guaranteed only on the images that set the bias; on held-out images
    ``natural_change`` reports the fraction where ``Δy`` opened, and the outputs are
    bit-identical exactly when that fraction is 0."""
    natural, held_out = _data(8, 1), _data(64, 2)
    silent = silence_block(net, "block3", natural, pattern_steps=3)
    with torch.no_grad():
        assert torch.equal(silent(natural), net(natural))
        same = (silent(held_out) == net(held_out)).all(1)
    frac = natural_change(silent, held_out)["block3.conv/active_fraction"]
    assert 0.0 < frac < 1.0  # 8 images set the bias: some of 64 new ones exceed it
    assert frac == pytest.approx(1.0 - float(same.float().mean()))


# ---------------------------------------------------------------- mutation-testing follow-ups
# (docs/testing.md §4); Eq. 1-2 of §2.2 and App. D of `dont-trust-your-eyes…`


def _randomized_bn(net: SmallCNN) -> SmallCNN:
    g = torch.Generator().manual_seed(5)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))  # some negative
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net


def test_effective_filter_folds_the_bn_scale_by_hand(net: SmallCNN) -> None:
    from lightning_fv.manipulation.silent import effective_filter

    net = _randomized_bn(net)
    conv, bn = net.block2.conv, net.block2.bn
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(effective_filter(conv, bn),
                               conv.weight.detach() * scale.view(-1, 1, 1, 1))
    plain = torch.nn.BatchNorm2d(6, affine=False)
    plain.running_var.copy_(torch.full((6,), 3.0))
    torch.testing.assert_close(effective_filter(conv, plain),
                               conv.weight.detach() / torch.sqrt(torch.tensor(3.0 + 1e-5)))
    assert torch.equal(effective_filter(conv, torch.nn.Identity()), conv.weight.detach())


def test_max_bias_is_minus_the_natural_maximum_with_its_margin(net: SmallCNN) -> None:
    """``b_c = −(m_c + margin·|m_c| + 1e-6)`` with ``m_c`` the largest ``Conv(x, Θ̄_c)`` over the
    natural images (the notebook's rule, module docstring), ``Θ̄ = αΘ_eff + βΔΘ⊥``."""
    from lightning_fv.manipulation.silent import conv_inputs, effective_filter

    net = _randomized_bn(net)
    natural = _data(10, 1)
    pattern = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(6))
    silent = silence_block(net, "block2", natural, pattern=pattern, alpha=2.0, beta=5.0,
                           margin=0.01, batch_size=3)
    theta = effective_filter(net.block2.conv, net.block2.bn)
    perp = orthogonal_perturbation(theta, pattern, on_parallel="zero")
    bar = 2.0 * theta + 5.0 * perp
    torch.testing.assert_close(silent.block2.conv.delta.weight, bar)
    x = conv_inputs(net, "block2.conv", natural)[0]
    resp = torch.nn.functional.conv2d(x, bar, padding=1)
    m = resp.amax((0, 2, 3))
    torch.testing.assert_close(silent.block2.conv.delta.bias, -(m + 0.01 * m.abs() + 1e-6))
    assert isinstance(silent.block2.bn, torch.nn.Identity)
    assert silent.fv_manipulations[-1] == {"kind": "silent", "layer": "block2",
                                          "conv": "block2.conv", "bn": "block2.bn"}


def test_percentile_bias_is_the_quantile_of_per_image_maxima(net: SmallCNN) -> None:
    from lightning_fv.manipulation.silent import conv_inputs, effective_filter

    natural = _data(11, 2)
    pattern = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(7))
    silent = silence_block(net, "block2", natural, pattern=pattern, alpha=1.0, beta=3.0,
                           bias="percentile", percentile=70.0)
    theta = effective_filter(net.block2.conv, net.block2.bn)
    bar = theta + 3.0 * orthogonal_perturbation(theta, pattern, on_parallel="zero")
    x = conv_inputs(net, "block2.conv", natural)[0]
    per_image = torch.nn.functional.conv2d(x, bar, padding=1).amax((2, 3)).double().numpy()
    import numpy as np

    ref = -np.percentile(per_image, 70.0, axis=0)  # linear interpolation, as torch.quantile
    np.testing.assert_allclose(silent.block2.conv.delta.bias.detach().numpy(), ref, rtol=1e-6)
    ok = silence_block(net, "block2", natural, pattern=pattern, bias="percentile",
                       percentile=100.0)
    assert ok.block2.conv.delta.bias.shape == (6,)
    for bad in (0.0, 100.5):
        with pytest.raises(ValueError, match="percentile must be in"):
            silence_block(net, "block2", natural, pattern=pattern, bias="percentile",
                          percentile=bad)


def test_channels_keep_only_their_silent_units(net: SmallCNN) -> None:
    natural = _data(8, 1)
    silent = silence_block(net, "block3", natural, pattern="random", channels=[1, 6])
    w, b = silent.block3.conv.delta.weight, silent.block3.conv.delta.bias
    others = [0, 2, 3, 4, 5, 7]
    assert w[others].abs().max() == 0 and (w[[1, 6]].flatten(1).abs().amax(1) > 0).all()
    assert b[others].tolist() == [-1.0] * 6 and (b[[1, 6]] != -1.0).all()
    full = silence_block(net, "block3", natural, pattern="random")
    torch.testing.assert_close(w[[1, 6]], full.block3.conv.delta.weight[[1, 6]])


def test_random_pattern_is_seeded_gaussian_in_the_filter_shape(net: SmallCNN) -> None:
    from lightning_fv.manipulation.silent import random_pattern

    conv = net.block2.conv
    p = random_pattern(conv)
    assert p.shape == (4, 3, 3) and p.dtype == conv.weight.dtype
    assert torch.equal(p, torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(random_pattern(conv, 3),
                       torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(3)))
    silent = silence_block(net, "block2", _data(4, 1), pattern=None)
    same = silence_block(net, "block2", _data(4, 1), pattern=p)
    assert torch.equal(silent.block2.conv.delta.weight, same.block2.conv.delta.weight)


def test_pattern_from_unit_is_that_units_filter_and_checks_the_index(net: SmallCNN) -> None:
    conv = net.block2.conv
    assert torch.equal(pattern_from_unit(conv, 5), conv.weight[5])
    for bad in (-1, 6):
        with pytest.raises(IndexError, match=r"out of range \(0\.\.5\)"):
            pattern_from_unit(conv, bad)


def test_perturbation_rejects_a_bad_policy_and_a_bad_pattern_shape() -> None:
    theta = torch.randn(3, 2, 1, 1, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="on_parallel must be"):
        orthogonal_perturbation(theta, torch.randn(2, 1, 1), on_parallel="keep")
    with pytest.raises(ValueError, match=r"pattern of shape \(3, 5, 1, 1\)"):
        orthogonal_perturbation(theta, torch.randn(3, 5, 1, 1))


def test_perturbation_by_hand_on_two_dimensional_filters() -> None:
    theta = torch.tensor([[[[3.0]], [[4.0]]], [[[1.0]], [[0.0]]]])  # (2, 2, 1, 1)
    pattern = torch.tensor([[[1.0]], [[0.0]]])
    perp = orthogonal_perturbation(theta, pattern, on_parallel="zero")
    # unit 0: p − (3/25)(3, 4) = (16, −12)/25, rescaled to ‖Θ_0‖ = 5 -> (4, −3)
    torch.testing.assert_close(perp[0].flatten(), torch.tensor([4.0, -3.0]))
    assert perp[1].abs().max() == 0  # the pattern is parallel to unit 1's filter
    assert perp.dtype == theta.dtype


def test_natural_change_counts_images_with_an_open_branch_and_the_largest_delta(
        net: SmallCNN) -> None:
    from lightning_fv.manipulation.silent import conv_inputs

    natural = _data(6, 1)
    silent = silence_block(net, "block2", natural[:2], pattern="random", alpha=1.0, beta=4.0)
    mod = silent.block2.conv
    x = conv_inputs(silent, "block2.conv", natural)[0]
    with torch.no_grad():
        d = torch.relu(mod.delta(x)).flatten(1)
    out = natural_change(silent, natural, batch_size=4)
    assert out["block2.conv/active_fraction"] == int((d > 0).any(1).sum()) / 6
    assert out["block2.conv/max_delta"] == float(d.max())
    assert 0 < out["block2.conv/active_fraction"] < 1


def test_find_bn_names_what_is_missing() -> None:
    from torchvision.models.resnet import BasicBlock

    from lightning_fv.manipulation.silent import find_bn

    nn = torch.nn
    block = nn.Sequential(BasicBlock(4, 4))
    assert find_bn(block, "0.conv1") == "0.bn1"
    flat = nn.Sequential()
    flat.add_module("conv", nn.Conv2d(3, 4, 1))
    flat.add_module("bn", nn.BatchNorm2d(4))
    flat.add_module("relu", nn.ReLU())
    assert find_bn(flat, "conv") == "bn"
    no_relu = nn.Sequential()
    no_relu.add_module("conv", nn.Conv2d(3, 4, 1))
    no_relu.add_module("bn", nn.BatchNorm2d(4))
    no_relu.add_module("act", nn.GELU())
    with pytest.raises(ValueError, match="no ReLU found after bn;"):
        find_bn(no_relu, "conv")
    with pytest.raises(ValueError, match=r"'conv' has no sibling BatchNorm2d 'bn'"):
        find_bn(_named(conv=nn.Conv2d(3, 4, 1)), "conv")
    with pytest.raises(ValueError, match="expected a conv named 'conv' or 'convN'"):
        find_bn(_named(proj=nn.Conv2d(3, 4, 1)), "proj")


def _named(**mods: torch.nn.Module) -> torch.nn.Module:
    m = torch.nn.Module()
    for k, v in mods.items():
        m.add_module(k, v)
    return m


def test_max_bias_adds_exactly_1e6_and_percentile_defaults_to_99(net: SmallCNN) -> None:
    from lightning_fv.manipulation.silent import conv_inputs, effective_filter

    natural = _data(9, 4)
    pattern = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(8))
    kw = dict(pattern=pattern, alpha=0.01, beta=0.02)  # small responses: 1e-6 is resolvable
    theta = effective_filter(net.block2.conv, net.block2.bn)
    bar = 0.01 * theta + 0.02 * orthogonal_perturbation(theta, pattern, on_parallel="zero")
    x = conv_inputs(net, "block2.conv", natural)[0]
    per_image = torch.nn.functional.conv2d(x, bar, padding=1).amax((2, 3))
    m = per_image.amax(0)
    b = silence_block(net, "block2", natural, margin=0.0, **kw).block2.conv.delta.bias
    torch.testing.assert_close(b, -(m + 1e-6), rtol=0, atol=1e-8)
    q = silence_block(net, "block2", natural, bias="percentile", **kw).block2.conv.delta.bias
    ref = -torch.quantile(per_image.double(), 0.99, dim=0).float()
    torch.testing.assert_close(q, ref, rtol=0, atol=1e-8)
    half = silence_block(net, "block2", natural, bias="percentile", percentile=0.5, **kw)
    ref = -torch.quantile(per_image.double(), 0.005, dim=0).float()
    torch.testing.assert_close(half.block2.conv.delta.bias, ref, rtol=0, atol=1e-8)


def test_the_unit_whose_filter_is_the_pattern_gets_no_perturbation_after_bn_folding(
        net: SmallCNN) -> None:
    """§2.2: ``ΔΘ⊥`` is the part of the pattern orthogonal to ``Θ``. For the unit whose own
    filter is the pattern (``pattern_from_unit``), the BN-folded filter is parallel to it up
    to float32 rounding, so that unit gets ``ΔΘ⊥ = 0`` (it used to get rounding noise scaled
    to ``‖Θ‖``)."""
    from lightning_fv.manipulation.silent import effective_filter

    net = _randomized_bn(net)
    conv, bn = net.block2.conv, net.block2.bn
    perp = orthogonal_perturbation(effective_filter(conv, bn), pattern_from_unit(conv, 0),
                                   on_parallel="zero")
    assert perp[0].abs().max() == 0 and (perp[1:].flatten(1).norm(dim=1) > 1e-3).all()
    silent = silence_block(net, "block2", _data(4, 1), pattern=pattern_from_unit(conv, 0),
                           alpha=1.0, beta=4.0)
    torch.testing.assert_close(silent.block2.conv.delta.weight[0],
                               effective_filter(conv, bn)[0])


def test_parallel_test_is_relative_to_each_units_pattern_norm() -> None:
    theta = torch.zeros(2, 2, 1, 1, dtype=torch.float64)
    theta[0, 0], theta[1, 1] = 1.0, 1.0
    big = torch.tensor([1e3, 1e-8], dtype=torch.float64).view(2, 1, 1)  # 1e-11 relative
    with pytest.raises(ValueError, match=r"parallel to the filters of units \[0\]"):
        orthogonal_perturbation(theta, torch.stack([big, torch.ones(2, 1, 1).double()]))
    # unit 0: 1e-5 relative orthogonal part, kept; unit 1's huge pattern does not matter
    small = torch.tensor([1.0, 1e-5], dtype=torch.float64).view(2, 1, 1)
    huge = torch.tensor([1e6, 3e6], dtype=torch.float64).view(2, 1, 1)
    perp = orthogonal_perturbation(theta, torch.stack([small, huge]))
    assert perp[0].flatten().tolist() == pytest.approx([0.0, 1.0])


def test_effective_filter_in_float64_uses_var_plus_eps(net: SmallCNN) -> None:
    from lightning_fv.manipulation.silent import effective_filter

    net = _randomized_bn(net).double()
    conv, bn = net.block2.conv, net.block2.bn
    bn.eps = 0.25  # large, so var + eps and var − eps differ clearly
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + 0.25)
    ref = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    got = effective_filter(conv, bn)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-14, atol=0)


def test_float64_model_silences_in_float64_with_a_frozen_branch(net: SmallCNN) -> None:
    from lightning_fv.manipulation.silent import random_pattern

    net64 = net.double()
    assert random_pattern(net64.block2.conv).dtype == torch.float64
    natural = _data(6, 1).double()
    silent = silence_block(net64, "block2", natural, pattern="random")
    delta = silent.block2.conv.delta
    assert delta.weight.dtype == torch.float64 and not delta.weight.requires_grad
    assert not delta.bias.requires_grad
    with torch.no_grad():
        assert torch.equal(silent(natural), net64(natural))


def test_act_named_relu_and_the_centre_of_a_large_input(net: SmallCNN) -> None:
    from lightning_fv.manipulation import pattern_from_image
    from lightning_fv.manipulation.silent import conv_inputs, find_bn

    m = _named(conv=torch.nn.Conv2d(3, 4, 1), bn=torch.nn.BatchNorm2d(4), act=torch.nn.ReLU())
    assert find_bn(m, "conv") == "bn"
    image = _data(1, 5)[0]
    x = conv_inputs(net, "block1.conv", image[None])[0][0]  # 16 × 16: centre at 6
    centre = pattern_from_image(net, "block1.conv", image, region="centre")
    assert torch.equal(centre, x[:, 6:9, 6:9])


def test_manipulations_accumulate_and_inplace_changes_the_model(net: SmallCNN) -> None:
    natural = _data(4, 1)
    once = silence_block(net, "block2", natural, pattern="random")
    twice = silence_block(once, "block3", natural, pattern="random")
    assert [s["layer"] for s in twice.fv_manipulations] == ["block2", "block3"]
    same = silence_block(net, "block1", natural, pattern="random", inplace=True)
    assert same is net and isinstance(net.block1.conv, SilentUnits)


def test_a_one_step_rendered_pattern_is_allowed(net: SmallCNN) -> None:
    silent = silence_block(net, "block3", _data(4, 1), pattern_steps=1)
    assert isinstance(silent.block3.conv, SilentUnits)
    with pytest.raises(ValueError, match="pattern_steps must be >= 1"):
        silence_block(net, "block3", _data(4, 1), pattern_steps=0)


def test_natural_images_as_batches_set_the_same_bias_as_one_tensor(net: SmallCNN) -> None:
    """An iterable of ``(images, labels)`` batches (a DataLoader) or of image tensors gives
    bit-identical silent units to the images held as one tensor; none at all is refused."""
    from torch.utils.data import DataLoader, TensorDataset

    natural = _data(9, 3)
    labels = torch.arange(9)
    pattern = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(8))
    for bias in ("max", "percentile"):
        ref = silence_block(net, "block2", natural, pattern=pattern, bias=bias)
        for images in (DataLoader(TensorDataset(natural, labels), batch_size=4),
                       list(natural.split(2))):
            got = silence_block(net, "block2", images, pattern=pattern, bias=bias)
            assert torch.equal(got.block2.conv.delta.bias, ref.block2.conv.delta.bias)
            assert torch.equal(got.block2.conv.delta.weight, ref.block2.conv.delta.weight)
    with pytest.raises(ValueError, match="needs natural images"):
        silence_block(net, "block2", [], pattern=pattern)
