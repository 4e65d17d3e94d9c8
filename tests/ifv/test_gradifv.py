"""Grad-IFV against exact answers: Z_k and its inverse, the batched Jacobian against a dense
autograd Jacobian, and recovery of the target objective at exact optima."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_fv.ifv import (
    affine_batchnorm,
    alpha_coefficients,
    angular_distance,
    feature_jacobian,
    feature_jacobian_loop,
    grad_ifv,
    gradient_residual,
    jacobian_gram,
    singular_coefficients,
    z_matrix,
    z_matrix_inverse,
)
from lightning_fv.optvis.objectives import OUTPUT, aggregate
from lightning_fv.optvis.param import ImageParam


def test_z_times_closed_form_inverse_is_identity() -> None:
    y = torch.randn(5, 7, dtype=torch.float64)
    for k in (0.0, 1.0, 2.0, 7.5):
        prod = z_matrix(y, k) @ z_matrix_inverse(y, k)
        assert torch.allclose(prod, torch.eye(7, dtype=torch.float64).expand(5, 7, 7), atol=1e-12)
    assert torch.equal(z_matrix(y, 0.0), torch.eye(7, dtype=torch.float64).expand(5, 7, 7))


def test_z_matrix_shrinks_response_direction_by_one_over_k_plus_one() -> None:
    y = torch.randn(3, 4, dtype=torch.float64)
    yb = y / y.norm(dim=1, keepdim=True)
    zy = (z_matrix(y, 2.0) @ yb.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(zy, yb / 3, atol=1e-12)


def test_negative_cosine_power_is_rejected() -> None:
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        z_matrix(torch.ones(1, 3), -1.0)


@pytest.mark.parametrize("k", [0.0, 2.0])
def test_grad_ifv_recovers_target_of_linear_features_exactly(k: float, on_sphere: tuple) -> None:
    """Features linear in the input, y = W·I with I on the unit sphere (I = v/‖v‖): at the
    maximizer of S_x, Grad-IFV returns x to within a tiny fraction of a degree (§2.1)."""
    sphere, maximize_on_sphere = on_sphere
    torch.manual_seed(0)
    n_f, n_p = 6, 10
    net = nn.Sequential(nn.Linear(n_p, n_f, bias=False)).double()
    x = torch.rand(4, n_f, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    v = maximize_on_sphere(net, x, k, n_p)
    y, jac = feature_jacobian(net, OUTPUT, v, sphere, aggregation="identity")
    pred = grad_ifv(y, jac, k=k)
    assert angular_distance(pred, x).max() < 0.01
    # documented sign rule: x*ᵀy > 0
    assert ((pred * y).sum(1) > 0).all()
    if k == 0:  # closed form: u = Wᵀx/‖Wᵀx‖ is the maximizer, so Dy = W(I − uuᵀ)
        u = sphere((net[0].weight.T @ x.T).T)
        assert torch.allclose(sphere(v), u, atol=1e-8)


def test_grad_ifv_recovers_target_on_small_nonlinear_net_with_dense_jacobian(
        on_sphere: tuple) -> None:
    sphere, maximize_on_sphere = on_sphere
    torch.manual_seed(1)
    n_f, n_p = 5, 12
    net = nn.Sequential(nn.Linear(n_p, 16), nn.Tanh(), nn.Linear(16, n_f), nn.Tanh()).double()
    x = torch.rand(3, n_f, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    k = 2.0
    v = maximize_on_sphere(net, x, k, n_p)
    dense = torch.stack([
        torch.autograd.functional.jacobian(lambda w: net(sphere(w[None]))[0], v[b])
        for b in range(v.shape[0])
    ])
    y, jac = feature_jacobian(net, OUTPUT, v, sphere, aggregation="identity")
    assert torch.allclose(jac, dense, atol=1e-12)
    pred = grad_ifv(y, gram=jacobian_gram(dense), k=k)
    assert gradient_residual(x, y, dense, k=k).max() < 1e-6  # the targets are optima
    assert angular_distance(pred, x).max() < 0.5
    # α_1 = c_1² = (xᵀx*)² when C = ℝ^{n_f} (§3.5)
    c = singular_coefficients(x, y, dense, k=k)
    assert torch.allclose(c[:, 0].abs(), (x * pred).sum(1).abs(), atol=1e-9)
    assert torch.isclose(alpha_coefficients(x, y, dense, k=k).sum(), torch.tensor(1.0,
                         dtype=torch.float64))


class ConvFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.relu(self.bn(self.conv1(x)))))


def test_batched_jacobian_equals_dense_autograd_jacobian_and_loop() -> None:
    torch.manual_seed(0)
    net = ConvFeatures()
    net.bn.running_mean.normal_()
    net.train()
    for p in net.parameters():
        p.grad = None
    imgs = torch.rand(3, 3, 8, 8)
    y, jac = feature_jacobian(net, "act", imgs, chunk_size=4)

    def fn(img: Tensor) -> Tensor:
        return aggregate(net(img[None]), "maxpool_mean")[0]

    with torch.no_grad():
        net.eval()
    dense = torch.stack([torch.autograd.functional.jacobian(fn, imgs[b]) for b in range(3)])
    net.train()
    assert jac.shape == (3, 6, 3, 8, 8)
    assert torch.allclose(jac, dense, atol=1e-6)
    y2, jac2 = feature_jacobian_loop(net, "act", imgs)
    assert torch.allclose(jac, jac2, atol=1e-6) and torch.allclose(y, y2)
    # the model state is restored: training mode, flags, no .grad
    assert net.training and all(p.requires_grad and p.grad is None for p in net.parameters())


def test_compute_dtype_runs_a_copy_and_float64_matches_float32() -> None:
    torch.manual_seed(0)
    net = ConvFeatures().eval()
    imgs = torch.rand(2, 3, 8, 8)
    y, jac = feature_jacobian(net, "act", imgs, chunk_size=3)
    y64, jac64 = feature_jacobian(net, "act", imgs, chunk_size=3, compute_dtype=torch.float64)
    yl, jacl = feature_jacobian_loop(net, "act", imgs, compute_dtype=torch.float64)
    assert y64.dtype == torch.float32 and jac64.dtype == torch.float32
    torch.testing.assert_close(jac64, jac, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(jacl, jac64, atol=1e-6, rtol=1e-5)
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the model is untouched


def _row_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = torch.nn.functional.cosine_similarity(a.flatten(2).double(), b.flatten(2).double(), 2)
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


def test_pinned_decisions_replay_the_float32_linearization_exactly() -> None:
    """In float64 with the float32 ReLU masks and max-pool argmaxes replayed (a ResNet whose
    ReLU modules run several times per block, a max-pooling stem and the ``maxpool_mean``
    aggregation), the Jacobian is the float32 one up to float32 rounding, and ``y`` is the
    float32 response itself."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18().eval()
    imgs = torch.rand(2, 3, 64, 64)
    feats = torch.arange(6)
    y, jac = feature_jacobian(net, "layer2", imgs, features=feats, chunk_size=3)
    y64, jac64 = feature_jacobian(net, "layer2", imgs, features=feats, chunk_size=3,
                                  compute_dtype=torch.float64)
    assert torch.equal(y64, y)
    torch.testing.assert_close(jac64, jac, rtol=1e-4, atol=1e-6)


