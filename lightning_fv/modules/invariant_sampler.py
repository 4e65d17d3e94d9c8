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
import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_fv.analysis.invariance import DEFAULT_CUTOFFS, invariant_metrics
from lightning_fv.diffusion.invariant import (
    INVARIANT_PRESETS,
    OBJECTIVES,
    InvariantConfig,
    invariant_set_sample,
    make_objective,
    seeded_latents,
)
from lightning_fv.diffusion.pipeline import PipelineFiles
from lightning_fv.utils.files import run_folder
from lightning_fv.utils.preprocess import as_normalize, check_mean_std

__all__ = ["DEFAULT_ALGORITHM", "InvariantSetSampler", "QueryDataset", "invariant_metrics",
           "save_invariant_sets", "summarize"]

log = logging.getLogger(__name__)

#: The one set of defaults of ``InvariantSetSampler``, ``lightning-fv invariant`` and
#: ``examples/configs/invariant_digits.yaml`` (the ``"digits"`` preset).
DEFAULT_ALGORITHM: InvariantConfig = INVARIANT_PRESETS["digits"]
#: where a run goes when neither ``output_dir`` nor a logger says otherwise
DEFAULT_ROOT = "outputs/invariant"


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


class InvariantSetSampler(L.LightningModule):
    """Sample invariant sets of query images with ``trainer.predict`` (thesis App. .1).

    Args:
        pipeline: a single-file diffusion checkpoint for
            :func:`lightning_fv.diffusion.load_pipeline` (``"bundled"`` = the small digits
            LightningDiT), the official release's separate files as
            :class:`~lightning_fv.diffusion.pipeline.PipelineFiles` (YAML ``pipeline: {dit:
            …, vae: …, latent_stats: …}``; LightningDiT-XL/1 + VA-VAE, thesis §3.1), or a
            pipeline module.
        classifier: a model name for :func:`lightning_fv.models.build_model`
            (``"bundled:digits"``) or an ``nn.Module``; input [0, 1] RGB unless ``mean``/``std``.
        checkpoint_path: local weights for a named classifier.
        mean, std: input normalization of the classifier (never guessed).
        objective: ``"logits"``, ``"probabilities"`` (KL), ``"units"`` or ``"sae"``.
        units: unit names for ``"units"`` (``"block3:5"``, ``"fc:2"``, ``"block4:1@2,2"``).
        sae_path, sae_layer, sae_features: a :func:`~lightning_fv.models.sae.save_sae` file,
            its layer (default: the ``layer`` stored in the file) and feature indices.
        samples_per_query: independent ``z_T`` per query.
        algorithm: the settings of Algorithm 1 (:class:`InvariantConfig`; default the
            ``"digits"`` preset: 64 SGD steps, η 30, λ 0.01, τ 0.01, 10 sampler steps;
            ``InvariantConfig()`` is App. .3). In YAML: ``algorithm: {budget: 64, …}``.
        conditional: pass the query's label to the diffusion model (else the null class).
        seed: base seed of the starting latents.
        queries: the built-in predict dataloader's query images: ``"digits"`` (the embedded
            digits, validation split) or the root of an ImageFolder ``<root>/<class>/*``
            (e.g. ``imagenet/val``; label = position of the class folder in sorted order, so
            ImageNet's 1000 synset folders give label ``c`` = output ``c``). Any
            ``(image, label[, index])`` dataloader works too.
        queries_per_class, classes: the first ``queries_per_class`` images of each class in
            ``classes`` (default: every class), in the order of ``classes``.
        image_size: side of the query images in pixels (short side resized, centre crop,
            for a folder); ``None``: 32 for the digits, the pipeline's image size for a
            folder. Generated images are resized to it.
        batch_size: queries per predict step.
        cutoffs: the spectral-sweep cutoffs (App. .4.2).
        output_dir: rank zero writes ``invariant_sets.safetensors``, ``metrics.json`` and one
            PNG row per query (query first) there. ``None``: the run's log folder when the
            trainer has a logger, else a fresh ``outputs/invariant/version_N``. A folder that
            already holds invariant sets is refused (before sampling) unless ``overwrite``.
        overwrite: allow writing into a folder that already holds a result.
        progress: show a progress bar in SGD steps (rank zero).
        settings: single :class:`InvariantConfig` fields overriding ``algorithm`` (Python
            callers: ``budget=2, lr=1.0``).

    SIGINT / SIGTERM during ``predict`` stop the optimization within one SGD step; the
    samples reached so far (and the queries not started are left out) are gathered and
    written as usual. A second SIGINT interrupts at once.
    """

    def __init__(
        self,
        pipeline: str | PipelineFiles | nn.Module = "bundled",
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
        algorithm: InvariantConfig = DEFAULT_ALGORITHM,
        conditional: bool = False,
        seed: int = 0,
        queries: str = "digits",
        queries_per_class: int = 1,
        classes: list[int] | None = None,
        image_size: int | None = None,
        batch_size: int = 4,
        cutoffs: list[float] | None = None,
        output_dir: str | None = None,
        overwrite: bool = False,
        progress: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; valid: {list(OBJECTIVES)}")
        given = check_mean_std(mean, std)
        if queries != "digits" and not Path(queries).is_dir():
            raise ValueError(f"queries must be 'digits' or the root of an ImageFolder (a folder "
                             f"of class folders <root>/<class>/*), got {queries!r}, which is "
                             f"not a folder (or use your own dataloader)")
        if samples_per_query < 1 or batch_size < 1 or queries_per_class < 1:
            raise ValueError(f"samples_per_query, batch_size and queries_per_class must be "
                             f">= 1, got {samples_per_query}, {batch_size}, {queries_per_class}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels or null, "
                             f"got {image_size}")
        from lightning_fv.data.folders import check_class_indices
        from lightning_fv.diffusion.pipeline import load_pipeline
        from lightning_fv.models import build_model

        classes = check_class_indices(classes)
        if isinstance(pipeline, nn.Module):
            self.pipeline = pipeline
        elif isinstance(pipeline, PipelineFiles):
            self.pipeline = pipeline.load()
        else:
            self.pipeline = load_pipeline(pipeline)
        self.net = classifier if isinstance(classifier, nn.Module) else build_model(
            classifier, checkpoint_path=checkpoint_path)
        self.pipeline.eval().requires_grad_(False)
        self.net.eval().requires_grad_(False)
        self.preprocess = as_normalize(given)
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
        self.algorithm = algorithm.replace(**settings) if settings else algorithm
        self.conditional = conditional
        self.seed = seed
        self.queries, self.queries_per_class, self.classes = queries, queries_per_class, classes
        self.image_size = image_size
        self.batch_size = batch_size
        self.cutoffs = tuple(cutoffs or DEFAULT_CUTOFFS)
        self.output_dir = output_dir
        self.overwrite = overwrite
        self._run_dir: Path | None = None
        self.written: list[Path] = []
        self.progress = progress
        self._outputs: list[dict[str, Tensor]] = []
        self.results: dict[str, Tensor] = {}
        self.stop_requested = False
        self._bar: Any = None
        self._handlers: dict[int, Any] = {}

    def query_images(self) -> tuple[Tensor, Tensor]:
        """The built-in query images ``(Q, 3, S, S)`` in [0, 1] and labels ``(Q,)`` (see
        ``queries``, ``queries_per_class``, ``classes``, ``image_size``)."""
        if self.queries == "digits":
            from lightning_fv.data import digits

            x, y = digits("val", self.image_size or 32)
        else:
            from lightning_fv.data.folders import folder_images

            size = self.image_size or self.pipeline.image_size
            x, y = folder_images(self.queries, size, self.classes, self.queries_per_class)
        return select_queries(x, y, self.queries_per_class, self.classes)

    def predict_dataloader(self) -> DataLoader:
        x, y = self.query_images()
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
            done = [0]

            def on_step(step: int, reached: int, active: int) -> bool:
                if self._bar is not None:
                    self._bar.update(step - done[0])
                    self._bar.set_postfix(reached=f"{reached}/{reached + active}",
                                          refresh=False)
                done[0] = step
                return self.stop_requested

            res = invariant_set_sample(
                self.pipeline, self.objective, q, num_samples=n, z_T=z,
                labels=labels.clone() if self.conditional and labels is not None else None,
                config=self.algorithm, on_step=on_step)
            if self._bar is not None:  # samples that froze early skip their remaining steps
                self._bar.update(max(self.algorithm.budget - done[0], 0))
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
        if self.stop_requested:  # stopped by a signal: the remaining queries are skipped
            return {}
        out = self(x, y, idx)
        self._outputs.append({k: v.detach().cpu() for k, v in out.items()})
        return out

    def resolve_output_dir(self) -> Path:
        """The folder this run writes to (chosen once per run; see ``output_dir``)."""
        if self._run_dir is None:
            trainer = self._trainer
            logged = trainer is not None and trainer.logger is not None
            log_dir = trainer.log_dir if logged else None
            self._run_dir = run_folder(self.output_dir, log_dir, DEFAULT_ROOT,
                                       "invariant_sets.safetensors", "invariant sets",
                                       self.overwrite)
        return self._run_dir

    def on_predict_epoch_start(self) -> None:
        self._outputs = []
        self.stop_requested = False
        if self.trainer.is_global_zero:
            self.resolve_output_dir()  # refuse an earlier result before sampling
        if self.progress and self.trainer.is_global_zero:
            from tqdm.auto import tqdm

            batches = sum(int(n) for n in (self.trainer.num_predict_batches or [0])
                          if n != float("inf"))
            self._bar = tqdm(total=batches * self.algorithm.budget or None,
                             desc="invariant sets", unit="SGD step", dynamic_ncols=True)

    # -- stopping on SIGINT / SIGTERM ----------------------------------------------------
    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True
        name = signal.Signals(signum).name
        msg = (f"{name} received: stopping after the current SGD step and writing the "
               f"samples done so far (press Ctrl-C again to abort)")
        if self._bar is not None:
            self._bar.write(msg)
        else:
            log.warning(msg)

    def on_predict_start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._handlers[sig] = signal.signal(sig, self._request_stop)

    def on_predict_end(self) -> None:
        self._restore_signals()
        self._run_dir = None  # a further predict call gets a folder of its own

    def teardown(self, stage: str) -> None:
        self._restore_signals()

    def _restore_signals(self) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers = {}

    def on_predict_epoch_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
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
        if self.trainer.is_global_zero:
            out = self.resolve_output_dir()
            self.written = save_invariant_sets(self.results, out, self.cutoffs,
                                               {**self.algorithm.as_dict(),
                                                "stopped": bool(self.stop_requested)})
            log.info("invariant sets of %d queries written to %s/ (%s)",
                     len(self.results["index"]), out,
                     ", ".join(p.name for p in self.written))


def summarize(results: dict[str, Tensor]) -> dict[str, float]:
    """Scalars over all samples: fraction reached, mean steps, L1/L2/KL, pixel distance,
    diversity (means, NaN-aware)."""
    def m(t: Tensor) -> float:  # NaN when every entry is missing (null in metrics.json)
        return float(t.float().nanmean())

    return {"fraction_reached": m(results["reached"]), "mean_steps": m(results["steps"]),
            "l1": m(results["l1"]), "l2": m(results["l2"]), "kl": m(results["kl"]),
            "pixel_distance": m(results["pixel_distance"]),
            "diversity": m(results["diversity"])}


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON ``null``)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_invariant_sets(results: dict[str, Tensor], output_dir: str | Path,
                        cutoffs: tuple[float, ...] = DEFAULT_CUTOFFS,
                        settings: dict[str, Any] | None = None) -> list[Path]:
    """Write ``invariant_sets.safetensors`` (all result tensors), ``metrics.json`` (summary,
    per-cutoff sweep means and ``settings``; strict JSON, ``null`` where a value is missing
    or not finite) and ``invariant_sets.png`` (one row per query: the query, then its
    samples; rows labelled with the query's index, class and how many samples reached τ,
    columns ``query`` / ``sample j`` with the sample's final loss and the steps it took)."""
    from lightning_fv.utils.checkpoint import save_tensors
    from lightning_fv.utils.images import save_grid

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "invariant_sets.safetensors", out / "metrics.json"]
    save_tensors(results, paths[0])
    summary: dict[str, Any] = dict(summarize(results))
    summary["sweep"] = {f"{c:g}": float(v) for c, v in
                        zip(cutoffs, results["sweep"].float().transpose(0, 1).flatten(1).mean(1))}
    if settings:
        summary["settings"] = settings
    paths[1].write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False))
    q, s = results["query"], results["samples"]
    n_q, n = s.shape[0], s.shape[1]
    grid = torch.cat([q[:, None].to(s.dtype), s], dim=1).flatten(0, 1)
    labels, values = [], []
    for i in range(n_q):
        labels.append("query")
        values.append("target")
        for j in range(n):
            ok = bool(results["reached"][i, j])
            labels.append(f"sample {j + 1}{' (reached)' if ok else ''}")
            values.append(f"loss {float(results['loss'][i, j]):.3g}, "
                          f"{int(results['steps'][i, j])} steps")
    rows = [f"query {int(results['index'][i])}"
            + (f", class {int(results['labels'][i])}" if int(results["labels"][i]) >= 0 else "")
            + f": {int(results['reached'][i].sum())}/{n} reached tau"
            for i in range(n_q)]
    paths.append(save_grid(grid, out / "invariant_sets.png", nrow=n + 1, labels=labels,
                           values=values, row_labels=rows, tile_size=128))
    return paths
