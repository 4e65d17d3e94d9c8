"""``lightning-fv invariant``: invariant-set samples of query images (thesis App. .1, Alg. 1)."""

from __future__ import annotations

import logging

import torch

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
    budget: int = 512,
    tau: float = 0.01,
    lr: float = 10.0,
    step_size: float = 1.0,
    cutoff: float | None = 0.5,
    optimizer: str = "sgd",
    num_steps: int | None = 25,
    conditional: bool = False,
    seed: int = 0,
    device: str = "auto",
    output_dir: str = "outputs/invariant",
) -> dict[str, float]:
    """Sample ``samples_per_query`` members of the invariant set of each query image (the
    first ``queries_per_class`` validation digits of each class in ``classes``) and write
    ``invariant_sets.safetensors``, ``metrics.json`` and ``invariant_sets.png`` (one row per
    query: the query, then its samples) under ``output_dir``.

    Args:
        pipeline: diffusion checkpoint (``"bundled"`` = the small digits LightningDiT).
        classifier: classifier name (``"bundled:digits"``, torchvision/timm names).
        checkpoint_path, mean, std: classifier weights file and input normalization.
        objective: ``"logits"``, ``"probabilities"`` (KL), ``"units"`` or ``"sae"``.
        units: unit names for ``"units"``; sae_path/sae_layer/sae_features for ``"sae"``.
        classes, queries_per_class: which validation digits are queries.
        samples_per_query: samples per query.
        budget, tau, lr, step_size, cutoff, optimizer: Algorithm 1 (defaults App. .3;
            ``cutoff`` is the low-pass filter of the dual loss, none with ``null``).
        num_steps: Euler steps of the sampler.
        conditional: condition on the query's label instead of the null class.
        seed: base seed of the starting latents.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``…
        output_dir: output folder.

    Returns:
        The summary metrics (fraction reached, mean steps, L1/L2/KL, pixel distance,
        diversity).
    """
    import lightning as L

    from lightning_fv.modules.invariant_sampler import InvariantSetSampler, summarize

    accel = "gpu" if (device == "auto" and torch.cuda.is_available()) or \
        device.startswith("cuda") else "cpu"
    module = InvariantSetSampler(
        pipeline=pipeline, classifier=classifier, checkpoint_path=checkpoint_path, mean=mean,
        std=std, objective=objective, units=units, sae_path=sae_path, sae_layer=sae_layer,
        sae_features=sae_features, samples_per_query=samples_per_query, budget=budget,
        tau=tau, lr=lr, step_size=step_size, cutoff=cutoff, optimizer=optimizer,
        num_steps=num_steps, conditional=conditional, seed=seed,
        queries_per_class=queries_per_class, classes=classes, output_dir=output_dir)
    trainer = L.Trainer(accelerator=accel, devices=1, logger=False,
                        enable_progress_bar=True, enable_model_summary=False)
    trainer.predict(module)
    summary = summarize(module.results)
    log.info("invariant sets written to %s: %s", output_dir, summary)
    return summary
