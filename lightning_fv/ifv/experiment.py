"""The experiment of §3.4 as one function: sample targets, visualize, invert, evaluate.

:func:`run_ifv`:

1. samples ``n_targets`` target objectives with Hoyer sparseness ``s ~ U[0, 1]`` (S2)
   plus ``n_canonical`` canonical ones (§3.4);
2. renders their realizations ``I*`` with the cosine-power objective ``S_x`` of power
   ``k`` on ``layer`` (§3.2: the P_rgb parameterization — sigmoid of unbounded pixels — no
   transforms, Adam then L-BFGS fine-tuning);
3. computes ``y`` and ``Dy`` w.r.t. the parameters (the raw pre-sigmoid tensor) batched,
   and predicts ``x*`` with Grad-IFV (§2.1, optional critical space ``C``);
4. measures the angular distances (§3.4) of the predictions, the feature responses and
   random objectives (drawn from the same S2 distribution) to the targets, the α_j
   coefficients (§3.5) and, optionally, the SSIM after re-optimizing every realization for
   the predicted, target, feature-response and random objectives (§3.4).

Tensors in, tensors out: plots and logging live in
:mod:`lightning_fv.callbacks.inverse_fv`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_fv.ifv.evaluation import (
    alpha_coefficients,
    angular_distance,
    projected_target,
    reoptimize,
    ssim,
)
from lightning_fv.ifv.gradifv import grad_ifv, gradient_residual
from lightning_fv.ifv.hoyer import sample_targets
from lightning_fv.ifv.jacobian import feature_jacobian, jacobian_gram
from lightning_fv.optvis.hooks import capture, preserved_state
from lightning_fv.optvis.layout import features
from lightning_fv.optvis.objectives import OUTPUT, cosine_power
from lightning_fv.optvis.param import ImageParam, ifv_parameterization
from lightning_fv.optvis.render import render
from lightning_fv.utils.device import model_device
from lightning_fv.utils.rng import make_generator

KINDS = ("predicted", "target", "response", "random")
#: §3.2's parameterization, the default of every realization
P_RGB = ifv_parameterization("p_rgb")


@dataclass
class IFVResult:
    """Everything :func:`run_ifv` measured (CPU tensors; ``n`` samples, ``n_f`` features).

    ``objectives[kind]`` ``(n, n_f)`` for kind in ``KINDS``; ``angles[kind]`` ``(n,)``
    degrees to the targets (``"target"`` is 0); ``ssim[kind]`` ``(n,)`` after
    re-optimization (empty when skipped); ``gram`` ``(n, n_f, n_f)`` is ``Dy Dyᵀ`` (float64,
    the input of Algorithm 1); ``alpha`` ``(n_f,)``; ``residual`` ``(n,)`` the
    Grad-IFV residual ``‖x*ᵀZ_k Dy‖/‖Z_k Dy‖₂``; ``target_residual`` the same for the
    targets (near 0 when the realizations are optima).
    """

    k: float
    layer: str
    targets: Tensor
    sparsity: Tensor
    images: Tensor
    responses: Tensor
    objectives: dict[str, Tensor]
    angles: dict[str, Tensor]
    alpha: Tensor
    residual: Tensor
    target_residual: Tensor
    gram: Tensor | None = None
    ssim: dict[str, Tensor] = field(default_factory=dict)
    reoptimized: dict[str, Tensor] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Scalars: mean/median angles, mean SSIM and unstable fractions, α₁."""
        out: dict[str, float] = {"alpha_1": float(self.alpha[0])}
        for kind in ("predicted", "response", "random"):
            a = self.angles[kind]
            out[f"angle_{kind}_mean_deg"] = float(a.mean())
            out[f"angle_{kind}_median_deg"] = float(a.median())
        for kind, s in self.ssim.items():
            out[f"ssim_{kind}_mean"] = float(s.mean())
            out[f"unstable_{kind}_fraction"] = float((s < 0.7).float().mean())
        return out


def polish_lbfgs(model: nn.Module, layer: str, param: ImageParam, targets: Tensor, k: float,
                 aggregation: str = "maxpool_mean", normalize: nn.Module | None = None,
                 steps: int = 50) -> None:
    """Fine-tune ``param`` in place with L-BFGS (strong Wolfe) on ``Σ_b S_{x_b}(y_b)``, as
    §3.2 follows Adam with L-BFGS so realizations are close to stationary points. The sum
    keeps samples independent at the optimum (each term depends on its own image only)."""
    if steps <= 0:
        return
    obj = cosine_power(layer, targets, k, aggregation)
    with torch.inference_mode(False), torch.enable_grad(), preserved_state(model), \
            capture(model, obj.model_layers) as acts:
        opt = torch.optim.LBFGS([param.raw], lr=1.0, max_iter=steps, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                tolerance_change=1e-14)

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=True)
            img = param()
            out = model(normalize(img) if normalize is not None else img)
            acts[OUTPUT] = out
            loss = -obj(acts).float().sum()
            loss.backward()
            return loss

        opt.step(closure)
        param.raw.grad = None
    if not torch.isfinite(param.raw).all():
        raise FloatingPointError(
            f"L-BFGS fine-tuning on layer {layer!r} produced non-finite images")


