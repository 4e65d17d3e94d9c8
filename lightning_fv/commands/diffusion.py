"""``lightning-fv sample``: class-conditional samples of a LightningDiT pipeline as a PNG grid."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lightning_fv.diffusion.pipeline import load_pipeline
from lightning_fv.utils import make_generator, save_grid

log = logging.getLogger(__name__)


def sample(
    checkpoint: str = "bundled",
    labels: list[int] | None = None,
    per_label: int = 8,
    num_steps: int = 50,
    cfg_scale: float = 4.0,
    cfg_interval_start: float = 0.0,
    shift: float | None = None,
    method: str = "euler",
    seed: int = 0,
    device: str = "auto",
    output_dir: str = "outputs/sample",
) -> list[str]:
    """Sample ``per_label`` images for every label and write ``samples.png`` (one column per
    label) and ``samples.pt`` (``{"images": (N, 3, H, W) in [0, 1], "labels": (N,)}``).

    Args:
        checkpoint: ``"bundled"`` (the digits model in ``lightning_fv/assets``) or a
            ``.safetensors`` file written by ``LatentDiffusionModule.export``.
        labels: class labels (default: all classes); ``-1`` means unconditional.
        per_label: samples per label.
        num_steps: sampler steps.
        cfg_scale: classifier-free guidance scale (≤ 1: none).
        cfg_interval_start: no guidance for flow times below this value.
        shift: timestep shift (``None``: none; the release uses 0.3).
        method: ``"euler"`` or ``"heun"``.
        seed: seed of the starting noise.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``…
        output_dir: output folder.

    Returns:
        The written file paths.
    """
    if per_label < 1:
        raise ValueError(f"per_label must be ≥ 1, got {per_label}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else ("cpu" if device == "auto" else device))
    pipe = load_pipeline(checkpoint, map_location=dev)
    num_classes = pipe.model.num_classes
    labels = list(range(num_classes)) if labels is None else [int(v) for v in labels]
    bad = [v for v in labels if not (v == -1 or 0 <= v < num_classes)]
    if bad:
        raise ValueError(f"labels {bad} are invalid; valid: 0..{num_classes - 1} or -1 "
                         "(unconditional)")
    y = torch.tensor(labels, device=dev).repeat(per_label)
    y = torch.where(y < 0, torch.full_like(y, pipe.model.null_class), y)
    z = pipe.noise(len(y), generator=make_generator(seed, dev), device=dev)
    with torch.no_grad():
        images = pipe.generate(z, y, num_steps=num_steps, cfg_scale=cfg_scale,
                               cfg_interval_start=cfg_interval_start, shift=shift,
                               method=method)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = save_grid(images, out / "samples.png", nrow=len(labels))
    pt = out / "samples.pt"
    torch.save({"images": images.cpu(), "labels": y.cpu()}, pt)
    log.info("wrote %s and %s", png, pt)
    return [str(png), str(pt)]
