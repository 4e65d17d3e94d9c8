"""The shared pieces of the framework: the activation recorder, the unit grammar, the
preprocessing helpers, the device helpers and the rendering presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fv.optvis.hooks import INPUT_KEY, OUTPUT_KEY, Unit, capture, parse_units, record
from lightning_fv.optvis.render import PRESETS, render, render_units
from lightning_fv.utils.device import model_device, model_dtype, resolve_device
from lightning_fv.utils.preprocess import Normalize, as_normalize, check_mean_std


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture
def net() -> Net:
    return Net()


def test_record_equals_a_hand_written_forward_for_each_reduction(net: Net) -> None:
    x = torch.rand(7, 3, 6, 5)
    net.eval()
    with torch.no_grad():
        conv = net.conv(x)
        pooled = net.pool(net.relu(net.bn(conv))).flatten(1)
        out = net.fc(pooled)
    acts = record(net, ["conv", "fc"], x, batch_size=3, keep_output=True)
    torch.testing.assert_close(acts["conv"], conv)
    torch.testing.assert_close(acts[OUTPUT_KEY], out)
    flat = record(net, ["conv"], x, batch_size=2, reduce="flatten")["conv"]
    torch.testing.assert_close(flat, conv.flatten(1))
    mean = record(net, ["conv"], x, reduce="channel_mean")["conv"]
    torch.testing.assert_close(mean, conv.mean((2, 3)))
    pos = record(net, ["conv"], x, reduce="positions")["conv"]
    assert pos.shape == (7 * 6 * 5, 4)
    # row (n, r, c) of the positions table is conv[n, :, r, c]
    torch.testing.assert_close(pos[1 * 30 + 2 * 5 + 3], conv[1, :, 2, 3])
    # the input of fc is the pooled vector
    torch.testing.assert_close(record(net, ["fc"], x, at="input")["fc"], pooled)


def test_record_takes_a_dataloader_of_pairs_and_keeps_the_inputs(net: Net) -> None:
    x = torch.rand(5, 3, 4, 4)
    loader = [(x[:2], torch.zeros(2)), (x[2:], torch.zeros(3))]
    acts = record(net, ["fc"], loader, keep_inputs=True, to_cpu=True)
    torch.testing.assert_close(acts[INPUT_KEY], x)
    torch.testing.assert_close(acts["fc"], record(net, ["fc"], x)["fc"])


def test_record_restores_mode_flags_and_grads_and_removes_hooks(net: Net) -> None:
    net.train()
    net.fc.weight.requires_grad_(False)
    net.conv.weight.grad = torch.ones_like(net.conv.weight)
    before = net.bn.running_mean.clone()
    record(net, ["conv", "bn"], torch.rand(4, 3, 4, 4))
    assert net.training and net.bn.training
    assert net.fc.weight.requires_grad is False and net.conv.weight.requires_grad is True
    assert torch.equal(net.conv.weight.grad, torch.ones_like(net.conv.weight))
    assert torch.equal(net.bn.running_mean, before)  # ran in eval mode
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with pytest.raises(RuntimeError), capture(net, ["conv"]):
        raise RuntimeError("body fails")
    assert not net.conv._forward_hooks


def test_record_without_detach_keeps_the_graph_to_the_input(net: Net) -> None:
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    a = record(net, ["conv"], x, detach=False)["conv"]
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert net.conv.weight.grad is None  # parameters were frozen during the call


def test_record_errors_name_the_bad_value(net: Net) -> None:
    with pytest.raises(ValueError, match="unknown reduce 'sum'"):
        record(net, ["conv"], torch.rand(1, 3, 4, 4), reduce="sum")
    with pytest.raises(ValueError, match="at must be one of"):
        record(net, ["conv"], torch.rand(1, 3, 4, 4), at="middle")
    with pytest.raises(KeyError, match="closest layer names.*'conv'"):
        record(net, ["cnv"], torch.rand(1, 3, 4, 4))


def test_parse_units_grammar(net: Net) -> None:
    assert parse_units("fc:3") == [Unit("fc", 3)]
    assert parse_units("[fc:0-2, conv:1@2,3]") == [
        Unit("fc", 0), Unit("fc", 1), Unit("fc", 2), Unit("conv", 1, (2, 3))]
    assert parse_units(["fc:*"], net, 8) == [Unit("fc", i) for i in range(5)]
    assert parse_units(["conv:*"], net, 8) == [Unit("conv", i) for i in range(4)]
    assert parse_units([("fc", 2), Unit("conv", 0)]) == [Unit("fc", 2), Unit("conv", 0)]


def test_parse_units_rejects_empty_lists_ranges_and_unknown_layers(net: Net) -> None:
    with pytest.raises(ValueError, match="no units given"):
        parse_units([])
    with pytest.raises(ValueError, match="no units given"):
        parse_units("[]")
    with pytest.raises(ValueError, match="empty range.*'fc:3-1'"):
        parse_units("fc:3-1")
    with pytest.raises(ValueError, match="wildcard needs the model"):
        parse_units("fc:*")
    with pytest.raises(KeyError, match="closest layer names"):
        parse_units("fcc:1", net)


def test_check_mean_std_and_as_normalize() -> None:
    assert check_mean_std(None, None) is None
    assert check_mean_std([0.5], [0.25]) == ((0.5,), (0.25,))
    with pytest.raises(ValueError, match=r"mean=\[0.5\], std=None"):
        check_mean_std([0.5], None)
    x = torch.rand(2, 3, 4, 4)
    norm = as_normalize(((0.1, 0.2, 0.3), (0.5, 0.25, 2.0)))
    assert isinstance(norm, Normalize)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    assert as_normalize(None) is None
    torch.testing.assert_close(as_normalize(lambda t: 2 * t)(x), 2 * x)
    with pytest.raises(TypeError, match="got int"):
        as_normalize(3)  # type: ignore[arg-type]


def test_device_helpers() -> None:
    m = nn.Linear(2, 2).double()
    assert model_device(m) == torch.device("cpu") and model_dtype(m) == torch.float64
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_dtype(nn.ReLU()) == torch.float32
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_presets_are_named_by_their_source(net: Net) -> None:
    assert PRESETS["lucent"]["redirect_relu_steps"] == 0
    assert PRESETS["lucid"]["redirect_relu_steps"] == 16
    kw = dict(image_size=8, thresholds=(4,), transforms="none", seed=3)
    a = render(net, "conv:1", preset="lucent", **kw)
    b = render(net, "conv:1", redirect_relu_steps=0, **kw)
    c = render(net, "conv:1", **kw)
    d = render(net, "conv:1", redirect_relu_steps=16, **kw)
    assert torch.equal(a.final, b.final)
    assert torch.equal(c.final, d.final)  # the default preset is "lucid"
    with pytest.raises(ValueError, match="unknown preset 'lucyd'.*'lucent'"):
        render(net, "conv:1", preset="lucyd", **kw)
    with pytest.raises(ValueError, match="unknown transforms 'nnone'"):
        render(net, "conv:1", image_size=8, thresholds=(1,), transforms="nnone")


def test_render_units_reports_progress_in_unit_steps(net: Net) -> None:
    calls: list[tuple[int, int]] = []
    render_units(net, "fc:0-4", batch_size=2, image_size=8, thresholds=(3,),
                 progress=lambda done, total: calls.append((done, total)))
    # 5 units x 3 steps; chunks of 2, 2, 1 units
    assert [d for d, _ in calls] == [2, 4, 6, 8, 10, 12, 13, 14, 15]
    assert {t for _, t in calls} == {15}


def test_l2_is_already_a_penalty_added_with_a_positive_weight(net: Net) -> None:
    from lightning_fv.optvis import objectives as obj

    x = torch.rand(2, 3, 4, 4)
    o = obj.channel("conv", 1) + obj.l2(0.5) * 0.1
    with capture(net, ["conv"]) as acts:
        net(x)
    acts[obj.INPUT] = x
    expected = acts["conv"][:, 1].mean((1, 2)) - 0.1 * (x - 0.5).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(o(acts), expected)


def test_ifv_realizations_take_the_warm_up_as_an_option(net: Net) -> None:
    from lightning_fv.ifv.evaluation import reoptimize

    with torch.no_grad():
        net.conv.bias.fill_(-100.0)  # every ReLU closed: no gradient without the warm-up
    imgs = torch.rand(2, 3, 8, 8) * 0.8 + 0.1
    objs = torch.rand(2, 4) + 0.1
    kw = dict(k=0.0, steps=3, aggregation="mean")
    with pytest.warns(RuntimeWarning, match="exactly zero gradient"):
        plain = reoptimize(net, "relu", imgs, objs, redirect_relu_steps=0, **kw)
    warm = reoptimize(net, "relu", imgs, objs, **kw)
    torch.testing.assert_close(plain, imgs, atol=1e-5, rtol=0)  # never moved
    assert (warm - imgs).abs().max() > 1e-3  # the default warm-up opened the units


@pytest.mark.parametrize(("padding", "scipy_mode"), [("replicate", "nearest"),
                                                     ("reflect", "mirror")])
def test_gaussian_blur_equals_scipy(padding: str, scipy_mode: str) -> None:
    from scipy.ndimage import gaussian_filter

    from lightning_fv.optvis.objectives import gaussian_blur

    x = torch.rand(2, 3, 17, 13, dtype=torch.float64)
    sigma = 1.3
    r = max(1, int(3 * sigma + 0.5))
    ours = gaussian_blur(x, sigma, padding=padding)
    ref = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode=scipy_mode,
                          truncate=r / sigma)
    torch.testing.assert_close(ours, torch.from_numpy(ref), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="sigma must be > 0 pixels, got 0"):
        gaussian_blur(x, 0)


def test_invert_scheduled_is_invert_in_chunks() -> None:
    from lightning_fv.adversarial import invert, invert_scheduled, representation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    target, x0 = torch.rand(2, 3, 2, 2), torch.rand(2, 3, 2, 2)
    one, trace = invert_scheduled(model, target, x0, steps=6, step_size=0.1)
    torch.testing.assert_close(one, invert(model, target, x0=x0, steps=6, step_size=0.1))
    # three chunks with a decaying step = three invert calls with steps 0.1, 0.1·√0.01, 0.001
    three, trace3 = invert_scheduled(model, target, x0, steps=6, step_size=0.1, decay=0.01,
                                     chunks=3)
    x = x0
    for step in (0.1, 0.01, 0.001):
        x = invert(model, representation(model, target).detach(), x0=x, steps=2, step_size=step)
    torch.testing.assert_close(three, x)
    assert len(trace3) == 4 and len(trace) == 2
    r_t = representation(model, target).detach()
    rel = float(((representation(model, three) - r_t).norm(dim=1) / r_t.norm(dim=1)).mean())
    assert trace3[-1] == pytest.approx(rel, rel=1e-6)


def test_run_ifv_reports_progress_in_optimizer_steps(net: Net) -> None:
    from lightning_fv.ifv import run_ifv

    calls: list[tuple[int, int]] = []
    run_ifv(net, "conv", 2, steps=3, lbfgs_steps=2, reopt_steps=4, image_size=8,
            aggregation="mean", progress=lambda d, t: calls.append((d, t)))
    # Adam 1..3, L-BFGS done at 5, re-optimization 6..9 of 9
    assert calls == [(1, 9), (2, 9), (3, 9), (5, 9), (6, 9), (7, 9), (8, 9), (9, 9)]


def test_path_linearity_summarize_is_the_mean_over_units() -> None:
    import math

    from lightning_fv.analysis.path_linearity import PathLinearityResult, summarize

    def result(aga: float, ald: float) -> PathLinearityResult:
        z = torch.zeros(1)
        return PathLinearityResult(unit="fc:0", agpa=z, aga=aga, aldp=z, ald=ald,
                                   angles=torch.zeros(1, 1), start_values=z, end_values=z)

    assert summarize([result(10.0, 0.2), result(30.0, 0.6)]) == pytest.approx(
        {"aga": 20.0, "ald": 0.4})
    empty = summarize([])
    assert math.isnan(empty["aga"]) and math.isnan(empty["ald"])


def test_chunk_size_is_a_deprecated_name_of_batch_size_where_configs_used_it() -> None:
    from lightning_fv.callbacks import FeatureVisualizationCallback
    from lightning_fv.data.trajectories import TrajectoryDataModule

    with pytest.warns(DeprecationWarning, match="use batch_size="):
        cb = FeatureVisualizationCallback(["fc:0"], chunk_size=7)
    assert cb.batch_size == 7
    assert FeatureVisualizationCallback(["fc:0"], batch_size=5).batch_size == 5
    with pytest.warns(DeprecationWarning, match="use render_batch_size="):
        dm = TrajectoryDataModule("bundled", units=["fc:0"], chunk_size=9)
    assert dm.render_batch_size == 9
