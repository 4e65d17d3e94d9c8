"""Rendering: closed form, batching, thresholds, trajectories, NaN handling, state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fv.optvis import objectives as obj
from lightning_fv.optvis.hooks import capture
from lightning_fv.optvis.render import log_spaced_steps, render, render_units


class Linear(nn.Module):
    """f(x) = wᵀx over all pixels, as a (B, 1) "logit"."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("optim,tol", [("sgd", 1e-6), ("adam", 2e-3)])
def test_linear_objective_with_l2_penalty_converges_to_w_over_2lambda(optim, tol):
    # activation-maximization-notes: argmax_x wᵀx − λ‖x‖² = w / (2λ)
    torch.manual_seed(0)
    w = torch.randn(1, 3, 6, 6)
    lam = 2.0
    objective = obj.class_logit(0) + lam * obj.l2()
    factory = (lambda p: torch.optim.SGD(p, lr=0.1)) if optim == "sgd" else \
        (lambda p: torch.optim.Adam(p, lr=0.05))
    res = render(Linear(w), objective, param={"fft": False, "decorrelate": False,
                                               "output": "none"},
                 transforms=None, optimizer=factory, thresholds=(600,), image_size=6)
    assert torch.allclose(res.final, w / (2 * lam), atol=tol)
    # the reported value is the objective at the optimum: ‖w‖²/(4λ)
    assert res.values[600].item() == pytest.approx((w.pow(2).sum() / (4 * lam)).item(), rel=1e-4)


def test_unit_rendered_alone_equals_unit_rendered_in_a_batch(tiny_net):
    units = ["conv2:1", "fc:3", "conv1:2"]
    kw = dict(thresholds=(2, 6), image_size=16, record="all")
    batch = render_units(tiny_net, units, **kw)
    # equal up to float rounding of batched convolutions (amplified a little by Adam)
    for i, u in enumerate(units):
        alone = render_units(tiny_net, [u], **kw)
        for t in (2, 6):
            assert (alone.images[t][0] - batch.images[t][i]).abs().max() < 1e-4
        assert torch.allclose(alone.trajectory.grads[:, 0], batch.trajectory.grads[:, i],
                              rtol=1e-3, atol=1e-6)
    assert batch.units == units


def test_chunking_does_not_change_images(tiny_net):
    units = [f"conv2:{i}" for i in range(5)]
    a = render_units(tiny_net, units, batch_size=2, thresholds=(4,), image_size=12)
    b = render_units(tiny_net, units, batch_size=None, thresholds=(4,), image_size=12)
    assert (a.final - b.final).abs().max() < 1e-4


def test_render_increases_the_objective_and_keeps_images_in_unit_range(tiny_net):
    res = render(tiny_net, "conv2:2", thresholds=(0, 20), image_size=16, batch=2)
    assert (res.values[20] > res.values[0]).all()
    assert res.final.min() >= 0 and res.final.max() <= 1


def test_threshold_zero_is_the_initial_image_and_init_images_are_respected(tiny_net):
    x = torch.rand(2, 3, 16, 16) * 0.8 + 0.1
    res = render(tiny_net, "fc:1", init_images=x, thresholds=(0, 3), image_size=16)
    assert torch.allclose(res.images[0], x, atol=1e-5)
    assert not torch.allclose(res.images[3], x, atol=1e-3)


def _recorded_linear_run(tiny_net):
    # no transforms and no redirected ReLU, so each recorded step's objective is exactly
    # ``channel("conv2", 0)`` of the recorded image and its gradient can be recomputed
    return render(tiny_net, obj.channel("conv2", 0), thresholds=(40,), image_size=12,
                  record="log", transforms=None, redirect_relu_steps=0).trajectory


def _objective_and_gradient(net: nn.Module, img: torch.Tensor) -> tuple[float, torch.Tensor]:
    net.eval()
    img = img.clone().requires_grad_(True)
    with capture(net, ["conv2"]) as acts:
        net(img)
        val = acts["conv2"][:, 0].mean((-1, -2))
    (grad,) = torch.autograd.grad(val.sum(), img)
    return val.item(), grad


def test_trajectory_records_images_and_values_at_log_spaced_steps(tiny_net):
    tr = _recorded_linear_run(tiny_net)
    assert tr.steps.tolist() == log_spaced_steps(40, 15)
    assert tr.images.shape == (15, 1, 3, 12, 12) and tr.grads.shape == (15, 1, 3, 12, 12)
    assert tr.values.shape == (15, 1)
    for t in (0, 5, 14):  # the recorded value is the objective of that step's image
        val, grad = _objective_and_gradient(tiny_net, tr.images[t])
        assert tr.values[t].item() == pytest.approx(val, rel=1e-5, abs=1e-6)
        # up to its sign (see the next test) the gradient is that step's gradient
        torch.testing.assert_close(tr.grads[t].abs(), grad.abs(), rtol=1e-4, atol=1e-7)
    assert not torch.allclose(tr.images[0], tr.images[14], atol=1e-3)
    assert not torch.allclose(tr.grads[0], tr.grads[14], atol=1e-4)


