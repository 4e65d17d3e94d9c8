"""Batched unit sweep (lightning_fv) vs torch-lucent 0.1.8 ``render_vis`` one unit at a time.

Same model (ResNet-50, random weights, eval mode), same layer (``layer4``), 224 px,
512 steps, Lucent's standard transforms, Adam lr 0.05, ImageNet normalization.
lightning_fv renders ``--units`` channels as one batch (fp32, and bf16 autocast +
channels_last); Lucent renders ``--lucent-units`` of them one at a time and its time per
unit is multiplied by ``--units`` for the ratio (rendering all of them would take an
hour). The objective reached (channel mean of the final image, no transforms) is
reported for both on the units both rendered.

    python benchmarks/bench_render.py                       # GPU, the issue's sizes
    python benchmarks/bench_render.py --device cpu --small  # reduced CPU version
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision

from lightning_fv.models import IMAGENET_MEAN, IMAGENET_STD, Normalize
from lightning_fv.optvis.hooks import capture
from lightning_fv.optvis.render import render_units
from lightning_fv.utils.device import synchronize


def _import_lucent():
    import kornia
    import kornia.geometry.transform as kgt

    # torch-lucent 0.1.8 imports these from their pre-0.5 location
    kornia.get_rotation_matrix2d = kgt.get_rotation_matrix2d
    kornia.warp_affine = kgt.warp_affine
    import sys
    import types

    if "IPython" not in sys.modules:  # lucent imports IPython.display for notebooks only
        ip = types.ModuleType("IPython")
        ip.display = types.ModuleType("IPython.display")
        sys.modules["IPython"] = ip
        sys.modules["IPython.display"] = ip.display
    from lucent.optvis import param, render

    return render, param


@torch.no_grad()
def channel_values(model, layer, channels, images, norm) -> torch.Tensor:
    """Mean activation of ``channels[i]`` for ``images[i]`` (no transforms)."""
    with capture(model, [layer]) as acts:
        model(norm(images))
    a = acts[layer]
    return a[torch.arange(len(channels)), torch.as_tensor(channels)].mean((-1, -2)).float().cpu()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--lucent-units", type=int, default=4)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--layer", default="layer4")
    args = ap.parse_args()
    if args.small:
        args.model, args.units, args.lucent_units, args.steps, args.size = (
            "resnet18", 8, 2, 16, 224)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).to(device).eval()
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD).to(device)
    units = [f"{args.layer}:{i}" for i in range(args.units)]
    rows = {}

    def ours(tag: str, **kw) -> None:
        render_units(model, units[:2], thresholds=(2,), image_size=args.size,
                     normalize=norm, **kw)  # warm-up
        synchronize(device)
        t0 = time.perf_counter()
        res = render_units(model, units, batch_size=None, thresholds=(args.steps,),
                           image_size=args.size, normalize=norm, **kw)
        synchronize(device)
        dt = time.perf_counter() - t0
        vals = channel_values(model, args.layer, list(range(args.units)),
                              res.final.to(device), norm)
        rows[tag] = {"seconds": dt, "seconds_per_unit": dt / args.units,
                     "mean_objective": vals.mean().item(),
                     "mean_objective_first": vals[: args.lucent_units].mean().item()}

    ours("lightning_fv fp32")
    if device.type == "cuda":
        ours("lightning_fv bf16+channels_last", autocast_dtype=torch.bfloat16,
             channels_last=True)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        rows["peak_memory_gib"] = peak

    lucent_render, lucent_param = _import_lucent()
    lucent_imgs, t_lucent = [], 0.0
    for i in range(args.lucent_units):
        synchronize(device)
        t0 = time.perf_counter()
        imgs = lucent_render.render_vis(
            model, f"{args.layer}:{i}",
            param_f=lambda: lucent_param.image(args.size),
            thresholds=(args.steps,), show_image=False, progress=False)
        synchronize(device)
        t_lucent += time.perf_counter() - t0
        lucent_imgs.append(torch.from_numpy(imgs[-1]).permute(0, 3, 1, 2))
    lucent = torch.cat(lucent_imgs).to(device)
    lv = channel_values(model, args.layer, list(range(args.lucent_units)), lucent, norm)
    per_unit = t_lucent / args.lucent_units
    rows["lucent 0.1.8 (one unit at a time)"] = {
        "seconds_measured": t_lucent, "units_measured": args.lucent_units,
        "seconds_per_unit": per_unit, "mean_objective_first": lv.mean().item()}
    for tag in [k for k in rows if k.startswith("lightning_fv")]:
        rows[tag]["speedup_vs_lucent"] = per_unit * args.units / rows[tag]["seconds"]
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "model": args.model, "layer": args.layer,
            "units": args.units, "steps": args.steps, "size": args.size}
    print(json.dumps({"meta": meta, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