def visualize_targets(
    model: nn.Module,
    layer: str,
    targets: Tensor,
    *,
    k: float = 2.0,
    steps: int = 256,
    lbfgs_steps: int = 50,
    image_size: int = 64,
    aggregation: str = "maxpool_mean",
    normalize: nn.Module | None = None,
    seed: int = 0,
    lr: float = 0.05,
    redirect_relu_steps: int = 16,
    progress: Callable[[int, int], None] | None = None,
    param: dict | None = None,
) -> ImageParam:
    """Realizations of ``targets`` ``(n, n_f)`` (§3.2): Adam (``steps``, lr ``lr``) then
    L-BFGS (``lbfgs_steps``) on the P_rgb parameterization, no transforms. Sample ``i``
    uses seed ``seed + i``. Returns the optimized :class:`ImageParam` (its ``raw`` are the
    parameters ``v`` that Grad-IFV differentiates). ``redirect_relu_steps``: the
    redirected-ReLU warm-up of the Adam phase (16 by default, the ``"lucid"`` preset; 0 is
    plain Adam as in the IFV paper). ``progress(done, total)`` is called after every Adam
    step and once after L-BFGS, in optimizer steps (``total = steps + lbfgs_steps``).
    ``param``: :class:`ImageParam` keywords (default ``P_rgb``, §3.2; see
    :data:`~lightning_fv.optvis.param.IFV_PARAMETERIZATIONS`)."""
    device = model_device(model)
    n = targets.shape[0]
    gens = [make_generator(seed + i) for i in range(n)]
    param_kw = dict(P_RGB if param is None else param)
    image_param = ImageParam(n, 3, image_size, image_size, generators=gens, device=device,
                             **param_kw)
    tg = targets.to(device)
    with torch.inference_mode(False):
        render(model, cosine_power(layer, tg, k, aggregation), param=image_param,
               transforms=None,
               thresholds=(steps,), normalize=normalize, seed=[seed + i for i in range(n)],
               redirect_relu_steps=redirect_relu_steps,
               progress=(lambda s, _t: progress(s, steps + lbfgs_steps)) if progress else False,
               optimizer=lambda p: torch.optim.Adam(p, lr=lr))
        polish_lbfgs(model, layer, image_param, tg, k, aggregation, normalize, lbfgs_steps)
    if progress is not None:
        progress(steps + lbfgs_steps, steps + lbfgs_steps)
    return image_param