def test_pinned_bf16_rows_stay_close_to_float32_unpinned_do_not() -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18().eval()
    imgs = torch.rand(1, 3, 64, 64)
    feats = torch.arange(8)
    _, jac = feature_jacobian(net, "layer3", imgs, features=feats)
    _, pinned = feature_jacobian(net, "layer3", imgs, features=feats,
                                 compute_dtype=torch.bfloat16)
    _, free = feature_jacobian(net, "layer3", imgs, features=feats,
                               compute_dtype=torch.bfloat16, pin_decisions=False)
    assert _row_angles(pinned, jac).median() < 3.0
    assert _row_angles(free, jac).median() > 3 * _row_angles(pinned, jac).median()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all("forward" not in vars(m) for m in net.modules())  # no module left patched


def test_jacobian_wrt_image_param_raw_works_under_inference_mode() -> None:
    torch.manual_seed(0)
    net = ConvFeatures().eval()
    param = ImageParam(2, 3, 8, 8, fft=True, decorrelate=True)
    feats = torch.tensor([0, 2, 5])
    with torch.inference_mode():
        y, jac = feature_jacobian(net, "act", param.raw, param, features=feats)
    assert jac.shape == (2, 3, *param.raw.shape[1:])
    raw = param.raw.detach()
    dense = torch.autograd.functional.jacobian(
        lambda r: aggregate(net(torch.func.functional_call(param, {"raw": r}, ())),
                            "maxpool_mean")[:, feats], raw)  # (B, n_f, B, ...)
    for b in range(2):
        assert torch.allclose(jac[b], dense[b, :, b], atol=1e-6)
    assert param.raw.grad is None


