"""``lightning-fv render``: render units of a model to PNG grids and a tensor file."""

from __future__ import annotations

import logging

import torch

from lightning_fv.models import build_model
from lightning_fv.modules.feature_visualizer import expand_units, save_sweep
from lightning_fv.optvis.render import render_units

log = logging.getLogger(__name__)


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
    chunk_size: int = 64,
    device: str = "auto",
    bf16: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    output_dir: str = "outputs/render",
) -> list[str]:
    """Render ``units`` of ``model`` and write PNG grids (one per layer) and
    ``units.safetensors`` under ``output_dir``.

    Args:
        model: ``"bundled"`` / ``"bundled:digits"``, a torchvision or timm model name.
        units: unit names (``"fc:3"``, ``"block3:*"`` for all channels, ``"block3:0-15"``).
        checkpoint_path: local weights for ``model`` (safetensors or a weights-only file).
        mean, std: input normalization for models that do not normalize themselves; for
            torchvision/timm ImageNet models pass the values of their weights.
        image_size: rendered image side in pixels.
        steps: optimizer steps (Adam, lr 0.05).
        transforms: ``"standard"`` (Lucent's) or ``"none"``.
        seed: seed of every unit.
        chunk_size: units rendered together.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``…
        bf16, channels_last, compile: GPU options.
        output_dir: output folder.

    Returns:
        The written file paths.
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else ("cpu" if device == "auto" else device))
    net = build_model(model, checkpoint_path=checkpoint_path).to(dev).eval()
    names = expand_units(list(units or ["fc:*"]), net, image_size)
    res = render_units(
        net, names, chunk_size=chunk_size, seed=seed, progress=True,
        thresholds=(steps,), image_size=image_size,
        transforms="standard" if transforms == "standard" else None,
        normalize=None if mean is None else (mean, std),
        autocast_dtype=torch.bfloat16 if bf16 else None,
        channels_last=channels_last, compile=compile,
    )
    paths = save_sweep({"units": res.units, "images": res.final,
                        "values": res.values[steps]}, output_dir)
    for p in paths:
        log.info("wrote %s", p)
    return [str(p) for p in paths]