def run_ifv(
    model: nn.Module,
    layer: str,
    n_targets: int = 32,
    *,
    n_canonical: int = 0,
    k: float = 2.0,
    steps: int = 256,
    lbfgs_steps: int = 50,
    reopt_steps: int = 200,
    image_size: int = 64,
    aggregation: str = "maxpool_mean",
    normalize: nn.Module | None = None,
    critical: Tensor | None = None,
    seed: int = 0,
    chunk_size: int | None = 64,
    jacobian_dtype: torch.dtype | None = None,
    targets: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    redirect_relu_steps: int = 16,
    param: dict | None = None,
) -> IFVResult:
    """Run the §3.4 experiment on ``layer`` of ``model`` (see the module docstring).

    Args:
        model: any network taking ``(B, 3, image_size, image_size)`` images in [0, 1]
            (after ``normalize``); its mode, flags and grads are restored.
        layer: module name whose channels are the features (or ``OUTPUT`` for the logits,
            with ``aggregation="identity"``).
        n_targets, n_canonical: sampled (S2) and canonical target objectives.
        k: cosine power (§2; 2 in the paper, 0 drops the cosine term, §3.6).
        steps, lbfgs_steps: Adam and L-BFGS steps of the visualization (§3.2).
        reopt_steps: Adam steps of the re-optimization (§3.4 uses 500; 0 skips SSIM).
        image_size: side of the images.
        aggregation: §2.3 aggregation.
        normalize: input normalization module (``None`` if the model normalizes itself).
        critical: a critical-space basis ``(n_f, dim C)`` for Grad-IFV (default ``ℝ^{n_f}``);
            angles are then measured after projecting the targets (§3.5).
        seed: seeds targets, random objectives and the visualizations.
        chunk_size: features per vectorized backward batch of the Jacobian.
        jacobian_dtype: ``compute_dtype`` of the Jacobian (e.g. ``torch.bfloat16`` on a GPU,
            with the float32 ReLU/max-pool decisions pinned; see :func:`feature_jacobian`).
        targets: use these targets ``(n, n_f)`` instead of sampling.
        progress: called as ``progress(done, total)`` in optimizer steps (Adam and L-BFGS
            of the realizations, then the re-optimization's Adam steps).
        redirect_relu_steps: redirected-ReLU warm-up of the Adam phases (realizations and
            re-optimization): 16, the ``"lucid"`` preset, by default; the paper's plain Adam
            (§3.2) is 0.
        param: :class:`ImageParam` keywords of the realizations and the re-optimization
            (default ``P_rgb``, §3.2: the sigmoid of unbounded RGB pixels).
    """
    if k < 0:
        raise ValueError(f"cosine power k must be >= 0, got {k}")
    gen = make_generator(seed)
    device = model_device(model)
    with torch.inference_mode(False), torch.no_grad(), preserved_state(model):
        probe = torch.zeros(1, 3, image_size, image_size, device=device)
        layers = [] if layer == OUTPUT else [layer]
        with capture(model, layers) as acts:
            out = model(normalize(probe) if normalize is not None else probe)
            act = out if layer == OUTPUT else acts[layer]
        n_f = act.shape[1] if layer == OUTPUT else features(acts, layer).shape[1]
    if targets is None:
        targets, sparsity = sample_targets(n_targets, n_f, gen, n_canonical=n_canonical)
    else:
        if targets.dim() != 2 or targets.shape[1] != n_f:
            raise ValueError(f"targets must be (n, {n_f}) for layer {layer!r}, got "
                             f"{tuple(targets.shape)}")
        targets = targets / targets.norm(dim=-1, keepdim=True)
        from lightning_fv.ifv.hoyer import hoyer

        sparsity = hoyer(targets.double()).float()
    random_obj, _ = sample_targets(targets.shape[0], n_f, gen)
    total_steps = steps + lbfgs_steps + max(reopt_steps, 0)

    realized = visualize_targets(model, layer, targets, k=k, steps=steps,
                                 lbfgs_steps=lbfgs_steps, image_size=image_size,
                                 aggregation=aggregation, normalize=normalize, seed=seed,
                                 progress=_offset(progress, 0, total_steps),
                                 redirect_relu_steps=redirect_relu_steps, param=param)
    with torch.inference_mode(False):
        images = realized().detach()
        y, jac = feature_jacobian(model, layer, realized.raw.detach(), realized,
                                  aggregation=aggregation, normalize=normalize,
                                  chunk_size=chunk_size, compute_dtype=jacobian_dtype)
    gram = jacobian_gram(jac).cpu()
    del jac
    y = y.double().cpu()
    pred = grad_ifv(y, gram=gram, k=k, critical=critical)
    spec = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()[:, -1].clamp_min(1e-300)
    resid = gradient_residual(pred, y, gram=gram, k=k) / spec
    tres = gradient_residual(targets.double(), y, gram=gram, k=k) / spec
    tgt = targets.double()
    compare = tgt if critical is None else projected_target(tgt, y, k, critical)
    objectives = {"predicted": pred.float(), "target": targets.float(),
                  "response": (y / y.norm(dim=-1, keepdim=True)).float(),
                  "random": random_obj.float()}
    angles = {kind: angular_distance(compare, objectives[kind]).float() for kind in KINDS}
    result = IFVResult(k=k, layer=layer, targets=targets.float(), sparsity=sparsity,
                       images=images.cpu(), responses=y.float(), objectives=objectives,
                       angles=angles, alpha=alpha_coefficients(tgt, y, gram=gram, k=k).float(),
                       residual=resid.float(), target_residual=tres.float(), gram=gram)
    if reopt_steps > 0:
        n = targets.shape[0]
        objs = torch.cat([objectives[kind] for kind in KINDS])
        with torch.inference_mode(False):
            after = reoptimize(model, layer, images.repeat(len(KINDS), 1, 1, 1).to(device),
                               objs.to(device), k=k, steps=reopt_steps, aggregation=aggregation,
                               normalize=normalize, param=param,
                               redirect_relu_steps=redirect_relu_steps,
                               progress=_offset(progress, steps + lbfgs_steps, total_steps))
        sims = ssim(images.cpu().repeat(len(KINDS), 1, 1, 1), after.cpu())
        for i, kind in enumerate(KINDS):
            result.ssim[kind] = sims[i * n:(i + 1) * n].float()
            result.reoptimized[kind] = after[i * n:(i + 1) * n].cpu()
    return result


def _offset(progress: Callable[[int, int], None] | None, start: int, total: int
            ) -> Callable[[int, int], None] | None:
    """A phase's ``(done, _)`` progress reported as ``(start + done, total)``."""
    if progress is None:
        return None
    return lambda done, _t: progress(start + done, total)


__all__ = ["KINDS", "IFVResult", "polish_lbfgs", "run_ifv", "visualize_targets"]
