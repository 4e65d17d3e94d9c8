"""Flow-matching ODE sampler of LightningDiT: stateless step rules and a differentiable loop.

Conventions (the release's linear "interpolant" path, SiT/LightningDiT ``transport``):

- flow time ``t ∈ [0, 1]``; ``x_t = t·x₁ + (1 − t)·x₀`` with noise ``x₀ ~ N(0, I)`` at ``t = 0``
  and data ``x₁`` at ``t = 1``; the model predicts the velocity ``v = x₁ − x₀`` and sampling
  integrates ``dx/dt = v_θ(x, t, y)`` *forward* from ``t = 0`` (the starting latent, called
  ``z_T`` in thesis App. .1, Alg. 1) to ``t = 1`` (the clean latent ``z_0``);
- time grid: ``num_steps + 1`` points ``linspace(0, 1)`` mapped through the timestep shift
  ``t ↦ s·t / (1 + (s − 1)·t)`` (``s = 0.3`` in the released config; ``s = 1`` is no shift;
  the release writes "timestep_shift: 0" for no shift). The release's
  ``num_sampling_steps = N`` is a grid of ``N`` points, i.e. ``num_steps = N − 1`` here;
- classifier-free guidance (``cfg_scale > 1``): ``v = v_∅ + s·(v_y − v_∅)`` on the first
  ``guidance_channels`` latent channels only (3 in the release, "for exact reproducibility";
  ``None`` = all channels), the conditional velocity elsewhere; with the guidance interval,
  steps with ``t < cfg_interval_start`` (the noisiest part; 0.11 in the release) use the
  conditional velocity only. The unconditional branch uses the null class ``num_classes``.

The loop :func:`sample` runs with or without autograd; with ``checkpoint=True`` each step is
recomputed in the backward pass (``torch.utils.checkpoint``), so memory for the gradient
with respect to the starting latent stays flat in the number of steps (thesis App. .1.2,
"Gradient Checkpointing").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = [
    "VelocityFn",
    "euler_step",
    "guided_velocity",
    "heun_step",
    "sample",
    "shift_timesteps",
    "time_grid",
    "velocity_fn",
]

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``f(x, t) -> v``: latents ``(B, C, H, W)`` and flow times ``(B,)`` to velocities."""

METHODS = ("euler", "heun")


def shift_timesteps(t: Tensor, shift: float | None) -> Tensor:
    """Timestep shift ``t ↦ s·t / (1 + (s − 1)·t)`` (``s = shift``; ``None`` or 1 = identity).

    ``s < 1`` spends more steps near the noise end ``t = 0``. Endpoints 0 and 1 are fixed.
    """
    if shift is None or shift == 1.0:
        return t
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0 (1.0 or None = no shift; the release's "
                         f"'timestep_shift: 0' means no shift), got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def time_grid(num_steps: int, shift: float | None = None,
              device: torch.device | str | None = None) -> Tensor:
    """The ``num_steps + 1`` flow times ``(num_steps + 1,)`` float32 from 0 (noise) to 1 (data)."""
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    return shift_timesteps(torch.linspace(0.0, 1.0, int(num_steps) + 1, device=device), shift)


def guided_velocity(
    model: nn.Module,
    x: Tensor,
    t: Tensor,
    y: Tensor,
    cfg_scale: float = 1.0,
    cfg_interval_start: float = 0.0,
    guidance_channels: int | None = 3,
    null_class: int | None = None,
) -> Tensor:
    """Model velocity with classifier-free guidance as the release applies it.

    Args:
        model: ``model(x, t, y) -> v``, e.g. :class:`~lightning_fv.diffusion.LightningDiT`.
        x: latents ``(B, C, H, W)``; t: flow times ``(B,)``; y: labels ``(B,)``.
        cfg_scale: guidance scale ``s``; ``s ≤ 1`` evaluates the conditional model only.
        cfg_interval_start: guidance is off where ``t < cfg_interval_start``.
        guidance_channels: guide only channels ``[:k]`` (release: 3); ``None`` = all;
            latents with fewer than ``k`` channels are guided on all channels.
        null_class: label of the unconditional branch (default ``model.null_class``).

    Returns:
        ``(B, C, H, W)`` velocity.
    """
    if cfg_scale <= 1.0:
        return model(x, t, y)
    if null_class is None:
        null_class = getattr(model, "null_class", None)
        if null_class is None:
            raise ValueError("cfg_scale > 1 needs a null class: pass null_class= or use a "
                             "model with a `null_class` attribute")
    b, c = x.shape[:2]
    if guidance_channels is not None and int(guidance_channels) < 1:
        raise ValueError(f"guidance_channels must be ≥ 1 or None, got {guidance_channels}")
    k = c if guidance_channels is None else min(int(guidance_channels), c)
    y_null = torch.full_like(y, null_class)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null]))
    cond, uncond = out[:b], out[b:]
    guided = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
    if cfg_interval_start > 0:
        on = (t >= cfg_interval_start).view(-1, 1, 1, 1)
        guided = torch.where(on, guided, cond[:, :k])
    return torch.cat([guided, cond[:, k:]], dim=1) if k < c else guided


def velocity_fn(model: nn.Module, y: Tensor, cfg_scale: float = 1.0,
                cfg_interval_start: float = 0.0, guidance_channels: int | None = 3,
                null_class: int | None = None) -> VelocityFn:
    """Bind labels and guidance settings: ``f(x, t)`` for :func:`euler_step` / :func:`heun_step`."""

    def f(x: Tensor, t: Tensor) -> Tensor:
        return guided_velocity(model, x, t, y, cfg_scale, cfg_interval_start,
                               guidance_channels, null_class)

    return f


