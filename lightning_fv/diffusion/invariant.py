"""Invariant-set sampling by "infinite optimization" of the starting latent
(``equidiff-invariant-sets-thesis`` Ch. 3, App. .1 Algorithm 1, App. .3, App. .4).

Given an objective ``L`` (images → response vectors), a query ``x*`` and its target
``L(x*)``, the invariant set is ``IS(x*) = {x : L(x) = L(x*)}`` (Eq. 3.1; an intersection of
level sets, App. .2). Algorithm 1 samples it on the natural-image manifold of a diffusion
model: draw ``z_T``, run the *whole* sampler (with per-step gradient checkpointing) and the
decoder, and take SGD steps on ``z_T`` to minimize

    ``loss = λ · (‖L(x) − L(x*)‖² + ‖L(F(x)) − L(x*)‖²)``      (App. .1, lines 15–20)

with ``F`` the ideal low-pass filter of App. .4 (:func:`lightning_fv.diffusion.lowpass`),
stopping as soon as ``loss < τ`` (line 21) or after ``B`` steps. Defaults are App. .3: SGD,
``η = 10``, ``B = 512``, ``τ = 0.01``; generation is unconditional (the null class, App. .1.1),
a class label is optional. For probability vectors (§4.1.2 "probability preservation") the
squared distance is replaced by ``KL(p* ‖ p)``.

A batch of independent ``z_T`` is optimized at once; each sample stops (its ``z_T`` and image
are frozen) on its own when it reaches ``τ``. The loss is summed over the active samples, so
every sample's gradient is that of its own loss, whatever the batch.

Objectives (:class:`InvariantObjective`, or any callable ``images → (B, m)`` / ``(B,)``):
:func:`unit_response` (units/neurons of any layer via :mod:`lightning_fv.optvis`),
:func:`logits_response`, :func:`probability_response` (KL) and :func:`sae_response` (features
of a :class:`~lightning_fv.models.sae.TopKSAE`, thesis §4.3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fv.diffusion.lowpass import lowpass
from lightning_fv.optvis.hooks import capture, preserved_state
from lightning_fv.optvis.objectives import unit as unit_objective

log = logging.getLogger(__name__)

__all__ = [
    "DISTANCES",
    "INVARIANT_PRESETS",
    "OBJECTIVES",
    "InvariantConfig",
    "InvariantObjective",
    "InvariantSetResult",
    "as_invariant_objective",
    "invariant_loss",
    "invariant_set_sample",
    "logits_response",
    "make_objective",
    "probability_response",
    "sae_response",
    "seeded_latents",
    "unit_response",
]

DISTANCES = ("l2", "kl")


class InvariantObjective:
    """The function ``L`` of Algorithm 1 plus the distance used to compare responses.

    Args:
        fn: images ``(B, 3, H, W)`` in [0, 1] → responses ``(B, m)`` (``(B,)`` is read as
            ``m = 1``); must be differentiable in the images.
        distance: ``"l2"`` = squared Euclidean distance ``‖r − r*‖²`` (App. .1, lines 18–19);
            ``"kl"`` = ``KL(p* ‖ p)`` for responses that are *log*-probabilities (§4.1.2).
        model: the network ``fn`` evaluates; it is put in eval mode with frozen parameters
            during sampling and restored afterwards.
        name: readable description.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], distance: str = "l2",
                 model: nn.Module | None = None, name: str = "objective") -> None:
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; valid: {list(DISTANCES)}")
        self.fn, self.distance, self.model, self.name = fn, distance, model, name

    def __call__(self, images: Tensor) -> Tensor:
        out = self.fn(images)
        if out.dim() == 1:
            out = out[:, None]
        if out.dim() != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(f"objective {self.name} must return (B, m) responses for "
                             f"{images.shape[0]} images, got {tuple(out.shape)}")
        return out

    def compare(self, response: Tensor, target: Tensor) -> Tensor:
        """Per-sample distance ``(B,)`` between responses and targets ``(B, m)``."""
        if self.distance == "kl":
            p_star = target.exp()
            return (p_star * (target - response)).sum(1)
        return (response - target).pow(2).sum(1)

    def __repr__(self) -> str:
        return f"InvariantObjective({self.name}, distance={self.distance!r})"


