"""Representation tools of (robust) models: inversion, interpolation, coordinate
maximization, feature addition and feature-level sensitivity
(`robust-representations…` §2, §4–§5, App. A.4–A.6).

The representation ``R(x)`` is the penultimate layer (§2): the input ``(B, k)`` of the
final linear layer that maps it to logits, ``logits = R(x) Wᵀ + b`` with ``W`` of shape
``(num_classes, k)``. By default that layer is the last ``nn.Linear`` of the model;
name another with ``classifier=``.

Every optimization is the engine's norm-constrained projected gradient method
(:func:`lightning_fv.optvis.constrained.maximize_in_ball`), run with the model in eval
mode and frozen (:func:`lightning_fv.optvis.hooks.preserved_state`). Images are
``(B, C, H, W)`` RGB in [0, 1]; radii and step sizes in pixel units (ℓ2 over ``C·H·W``).
Defaults are the paper's restricted-ImageNet (224 px) settings; for smaller images
rescale them (:meth:`lightning_fv.adversarial.PGDConfig.scaled`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_fv.optvis.constrained import maximize_in_ball
from lightning_fv.optvis.hooks import capture, get_layer, preserved_state
from lightning_fv.optvis.projected import Norm


def final_linear(model: nn.Module, classifier: str | None = None) -> tuple[str, nn.Linear]:
    """``(name, module)`` of the linear layer mapping ``R(x)`` to logits: ``classifier``
    if given (it must be an ``nn.Linear``), else the model's last ``nn.Linear``."""
    if classifier is not None:
        mod = get_layer(model, classifier)
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"classifier layer {classifier!r} is a {type(mod).__name__}, "
                            "not an nn.Linear")
        return classifier, mod
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer; name the layer "
                         "mapping the representation to logits with classifier=")
    return linears[-1]


def classifier_weight(model: nn.Module, classifier: str | None = None) -> Tensor:
    """``W`` ``(num_classes, k)`` of the final linear layer (Eq. 8)."""
    return final_linear(model, classifier)[1].weight


def representation_and_logits(
    model: nn.Module, x: Tensor, classifier: str | None = None
) -> tuple[Tensor, Tensor]:
    """``(R(x) (B, k), logits (B, num_classes))`` from one forward pass (§2)."""
    name, _ = final_linear(model, classifier)
    with capture(model, [name], at="input") as acts:
        logits = model(x)
    if name not in acts:
        raise RuntimeError(f"the final linear layer {name!r} was not called in the forward pass")
    return acts[name].flatten(1), logits


def representation(model: nn.Module, x: Tensor, classifier: str | None = None) -> Tensor:
    """``R(x)`` ``(B, k)``, the input of the final linear layer (§2)."""
    return representation_and_logits(model, x, classifier)[0]