def _bt(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def euler_step(f: VelocityFn, x: Tensor, t: Tensor | float, t_next: Tensor | float) -> Tensor:
    """One explicit Euler step ``x + (t' − t)·f(x, t)`` of the flow ODE."""
    t, t_next = _bt(t, x), _bt(t_next, x)
    dt = (t_next - t).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return x + dt * f(x, t).to(x.dtype)


def heun_step(f: VelocityFn, x: Tensor, t: Tensor | float, t_next: Tensor | float) -> Tensor:
    """One Heun (explicit trapezoid) step: ``x + (t' − t)/2 · (f(x, t) + f(x̃, t'))`` with
    the Euler predictor ``x̃ = x + (t' − t)·f(x, t)``."""
    t, t_next = _bt(t, x), _bt(t_next, x)
    dt = (t_next - t).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    v1 = f(x, t).to(x.dtype)
    v2 = f(x + dt * v1, t_next).to(x.dtype)
    return x + 0.5 * dt * (v1 + v2)


@contextlib.contextmanager
def _sampling_mode(model: nn.Module, freeze: bool) -> Iterator[None]:
    """Eval mode (no label dropout) and, with ``freeze``, ``requires_grad=False`` parameters;
    flags restored on exit. Gradients already stored on parameters are not touched."""
    modes = [(m, m.training) for m in model.modules()]
    params = [p for p in model.parameters() if p.requires_grad] if freeze else []
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p in params:
            p.requires_grad_(True)


def sample(
    model: nn.Module,
    z: Tensor,
    y: Tensor | None = None,
    num_steps: int = 250,
    shift: float | None = None,
    cfg_scale: float = 1.0,
    cfg_interval_start: float = 0.0,
    guidance_channels: int | None = 3,
    method: str = "euler",
    checkpoint: bool = False,
    enable_grad: bool | None = None,
    freeze_model: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Integrate the flow ODE from the starting latent ``z`` (t = 0) to ``z_0`` (t = 1).

    Args:
        model: velocity model ``model(x, t, y)``; it runs in eval mode and, with
            ``freeze_model``, with ``requires_grad=False`` parameters (gradients then only
            flow to ``z``); its mode and flags are restored on exit.
        z: starting noise ``(B, C, H, W)`` (the ``z_T`` of thesis Alg. 1).
        y: labels ``(B,)`` int64; ``None`` = unconditional (the null class).
        num_steps: number of integration steps (model evaluations for Euler; 2× for Heun).
        shift: timestep shift ``s`` (release: 0.3; ``None``/1 = none).
        cfg_scale, cfg_interval_start, guidance_channels: see :func:`guided_velocity`;
            steps whose times all lie before ``cfg_interval_start`` run the conditional
            model alone (the same velocity at half the batch).
        method: ``"euler"`` or ``"heun"``.
        checkpoint: recompute each step in the backward pass (memory flat in ``num_steps``).
        enable_grad: ``True`` builds the graph end to end, ``False`` runs under ``no_grad``,
            ``None`` follows the current grad mode.
        return_trajectory: also return the list of the ``num_steps + 1`` states.

    Returns:
        ``z_0`` ``(B, C, H, W)`` (and the trajectory if requested).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; valid: {list(METHODS)}")
    if z.dim() != 4:
        raise ValueError(f"expected z of shape (B, C, H, W), got {tuple(z.shape)}")
    if y is None:
        null = getattr(model, "null_class", None)
        if null is None:
            raise ValueError("unconditional sampling (y=None) needs a model with `null_class`")
        y = torch.full((z.shape[0],), int(null), dtype=torch.long, device=z.device)
    elif y.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {tuple(y.shape)}")
    step = euler_step if method == "euler" else heun_step
    y = y.to(z.device)
    guided = velocity_fn(model, y, cfg_scale, cfg_interval_start, guidance_channels)
    # Every sample of a step shares its time, so where the step's times all lie before the
    # guidance interval the guided velocity *is* the conditional one: those steps evaluate
    # the conditional half only (the release's shift 0.3 and start 0.125 put 81 of its 249
    # steps there). The grid is read on the host, so choosing costs no device sync.
    plain = velocity_fn(model, y)
    ts_host = time_grid(num_steps, shift)
    ts = ts_host.to(z.device)
    last = 1 if method == "euler" else 2  # the times a step evaluates: t_i (and t_{i+1})
    off = [bool((ts_host[i:i + last] < cfg_interval_start).all()) for i in range(len(ts) - 1)]

    def one(x: Tensor, t0: Tensor, t1: Tensor, i: int) -> Tensor:
        # entered per step so that a checkpoint recomputation in backward sees the same
        # eval mode / frozen flags as the forward pass
        with _sampling_mode(model, freeze_model):
            return step(plain if off[i] else guided, x, t0, t1)

    grad_ctx = (contextlib.nullcontext() if enable_grad is None
                else torch.enable_grad() if enable_grad else torch.no_grad())
    traj: list[Tensor] = [z]
    with grad_ctx:
        x = z
        use_ckpt = checkpoint and torch.is_grad_enabled()
        for i in range(int(num_steps)):
            if use_ckpt:
                x = _checkpoint(one, x, ts[i], ts[i + 1], i, use_reentrant=False,
                                preserve_rng_state=False)
            else:
                x = one(x, ts[i], ts[i + 1], i)
            if return_trajectory:
                traj.append(x)
    if not torch.isfinite(x).all():
        raise FloatingPointError("sampler produced non-finite latents; check the model, the "
                                 "step count and the guidance scale")
    return (x, traj) if return_trajectory else x
