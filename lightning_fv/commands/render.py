"""``lightning-fv render``: a one-line :class:`~lightning_fv.modules.FeatureVisualizer`
sweep (``trainer.predict`` on one device) that writes PNG grids and a tensor file."""

from __future__ import annotations

import logging

import lightning as L

from lightning_fv.modules.feature_visualizer import FeatureVisualizer
from lightning_fv.utils.device import resolve_device
from lightning_fv.utils.files import output_folder

log = logging.getLogger(__name__)

DEFAULT_ROOT = "outputs/render"


def render(
    model: str = "bundled",
    units: list[str] | None = None,
    checkpoint_path: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    image_size: int = 64,
    steps: int = 256,
    transforms: str = "standard",
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    bf16: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    output_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    method: str = "standard",
    maco_preset: str = "lightning",
    canvas_size: int | None = None,
    accent_layer: str | None = None,
    accent_weight: float = 10.0,
) -> list[str]:
    """Render ``units`` of ``model`` and write ``units.safetensors``, ``units.pt`` and one
    labelled PNG grid per layer.

    Args:
        model: ``"bundled"`` / ``"bundled:digits"``, a torchvision or timm model name.
        units: unit names (``"fc:3"``, ``"block3:*"`` for all channels, ``"block3:0-15"``);
            default ``["fc:*"]``; ``[]`` is an error.
        checkpoint_path: local weights for ``model`` (safetensors or a weights-only file);
            without one a torchvision/timm model has random weights (a warning says so).
        mean, std: input normalization for models that do not normalize themselves; for
            torchvision/timm ImageNet models pass the values of their weights.
        image_size: rendered image side in pixels (a size the model cannot take is refused
            naming the smallest that works).
        steps: optimizer steps (Adam, lr 0.05).
        transforms: ``"standard"`` (Lucent's) or ``"none"``.
        seed: seed of every unit.
        batch_size: units rendered together (one image each).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
        bf16, channels_last, compile: GPU options.
        output_dir: output folder; default a fresh ``outputs/render/version_N`` per run. An
            existing non-empty folder is refused unless ``overwrite``.
        overwrite: allow writing into a folder that already holds a result.
        progress: progress bar over units × steps with ETA (``--progress false`` in scripts).
        method: ``"standard"``, ``"maco"`` (magnitude-constrained, Fel et al. 2023: a
            ``canvas_size`` image seen through ``image_size`` crops) or ``"accentuation"``
            (Hamblin et al. 2024: unit ``i`` accentuated in photo patch ``i``); see
            :class:`~lightning_fv.modules.FeatureVisualizer`.
        maco_preset: ``"lightning"`` or ``"horama"`` (Horama 0.3's settings).
        canvas_size: MACO canvas side (default ``image_size · 1280 / 224``).
        accent_layer, accent_weight: the accentuation regularizer's layer and ``λ``.

    Returns:
        The written file paths.
    """
    out = output_folder(output_dir, DEFAULT_ROOT, overwrite=overwrite)
    try:
        fv = FeatureVisualizer(
            model, units=units, checkpoint_path=checkpoint_path, mean=mean, std=std,
            image_size=image_size, thresholds=[steps], transforms=transforms, seed=seed,
            batch_size=batch_size, bf16=bf16, channels_last=channels_last, compile=compile,
            output_dir=str(out), overwrite=True, progress=progress, method=method,
            maco_preset=maco_preset, canvas_size=canvas_size, accent_layer=accent_layer,
            accent_weight=accent_weight)
    except Exception:
        if output_dir is None and not any(out.iterdir()):
            out.rmdir()  # no empty version_N folders from refused arguments
        raise
    dev = resolve_device(device)
    trainer = L.Trainer(
        accelerator="gpu" if dev.type == "cuda" else "cpu",
        devices=[dev.index or 0] if dev.type == "cuda" else 1,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False)
    trainer.predict(fv, return_predictions=False)
    return [str(p) for p in fv.written]
