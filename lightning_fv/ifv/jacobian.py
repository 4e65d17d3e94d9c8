"""The Jacobian ``Dy`` of the feature response w.r.t. the visualization's parameters.

`inverse-feature-visualization` §2: ``Ñ := Agg ∘ N ∘ P`` maps a parameter vector ``v``
(the optimization variables of feature visualization: the image pixels, or the raw tensor
of an :class:`~lightning_fv.optvis.param.ImageParam`) to the feature response
``y = Ñ(v)`` ``(n_f,)``; Grad-IFV needs ``Dy = DÑ(v)`` ``(n_f, n_p)``. The paper runs
``n_f`` backward passes per sample (§3.3, 0.7 s for 512 features on a GTX 1080 Ti).

:func:`feature_jacobian` runs one forward pass for the whole batch and all ``n_f``
backward passes *batched*: ``torch.func.vjp`` gives the pull-back of the batch, and
``torch.func.vmap`` maps it over the ``n_f`` one-hot cotangents (in chunks of
``chunk_size`` features). Samples of a batch are independent (the model runs in eval
mode), so the cotangent ``e_j`` broadcast to every sample returns row ``j`` of every
sample's Jacobian at once. :func:`feature_jacobian_loop` is the plain Python loop of
``n_f`` backward passes, kept as the reference for tests and the benchmark.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn

from lightning_fv.optvis.hooks import capture, patched_forwards, preserved_state
from lightning_fv.optvis.layout import features as layer_features
from lightning_fv.optvis.objectives import OUTPUT, aggregate, check_maxpool_size
from lightning_fv.optvis.param import ImageParam

Parameterization = Callable[[Tensor], Tensor]


def param_function(param: ImageParam) -> Parameterization:
    """``raw ↦ images``: the map ``P`` of an :class:`ImageParam` as a pure function of its
    raw tensor (``torch.func.functional_call``), for differentiation w.r.t. ``raw``."""

    def fn(raw: Tensor) -> Tensor:
        return torch.func.functional_call(param, {"raw": raw}, ())

    return fn


def _check_features(features: Tensor | None, n_f: int) -> Tensor | None:
    if features is None:
        return None
    idx = torch.as_tensor(features, dtype=torch.long).flatten()
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n_f:
        raise ValueError(f"feature indices must lie in [0, {n_f}), got {idx.tolist()[:8]}…")
    return idx


def _eval_batchnorms(net: nn.Module) -> list[nn.Module]:
    """The batch-norm modules of ``net`` that normalize with their running statistics
    (eval mode): each is then an affine map per channel."""
    return [m for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training
            and m.track_running_stats and m.running_mean is not None
            and not isinstance(m.running_mean, nn.parameter.UninitializedBuffer)]


@contextmanager
def affine_batchnorm(net: nn.Module) -> Iterator[None]:
    """Inside the block, every eval-mode batch norm of ``net`` computes ``x·s + t`` with
    ``s = γ/√(σ²+ε)``, ``t = β − μ·s`` (per channel), the same map as
    ``F.batch_norm(training=False)`` up to float rounding.

    Why: the pull-back of the affine form is one multiplication, which ``vmap`` batches
    as it is, whereas under ``vmap`` the batch-norm backward calls
    ``native_batch_norm_backward`` twice per layer (once for the γ/β gradients) with
    large copies of the cotangents (57 % of the profiled time). On a random-weight
    ResNet-50 (``layer4``, 96 px, 64 features in chunks of 32, 2 CPU threads) the batched
    Jacobian takes 1.36 s per sample instead of 1.72 s
    (``benchmarks/bench_ifv_jacobian.py --device cpu --small --repeats 5``).
    """

    def make(bn: nn.Module) -> Callable[[Tensor], Tensor]:
        def fwd(x: Tensor) -> Tensor:
            dt = torch.promote_types(x.dtype, torch.float32)  # bf16 buffers: fold in fp32
            with torch.no_grad():
                scale = torch.rsqrt(bn.running_var.to(dt) + bn.eps)
                if bn.weight is not None:
                    scale = scale * bn.weight.to(dt)
                shift = -bn.running_mean.to(dt) * scale
                if bn.bias is not None:
                    shift = shift + bn.bias.to(dt)
            shape = (-1,) + (1,) * (x.dim() - 2)
            return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))
        return fwd

    with patched_forwards(_eval_batchnorms(net), make):
        yield


@contextmanager
def _grad_context(model: nn.Module) -> Iterator[None]:
    """Autograd on (also inside ``torch.inference_mode``), model in eval mode and frozen."""
    with torch.inference_mode(False), torch.enable_grad(), preserved_state(model):
        yield


class _Pinned:
    """Piecewise-linear decisions of a float32 forward pass, replayed in a low-precision copy.

    ``record`` runs the float32 model once and stores, per call and in call order, the mask
    ``x > 0`` of every ``nn.ReLU`` module and the argmax indices of every ``nn.MaxPool2d``;
    ``replay`` makes the copy's ReLUs multiply by those masks and its max-poolings gather at
    those indices. The copy then computes exactly the float32 network's linearization at
    the input (its Jacobian there), only with low-precision arithmetic, instead of a
    network whose ReLU and max-pool decisions rounding has flipped.
    """

    def __init__(self, model: nn.Module, low: nn.Module) -> None:
        self.model, self.low = model, low
        self.masks: dict[str, list[Tensor]] = {}

    @staticmethod
    def _modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in net.named_modules()
                if type(m) in (nn.ReLU, nn.MaxPool2d)]

    def _patched(self, net: nn.Module,
                 make: Callable[[str, nn.Module], Callable[[Tensor], Tensor]]
                 ) -> AbstractContextManager[None]:
        """The ReLU / max-pool modules of ``net`` get the forwards ``make(name, module)``."""
        named = self._modules(net)
        names = {id(m): n for n, m in named}
        return patched_forwards([m for _, m in named], lambda m: make(names[id(m)], m))

    @contextmanager
    def record(self) -> Iterator[None]:
        self.masks = {n: [] for n, _ in self._modules(self.model)}

        def make(name: str, mod: nn.Module) -> Callable[[Tensor], Tensor]:
            if isinstance(mod, nn.ReLU):
                def relu(x: Tensor) -> Tensor:
                    self.masks[name].append((x > 0).detach())
                    return torch.relu(x)
                return relu

            def pool(x: Tensor) -> Tensor:
                out, idx = nn.functional.max_pool2d(
                    x, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                    ceil_mode=mod.ceil_mode, return_indices=True)
                self.masks[name].append(idx.detach())
                return out
            return pool

        with self._patched(self.model, make):
            yield

    @contextmanager
    def replay(self) -> Iterator[None]:
        calls = {n: 0 for n in self.masks}

        def make(name: str, mod: nn.Module) -> Callable[[Tensor], Tensor]:
            def fwd(x: Tensor) -> Tensor:
                rec = self.masks[name][calls[name]]
                calls[name] += 1
                if isinstance(mod, nn.ReLU):
                    return x * rec.to(x.dtype)
                flat = x.flatten(2).gather(2, rec.flatten(2))
                return flat.view(rec.shape)
            return fwd

        with self._patched(self.low, make):
            yield


def _pinned_aggregate(act_low: Tensor, act32: Tensor, aggregation: str) -> Tensor:
    """:func:`aggregate` of ``act_low`` with the max-pooling argmax taken from ``act32``."""
    if aggregation != "maxpool_mean" or act_low.dim() != 4:
        return aggregate(act_low.float(), aggregation)
    check_maxpool_size(act32)
    _, idx = nn.functional.max_pool2d(act32, 3, stride=1, return_indices=True)
    pooled = act_low.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
    return pooled.float().mean((-2, -1))


def response_function(
    model: nn.Module,
    layer: str,
    parameterization: Parameterization | ImageParam | None = None,
    aggregation: str = "maxpool_mean",
    normalize: nn.Module | None = None,
    features: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
    pin_decisions: bool = True,
    affine_bn: bool = True,
) -> Callable[[Tensor], Tensor]:
    """``v ↦ y``: the feature response ``Ñ(v) = Agg(N(P(v)))`` ``(B, n_f)`` (§2).

    Args:
        model: the network ``N`` (called on ``(B, 3, H, W)`` images).
        layer: the module whose output is aggregated, or
            :data:`lightning_fv.optvis.objectives.OUTPUT` for the model output (logits).
            Its output is read channels-first in its layout
            (:func:`lightning_fv.optvis.layout.channels_first`: token features on the patch
            grid, prefix tokens excluded; channels-last maps permuted), so ``n_f`` is the
            number of feature channels in every layout.
        parameterization: ``P``: an :class:`ImageParam` (``v`` is its raw tensor), any
            differentiable callable ``v ↦ images``, or ``None`` (``v`` are the pixels).
        aggregation: ``Agg`` of §2.3 (see :func:`lightning_fv.optvis.objectives.aggregate`).
        normalize: input normalization applied to the images before the model (``None``
            when the model normalizes itself).
        features: keep only these feature indices (e.g. the first ``n_f`` filters).
        compute_dtype: run a copy of the model held in this dtype (e.g. ``torch.bfloat16``
            on a GPU, or ``torch.float64`` for a reference; the images are cast to it); ``y`` is
            returned in float32. bf16 is faster on tensor cores, but left to itself rounding
            flips ReLU and max-pool decisions: on a random-weight ResNet-50 (``layer4``,
            96 px) such bf16 rows of ``Dy`` are a median 54° from the float32 rows, with
            ``pin_decisions`` 1.0° (``benchmarks/bench_ifv_jacobian.py --small --bf16
            [--no-pin]``).
        pin_decisions: with ``compute_dtype``, run the model once in float32 and replay its
            ReLU masks and max-pool argmaxes (``nn.ReLU`` / ``nn.MaxPool2d`` modules and the
            aggregation's max-pooling) in the low-precision copy, so the copy differentiates
            the float32 network's own linearization. ``y`` is then the float32 response.
            Functional ``torch.relu`` calls inside modules are not pinned.
        affine_bn: differentiate eval-mode batch norms in their affine form (see
            :func:`affine_batchnorm`): the same function, a cheaper batched pull-back.

    The model must already be in eval mode (call inside :func:`preserved_state`).
    """
    if isinstance(parameterization, ImageParam):
        pfn: Parameterization = param_function(parameterization)
    elif parameterization is None:
        pfn = lambda v: v  # noqa: E731
    else:
        pfn = parameterization
    layers = [] if layer == OUTPUT else [layer]
    # A low-precision copy rather than torch.autocast: vmapped pull-backs of autocast
    # graphs fail on mixed dtypes (torch 2.x), a model held in one dtype does not.
    net = model if compute_dtype is None else copy.deepcopy(model).to(compute_dtype)
    pinned = _Pinned(model, net) if compute_dtype is not None and pin_decisions else None

    def bn_ctx() -> AbstractContextManager[None]:
        return affine_batchnorm(net) if affine_bn else nullcontext()

    def fn(v: Tensor) -> Tensor:
        img = pfn(v)
        x = normalize(img) if normalize is not None else img
        if pinned is not None:
            with torch.no_grad(), pinned.record(), capture(model, layers) as acts32:
                out32 = model(x.detach())
                act32 = out32 if layer == OUTPUT else layer_features(acts32, layer)
            with pinned.replay(), bn_ctx(), capture(net, layers) as acts:
                out = net(x.to(compute_dtype))
                act = out if layer == OUTPUT else layer_features(acts, layer)
            y_low = _pinned_aggregate(act, act32.float(), aggregation)
            # the value is the float32 response, the derivative that of the pinned copy
            y = y_low + (aggregate(act32.float(), aggregation) - y_low).detach()
            if features is not None:
                y = y[:, features.to(y.device)]
            return y
        if compute_dtype is not None:
            x = x.to(compute_dtype)
        with bn_ctx(), capture(net, layers) as acts:
            out = net(x)
            act = out if layer == OUTPUT else layer_features(acts, layer)
        y = aggregate(act.float() if compute_dtype is not None else act, aggregation)
        if features is not None:
            y = y[:, features.to(y.device)]
        return y

    return fn


def feature_jacobian(
    model: nn.Module,
    layer: str,
    v: Tensor,
    parameterization: Parameterization | ImageParam | None = None,
    *,
    aggregation: str = "maxpool_mean",
    normalize: nn.Module | None = None,
    features: Tensor | None = None,
    chunk_size: int | None = 64,
    compute_dtype: torch.dtype | None = None,
    pin_decisions: bool = True,
    affine_bn: bool = True,
) -> tuple[Tensor, Tensor]:
    """Feature response ``y`` and its Jacobian ``Dy`` w.r.t. ``v``, batched (§2, §3.3).

    Args:
        model: the network; its mode, ``requires_grad`` flags and ``.grad`` are restored.
        layer: module name (or ``OUTPUT``) whose activations give the features.
        v: the parameters of ``B`` visualizations ``(B, ...)`` (pixels ``(B, 3, H, W)`` or
            an ImageParam's raw tensor). Works inside ``torch.inference_mode``.
        parameterization: ``P`` (see :func:`response_function`).
        aggregation, normalize, features: see :func:`response_function`.
        chunk_size: features whose backward passes are vectorized together (``None``: all
            ``n_f`` at once; lower it to save memory).
        compute_dtype, pin_decisions, affine_bn: see :func:`response_function`.

    Returns:
        ``y`` ``(B, n_f)`` and ``Dy`` ``(B, n_f, *v.shape[1:])`` (``Dy[b, j]`` is the gradient
        of ``y[b, j]`` w.r.t. ``v[b]``), both detached, in ``v``'s dtype.
    """
    with _grad_context(model):
        v = v.detach().clone()
        fn = response_function(model, layer, parameterization, aggregation, normalize,
                               None, compute_dtype, pin_decisions, affine_bn)
        y, pullback = torch.func.vjp(fn, v)
        if y.dim() != 2:
            raise ValueError(f"feature response must be (B, n_f), got {tuple(y.shape)}")
        b, n_all = y.shape
        idx = _check_features(features, n_all)
        rows = torch.arange(n_all, device=y.device) if idx is None else idx.to(y.device)
        eye = torch.zeros(rows.numel(), b, n_all, device=y.device, dtype=y.dtype)
        eye[torch.arange(rows.numel()), :, rows] = 1.0
        (jac,) = torch.func.vmap(pullback, chunk_size=chunk_size)(eye)  # (n_f, B, ...)
        y = y[:, rows]
    return y.detach(), jac.movedim(0, 1).detach()


def feature_jacobian_loop(
    model: nn.Module,
    layer: str,
    v: Tensor,
    parameterization: Parameterization | ImageParam | None = None,
    *,
    aggregation: str = "maxpool_mean",
    normalize: nn.Module | None = None,
    features: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
    pin_decisions: bool = True,
    affine_bn: bool = False,
) -> tuple[Tensor, Tensor]:
    """Reference for :func:`feature_jacobian`: one forward, then a Python loop of ``n_f``
    backward passes (the paper's procedure, §3.3). Same arguments and returns; the model's
    batch norms run as themselves unless ``affine_bn``."""
    with _grad_context(model):
        v = v.detach().clone().requires_grad_(True)
        fn = response_function(model, layer, parameterization, aggregation, normalize,
                               compute_dtype=compute_dtype, pin_decisions=pin_decisions,
                               affine_bn=affine_bn)
        y = fn(v)
        idx = _check_features(features, y.shape[1])
        rows = range(y.shape[1]) if idx is None else idx.tolist()
        grads = []
        for n, j in enumerate(rows):
            (g,) = torch.autograd.grad(y[:, j].sum(), v, retain_graph=n < len(rows) - 1)
            grads.append(g)
        jac = torch.stack(grads, 1)
        y = y[:, list(rows)]
    return y.detach(), jac.detach()


def jacobian_gram(jacobian: Tensor) -> Tensor:
    """``Dy Dyᵀ`` ``(B, n_f, n_f)`` in float64 from ``Dy`` ``(B, n_f, ...)``: everything
    Grad-IFV, Algorithm 1 and the α_j coefficients need from the Jacobian (its left-singular
    vectors are the eigenvectors of this matrix, its singular values their square roots)."""
    j = jacobian.flatten(2).double()
    return j @ j.transpose(1, 2)


__all__ = [
    "affine_batchnorm",
    "feature_jacobian",
    "feature_jacobian_loop",
    "jacobian_gram",
    "param_function",
    "response_function",
]
