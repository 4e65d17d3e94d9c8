"""``lightning-fv audit``: one self-contained HTML report on a model's feature visualizations.

    lightning-fv audit --config examples/configs/audit_photo_patches.yaml
    lightning-fv audit --config examples/configs/audit_photo_patches.yaml --steps 128 \\
        --pgd_eps 0.5 --detector_ckpt outputs/manipulation/detector.safetensors

The data set is any LightningDataModule by class path (LightningCLI style, ``class_path`` /
``init_args`` in YAML); its validation split is audited. ``--devices 8`` (with ``--strategy``
and ``--num_nodes`` as in Lightning) runs the audit under a Lightning ``Fabric`` and shards
the renders, the sanity check's layers and the path-linearity units across the processes;
rank zero writes the report.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from torch import nn

from lightning_fv.models import build_model
from lightning_fv.report import audit as run_audit
from lightning_fv.report import write_report
from lightning_fv.utils import resolve_device
from lightning_fv.utils.preprocess import check_mean_std

log = logging.getLogger(__name__)


def audit(
    model: str = "bundled:photo_patches",
    checkpoint_path: str | None = None,
    num_classes: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    datamodule: L.LightningDataModule | None = None,
    ood_datamodule: L.LightningDataModule | None = None,
    max_images: int = 200,
    layers: list[str] | None = None,
    units_per_layer: int = 4,
    units: list[str] | None = None,
    steps: int = 64,
    preset: str = "lucid",
    seed: int = 0,
    class_layer: str = "fc",
    visualizations_per_class: int = 1,
    sanity_layers: list[str] | None = None,
    metric: str = "spearman",
    strides: tuple[int, int, int] = (10, 100, 5),
    detector_ckpt: str | None = None,
    detector_examples: int = 6,
    path_units_per_layer: int = 1,
    path_images: int = 4,
    path_steps: int = 32,
    pgd_eps: float | None = None,
    pgd_norm: str = "l2",
    pgd_steps: int = 10,
    pgd_restarts: int = 1,
    robust_images: int = 100,
    sections: list[str] | None = None,
    device: str = "auto",
    devices: int | str = 1,
    strategy: str = "ddp",
    num_nodes: int = 1,
    batch_size: int = 64,
    progress: bool = True,
    output_dir: str = "outputs/audit",
) -> str | None:
    """Audit ``model`` on ``datamodule`` and write ``report.html``, ``report.md`` and
    ``report.json`` into a new ``output_dir/version_N`` folder; prints and returns the
    path of ``report.html`` (``None`` on the other processes of a multi-device run).

    Args:
        model: ``"bundled:photo_patches"`` / ``"bundled:digits"``, or a torchvision/timm
            name (see :func:`lightning_fv.models.build_model`).
        checkpoint_path: local weights for ``model`` (safetensors, a weights-only file or a
            Lightning checkpoint whose keys start with ``model.``/``backbone.``).
        num_classes: output classes of a torchvision/timm model.
        mean, std: input normalization for models that do not normalize themselves (e.g.
            ImageNet weights); the report states where normalization came from.
        datamodule: the natural images (validation split; default: the embedded photo
            patches, 20 per class at 64 px).
        ood_datamodule: a second data set for the out-of-distribution bounds (App. E).
        max_images: natural images read.
        layers: layers to audit (default: ``block1 … block4`` and ``fc`` of the bundled CNN).
        units_per_layer, units, steps, preset, seed: the renders (see
            :func:`lightning_fv.report.audit`).
        class_layer, visualizations_per_class, sanity_layers, metric, strides: the
            similarity sanity check (App. C.3).
        detector_ckpt, detector_examples: the visualization detector (App. C.1).
        path_units_per_layer, path_images, path_steps: path linearity (App. C.4).
        pgd_eps, pgd_norm, pgd_steps, pgd_restarts, robust_images: robustness (ε in [0, 1]
            pixel units; no ε = section skipped).
        sections: subset of sections to run (default all).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``; with ``devices`` other
            than 1 the accelerator (``"auto"``, ``"cpu"`` or ``"cuda"``).
        devices, strategy, num_nodes: Lightning's (``Fabric``) process layout; ``devices=1``
            and ``num_nodes=1`` audit in this process. Under ``"ddp"`` the command is
            started again once per extra process (Lightning's launcher); ``"ddp_spawn"``
            forks instead.
        batch_size: units rendered together; one chunk of the sharded renders (results do
            not depend on the number of devices).
        progress: progress bars while rendering.
        output_dir: root of the versioned output folders.
    """
    from lightning_fv.report import SECTIONS

    check_mean_std(mean, std)
    multi = str(devices) != "1" or num_nodes != 1
    if multi and device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r} names one device; with devices={devices!r} pass "
                         f"the accelerator as device='cuda', 'cpu' or 'auto'")
    net = build_model(model, num_classes=num_classes, checkpoint_path=checkpoint_path)
    if datamodule is None:
        from lightning_fv.data import PhotoPatchesDataModule

        datamodule = PhotoPatchesDataModule(n_train_per_class=1, n_val_per_class=20)
    kwargs: dict[str, Any] = dict(
        layers=layers or ["block1", "block2", "block3", "block4", "fc"],
        units_per_layer=units_per_layer, units=units, steps=steps, preset=preset, seed=seed,
        model_name=model + (f" ({checkpoint_path})" if checkpoint_path else ""),
        normalize=None if mean is None else (mean, std), max_images=max_images,
        class_layer=class_layer, visualizations_per_class=visualizations_per_class,
        sanity_layers=sanity_layers, metric=metric, strides=strides,
        ood_data=ood_datamodule, detector_ckpt=detector_ckpt,
        detector_examples=detector_examples, path_units_per_layer=path_units_per_layer,
        path_images=path_images, path_steps=path_steps, pgd_eps=pgd_eps, pgd_norm=pgd_norm,
        pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, robust_images=robust_images,
        sections=sections or SECTIONS, progress=progress, batch_size=batch_size)
    if not multi:
        done = _audit_and_write(None, net.to(resolve_device(device)).eval(), datamodule,
                                output_dir, kwargs)
    else:
        fabric = L.Fabric(accelerator=device, devices=devices, num_nodes=num_nodes,
                          strategy=strategy)
        # rank zero's result, also when the strategy ran it in a spawned process
        done = fabric.launch(_audit_and_write, net, datamodule, output_dir, kwargs)
    if done is None:
        return None
    html, statuses = done
    for name, status, seconds, error in statuses:
        log.info("%-15s %-7s %6.1f s %s", name, status, seconds, error)
    log.info("audit report: %s", html)
    return html


def _audit_and_write(fabric: L.Fabric | None, net: nn.Module, datamodule: Any,
                     output_dir: str, kwargs: dict[str, Any]
                     ) -> tuple[str, list[tuple[str, str, float, str]]] | None:
    """Audit on this process (sharded over ``fabric``'s processes when given); rank zero
    writes the report and returns the path of ``report.html`` and each section's status."""
    if fabric is not None:
        net = net.to(fabric.device)
    result = run_audit(net.eval(), datamodule, distributed=fabric, **kwargs)
    if fabric is not None and fabric.global_rank != 0:
        return None
    paths = write_report(result, output_dir)
    return str(paths.html), [(name, sec.status, sec.seconds, sec.error or "")
                             for name, sec in result.sections.items()]