def test_bad_feature_index_names_the_valid_range() -> None:
    net = ConvFeatures().eval()
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        feature_jacobian(net, "act", torch.rand(1, 3, 8, 8), features=torch.tensor([6]))


def _randomize_batchnorms(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_(0, 0.2)


def test_affine_batchnorm_is_the_eval_batch_norm_and_is_undone() -> None:
    torch.manual_seed(0)
    cases = [(nn.BatchNorm1d(5), (4, 5)), (nn.BatchNorm1d(5, affine=False), (4, 5, 7)),
             (nn.BatchNorm2d(3), (2, 3, 6, 6)), (nn.BatchNorm3d(2), (2, 2, 3, 4, 4))]
    for bn, shape in cases:
        bn = bn.double().eval()
        _randomize_batchnorms(bn)
        x = torch.randn(shape, dtype=torch.float64)
        with affine_batchnorm(bn):
            assert "forward" in vars(bn)
            out = bn(x)
        assert "forward" not in vars(bn)
        torch.testing.assert_close(out, bn(x), rtol=1e-12, atol=1e-12)
    train_bn = nn.BatchNorm2d(3).train()
    with affine_batchnorm(train_bn):  # batch statistics: not affine, left alone
        assert "forward" not in vars(train_bn)
    eval_bn = nn.BatchNorm2d(3).eval()
    with pytest.raises(RuntimeError, match="boom"), affine_batchnorm(eval_bn):
        raise RuntimeError("boom")
    assert "forward" not in vars(eval_bn)


def test_jacobian_through_affine_batch_norms_equals_the_plain_one() -> None:
    """float64 ResNet-18 with non-trivial running statistics: the batched Jacobian with
    batch norms in affine form equals the one through ``F.batch_norm`` and the loop."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18().double().eval()
    _randomize_batchnorms(net)
    imgs = torch.rand(2, 3, 48, 48, dtype=torch.float64)
    feats = torch.arange(5)
    y, jac = feature_jacobian(net, "layer2", imgs, features=feats, chunk_size=3)
    y0, jac0 = feature_jacobian(net, "layer2", imgs, features=feats, chunk_size=3,
                                affine_bn=False)
    yl, jacl = feature_jacobian_loop(net, "layer2", imgs, features=feats)
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jac, jac0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jac, jacl, rtol=1e-10, atol=1e-12)
    assert all("forward" not in vars(m) for m in net.modules())


def test_affine_batchnorm_leaves_uninitialized_lazy_batch_norms_alone() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d()).eval()
    x = torch.rand(1, 3, 8, 8)
    with affine_batchnorm(net):
        assert "forward" not in vars(net[1])
        out = net(x)  # initializes the lazy module as usual
    assert out.shape == (1, 4, 6, 6)
    with affine_batchnorm(net):  # initialized now: patched, and the same map
        assert "forward" in vars(net[1])
        torch.testing.assert_close(net(x), out)


def test_jacobian_of_a_batch_norm_layer_itself_is_unchanged_by_the_affine_form() -> None:
    """The captured layer may be a batch norm (e.g. ``block2.bn`` in the IFV miniature):
    its forward hook sees the affine form's output, the same response and Jacobian."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU()).double().eval()
    _randomize_batchnorms(net)
    imgs = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    y, jac = feature_jacobian(net, "1", imgs)
    y0, jac0 = feature_jacobian(net, "1", imgs, affine_bn=False)
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jac, jac0, rtol=1e-10, atol=1e-12)
    assert not torch.equal(y, feature_jacobian(net, "0", imgs)[0][:, :6])  # the BN acts


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_too_small_layer_for_maxpool_aggregation_names_the_size(dtype) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU()).eval()
    with pytest.raises(ValueError, match=r"activations are 2×2; use larger images or "
                                         r"aggregation='mean'"):
        feature_jacobian(net, "1", torch.rand(1, 3, 8, 8), compute_dtype=dtype)
    _, jac = feature_jacobian(net, "1", torch.rand(1, 3, 8, 8), aggregation="mean")
    assert jac.shape == (1, 4, 3, 8, 8)
