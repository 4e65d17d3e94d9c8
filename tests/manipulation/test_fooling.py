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


# ---------------------------------------------------------------- mutation-testing follow-ups
# (docs/testing.md §4); §2.1, Fig. 4 and App. B.1 (Lemma 1) of `dont-trust-your-eyes…`


def test_paper_defaults_k_1e4_relu_mode_zero_offset_and_threshold(net: SmallCNN) -> None:
    """The defaults as built (mutmut keeps the original signature, so they are read from the
    constructed circuit, not from ``inspect``)."""
    from lightning_fv.manipulation.fooling import FoolingLayer, InputGate, install_fooling_circuit

    det = _const_detector(5.0)
    target = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    built = [install_fooling_circuit(net, "block2", det, {0: 1}).block2,
             fooling_circuit(net, "block2", 0, det, unit_d=1).block2,
             permute_layer(net, "block2", det).block2,
             embed_images(net, "block2", det, target).block2,
             FoolingLayer(torch.nn.Identity(), InputGate(det), torch.arange(2),
                          torch.ones(2, dtype=torch.bool))]
    for layer in built:
        assert float(layer.k) == 1e4 and layer.mode == "relu"
        assert float(layer.offset) == 0.0 and layer.strict_k is False
        assert layer.gate.threshold == 0.0
    assert built[2].source.tolist() == [1, 2, 3, 4, 5, 0]  # shift 1


def test_lemma1_accepts_a_boolean_gate() -> None:
    x, y = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 3.0])
    z = torch.tensor([False, True])
    assert lemma1(x, y, z, 10.0).tolist() == [2.0, 3.0]


