"""``InvariantSetSampler``: invariant-set sampling (thesis App. .1, Alg. 1) as a ``predict`` run.

Each predict batch is a set of query images (+ labels + their dataset indices);
``predict_step`` runs :func:`lightning_fv.diffusion.invariant.invariant_set_sample` for them
and returns the samples with their metrics (reached τ, steps used, L1/L2 fidelity, KL for
probabilities, spectral sweep App. .4.2, distance to the query, set diversity). Under a DDP
strategy the distributed sampler shards the queries; at the end of the epoch the results are
gathered in query order and rank zero writes them if ``output_dir`` is set. Sample ``j`` of
query ``i`` draws its ``z_T`` from seed ``seed + i·samples_per_query + j``, so the results do
not depend on how the queries were sharded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_fv.analysis.invariance import (
    DEFAULT_CUTOFFS,
    activation_fidelity,
    pairwise_diversity,
    probability_kl,
    query_distance,
    spectral_sweep,
)
from lightning_fv.diffusion.invariant import (
    OBJECTIVES,
    invariant_set_sample,
    make_objective,
    seeded_latents,
)

__all__ = ["InvariantSetSampler", "QueryDataset", "invariant_metrics", "save_invariant_sets"]


class QueryDataset(Dataset):
    """Items ``(image (3, H, W), label, index)`` of ``images`` ``(N, 3, H, W)``."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.images[i], self.labels[i], torch.tensor(i)