def as_invariant_objective(obj: InvariantObjective | Callable[[Tensor], Tensor]
                           ) -> InvariantObjective:
    """Wrap a plain callable ``images → (B, m)`` (squared-L2 distance)."""
    if isinstance(obj, InvariantObjective):
        return obj
    if not callable(obj):
        raise TypeError(f"objective must be callable (images → responses), got {type(obj)}")
    model = obj if isinstance(obj, nn.Module) else None
    return InvariantObjective(obj, "l2", model, getattr(obj, "__name__", type(obj).__name__))


def _pre(preprocess: Callable[[Tensor], Tensor] | None) -> Callable[[Tensor], Tensor]:
    return preprocess if preprocess is not None else (lambda x: x)


def logits_response(model: nn.Module, preprocess: Callable[[Tensor], Tensor] | None = None
                    ) -> InvariantObjective:
    """``L(x) = logits`` ``(B, K)`` of a classifier (§4.4, multi-class logit preservation)."""
    pre = _pre(preprocess)
    return InvariantObjective(lambda x: model(pre(x)), "l2", model, "logits")


def probability_response(model: nn.Module,
                         preprocess: Callable[[Tensor], Tensor] | None = None
                         ) -> InvariantObjective:
    """``L(x) = log softmax(logits)`` ``(B, K)`` compared by ``KL(p* ‖ p)`` (§4.1.2
    "probability preservation", §4.4)."""
    pre = _pre(preprocess)
    return InvariantObjective(lambda x: F.log_softmax(model(pre(x)).float(), dim=1), "kl",
                              model, "probabilities")


def unit_response(model: nn.Module, units: str | Sequence[str],
                  preprocess: Callable[[Tensor], Tensor] | None = None) -> InvariantObjective:
    """Activations of units ``(B, n_units)`` of any layers (§4.2, single neurons).

    ``units`` are Lucent-style names: ``"block3:5"`` = mean of channel 5,
    ``"block3:5@2,2"`` = the neuron at row 2, column 2, ``"fc:3"`` = logit 3 (see
    :func:`lightning_fv.optvis.objectives.unit`).
    """
    names = [units] if isinstance(units, str) else list(units)
    if not names:
        raise ValueError("unit_response needs at least one unit")
    objs = [unit_objective(u) for u in names]
    layers = list(dict.fromkeys(layer for o in objs for layer in o.model_layers))
    pre = _pre(preprocess)

    def fn(x: Tensor) -> Tensor:
        with capture(model, layers) as acts:
            model(pre(x))
            return torch.stack([o(acts) for o in objs], dim=1)

    return InvariantObjective(fn, "l2", model, f"units({', '.join(names)})")


def sae_response(model: nn.Module, layer: str, sae: nn.Module, features: int | Sequence[int],
                 aggregation: str = "mean",
                 preprocess: Callable[[Tensor], Tensor] | None = None) -> InvariantObjective:
    """SAE feature activations ``(B, n_features)`` of ``layer`` (§4.3).

    Each spatial position of a conv activation ``(B, C, h, w)`` is encoded by ``sae``
    (:class:`~lightning_fv.models.sae.TopKSAE`); the chosen features are aggregated over
    positions by ``"mean"`` or ``"max"``.
    """
    if aggregation not in ("mean", "max"):
        raise ValueError(f"aggregation must be 'mean' or 'max', got {aggregation!r}")
    feats = [int(features)] if isinstance(features, int) else [int(f) for f in features]
    n = int(getattr(sae, "d_hidden", 0)) or None
    if n is not None and any(not 0 <= f < n for f in feats):
        raise IndexError(f"SAE feature indices {feats} out of range (valid: 0..{n - 1})")
    pre = _pre(preprocess)

    class _Both(nn.Module):  # so that the SAE is frozen together with the model
        def __init__(self) -> None:
            super().__init__()
            self.net, self.sae = model, sae

    def fn(x: Tensor) -> Tensor:
        with capture(model, [layer]) as acts:
            model(pre(x))
            a = acts[layer]
        tokens = a.movedim(1, -1) if a.dim() > 2 else a[:, None]     # (B, ..., C)
        codes = sae.encode(tokens.float())[..., feats].flatten(1, -2)  # (B, P, n_f)
        return codes.mean(1) if aggregation == "mean" else codes.amax(1)

    return InvariantObjective(fn, "l2", _Both(), f"sae({layer}, {feats})")