def noise_seed(
    shape: Sequence[int],
    mean: float = 0.5,
    std: float = 0.1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Gaussian-noise seed images ``clip(mean + std·N(0, 1), 0, 1)`` of ``shape``."""
    g = torch.randn(tuple(shape), generator=generator, device=device)
    return (mean + std * g).clamp(0, 1)


def _target_rep(model: nn.Module, target: Tensor, classifier: str | None) -> Tensor:
    if target.dim() == 2:
        return target.detach()
    with torch.no_grad():
        return representation(model, target, classifier).detach()


def invert(
    model: nn.Module,
    target: Tensor,
    x0: Tensor | None = None,
    eps: float = 1000.0,
    steps: int = 10000,
    step_size: float = 1.0,
    norm: Norm = "l2",
    classifier: str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Representation inversion, Eq. 5: ``min_δ ‖R(x0 + δ) − R(x_targ)‖₂``, ``‖δ‖ ≤ ε``.

    Defaults are App. A.5 (ε = 1000, 10000 steps of size 1).

    Args:
        model: images → logits.
        target: target images ``(B, C, H, W)`` or their representations ``(B, k)``.
        x0: seed images ``(B, C, H, W)`` (another image); ``None``: Gaussian noise
            (:func:`noise_seed`, needs image ``target``).
        eps, steps, step_size, norm: the ball and the projected steps.
        classifier: name of the final linear layer (default: the last ``nn.Linear``).
        generator: random source of the noise seed.

    Returns:
        Images ``(B, C, H, W)`` with ``‖x − x0‖ ≤ eps``.
    """
    if x0 is None:
        if target.dim() != 4:
            raise ValueError("a noise seed needs target images (B, C, H, W); pass x0 for a "
                             f"target representation of shape {tuple(target.shape)}")
        x0 = noise_seed(target.shape, generator=generator, device=target.device)
    with preserved_state(model):
        r_t = _target_rep(model, target, classifier)
        if r_t.shape[0] != x0.shape[0]:
            raise ValueError(f"{r_t.shape[0]} targets for {x0.shape[0]} seeds")

        def distance(x: Tensor) -> Tensor:
            return (representation(model, x, classifier).float() - r_t).norm(dim=1)

        return maximize_in_ball(distance, x0, eps, step_size, steps, norm, minimize=True)


def invert_scheduled(
    model: nn.Module,
    target: Tensor,
    x0: Tensor,
    steps: int,
    step_size: float,
    decay: float = 1.0,
    chunks: int = 1,
    eps: float = 1000.0,
    norm: Norm = "l2",
    classifier: str | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Tensor, list[float]]:
    """Eq. 5 (:func:`invert`) with a geometrically decaying step: ``chunks`` runs of about
    ``steps / chunks`` steps, the step size going from ``step_size`` to
    ``step_size · decay``, each run continuing from the last (the ε ball around each run's
    start is never reached at ε = 1000).

    ``progress(steps_done, relative_distance)`` is called after each run, if given.

    Returns the images ``(B, C, H, W)`` and the mean relative representation distance
    ``‖R(x) − R(x_targ)‖ / ‖R(x_targ)‖`` before the first run and after each run.
    """
    with torch.no_grad(), preserved_state(model):
        r_t = _target_rep(model, target, classifier).float()

    @torch.no_grad()
    def relative(x: Tensor) -> float:
        with preserved_state(model):
            r = representation(model, x, classifier).float()
        return float(((r - r_t).norm(dim=1) / r_t.norm(dim=1).clamp_min(1e-12)).mean())

    n = max(1, min(chunks, steps))
    per = [steps // n + (i < steps % n) for i in range(n)]
    x, trace = x0, [relative(x0)]
    for i, k in enumerate(per):
        step = step_size * decay ** (i / (n - 1) if n > 1 else 0.0)
        x = invert(model, r_t, x0=x, eps=eps, steps=k, step_size=step, norm=norm,
                   classifier=classifier)
        trace.append(relative(x))
        if progress is not None:
            progress(sum(per[: i + 1]), trace[-1])
    return x, trace


def interpolate(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor,
    lambdas: Sequence[float] | Tensor = (0.0, 0.25, 0.5, 0.75, 1.0),
    x0: Tensor | None = None,
    eps: float = 1000.0,
    steps: int = 10000,
    step_size: float = 1.0,
    norm: Norm = "l2",
    classifier: str | None = None,
) -> Tensor:
    """Interpolation through representations, §5.1 Eq. 6: for each λ, invert (Eq. 5) the
    interpolated representation ``R_λ = (1 − λ)·R(x1) + λ·R(x2)``.

    Seeds: ``x0`` ``(B, C, H, W)`` for every λ, or by default the pixel blend
    ``(1 − λ)·x1 + λ·x2``. Defaults are App. A.5.

    Returns:
        ``(L, B, C, H, W)`` images for the ``L`` values of λ (one batched optimization).
    """
    lam = torch.as_tensor(lambdas, dtype=x1.dtype, device=x1.device).flatten()
    if x1.shape != x2.shape:
        raise ValueError(f"x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)} differ in shape")
    L, B = lam.numel(), x1.shape[0]
    lv = lam.view(L, 1, 1, 1, 1)
    with preserved_state(model):
        with torch.no_grad():
            r1 = representation(model, x1, classifier).float()
            r2 = representation(model, x2, classifier).float()
        lr = lam.view(L, 1, 1).float()
        r_t = ((1 - lr) * r1 + lr * r2).reshape(L * B, -1)
        seeds = (1 - lv) * x1 + lv * x2 if x0 is None else x0.expand(L, *x0.shape)
        seeds = seeds.reshape(L * B, *x1.shape[1:])

        def distance(x: Tensor) -> Tensor:
            return (representation(model, x, classifier).float() - r_t).norm(dim=1)

        out = maximize_in_ball(distance, seeds, eps, step_size, steps, norm, minimize=True)
    return out.view(L, B, *x1.shape[1:])


def _coordinate_objective(model: nn.Module, index: Tensor, classifier: str | None):  # noqa: ANN202
    """``x → Σ_j R(x)[b, index[b, j]]`` ``(B,)`` for an index tensor ``(B, J)``."""

    def fn(x: Tensor) -> Tensor:
        r = representation(model, x, classifier)
        return r.gather(1, index).float().sum(1)

    return fn


def _index_tensor(index: int | Sequence[int] | Tensor, batch: int, k: int,
                  device: torch.device) -> Tensor:
    idx = torch.as_tensor(index, device=device, dtype=torch.long)
    if idx.dim() == 0:
        idx = idx.expand(batch)
    if idx.dim() == 1:
        if idx.shape[0] != batch:
            raise ValueError(f"index has {idx.shape[0]} entries for a batch of {batch}")
        idx = idx[:, None]
    if idx.numel() and (idx.min() < 0 or idx.max() >= k):
        raise IndexError(f"representation index out of range 0..{k - 1}: "
                         f"{idx.flatten().tolist()[:8]}")
    return idx


def maximize_coordinate(
    model: nn.Module,
    x0: Tensor,
    index: int | Sequence[int] | Tensor,
    eps: float = 1000.0,
    steps: int = 200,
    step_size: float = 1.0,
    norm: Norm = "l2",
    classifier: str | None = None,
) -> Tensor:
    """Feature visualization of representation coordinates from seed images, §4.1 Eq. 4:
    ``max_δ R(x0 + δ)_i`` with ``‖δ‖ ≤ ε`` (App. A.4 defaults: ε = 1000, 200 steps of 1).

    Args:
        x0: seeds ``(B, C, H, W)`` (noise, a grey image, data).
        index: coordinate ``i`` (int, for all seeds), one per seed ``(B,)``, or several per
            seed ``(B, J)`` (their sum is maximized).

    Returns:
        Images ``(B, C, H, W)`` with ``‖x − x0‖ ≤ eps``.
    """
    with preserved_state(model):
        with torch.no_grad():
            k = representation(model, x0[:1], classifier).shape[1]
        idx = _index_tensor(index, x0.shape[0], k, x0.device)
        fn = _coordinate_objective(model, idx, classifier)
        return maximize_in_ball(fn, x0, eps, step_size, steps, norm)


def coordinate_visualizations(
    model: nn.Module,
    seeds: Tensor,
    indices: Sequence[int] | Tensor,
    eps: float = 1000.0,
    steps: int = 200,
    step_size: float = 1.0,
    norm: Norm = "l2",
    classifier: str | None = None,
) -> Tensor:
    """Eq. 4 (§4.1, App. A.4) for every pair of a seed and a coordinate: for each seed
    ``x0_s`` and coordinate ``i_k``, ``x_{s,k} = x0_s + argmax_{‖δ‖ ≤ ε} R(x0_s + δ)_{i_k}``
    (the grid of the paper's Fig. 3 and Fig. 10–12: rows = seeds, columns = coordinates).

    One batched call of :func:`maximize_coordinate` (defaults: App. A.4's ε = 1000,
    200 steps of 1 at 224 px; rescale them for smaller images, e.g. with
    ``lightning_fv.adversarial.preset("paper_feature_vis", (C, H, W))``).

    Args:
        seeds: ``(S, C, H, W)`` starting points ``x0`` (grey, noise, data images).
        indices: ``K`` representation coordinates ``(K,)``.

    Returns:
        ``(S, K, C, H, W)`` images; ``[s, k]`` maximizes coordinate ``indices[k]`` from
        ``seeds[s]``.
    """
    idx = torch.as_tensor(indices, dtype=torch.long, device=seeds.device).flatten()
    s, k = seeds.shape[0], idx.numel()
    x0 = seeds.repeat_interleave(k, dim=0)  # seed-major: (s0,i0), (s0,i1), ...
    out = maximize_coordinate(model, x0, idx.repeat(s), eps, steps, step_size, norm,
                              classifier)
    return out.view(s, k, *seeds.shape[1:])


def feature_consistency(deltas: Tensor, eps: float = 1e-12) -> tuple[float, float]:
    """Does maximizing a coordinate add the same pattern from every starting point?
    (§4.1: robust coordinates "consistently represent the same concepts across different
    starting inputs ``x0``".)

    With ``δ_{s,k} = x_{s,k} − x0_s`` the change that Eq. 4 made to seed ``s`` for
    coordinate ``k`` (from :func:`coordinate_visualizations`), and ``ρ`` the Pearson
    correlation of two flattened changes, returns

    - ``same``: the mean of ``ρ(δ_{s,k}, δ_{s',k})`` over coordinates ``k`` and ordered seed
      pairs ``s ≠ s'`` (one coordinate, two starting points);
    - ``different``: the mean of ``ρ(δ_{s,k}, δ_{s',k'})`` over ``k ≠ k'`` and ``s ≠ s'``
      (the baseline: changes made from the same pair of seeds, for other coordinates).

    ``same − different`` > 0 means a coordinate adds a pattern of its own, beyond what any
    maximization adds from those seeds. A change with zero variance (e.g. a coordinate
    whose gradient is 0 at a grey seed, so the seed is not moved) has no correlation: pairs
    containing one are left out of both means (``nan`` if no pair is left).

    Args:
        deltas: ``(S, K, ...)`` changes, ``S ≥ 2`` seeds and ``K ≥ 2`` coordinates.

    Returns:
        ``(same, different)``.
    """
    if deltas.dim() < 3 or deltas.shape[0] < 2 or deltas.shape[1] < 2:
        raise ValueError("deltas must be (S, K, ...) with S >= 2 seeds and K >= 2 "
                         f"coordinates, got {tuple(deltas.shape)}")
    s, k = deltas.shape[:2]
    z = deltas.detach().double().flatten(2)
    z = z - z.mean(dim=2, keepdim=True)
    norm = z.norm(dim=2, keepdim=True)
    z = z / norm.clamp_min(eps)
    ok = norm[..., 0] > eps  # (S, K)
    corr = torch.einsum("akd,bld->abkl", z, z)  # (S, S, K, K): ρ(δ_{a,k}, δ_{b,l})
    valid = ok[:, None, :, None] & ok[None, :, None, :]
    pairs = ~torch.eye(s, dtype=torch.bool, device=z.device)
    diag = torch.eye(k, dtype=torch.bool, device=z.device)
    c, v = corr[pairs], valid[pairs]  # (S·(S−1), K, K)

    def mean(m: Tensor) -> float:
        sel = c[m & v]
        return float(sel.mean()) if sel.numel() else float("nan")

    return mean(diag.expand_as(c)), mean(~diag.expand_as(c))


@torch.no_grad()
def recognition_rate(
    classifier: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256
) -> float:
    """Fraction of ``images`` ``(N, C, H, W)`` that ``classifier`` (images → logits)
    assigns to ``labels`` ``(N,)``: whether a model that took no part in making the images
    recognises them as the intended class (used to judge Eq. 5 inversions, §4.2, whose
    recognisability the paper shows in Fig. 5–6). Evaluated in eval mode (state restored).
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images for {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError("no images")
    hits = 0
    with preserved_state(classifier):
        for i in range(0, images.shape[0], batch_size):
            pred = classifier(images[i:i + batch_size]).argmax(1)
            hits += int((pred == labels[i:i + batch_size].to(pred.device)).sum())
    return hits / images.shape[0]


def add_feature(
    model: nn.Module,
    x: Tensor,
    index: int | Sequence[int] | Tensor,
    eps: float = 40.0,
    steps: int = 60,
    step_size: float = 1.0,
    norm: Norm = "l2",
    classifier: str | None = None,
) -> Tensor:
    """Feature addition, §5.2 Eq. 7: ``x' = x + argmax_{‖δ‖ ≤ ε} R(x + δ)_i`` adds the
    feature of coordinate ``i`` to the images ``x`` while staying in an ε-ball.

    The paper gives no separate table for §5.2; the defaults are App. A.6's (ε = 40,
    60 steps of 1), the setting of the accentuation in §5.3. Returns ``(B, C, H, W)``.
    """
    return maximize_coordinate(model, x, index, eps, steps, step_size, norm, classifier)


@torch.no_grad()
def top_features(
    model: nn.Module, x: Tensor, k: int = 5, classifier: str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Feature-level sensitivity, §5.3 Eq. 8: ``top-k {R(x)_i · W_ic}`` for the predicted
    class ``c``.

    Returns:
        ``(contributions (B, k), indices (B, k), predicted classes (B,))``, contributions
        in decreasing order.
    """
    with preserved_state(model):
        r, logits = representation_and_logits(model, x, classifier)
    w = classifier_weight(model, classifier)
    if not 1 <= k <= r.shape[1]:
        raise ValueError(f"k must be in 1..{r.shape[1]} (representation size), got {k}")
    pred = logits.argmax(1)
    contrib = r.float() * w[pred].float()
    vals, idx = contrib.topk(k, dim=1)
    return vals, idx, pred


def accentuate(
    model: nn.Module,
    x: Tensor,
    k: int = 5,
    eps: float = 40.0,
    steps: int = 60,
    step_size: float = 1.0,
    norm: Norm = "l2",
    classifier: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Accentuate the top-k features of Eq. 8 by feature addition (Eq. 7), §5.3: maximize
    the sum of the ``k`` coordinates ``R(x')_i`` with the highest ``R(x)_i·W_ic`` in an
    ε-ball around ``x`` (App. A.6 defaults: ε = 40, 60 steps of 1).

    Returns:
        ``(images (B, C, H, W), the accentuated indices (B, k))``.
    """
    _, idx, _ = top_features(model, x, k, classifier)
    return add_feature(model, x, idx, eps, steps, step_size, norm, classifier), idx


__all__ = [
    "accentuate",
    "add_feature",
    "classifier_weight",
    "coordinate_visualizations",
    "feature_consistency",
    "final_linear",
    "interpolate",
    "invert",
    "maximize_coordinate",
    "noise_seed",
    "recognition_rate",
    "representation",
    "representation_and_logits",
    "top_features",
]
