"""``torchmetrics.Metric`` wrappers of the analysis functions (states sync across
processes by summation, so they work under DDP unchanged).

- :class:`PathLinearity`: accumulates per-step sums of Eq. 12 angles and Eq. 17 distances
  over paths; ``compute()`` gives AGPA_j, AGA, ALDP_j, ALD (`dont-trust-your-eyes…` C.4).
- :class:`SimilarityGroups`: accumulates sum / sum of squares / count of the three pair
  groups of the sanity check per layer (§3, C.3); ``compute()`` gives means, stds and the
  normalized similarity.
- :class:`ShardedStack`: assembles per-item results that different processes computed
  for disjoint items (the callbacks' shard → compute → gather).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_fv.analysis.path_linearity import gradient_angles, line_distances
from lightning_fv.analysis.similarity import GROUPS, normalize_between_bounds


class PathLinearity(Metric):
    """Streaming AGPA/AGA/ALDP/ALD over batches of paths of a fixed length ``N``.

    ``update(grads (N, M, ...), path (N, M, ...), end (M, ...) | None)``.
    """

    full_state_update = False

    def __init__(self, steps: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        self.steps = steps
        self.add_state("angle_sum", torch.zeros(steps - 1, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("dist_sum", torch.zeros(steps - 1, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("paths", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, grads: Tensor, path: Tensor, end: Tensor | None = None) -> None:
        if grads.shape[0] != self.steps or path.shape[0] != self.steps:
            raise ValueError(f"expected {self.steps} recorded steps, got grads "
                             f"{grads.shape[0]} and path {path.shape[0]}")
        self.angle_sum += gradient_angles(grads).sum(1).to(self.angle_sum)
        self.dist_sum += line_distances(path, path[0], end)[1:].sum(1).to(self.dist_sum)
        self.paths += grads.shape[1]

    def compute(self) -> dict[str, Tensor]:
        m = self.paths.clamp_min(1)
        agpa, aldp = self.angle_sum / m, self.dist_sum / m
        return {"agpa": agpa, "aga": agpa.mean(), "aldp": aldp, "ald": aldp.mean()}


class SimilarityGroups(Metric):
    """Streaming means/stds of the sanity-check pair groups for ``num_layers`` layers.

    ``update(layer_index, {"upper": (P1,), "lower": (P2,), "fv": (P3,)})`` with values
    from :func:`lightning_fv.analysis.similarity.similarity_groups`; NaN values are
    ignored. ``compute()`` returns ``upper``, ``lower``, ``fv`` ``(L,)`` means, their
    stds, and ``normalized`` / ``included`` (C.3, ``min_gap`` 0.01).
    """

    full_state_update = False

    def __init__(self, num_layers: int, min_gap: float = 0.01, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.min_gap = min_gap
        for g in GROUPS:
            for s in ("sum", "sq", "n"):
                self.add_state(f"{g}_{s}", torch.zeros(num_layers, dtype=torch.float64),
                               dist_reduce_fx="sum")

    def update(self, layer: int, values: dict[str, Tensor]) -> None:
        for g in GROUPS:
            v = values[g].double()
            v = v[torch.isfinite(v)].to(self.device)
            getattr(self, f"{g}_sum")[layer] += v.sum()
            getattr(self, f"{g}_sq")[layer] += v.pow(2).sum()
            getattr(self, f"{g}_n")[layer] += v.numel()

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for g in GROUPS:
            n = getattr(self, f"{g}_n")
            mean = getattr(self, f"{g}_sum") / n
            out[g] = mean
            out[f"{g}_std"] = (getattr(self, f"{g}_sq") / n - mean.pow(2)).clamp_min(0).sqrt()
        out["normalized"], out["included"] = normalize_between_bounds(
            out["fv"], out["lower"], out["upper"], self.min_gap)
        return out


class ShardedStack(Metric):
    """Assemble ``(num_items, *shape)`` results that processes computed for disjoint items.

    Each process calls ``update(index (K,), rows (K, *shape))`` for the items it computed
    (``K`` may be 0); ``compute()`` returns ``(stack (num_items, *shape), filled
    (num_items,) bool)``. The states sync by summation: every item is written by one
    process and the others contribute exact zeros, so the stack equals a single-process
    result bit for bit. An item that no process wrote stays zero with ``filled`` False;
    an item written twice raises. Like every torchmetrics metric, ``compute()`` squeezes a
    one-element result: reshape to ``(num_items, *shape)`` when ``num_items`` may be 1.
    """

    full_state_update = False

    def __init__(self, num_items: int, shape: tuple[int, ...] = (),
                 dtype: torch.dtype = torch.float32, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        self.num_items, self.shape = int(num_items), tuple(int(s) for s in shape)
        self.add_state("stack", torch.zeros((self.num_items, *self.shape), dtype=dtype),
                       dist_reduce_fx="sum")
        self.add_state("filled", torch.zeros(self.num_items, dtype=torch.int64),
                       dist_reduce_fx="sum")

    def update(self, index: Tensor | list[int], rows: Tensor) -> None:
        index = torch.as_tensor(index, dtype=torch.long, device=self.stack.device).flatten()
        if rows.shape != (index.numel(), *self.shape):
            raise ValueError(f"rows must have shape {(index.numel(), *self.shape)} for "
                             f"{index.numel()} item(s), got {tuple(rows.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_items):
            raise ValueError(f"item index out of range [0, {self.num_items}): "
                             f"{index.tolist()}")
        # index_add_ counts a repeated index twice (``t[i] += v`` would not)
        self.stack.index_add_(0, index, rows.to(self.stack))
        self.filled.index_add_(0, index, torch.ones_like(index))

    def compute(self) -> tuple[Tensor, Tensor]:
        if self.num_items and int(self.filled.max()) > 1:
            twice = torch.nonzero(self.filled > 1).flatten().tolist()
            raise ValueError(f"items {twice} were written by more than one update/process")
        return self.stack, self.filled > 0