class _Lin(torch.nn.Module):
    """A linear layer ``fc`` (4 signed units) on the mean colour of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, -2.0, 0.0],
                                               [0.5, 0.5, 0.5], [-1.0, 0.0, 3.0]]))
            self.fc.bias.copy_(torch.tensor([0.25, 0.0, -1.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


def test_offset_mode_is_exact_on_both_sides_and_reports_the_shifted_branches() -> None:
    """``A = ReLU(D + o − kz) + ReLU(F + o − k(1 − z)) − o`` by hand on signed units."""
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    net = _Lin().eval()
    with torch.no_grad():
        ref = net(x)
    o = 8.0
    perm = [2, 3, 0, 1]
    fooled = permute_layer(net, "fc", _const_detector(1.0), permutation=perm, k=50.0,
                           mode="offset", offset=o)
    with torch.no_grad():
        torch.testing.assert_close(fooled(x), ref, atol=1e-5, rtol=0)  # z = 1: F
        set_gate_override(fooled, 0.0)
        torch.testing.assert_close(fooled(x), ref[:, perm], atol=1e-5, rtol=0)  # z = 0: D
    set_gate_override(fooled, 1.0)
    report = check_k(fooled, x)
    # on natural input the suppressed branch is D + o
    assert report.max_suppressed["fc"]["natural"] == pytest.approx(float((ref[:, perm] + o).max()))
    set_gate_override(fooled, 0.0)
    report = check_k(fooled, x)
    assert report.max_suppressed["fc"]["visualization"] == pytest.approx(float((ref + o).max()))
    assert report.max_suppressed["fc"]["natural"] == 0.0 and report.ok


def test_relu_mode_ignores_the_offset_argument(net: SmallCNN, images: torch.Tensor) -> None:
    fooled = permute_layer(net, "block2", _const_detector(-5.0), shift=1, offset=3.0)
    with torch.no_grad(), capture(net, ["block2"]) as a0:
        net(images)
    with torch.no_grad(), capture(fooled, ["block2"]) as a1:
        fooled(images)
    assert torch.equal(a1["block2"], a0["block2"][:, [1, 2, 3, 4, 5, 0]])


def test_fooling_circuit_passes_unit_d_or_image_k_mode_and_options_on(
        net: SmallCNN, images: torch.Tensor) -> None:
    fooled = fooling_circuit(net, "fc", 1, _const_detector(5.0), unit_d=3, k=77.0,
                             mode="split", threshold=6.0)
    layer = fooled.fc
    assert float(layer.k) == 77.0 and layer.mode == "split"
    assert fooled.fooling_gate.threshold == 6.0  # logit 5 < 6: a visualization
    with torch.no_grad():
        ref = net(images)
        out = fooled(images)
    assert torch.equal(out[:, 1], ref[:, 3])
    assert torch.equal(out[:, [0, 2, 3, 4]], ref[:, [0, 2, 3, 4]])
    target = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    emb = fooling_circuit(net, "block3", 2, _const_detector(-5.0), image=target, k=55.0)
    assert float(emb.block3.k) == 55.0 and emb.block3.embedded.shape == (1, 3, 8, 8)
    assert emb.block3.source.tolist()[2] == 8  # the first D' unit after the 8 channels
    img = embed_images(net, "block3", _const_detector(-5.0), target[None], channels=[2],
                       k=66.0, mode="split", threshold=-6.0)
    assert float(img.block3.k) == 66.0 and img.block3.mode == "split"
    assert img.fooling_gate.threshold == -6.0


def test_shift_default_is_one_and_channels_restrict_the_manipulation(
        net: SmallCNN, images: torch.Tensor) -> None:
    from lightning_fv.manipulation.fooling import shifted_permutation

    assert shifted_permutation(5) == [1, 2, 3, 4, 0]
    assert shifted_permutation(5, -2) == [3, 4, 0, 1, 2]
    some = permute_layer(net, "block2", _const_detector(-5.0), channels=[1, 4])
    assert some.block2.mask.tolist() == [False, True, False, False, True, False]
    assert some.block2.source.tolist() == [0, 2, 2, 3, 5, 5]


def test_channel_count_is_probed_on_the_layer_then_on_its_last_counting_child() -> None:
    from lightning_fv.manipulation.fooling import _probe_channels

    nn = torch.nn

    class Own(nn.Module):
        out_channels = 4

        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(3, 7)

    class OwnF(nn.Module):
        out_features = 4

        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Conv2d(3, 7, 1)

    class OwnN(nn.Module):
        num_features = 4

        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(3, 7)

    assert _probe_channels(None, "x", Own()) == 4
    assert _probe_channels(None, "x", OwnF()) == 4 and _probe_channels(None, "x", OwnN()) == 4
    assert _probe_channels(None, "x", nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU())) == 5
    assert _probe_channels(None, "x", nn.Sequential(nn.Linear(3, 6), nn.ReLU())) == 6
    assert _probe_channels(None, "x", nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(9))) == 9
    assert _probe_channels(None, "x", nn.BatchNorm1d(2)) == 2
    with pytest.raises(ValueError, match="units of layer 'act'"):
        _probe_channels(None, "act", nn.ReLU())


def test_nested_layer_names_and_inplace_installation(net: SmallCNN, images: torch.Tensor
                                                     ) -> None:
    from lightning_fv.manipulation.fooling import FoolingLayer

    fooled = permute_layer(net, "block2.conv", _const_detector(5.0), shift=1, mode="split")
    assert isinstance(fooled.block2.conv, FoolingLayer)
    assert not isinstance(net.block2.conv, FoolingLayer)
    with torch.no_grad():
        assert torch.equal(fooled(images), net(images))
    same = permute_layer(net, "block2", _const_detector(5.0), shift=1, inplace=True)
    assert same is net and isinstance(net.block2, FoolingLayer)


def test_second_circuit_shares_the_gate_and_index_checks_are_exclusive(net: SmallCNN) -> None:
    det = _const_detector(5.0)
    once = permute_layer(net, "block2", det, shift=1)
    det = once.fooling_gate.detector  # (a copy of det, made with the model)
    twice = permute_layer(once, "block3", det, shift=1, inplace=True)  # same detector: ok
    assert twice.block3.gate is twice.fooling_gate
    with pytest.raises(ValueError, match="another detector"):
        permute_layer(once, "block4", _const_detector(5.0), shift=1)
    from lightning_fv.manipulation.fooling import install_fooling_circuit

    with pytest.raises(IndexError, match="unit 6 out of range"):
        install_fooling_circuit(net, "block2", det, {6: 0})
    with pytest.raises(IndexError, match="target unit 6 out of range"):
        install_fooling_circuit(net, "block2", det, {0: 6})
    imgs = {0: torch.rand(3, 4, 4), 1: torch.rand(3, 6, 6)}
    with pytest.raises(ValueError, match="same size"):
        install_fooling_circuit(net, "block3", det, imgs)


def test_embedding_filter_of_a_non_square_image_and_bad_shapes() -> None:
    from lightning_fv.manipulation.fooling import _embedding_filter

    img = torch.rand(3, 4, 8, generator=torch.Generator().manual_seed(3))
    ref = (img - img.mean((1, 2), keepdim=True)) / 32  # App. C.2: divided by the pixel count
    assert torch.equal(_embedding_filter(img), ref)
    for bad in (torch.rand(1, 4, 4), torch.rand(3, 4)):
        with pytest.raises(ValueError, match=r"must be \(3, h, w\)"):
            _embedding_filter(bad)


def test_fresh_layer_counters_and_k_must_be_positive(net: SmallCNN, images: torch.Tensor
                                                     ) -> None:
    from lightning_fv.manipulation.fooling import FoolingLayer

    fooled = permute_layer(net, "block2", _const_detector(5.0), shift=1, k=1e4)
    layer = fooled.block2
    assert layer.violations == 0 and layer.last_violation == ""
    assert layer.max_suppressed == {"natural": 0.0, "visualization": 0.0}
    with torch.no_grad(), capture(net, ["block2"]) as a0:
        net(images)
        fooled(images)
    # natural input (logit 5 > 0): D, the shifted unit, is the suppressed branch
    assert layer.max_suppressed["natural"] == float(a0["block2"][:, [1, 2, 3, 4, 5, 0]].max())
    assert layer.max_suppressed["visualization"] == 0.0 and layer.violations == 0
    with pytest.raises(ValueError, match="k must be > 0"):
        FoolingLayer(torch.nn.Identity(), fooled.fooling_gate, torch.arange(2),
                     torch.ones(2, dtype=torch.bool), k=0.0)


def test_the_gate_needs_a_batch_image_input_and_a_decision_for_the_batch(
        net: SmallCNN, images: torch.Tensor) -> None:
    from lightning_fv.manipulation.fooling import InputGate

    fooled = permute_layer(net, "block2", _const_detector(5.0), shift=1)
    assert fooled.fooling_gate.z is None and fooled.fooling_gate.input is None
    x1 = net.pool1(net.block1(net.normalize(images)))
    with pytest.raises(RuntimeError, match="no decision for this batch"):
        fooled.block2(x1)  # the layer alone: the gate has seen no input
    with torch.no_grad():
        fooled(images[:3])
        with pytest.raises(RuntimeError, match="no decision for this batch"):
            fooled.block2(x1)  # 12 samples, a decision for 3
    with pytest.raises(TypeError, match=r"\(B, C, H, W\) tensor"):
        fooled.fooling_gate.observe(fooled, (images[0],))
    gate = InputGate(_BrightnessDetector(16))
    x = torch.stack([torch.full((3, 16, 16), 0.7), torch.full((3, 16, 16), 0.2)])
    assert gate(x).tolist() == [1.0, 0.0]
    assert InputGate(_BrightnessDetector(16), threshold=0.25)(x).tolist() == [0.0, 0.0]
    assert permute_layer(net, "block2", _BrightnessDetector(16), shift=1,
                         threshold=0.25).fooling_gate.threshold == 0.25
    with pytest.raises(ValueError, match="no fooling gate"):
        set_gate_override(net, 1.0)


def test_embedded_units_without_images_are_an_empty_column_block(net: SmallCNN,
                                                                  images: torch.Tensor) -> None:
    fooled = permute_layer(net, "block2", _const_detector(5.0), shift=1)
    e = fooled.block2.embedded_units(images)
    assert e.shape == (12, 0) and e.dtype == images.dtype


def test_a_layer_called_with_keyword_arguments_gets_them(images: torch.Tensor) -> None:
    nn = torch.nn

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out_features = 3

        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return scale * x.mean((2, 3))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = Scaled()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x, scale=2.0)

    net = Net()
    fooled = permute_layer(net, "head", _const_detector(5.0), shift=1)
    with torch.no_grad():
        assert torch.equal(fooled(images), 2.0 * images.mean((2, 3)))


def test_a_layer_without_a_unit_count_is_named(net: SmallCNN) -> None:
    with pytest.raises(ValueError, match="units of layer 'pool1'"):
        permute_layer(net, "pool1", _const_detector(5.0))
    with pytest.raises(ValueError, match="units of layer 'pool1'"):
        fooling_circuit(net, "pool1", 0, _const_detector(5.0), unit_d=1)


def test_float64_model_with_an_embedded_image(net: SmallCNN, images: torch.Tensor) -> None:
    net64 = net.double()
    x = images.double()
    target = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(3))
    fooled = embed_images(net64, "block3", _const_detector(-5.0), target[None], channels=[2])
    with torch.no_grad(), capture(fooled, ["block3"]) as acts:
        fooled(x)
    small = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", antialias=True,
                                            align_corners=False)
    w = ((target - target.mean(dim=(1, 2), keepdim=True)) / 64).double()
    expected = torch.relu((small * w).flatten(1).sum(1))
    got = acts["block3"][:, 2]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected.view(-1, 1, 1).expand_as(got))