def test_recorded_gradient_is_the_gradient_of_that_steps_objective(tiny_net):
    tr = _recorded_linear_run(tiny_net)
    for t in (0, 5, 14):
        _, grad = _objective_and_gradient(tiny_net, tr.images[t])
        torch.testing.assert_close(tr.grads[t], grad, rtol=1e-4, atol=1e-7)


def test_log_spaced_steps_are_distinct_sorted_and_span_the_run():
    for total in (15, 16, 100, 512, 2048):
        s = log_spaced_steps(total, 15)
        assert len(s) == 15 and s == sorted(set(s))
        assert s[0] == 0 and s[-1] == total - 1
    assert log_spaced_steps(5, 15) == [0, 1, 2, 3, 4]


def test_nan_objective_raises_naming_unit_and_step(tiny_net):
    def bad(acts):
        v = acts[obj.OUTPUT][:, 0]
        return v * torch.tensor([1.0, float("nan")])

    with pytest.raises(FloatingPointError, match=r"unit 'u1' at step 1"):
        render(tiny_net, obj.Objective(bad, [obj.OUTPUT]), batch=2, thresholds=(3,),
               image_size=8, unit_names=["u0", "u1"])


def test_model_state_hooks_and_grads_restored_after_success_and_exception(tiny_net):
    tiny_net.train()
    tiny_net.conv1.weight.requires_grad_(False)
    tiny_net.fc.weight.grad = torch.ones_like(tiny_net.fc.weight)
    before = {n: p.detach().clone() for n, p in tiny_net.state_dict().items()}

    def check():
        assert tiny_net.training and all(m.training for m in tiny_net.modules())
        assert not tiny_net.conv1.weight.requires_grad and tiny_net.conv2.weight.requires_grad
        assert torch.equal(tiny_net.fc.weight.grad, torch.ones_like(tiny_net.fc.weight))
        assert tiny_net.conv2.weight.grad is None
        for m in tiny_net.modules():
            assert not m._forward_hooks
        for n, t in tiny_net.state_dict().items():
            assert torch.equal(t, before[n]), n  # BN running stats untouched

    render(tiny_net, "conv2:1", thresholds=(2,), image_size=8)
    check()
    with pytest.raises(IndexError):
        render(tiny_net, "conv2:99", thresholds=(2,), image_size=8)
    check()


def test_unit_index_out_of_range_names_layer_size(tiny_net):
    with pytest.raises(IndexError, match=r"'conv2' with 6 channels \(valid: 0..5\)"):
        render(tiny_net, "conv2:6", thresholds=(1,), image_size=8)


def test_unknown_layer_lists_closest_names(tiny_net):
    with pytest.raises(KeyError, match=r"closest layer names: \['conv2'"):
        render(tiny_net, "conv_2:1", thresholds=(1,), image_size=8)


def test_bad_arguments_are_rejected_with_the_value(tiny_net):
    with pytest.raises(ValueError, match="record steps"):
        render(tiny_net, "fc:0", thresholds=(3,), image_size=8, record=[5])
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        render(tiny_net, "fc:0", thresholds=(1,), image_size=8, batch=3, seed=[0, 1])
    with pytest.raises(ValueError, match="cannot parse unit"):
        render_units(tiny_net, ["fc3"], thresholds=(1,), image_size=8)


def test_normalization_is_applied_only_when_given(tiny_net):
    x = torch.full((1, 3, 8, 8), 0.5)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    a = render(tiny_net, "fc:0", init_images=x, thresholds=(0,), transforms=None)
    b = render(tiny_net, "fc:0", init_images=x, thresholds=(0,), transforms=None,
               normalize=(mean, std))
    tiny_net.eval()
    with torch.no_grad():
        assert a.values[0].item() == pytest.approx(tiny_net(x)[0, 0].item(), abs=1e-5)
        assert b.values[0].item() == pytest.approx(tiny_net(torch.zeros_like(x))[0, 0].item(),
                                                   abs=1e-5)


def test_channels_last_gives_the_same_images_and_restores_weights(tiny_net):
    a = render(tiny_net, "conv2:3", thresholds=(3,), image_size=12)
    b = render(tiny_net, "conv2:3", thresholds=(3,), image_size=12, channels_last=True)
    assert torch.allclose(a.final, b.final, atol=1e-5)
    assert tiny_net.conv1.weight.is_contiguous()


@pytest.mark.slow
def test_compiled_model_renders_the_same_images_on_cpu(tiny_net):
    # 20 steps: across the end of the redirected-ReLU warm-up (step 16), where the ReLU
    # modules get their own forward back and the compiled graph is rebuilt
    a = render(tiny_net, "conv2:3", thresholds=(20,), image_size=12)
    b = render(tiny_net, "conv2:3", thresholds=(20,), image_size=12, compile=True)
    assert (a.final - b.final).abs().max() < 1e-3
    assert all(not m._forward_hooks for m in tiny_net.modules())