def select_queries(images: Tensor, labels: Tensor, per_class: int,
                   classes: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """The first ``per_class`` images of each class in ``classes`` (default: all), in class
    order."""
    cls = sorted(set(labels.tolist())) if classes is None else list(classes)
    idx = []
    for c in cls:
        hits = torch.nonzero(labels == c).flatten()[:per_class]
        if hits.numel() == 0:
            raise ValueError(f"no query image of class {c}; classes present: "
                             f"{sorted(set(labels.tolist()))}")
        idx.append(hits)
    i = torch.cat(idx)
    return images[i], labels[i]


@torch.no_grad()
def invariant_metrics(objective: Any, result: Any, query: Tensor, samples_per_query: int,
                      cutoffs: tuple[float, ...] = DEFAULT_CUTOFFS) -> dict[str, Tensor]:
    """Per-sample and per-set metrics of an :class:`InvariantSetResult` for ``Q`` queries:
    ``l1``, ``l2`` (B,), ``kl`` (B,) for probability objectives, ``sweep`` (C, B),
    ``pixel_distance`` (B,) to the query and ``diversity`` (Q,)."""
    n = samples_per_query
    out: dict[str, Tensor] = {}
    fid = activation_fidelity(result.responses, result.target)
    out["l1"], out["l2"] = fid["l1"], fid["l2"]
    if getattr(objective, "distance", "l2") == "kl":
        out["kl"] = probability_kl(result.target, result.responses)
    out["sweep"] = spectral_sweep(objective, result.images, result.target, cutoffs)
    q = query.to(result.images.device)[result.query_index]
    out["pixel_distance"] = query_distance(result.images, q)
    imgs = result.images.reshape(-1, n, *result.images.shape[1:])
    out["diversity"] = (torch.stack([pairwise_diversity(s) for s in imgs]) if n > 1
                        else torch.full((imgs.shape[0],), float("nan")))
    return out


class InvariantSetSampler(L.LightningModule):
    """Sample invariant sets of query images with ``trainer.predict`` (thesis App. .1).

    Args:
        pipeline: a diffusion checkpoint for :func:`lightning_fv.diffusion.load_pipeline`
            (``"bundled"`` = the small digits LightningDiT) or a pipeline module.
        classifier: a model name for :func:`lightning_fv.models.build_model`
            (``"bundled:digits"``) or an ``nn.Module``; input [0, 1] RGB unless ``mean``/``std``.
        checkpoint_path: local weights for a named classifier.
        mean, std: input normalization of the classifier (never guessed).
        objective: ``"logits"``, ``"probabilities"`` (KL), ``"units"`` or ``"sae"``.
        units: unit names for ``"units"`` (``"block3:5"``, ``"fc:2"``, ``"block4:1@2,2"``).
        sae_path, sae_layer, sae_features: a :func:`~lightning_fv.models.sae.save_sae` file,
            its layer (default: the ``layer`` stored in the file) and feature indices.
        samples_per_query: independent ``z_T`` per query.
        budget, tau, lr, step_size, cutoff, optimizer: Algorithm 1 (defaults App. .3).
        num_steps: sampler steps (default: the pipeline's).
        conditional: pass the query's label to the diffusion model (else the null class).
        checkpoint: per-step gradient checkpointing.
        seed: base seed of the starting latents.
        queries: ``"digits"`` (the embedded digits, validation split) for the built-in
            predict dataloader; any ``(image, label[, index])`` dataloader works too.
        queries_per_class, classes: which built-in query images.
        batch_size: queries per predict step.
        cutoffs: the spectral-sweep cutoffs (App. .4.2).
        output_dir: rank zero writes ``invariant_sets.safetensors``, ``metrics.json`` and one
            PNG row per query (query first) there.
    """

    def __init__(
        self,
        pipeline: str | nn.Module = "bundled",
        classifier: str | nn.Module = "bundled:digits",
        checkpoint_path: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        objective: str = "logits",
        units: list[str] | None = None,
        sae_path: str | None = None,
        sae_layer: str | None = None,
        sae_features: list[int] | None = None,
        samples_per_query: int = 4,
        budget: int = 512,
        tau: float = 0.01,
        lr: float = 10.0,
        step_size: float = 1.0,
        cutoff: float | None = 0.5,
        optimizer: str = "sgd",
        num_steps: int | None = None,
        conditional: bool = False,
        checkpoint: bool = True,
        seed: int = 0,
        queries: str = "digits",
        queries_per_class: int = 1,
        classes: list[int] | None = None,
        batch_size: int = 4,
        cutoffs: list[float] | None = None,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; valid: {list(OBJECTIVES)}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if queries not in ("digits",):
            raise ValueError(f"queries must be 'digits' (or use your own dataloader), "
                             f"got {queries!r}")
        if samples_per_query < 1 or batch_size < 1:
            raise ValueError(f"samples_per_query and batch_size must be >= 1, got "
                             f"{samples_per_query}, {batch_size}")
        from lightning_fv.diffusion.pipeline import load_pipeline
        from lightning_fv.models import Normalize, build_model

        self.pipeline = pipeline if isinstance(pipeline, nn.Module) else load_pipeline(pipeline)
        self.net = classifier if isinstance(classifier, nn.Module) else build_model(
            classifier, checkpoint_path=checkpoint_path)
        self.pipeline.eval().requires_grad_(False)
        self.net.eval().requires_grad_(False)
        self.preprocess = None if mean is None else Normalize(mean, std)
        sae = None
        if objective == "sae":
            from lightning_fv.models.sae import load_sae

            if sae_path is None:
                raise ValueError("objective 'sae' needs sae_path (a save_sae file)")
            sae, meta = load_sae(sae_path)
            sae_layer = sae_layer or meta.get("layer")
        self.sae = sae
        self.objective = make_objective(objective, self.net, units, sae, sae_layer,
                                        sae_features, self.preprocess)
        self.objective_name = objective
        self.samples_per_query = samples_per_query
        self.algo = dict(budget=budget, tau=tau, lr=lr, step_size=step_size, cutoff=cutoff,
                         optimizer=optimizer, num_steps=num_steps, checkpoint=checkpoint)
        self.conditional = conditional
        self.seed = seed
        self.queries, self.queries_per_class, self.classes = queries, queries_per_class, classes
        self.batch_size = batch_size
        self.cutoffs = tuple(cutoffs or DEFAULT_CUTOFFS)
        self.output_dir = output_dir
        self._outputs: list[dict[str, Tensor]] = []
        self.results: dict[str, Tensor] = {}

    def predict_dataloader(self) -> DataLoader:
        from lightning_fv.data import digits

        x, y = digits("val")
        x, y = select_queries(x, y, self.queries_per_class, self.classes)
        return DataLoader(QueryDataset(x, y), batch_size=self.batch_size, shuffle=False)

    def forward(self, query: Tensor, labels: Tensor | None = None,
                index: Tensor | None = None) -> dict[str, Tensor]:
        """Samples and metrics for queries ``(Q, 3, H, W)``; ``index`` ``(Q,)`` seeds them."""
        n = self.samples_per_query
        q = query.detach().clone().float()
        idx = (torch.arange(q.shape[0]) if index is None else index.detach().cpu().long())
        with torch.inference_mode(False):
            q = q.clone()
            z = seeded_latents(self.pipeline, [self.seed + int(i) * n + j for i in idx
                                               for j in range(n)], q.device)
            res = invariant_set_sample(
                self.pipeline, self.objective, q, num_samples=n, z_T=z,
                labels=labels.clone() if self.conditional and labels is not None else None,
                **self.algo)
            met = invariant_metrics(self.objective, res, q, n, self.cutoffs)
        b = q.shape[0]
        shape = (b, n)
        return {
            "index": idx.to(q.device), "query": q,
            "labels": (labels.clone() if labels is not None
                       else torch.full((b,), -1, dtype=torch.long, device=q.device)),
            "samples": res.images.reshape(b, n, *res.images.shape[1:]),
            "reached": res.reached.reshape(shape), "steps": res.steps.reshape(shape),
            "loss": res.losses.reshape(shape), "l1": met["l1"].reshape(shape),
            "l2": met["l2"].reshape(shape),
            "kl": met.get("kl", torch.full_like(met["l1"], float("nan"))).reshape(shape),
            "pixel_distance": met["pixel_distance"].reshape(shape),
            "diversity": met["diversity"],
            "sweep": met["sweep"].reshape(len(self.cutoffs), b, n).permute(1, 0, 2),
        }

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        if isinstance(batch, (list, tuple)):
            x = batch[0]
            y = batch[1] if len(batch) > 1 else None
            idx = batch[2] if len(batch) > 2 else None
        else:
            x, y, idx = batch, None, None
        if idx is None:  # foreign dataloader without indices: unique per step on one device
            idx = torch.arange(x.shape[0]) + batch_idx * x.shape[0]
        out = self(x, y, idx)
        self._outputs.append({k: v.detach().cpu() for k, v in out.items()})
        return out

    def on_predict_epoch_start(self) -> None:
        self._outputs = []

    def on_predict_epoch_end(self) -> None:
        parts = [self._outputs]
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, self._outputs)
            parts = gathered
        rows = [o for p in parts for o in p]
        if not rows:
            return
        merged = {k: torch.cat([o[k] for o in rows]) for k in rows[0]}
        order = torch.argsort(merged["index"], stable=True)
        keep = torch.ones(len(order), dtype=torch.bool)
        srt = merged["index"][order]
        keep[1:] = srt[1:] != srt[:-1]
        self.results = {k: v[order][keep] for k, v in merged.items()}
        if self.output_dir is not None and self.trainer.is_global_zero:
            save_invariant_sets(self.results, self.output_dir, self.cutoffs)


def summarize(results: dict[str, Tensor]) -> dict[str, float]:
    """Scalars over all samples: fraction reached, mean steps, L1/L2/KL, pixel distance,
    diversity (means, NaN-aware)."""
    def m(t: Tensor) -> float:
        return float(t.float().nanmean())

    return {"fraction_reached": m(results["reached"]), "mean_steps": m(results["steps"]),
            "l1": m(results["l1"]), "l2": m(results["l2"]), "kl": m(results["kl"]),
            "pixel_distance": m(results["pixel_distance"]),
            "diversity": m(results["diversity"])}


def save_invariant_sets(results: dict[str, Tensor], output_dir: str | Path,
                        cutoffs: tuple[float, ...] = DEFAULT_CUTOFFS) -> list[Path]:
    """Write ``invariant_sets.safetensors`` (all result tensors), ``metrics.json`` (summary
    + per-cutoff sweep means) and ``invariant_sets.png`` (one row per query: query, samples)."""
    from safetensors.torch import save_file

    from lightning_fv.utils.images import save_grid

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "invariant_sets.safetensors", out / "metrics.json"]
    save_file({k: v.contiguous() for k, v in results.items()}, str(paths[0]))
    summary = summarize(results)
    summary["sweep"] = {f"{c:g}": float(v) for c, v in
                        zip(cutoffs, results["sweep"].float().transpose(0, 1).flatten(1).mean(1))}
    paths[1].write_text(json.dumps(summary, indent=2))
    q, s = results["query"], results["samples"]
    grid = torch.cat([q[:, None], s], dim=1).flatten(0, 1)
    paths.append(save_grid(grid, out / "invariant_sets.png", nrow=s.shape[1] + 1))
    return paths
