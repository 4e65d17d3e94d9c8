"""Redirected ReLU gradients for the first optimization steps (Lucid's ``redirected_relu_grad``).

A unit whose ReLU is closed at every position of the starting image (common for the low-
contrast noise that feature visualization starts from) gets an exactly zero gradient and
never moves: its "visualization" is the starting noise. Lucid (Olah et al., 2017) avoids this
by overriding the ReLU gradient: where the ordinary gradient of a sample is zero at a ReLU,
the gradient is passed through as if the ReLU were the identity, but only in the direction
that *opens* it (raises a negative input). This module does the same for ``nn.ReLU`` modules
during the first ``steps`` optimizer steps; the forward pass is unchanged.

For a ReLU input ``x`` and incoming gradient ``g = ∂L/∂ReLU(x)`` of the loss ``L = −objective``
the backward pass returns, per sample ``b``::

    g_relu   = g · 1[x > 0]                                 (the ordinary ReLU gradient)
    g_redir  = g · 1[¬(x < 0 ∧ g > 0)]                      (identity, except moves that close it)
    result_b = g_relu_b   if any(g_relu_b ≠ 0)   else   g_redir_b

so a sample whose gradient already flows is untouched, and samples never mix (batched renders
stay per-sample independent). Only ``nn.ReLU`` *modules* are redirected; ``torch.relu`` /
``F.relu`` calls inside a module's ``forward`` are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_fv.optvis.hooks import patched_forwards


class _RedirectedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        zero = torch.zeros((), dtype=g.dtype, device=g.device)
        relu_g = torch.where(x > 0, g, zero)
        redirected = torch.where((x < 0) & (g > 0), zero, g)
        if g.dim() == 0:
            return relu_g if bool(relu_g != 0) else redirected
        flowing = (relu_g != 0).flatten(1).any(1).view(-1, *([1] * (g.dim() - 1)))
        return torch.where(flowing, relu_g, redirected)


def redirected_relu(x: Tensor) -> Tensor:
    """``ReLU(x)`` whose backward pass is redirected as described in the module docstring."""
    return _RedirectedReLU.apply(x)


@contextmanager
def redirect_relus(model: nn.Module, enabled: bool = True) -> Iterator[list[nn.ReLU]]:
    """Within the block, every ``nn.ReLU`` module of ``model`` computes :func:`redirected_relu`
    (out of place, also for ``inplace=True`` modules). Restored on exit, also on error.

    Yields:
        The list of redirected modules (empty when ``enabled`` is false).
    """
    mods = [m for m in model.modules() if type(m) is nn.ReLU] if enabled else []
    with patched_forwards(mods, lambda _: redirected_relu):
        yield mods


__all__ = ["redirect_relus", "redirected_relu"]
