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
