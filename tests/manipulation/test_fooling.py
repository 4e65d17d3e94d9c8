"""Fooling circuit (`dont-trust-your-eyes…` §2.1, App. B.1): Lemma 1, exactness, k checks."""

from __future__ import annotations

import pytest
import torch

from lightning_fv.manipulation import (
    DetectorCNN,
    KTooSmallError,
    check_k,
    embed_images,
    fooling_circuit,
    lemma1,
    load_manipulated,
    permute_layer,
    save_manipulated,
    set_gate_override,
)
from lightning_fv.models import SmallCNN
from lightning_fv.optvis.hooks import capture
from lightning_fv.optvis.render import render_units


@pytest.fixture
def net() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=5, widths=(4, 6, 8, 8)).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _const_detector(logit: float, size: int = 16) -> DetectorCNN:
    det = DetectorCNN(size)
    for p in det.parameters():
        torch.nn.init.zeros_(p)
    det.fc.bias.data.fill_(logit)
    return det


def test_lemma1_holds_exactly_on_a_grid_and_random_values() -> None:
    k = 7.0
    g = torch.linspace(0, k, 57, dtype=torch.float64)
    x, y = torch.meshgrid(g, g, indexing="ij")
    assert torch.equal(lemma1(x, y, torch.zeros_like(x), k), x)
    assert torch.equal(lemma1(x, y, torch.ones_like(x), k), y)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10_000, generator=gen) * 1e3
    y = torch.rand(10_000, generator=gen) * 1e-3  # very different scales
    k = 1e3
    assert torch.equal(lemma1(x, y, torch.zeros_like(x), k), x)
    assert torch.equal(lemma1(x, y, torch.ones_like(x), k), y)


def test_lemma1_leaks_when_k_is_below_x() -> None:
    x, y = torch.tensor([5.0]), torch.tensor([1.0])
    assert lemma1(x, y, torch.ones(1), 3.0).item() == pytest.approx(3.0)  # B = 5 - 3 leaks


def test_perfect_gate_gives_F_bit_for_bit_on_natural_and_D_on_visualizations(
        net: SmallCNN, images: torch.Tensor) -> None:
    perm = [3, 0, 5, 1, 2, 4]
    fooled = permute_layer(net, "block2", _const_detector(0.0), permutation=perm, k=1e4)
    set_gate_override(fooled, 1.0)
    with torch.no_grad(), capture(net, ["block2"]) as a0:
        out0 = net(images)
    with torch.no_grad(), capture(fooled, ["block2"]) as a1:
        out1 = fooled(images)
    assert torch.equal(a1["block2"], a0["block2"])
    assert torch.equal(out1, out0)
    set_gate_override(fooled, 0.0)
    with torch.no_grad(), capture(fooled, ["block2.layer", "block2"]) as a:
        fooled(images)
    a2, a3 = a, a
    assert torch.equal(a3["block2"], a2["block2.layer"][:, perm])


class _BrightnessDetector(DetectorCNN):
    """Logit ``mean(x) − 0.5`` per image: bright images are "natural", dark ones are not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2, 3)) - 0.5


def test_detector_gate_routes_each_sample(net: SmallCNN, images: torch.Tensor) -> None:
    bright = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    x = torch.where(bright.view(-1, 1, 1, 1), 0.4 + 0.6 * images, 0.6 * images)
    assert torch.equal(x.mean((1, 2, 3)) > 0.5, bright)  # the gate sees each sample apart
    perm = [(c + 1) % 6 for c in range(6)]
    fooled = permute_layer(net, "block2", _BrightnessDetector(16), shift=1)
    with torch.no_grad(), capture(net, ["block2"]) as a0:
        net(x)
    with torch.no_grad(), capture(fooled, ["block2"]) as a1:
        fooled(x)
    assert torch.equal(fooled.fooling_gate.z, bright.float())
    # natural samples keep unit F, visualization samples get unit D, sample by sample
    assert torch.equal(a1["block2"][bright], a0["block2"][bright])
    assert torch.equal(a1["block2"][~bright], a0["block2"][~bright][:, perm])
    assert not torch.equal(a0["block2"][~bright], a0["block2"][~bright][:, perm])
    assert len(net._forward_pre_hooks) == 0  # the original is untouched


def test_signed_units_need_split_or_offset_mode(net: SmallCNN, images: torch.Tensor) -> None:
    relu = permute_layer(net, "fc", _const_detector(5.0), shift=2)
    with pytest.raises(ValueError, match="split"):
        relu(images)
    split = permute_layer(net, "fc", _const_detector(5.0), shift=2, mode="split")
    with torch.no_grad():
        ref = net(images)
        assert torch.equal(split(images), ref)
        set_gate_override(split, 0.0)
        assert torch.equal(split(images), ref[:, [(c + 2) % 5 for c in range(5)]])
    off = permute_layer(net, "fc", _const_detector(5.0), shift=2, mode="offset", offset=100.0)
    with torch.no_grad():
        torch.testing.assert_close(off(images), ref, atol=1e-4, rtol=0)


def test_k_too_small_is_reported_and_strict_mode_raises(net: SmallCNN,
                                                        images: torch.Tensor) -> None:
    fooled = permute_layer(net, "block2", _const_detector(5.0), shift=1, k=1e-3)
    report = check_k(fooled, images)
    assert not report.ok
    assert report.violations["block2"] > 0
    assert report.max_suppressed["block2"]["natural"] > 1e-3
    assert "too small" in report.messages[0]
    assert check_k(permute_layer(net, "block2", _const_detector(5.0), shift=1, k=1e4),
                   images).ok
    strict = permute_layer(net, "block2", _const_detector(5.0), shift=1, k=1e-3, strict_k=True)
    with pytest.raises(KTooSmallError, match="k=0.001"):
        strict(images)


def test_embedded_image_unit_is_the_image_filter_response(net: SmallCNN,
                                                          images: torch.Tensor) -> None:
    target = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(3))
    fooled = embed_images(net, "block3", _const_detector(-5.0), target[None], channels=[2])
    with torch.no_grad(), capture(fooled, ["block3"]) as acts:
        fooled(images)
    small = torch.nn.functional.interpolate(images, size=(8, 8), mode="bilinear",
                                            antialias=True, align_corners=False)
    w = (target - target.mean(dim=(1, 2), keepdim=True)) / 64
    expected = torch.relu((small * w).flatten(1).sum(1))
    got = acts["block3"][:, 2]
    assert torch.allclose(got, expected.view(-1, 1, 1).expand_as(got), atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        fooling_circuit(net, "block3", 0, _const_detector(0.0))


def test_deceptive_unit_renders_exactly_like_its_target(net: SmallCNN) -> None:
    fooled = permute_layer(net, "block3", _const_detector(-5.0), shift=1)
    kw = dict(thresholds=(3,), image_size=16)
    a = render_units(fooled, ["block3:0", "block3:4"], **kw).final
    d = render_units(net, ["block3:1", "block3:5"], **kw).final
    assert torch.equal(a, d)


def test_saved_manipulated_model_reloads_identically(net: SmallCNN, images: torch.Tensor,
                                                     tmp_path) -> None:
    fooled = permute_layer(net, "block2", _const_detector(-5.0), shift=2, k=123.0)
    fooled = embed_images(fooled, "block4", None, torch.rand(2, 3, 16, 16))
    path = save_manipulated(fooled, tmp_path / "m.safetensors", base="small_cnn")
    again = load_manipulated(net, path)
    with torch.no_grad():
        assert torch.equal(again(images), fooled(images))
    assert float(again.block2.k) == 123.0
