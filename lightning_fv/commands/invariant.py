"""``lightning-fv invariant``: invariant-set samples of query images (thesis App. .1, Alg. 1).

This is ``lightning-fv predict`` of :class:`InvariantSetSampler` (LightningCLI): the
arguments below become that run's config (saved as ``config.yaml`` beside the results, so
``lightning-fv predict --config <run>/config.yaml`` reruns it). The defaults are those of
``lightning-fv predict --config examples/configs/invariant_digits.yaml`` (both use
:data:`~lightning_fv.modules.invariant_sampler.DEFAULT_ALGORITHM`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from lightning_fv.diffusion.invariant import InvariantConfig
from lightning_fv.modules.invariant_sampler import DEFAULT_ALGORITHM

log = logging.getLogger(__name__)


def invariant(
    pipeline: str = "bundled",
    classifier: str = "bundled:digits",
    checkpoint_path: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    objective: str = "logits",
    units: list[str] | None = None,
    sae_path: str | None = None,
    sae_layer: str | None = None,
    sae_features: list[int] | None = None,
    classes: list[int] | None = None,
    queries_per_class: int = 1,
    samples_per_query: int = 4,
    algorithm: InvariantConfig = DEFAULT_ALGORITHM,
    conditional: bool = False,
    seed: int = 0,
    batch_size: int = 5,
    device: str = "auto",
    progress: bool = True,
    output_dir: str | None = None,
    overwrite: bool = False,
    **settings: Any,
) -> dict[str, float]:
    """Sample ``samples_per_query`` members of the invariant set of each query image (the
    first ``queries_per_class`` validation digits of each class in ``classes``) and write
    ``invariant_sets.safetensors``, ``metrics.json`` and ``invariant_sets.png`` (one row per
    query: the query, then its samples) under ``output_dir``.

    Args:
        pipeline: diffusion checkpoint (``"bundled"`` = the small digits LightningDiT).
        classifier: classifier name (``"bundled:digits"``, torchvision/timm names).
        checkpoint_path: classifier weights file.
        mean: input normalization mean of the classifier (with ``std``; never guessed).
        std: input normalization std of the classifier.
        objective: ``"logits"``, ``"probabilities"`` (KL), ``"units"`` or ``"sae"``.
        units: unit names for ``"units"``.
        sae_path: a ``save_sae`` file for ``"sae"``.
        sae_layer: the SAE's layer (default: stored in the file).
        sae_features: SAE feature indices.
        classes: which validation digits are queries (default: all ten).
        queries_per_class: query images per class.
        samples_per_query: samples per query.
        algorithm: Algorithm 1 settings (``--algorithm.budget 64``, ``--algorithm.lr 30``…;
            default the ``"digits"`` preset, the same as
            ``examples/configs/invariant_digits.yaml``).
        conditional: condition on the query's label instead of the null class.
        seed: base seed of the starting latents.
        batch_size: queries per predict step.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``…
        progress: show a progress bar in SGD steps.
        output_dir: output folder (default: a fresh ``outputs/invariant/version_N``); a
            folder holding an earlier result is refused unless ``overwrite``.
        overwrite: write into a folder that already holds invariant sets.
        settings: Python callers only: single ``InvariantConfig`` fields (``budget=2``).

    Returns:
        The summary metrics (fraction reached, mean steps, L1/L2/KL, pixel distance,
        diversity). Ctrl-C / SIGTERM stop within one SGD step and still write what was done.
    """
    from lightning_fv.cli import run_lightning_cli
    from lightning_fv.modules.invariant_sampler import summarize
    from lightning_fv.utils.device import resolve_device

    algo = algorithm.replace(**settings) if settings else algorithm
    init = {"pipeline": pipeline, "classifier": classifier, "checkpoint_path": checkpoint_path,
            "mean": mean, "std": std, "objective": objective, "units": units,
            "sae_path": sae_path, "sae_layer": sae_layer, "sae_features": sae_features,
            "samples_per_query": samples_per_query, "conditional": conditional, "seed": seed,
            "queries_per_class": queries_per_class, "classes": classes,
            "batch_size": batch_size, "output_dir": output_dir, "overwrite": overwrite,
            "progress": progress, "algorithm": dataclasses.asdict(algo)}
    args = ["predict", "--model", "lightning_fv.modules.invariant_sampler.InvariantSetSampler"]
    for key, value in init.items():
        if value is not None:
            args += [f"--model.{key}",
                     json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)]
    accel = "gpu" if resolve_device(device).type == "cuda" else "cpu"
    args += ["--trainer.accelerator", accel, "--trainer.devices", "1",
             "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--return_predictions", "false"]
    cli = run_lightning_cli(args)
    module = cli.model
    summary = summarize(module.results) if module.results else {}
    if module.written:
        log.info("invariant sets written to %s: %s", module.written[0].parent, summary)
    return summary