def invariant_loss(objective: InvariantObjective, images: Tensor, target: Tensor,
                   step_size: float = 1.0, cutoff: float | None = 0.5,
                   return_response: bool = False) -> tuple[Tensor, ...]:
    """The loss of Algorithm 1 (App. .1, lines 15–20) per sample.

    ``total = λ·(d(L(x), t) + d(L(F_c(x)), t))`` with ``λ = step_size``, ``F_c`` the ideal
    low-pass filter with relative cutoff ``c`` (App. .4, Eq. 3) and ``d`` the objective's
    distance (squared L2 or KL). ``cutoff=None`` drops the filtered term (the
    "unfiltered-only" ablation).

    This is the function :func:`invariant_set_sample` evaluates at every iterate (and the one
    ``benchmarks/bench_invariant.py`` times).

    Returns:
        ``(total, unfiltered, filtered)``, each ``(B,)``; ``filtered`` is zeros without a filter.
        With ``return_response`` the responses ``L(x)`` ``(B, m)`` follow as a fourth entry.
    """
    response = objective(images)
    d1 = objective.compare(response, target)
    if cutoff is None:
        d2 = torch.zeros_like(d1)
    else:
        d2 = objective.compare(objective(lowpass(images, cutoff)), target)
    total = step_size * (d1 + d2)
    return (total, d1, d2, response) if return_response else (total, d1, d2)


OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class InvariantConfig:
    """Settings of Algorithm 1 (thesis App. .1); the defaults are App. .3.

    Attributes:
        budget: step budget ``B`` (SGD steps per sample; App. .3: 512 or 1024).
        tau: loss threshold ``τ`` for early stopping (App. .3: 0.01).
        lr: learning rate ``η`` (App. .3: 10).
        step_size: the factor ``λ`` of the loss (line 20).
        cutoff: relative cutoff in (0, 1] of the low-pass filter ``F`` (App. .4); ``None`` =
            no filtered term. The thesis gives no value; 0.5 is our default.
        optimizer: ``"sgd"`` (App. .3) or ``"adam"``; ``momentum`` for SGD.
        num_steps: sampler steps (``None``: the pipeline's ``SamplerConfig``).
        checkpoint: per-step gradient checkpointing of sampler and decoder (App. .1.2).
        clamp: clip decoded images to [0, 1] (zero gradient outside, as the release).

    Named presets (:meth:`preset`): ``"thesis"`` (App. .3), ``"digits"`` (the bundled digits
    pipeline and classifier on a CPU: 64 steps, η 30, λ 0.01, 10 sampler steps; the defaults
    of ``lightning-fv invariant`` and ``examples/configs/invariant_digits.yaml``) and
    ``"training"`` (a short run inside a training loop, the callback's default).
    """

    budget: int = 512
    tau: float = 0.01
    lr: float = 10.0
    step_size: float = 1.0
    cutoff: float | None = 0.5
    optimizer: str = "sgd"
    momentum: float = 0.0
    num_steps: int | None = None
    checkpoint: bool = True
    clamp: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or int(self.budget) != self.budget or self.budget < 0:
            raise ValueError(f"budget must be a non-negative integer, got {self.budget!r}")
        if not self.tau >= 0:
            raise ValueError(f"tau must be >= 0, got {self.tau!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size!r}")
        if self.cutoff is not None and not 0 < self.cutoff <= 1:
            raise ValueError(f"cutoff must be in (0, 1] or None, got {self.cutoff!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {self.momentum!r}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1 or None, got {self.num_steps!r}")

    @classmethod
    def preset(cls, name: str) -> InvariantConfig:
        """A named preset: ``"thesis"``, ``"digits"`` or ``"training"``."""
        if name not in INVARIANT_PRESETS:
            raise ValueError(f"unknown invariant-set preset {name!r}; "
                             f"valid: {sorted(INVARIANT_PRESETS)}")
        return INVARIANT_PRESETS[name]

    def replace(self, **changes: Any) -> InvariantConfig:
        """A copy with ``changes``; an unknown field raises naming the valid ones."""
        names = [f.name for f in fields(self)]
        bad = sorted(set(changes) - set(names))
        if bad:
            raise TypeError(f"unknown invariant-set setting(s) {bad}; valid: {names}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for logs and ``metrics.json``)."""
        return dataclasses.asdict(self)


INVARIANT_PRESETS: dict[str, InvariantConfig] = {
    "thesis": InvariantConfig(),
    "digits": InvariantConfig(budget=64, lr=30.0, step_size=0.01, num_steps=10),
    "training": InvariantConfig(budget=32, num_steps=10),
}


@dataclass
class InvariantSetResult:
    """Result of :func:`invariant_set_sample` for ``B`` samples (tensors detached, on the
    device of the run).

    Attributes:
        images: final samples ``(B, 3, H, W)`` in [0, 1] (the image of the returned ``z_T``).
        z_T: optimized starting latents ``(B, C, h, w)``; ``z_init`` the drawn ones.
        target: target responses ``L(x*)`` ``(B, m)``; ``responses`` the final ``L(x)``.
        losses: final total loss ``(B,)``; ``loss_unfiltered`` / ``loss_filtered`` its terms
            before the factor λ.
        history: total loss at every evaluated iterate ``(budget + 1, B)``; NaN after a
            sample froze (or after the run ended).
        steps: SGD steps taken per sample ``(B,)`` (int64).
        reached: whether the sample's loss fell below τ ``(B,)`` (bool).
        query_index: index of each sample's query ``(B,)``; labels: class labels or None.
        seconds: wall time of the optimization.
        config: the :class:`InvariantConfig` used (as a dict) and the objective's name.
        stopped: the run was stopped by ``on_step`` before every sample was done.
    """

    images: Tensor
    z_T: Tensor
    z_init: Tensor
    target: Tensor
    responses: Tensor
    losses: Tensor
    loss_unfiltered: Tensor
    loss_filtered: Tensor
    history: Tensor
    steps: Tensor
    reached: Tensor
    query_index: Tensor
    labels: Tensor | None = None
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    @property
    def fraction_reached(self) -> float:
        """Fraction of samples whose loss fell below τ."""
        return float(self.reached.float().mean()) if self.reached.numel() else float("nan")

    def summary(self) -> dict[str, float]:
        """Scalars: fraction reached, mean/median steps, mean final loss, seconds."""
        st = self.steps.float()
        return {"fraction_reached": self.fraction_reached,
                "mean_steps": float(st.mean()), "median_steps": float(st.median()),
                "mean_loss": float(self.losses.mean()), "seconds": self.seconds}


@contextlib.contextmanager
def _frozen(*modules: nn.Module | None) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for m in modules:
            if isinstance(m, nn.Module):
                stack.enter_context(preserved_state(m))
        yield


def _device(pipeline: nn.Module) -> torch.device:
    p = next(iter(pipeline.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def seeded_latents(pipeline: nn.Module, seeds: Sequence[int],
                   device: torch.device | str | None = None) -> Tensor:
    """Starting latents ``(len(seeds), C, h, w)``: row ``i`` from a CPU generator seeded
    ``seeds[i]`` (the same on every device and in any batch), moved to ``device``."""
    z = torch.cat([pipeline.noise(1, torch.Generator().manual_seed(int(s)), device="cpu")
                   for s in seeds])
    return z.to(device if device is not None else _device(pipeline))


def invariant_set_sample(
    pipeline: nn.Module,
    objective: InvariantObjective | Callable[[Tensor], Tensor],
    query: Tensor | None = None,
    *,
    target: Tensor | None = None,
    num_samples: int = 1,
    labels: Tensor | Sequence[int] | None = None,
    config: InvariantConfig | None = None,
    seed: int = 0,
    z_T: Tensor | None = None,
    sampler_overrides: dict[str, Any] | None = None,
    log_every: int = 0,
    on_step: Callable[[int, int, int], bool | None] | None = None,
    **settings: Any,
) -> InvariantSetResult:
    """Algorithm 1 of thesis App. .1 for a batch of independent starting latents.

    Args:
        pipeline: a :class:`~lightning_fv.diffusion.pipeline.LatentDiffusionPipeline`
            (``generate``, ``noise``, ``latent_shape``, ``model.null_class``).
        objective: ``L``; an :class:`InvariantObjective` or a callable images → ``(B, m)``.
        query: query images ``x*`` ``(Q, 3, H, W)`` in [0, 1]; the target is ``L(x*)``.
            Generated images are resized (bilinear, antialiased) to ``H × W`` if needed.
        target: alternatively the target responses ``(Q, m)`` directly.
        num_samples: independent samples per query (``B = Q · num_samples``).
        labels: class labels ``(Q,)`` for class-conditional sampling; ``None`` =
            unconditional through the null class (App. .1.1).
        config: the algorithm's settings (:class:`InvariantConfig`; default App. .3).
        seed: sample ``i`` draws ``z_T`` from a CPU generator seeded ``seed + i``, so a
            sample is the same alone or in a batch and on any device.
        z_T: explicit starting latents ``(B, C, h, w)`` instead of drawing them.
        sampler_overrides: further :class:`SamplerConfig` fields (``shift``, ``method``, …).
        log_every: log progress every n steps (0 = never).
        on_step: called after every SGD step as ``on_step(step, reached, active)`` (steps
            taken so far, samples that reached ``τ``, samples still optimized); returning
            ``True`` stops the run there (the result holds the last evaluated iterate and
            ``stopped=True``).
        settings: single :class:`InvariantConfig` fields overriding ``config``
            (``budget=64``, ``lr=30.0``…).

    Returns:
        :class:`InvariantSetResult`. Frozen samples never change after reaching ``τ``.
    """
    cfg = (config or InvariantConfig()).replace(**settings) if settings else \
        (config or InvariantConfig())
    budget, tau, lr, step_size = cfg.budget, cfg.tau, cfg.lr, cfg.step_size
    cutoff, checkpoint, clamp = cfg.cutoff, cfg.checkpoint, cfg.clamp
    obj = as_invariant_objective(objective)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if (query is None) == (target is None):
        raise ValueError("give exactly one of query (images) or target (responses)")
    dev = _device(pipeline)
    t0 = time.time()
    overrides = dict(sampler_overrides or {})
    if cfg.num_steps is not None:
        overrides["num_steps"] = int(cfg.num_steps)
    if labels is None:  # null-class label: guidance would return the same velocity at 2× cost
        overrides.setdefault("cfg_scale", 1.0)

    with torch.inference_mode(False), _frozen(pipeline, obj.model):
        size: tuple[int, int] | None = None
        if query is not None:
            if query.dim() != 4 or query.shape[1] != 3:
                raise ValueError(f"query must be (Q, 3, H, W) images, got {tuple(query.shape)}")
            q = query.detach().clone().to(dev)
            size = (q.shape[-2], q.shape[-1])
            with torch.no_grad():
                tgt = obj(q).detach()
        else:
            tgt = target.detach().clone().to(dev)  # type: ignore[union-attr]
            tgt = tgt[:, None] if tgt.dim() == 1 else tgt
        n_q = tgt.shape[0]
        qidx = torch.arange(n_q, device=dev).repeat_interleave(num_samples)
        tgt = tgt[qidx]
        b = tgt.shape[0]
        y = None
        if labels is not None:
            lab = torch.as_tensor(labels, dtype=torch.long).to(dev).reshape(-1)
            if lab.shape != (n_q,):
                raise ValueError(f"labels must have one entry per query ({n_q}), "
                                 f"got shape {tuple(lab.shape)}")
            y = lab[qidx]
        if z_T is None:
            z0 = seeded_latents(pipeline, range(seed, seed + b), dev)
        else:
            z0 = z_T.detach().clone().to(dev)
            if z0.shape[0] != b:
                raise ValueError(f"z_T has {z0.shape[0]} latents for {b} samples")
        z = z0.clone().requires_grad_(True)
        opt = (torch.optim.SGD([z], lr=lr, momentum=cfg.momentum) if cfg.optimizer == "sgd"
               else torch.optim.Adam([z], lr=lr))

        def render(rows: Tensor) -> Tensor:
            x = pipeline.generate(z[rows], None if y is None else y[rows],
                                  checkpoint=checkpoint, enable_grad=True, clamp=clamp,
                                  **overrides)
            if size is not None and tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                  antialias=True)
            return x

        active = torch.ones(b, dtype=torch.bool, device=dev)
        reached = torch.zeros(b, dtype=torch.bool, device=dev)
        steps = torch.zeros(b, dtype=torch.long, device=dev)
        history = torch.full((int(budget) + 1, b), float("nan"), device=dev)
        images: Tensor | None = None
        responses = torch.zeros_like(tgt)
        losses = torch.zeros(b, device=dev)
        d_un = torch.zeros(b, device=dev)
        d_f = torch.zeros(b, device=dev)
        stopped = False
        for it in range(int(budget) + 1):
            rows = active.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            with torch.enable_grad():
                x = render(rows)
                total, d1, d2, resp = invariant_loss(obj, x, tgt[rows], step_size, cutoff,
                                                     return_response=True)
            if not torch.isfinite(total).all():
                bad = rows[~torch.isfinite(total)].tolist()
                raise FloatingPointError(f"invariant-set loss is not finite for samples {bad} "
                                         f"at optimization step {it}; lower lr (now {lr})")
            if images is None:
                images = torch.zeros(b, *x.shape[1:], device=dev)
            with torch.no_grad():
                history[it, rows] = total.detach()
                images[rows] = x.detach()
                responses[rows] = resp.detach().to(responses.dtype)
                losses[rows], d_un[rows], d_f[rows] = total.detach(), d1.detach(), d2.detach()
            done = total.detach() < tau
            reached[rows[done]] = True
            active[rows[done]] = False
            if it == budget or bool(done.all()):
                break
            keep = z.detach().clone()
            opt.zero_grad(set_to_none=True)
            total[~done].sum().backward()
            opt.step()
            with torch.no_grad():  # frozen samples never move (also with momentum/Adam)
                z[~active] = keep[~active]
            steps[rows[~done]] += 1
            if log_every and (it + 1) % log_every == 0:
                log.info("invariant-set step %d: %d/%d reached, mean active loss %.4g",
                         it + 1, int(reached.sum()), b, float(total[~done].mean()))
            if on_step is not None and on_step(it + 1, int(reached.sum()), int(active.sum())):
                stopped = True
                break
        opt.zero_grad(set_to_none=True)
    assert images is not None
    return InvariantSetResult(
        images=images, z_T=z.detach(), z_init=z0, target=tgt, responses=responses,
        losses=losses, loss_unfiltered=d_un, loss_filtered=d_f, history=history, steps=steps,
        reached=reached, query_index=qidx, labels=y, seconds=time.time() - t0,
        config={**cfg.as_dict(), "objective": obj.name}, stopped=stopped)


OBJECTIVES = ("logits", "probabilities", "units", "sae")


def make_objective(kind: str, model: nn.Module, units: Sequence[str] | None = None,
                   sae: nn.Module | None = None, sae_layer: str | None = None,
                   sae_features: Sequence[int] | None = None,
                   preprocess: Callable[[Tensor], Tensor] | None = None) -> InvariantObjective:
    """Build an objective by name (for YAML/CLI): ``"logits"``, ``"probabilities"`` (KL),
    ``"units"`` (needs ``units``) or ``"sae"`` (needs ``sae``, ``sae_layer``, ``sae_features``)."""
    if kind == "logits":
        return logits_response(model, preprocess)
    if kind == "probabilities":
        return probability_response(model, preprocess)
    if kind == "units":
        if not units:
            raise ValueError("objective 'units' needs units such as ['block3:5', 'fc:2']")
        return unit_response(model, list(units), preprocess)
    if kind == "sae":
        if sae is None or not sae_layer or sae_features is None:
            raise ValueError("objective 'sae' needs an SAE, its layer and feature indices")
        return sae_response(model, sae_layer, sae, list(sae_features), preprocess=preprocess)
    raise ValueError(f"unknown objective {kind!r}; valid: {list(OBJECTIVES)}")
