"""Path-linearity metrics of feature-visualization trajectories (`dont-trust-your-eyes…`
§5, App. C.4, Eq. 12–18).

Starting from the ``M`` most activating natural images ``x_i^s`` of a unit, feature
visualization optimizes each image for ``N`` steps. With the gradients ``g_j`` w.r.t. the
image at steps ``j = 1 … N`` and the images ``x_j`` along the path:

- Eq. 12: ``a_j(x_i^s) = ∠(ĝ_j, ĝ_{j+1})`` with ``ĝ = g / ‖g‖`` (degrees here).
- Eq. 13: ``AGPA_j = (1/M) Σ_i a_j(x_i^s)``, ``j = 1 … N−1``.
- Eq. 14: ``AGA = (1/(N−1)) Σ_j AGPA_j``.
- Eq. 15–16: ``d_j(x_i^s)`` = ℓ2 distance of ``x_j`` to the segment
  ``{x_i^s + α (x_i^f − x_i^s), α ∈ [0, 1]}`` between start and final image.
- Eq. 17: ``ALDP_j = (1/M) Σ_i d_j(x_i^s) / ‖x_i^f − x_i^s‖`` (scale-free).
- Eq. 18: ``ALD = (1/(N−1)) Σ_j ALDP_j``.

A straight path has ``ALD = 0``; constant gradient directions give angles of 0.
Imports only torch and the package core.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_fv.optvis.hooks import INPUT_KEY, Activations, Unit, parse_unit, record
from lightning_fv.optvis.layout import Layout
from lightning_fv.optvis.objectives import units_objective


def gradient_angles(grads: Tensor, eps: float = 1e-12) -> Tensor:
    """Eq. 12: angles in degrees between successive normalized gradients.

    Args:
        grads: ``(T, M, ...)`` gradients w.r.t. the image at ``T`` successive steps of
            ``M`` paths.

    Returns:
        ``(T−1, M)`` angles in ``[0, 180]`` degrees. A zero gradient raises.
    """
    if grads.dim() < 3 or grads.shape[0] < 2:
        raise ValueError(f"grads must be (T >= 2, M, ...), got shape {tuple(grads.shape)}")
    g = grads.flatten(2).double()
    norm = torch.linalg.vector_norm(g, dim=2, keepdim=True)
    if (norm <= eps).any():
        t, m = (norm.squeeze(2) <= eps).nonzero()[0].tolist()
        raise ValueError(f"zero gradient at recorded step {t} of path {m}; its angle is "
                         "undefined (is the unit dead for this image?)")
    gh = g / norm
    cos = (gh[:-1] * gh[1:]).sum(2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def agpa(grads: Tensor) -> Tensor:
    """Eq. 13: ``AGPA_j`` ``(T−1,)`` degrees, the mean over paths of :func:`gradient_angles`."""
    return gradient_angles(grads).mean(1)


def aga(grads: Tensor) -> Tensor:
    """Eq. 14: ``AGA``, the mean of ``AGPA_j`` over ``j`` (a 0-d tensor, degrees)."""
    return agpa(grads).mean()


def line_distances(path: Tensor, start: Tensor | None = None, end: Tensor | None = None,
                   eps: float = 1e-12) -> Tensor:
    """Eq. 15–17 (per path): distance of each path point to the start–end segment,
    divided by the start–end distance.

    Args:
        path: ``(T, M, ...)`` images along ``M`` paths.
        start: ``(M, ...)`` start images ``x^s`` (default ``path[0]``).
        end: ``(M, ...)`` final images ``x^f`` (default ``path[-1]``).

    Returns:
        ``(T, M)`` normalized ℓ2 distances ``d_j / ‖x^f − x^s‖`` (dimensionless).
    """
    if path.dim() < 3:
        raise ValueError(f"path must be (T, M, ...), got shape {tuple(path.shape)}")
    p = path.flatten(2).double()
    s = (path[0] if start is None else start).flatten(1).double()
    e = (path[-1] if end is None else end).flatten(1).double()
    if s.shape != p.shape[1:] or e.shape != p.shape[1:]:
        raise ValueError(f"start/end must be (M, ...) matching the path's {tuple(path.shape[1:])}")
    v = e - s
    length = torch.linalg.vector_norm(v, dim=1)
    if (length <= eps).any():
        m = int((length <= eps).nonzero()[0])
        raise ValueError(f"path {m} ends where it starts; the normalization of Eq. 17 "
                         "divides by the start-end distance")
    rel = p - s
    alpha = ((rel * v).sum(2) / length.pow(2)).clamp(0.0, 1.0)  # (T, M)
    closest = alpha.unsqueeze(2) * v
    return torch.linalg.vector_norm(rel - closest, dim=2) / length


def aldp(path: Tensor, start: Tensor | None = None, end: Tensor | None = None) -> Tensor:
    """Eq. 17: ``ALDP_j`` ``(T,)``, the mean over paths of :func:`line_distances`."""
    return line_distances(path, start, end).mean(1)


def ald(path: Tensor, start: Tensor | None = None, end: Tensor | None = None) -> Tensor:
    """Eq. 18: ``ALD``, the mean of ``ALDP_j`` over the intermediate steps ``path[1:]``
    (0-d tensor). With ``path`` = images at steps ``0 … N−1`` (step 0 the start) this is
    the mean over ``j = 1 … N−1`` of Eq. 18."""
    d = aldp(path, start, end)
    return d[1:].mean() if d.numel() > 1 else d.mean()


@dataclass
class PathLinearityResult:
    """Path linearity of one unit (C.4).

    Attributes:
        unit: the unit name.
        agpa: ``(N−1,)`` AGPA_j in degrees (Eq. 13).
        aga: AGA in degrees (Eq. 14).
        aldp: ``(N−1,)`` ALDP_j for steps ``1 … N−1`` (Eq. 17).
        ald: ALD (Eq. 18).
        angles: ``(N−1, M)`` per-path angles (Eq. 12).
        start_values, end_values: ``(M,)`` objective at the start and final images.
    """

    unit: str
    agpa: Tensor
    aga: float
    aldp: Tensor
    ald: float
    angles: Tensor
    start_values: Tensor
    end_values: Tensor


def path_metrics(grads: Tensor, path: Tensor, end: Tensor | None = None) -> dict[str, Tensor]:
    """All C.4 metrics from a recorded trajectory.

    Args:
        grads: ``(N, M, ...)`` gradients at steps ``0 … N−1``.
        path: ``(N, M, ...)`` images at steps ``0 … N−1`` (``path[0]`` = start).
        end: ``(M, ...)`` final images after ``N`` steps (default ``path[-1]``).

    Returns:
        ``{"angles": (N−1, M), "agpa": (N−1,), "aga": (), "aldp": (N−1,), "ald": ()}``.
    """
    angles = gradient_angles(grads)
    d = line_distances(path, path[0], end).mean(1)[1:]
    g = angles.mean(1)
    return {"angles": angles, "agpa": g, "aga": g.mean(), "aldp": d,
            "ald": d.mean() if d.numel() else torch.tensor(0.0, dtype=torch.float64)}


def path_linearity(model: nn.Module, unit: str | Unit, start_images: Tensor, steps: int = 512,
                   seed: int = 0, **render_kwargs: object) -> PathLinearityResult:
    """Optimize ``unit`` starting from ``start_images`` and measure path linearity (C.4).

    Uses :func:`lightning_fv.optvis.render` with the paper's "standard hyperparameters"
    (Adam lr 0.05, Fourier + decorrelated sigmoid image initialised exactly at the start
    images, standard transforms), recording every step's image and gradient.

    Args:
        model: the model.
        unit: ``"layer:index"``.
        start_images: ``(M, 3, H, W)`` in [0, 1], e.g. from :func:`top_activating`.
        steps: ``N`` optimizer steps (paper: 512).
        seed: transform seed.
        **render_kwargs: more :func:`render` arguments (``transforms``, ``param``…).

    Returns:
        :class:`PathLinearityResult`.
    """
    from lightning_fv.optvis.render import render

    if steps < 2:
        raise ValueError(f"path linearity needs steps >= 2, got {steps}")
    u = parse_unit(unit)
    m = start_images.shape[0]
    res = render(model, units_objective([u] * m), init_images=start_images,
                 thresholds=(0, steps), record="all", record_grads=True, seed=seed,
                 unit_names=[str(u)] * m, **render_kwargs)
    traj = res.trajectory
    metrics = path_metrics(traj.grads, traj.images, res.images[steps])
    return PathLinearityResult(
        unit=str(u), agpa=metrics["agpa"].float(), aga=float(metrics["aga"]),
        aldp=metrics["aldp"].float(), ald=float(metrics["ald"]), angles=metrics["angles"].float(),
        start_values=res.values[0], end_values=res.values[steps])


@torch.no_grad()
def unit_activations(model: nn.Module, unit: str | Unit, images: Tensor | Iterable,
                     batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Activation of ``unit`` (the mean over spatial positions or patch tokens for a
    channel, prefix tokens excluded: the render objective's one definition, in the layer's
    layout) for every image. ``images`` is a ``(N, 3, H, W)`` tensor or an iterable of batches
    (a DataLoader yielding ``x`` or ``(x, y, …)``).

    Returns ``(values (N,), images (N, 3, H, W) on the CPU)``.
    """
    u = parse_unit(unit)

    def value(a: Tensor, layout: Layout) -> Tensor:
        acts = Activations({u.layer: a})
        acts.layouts[u.layer] = layout  # the layout recorded with the model, not guessed
        return units_objective([u] * a.shape[0])(acts).float()

    acts = record(model, [u.layer], images, batch_size=batch_size, to_cpu=True,
                  keep_inputs=True, reduce=value)
    return acts[u.layer], acts[INPUT_KEY]


def top_activating(model: nn.Module, unit: str | Unit, images: Tensor | Iterable, m: int = 20,
                   batch_size: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """The ``m`` natural images that activate ``unit`` most (C.4 uses ``M = 20``).

    Args:
        model: the model.
        unit: ``"layer:index"``.
        images: ``(N, 3, H, W)`` tensor or a DataLoader / iterable of batches.
        m: how many to return (fewer if there are fewer images).

    Returns:
        ``(images (m, 3, H, W), values (m,), indices (m,))`` sorted by decreasing value.
    """
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    vals, imgs = unit_activations(model, unit, images, batch_size)
    order = torch.argsort(vals, descending=True, stable=True)[:m]
    return imgs[order], vals[order], order


def summarize(results: Sequence[PathLinearityResult]) -> dict[str, float]:
    """Mean AGA/ALD over units (NaN-free inputs), for a one-line summary."""
    if not results:
        return {"aga": math.nan, "ald": math.nan}
    return {"aga": sum(r.aga for r in results) / len(results),
            "ald": sum(r.ald for r in results) / len(results)}
