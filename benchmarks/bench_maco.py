"""MACO sweep of N ViT units as one batch (``render_maco``) vs Horama 0.3 ``maco``, one
unit at a time, with the same steps, crops, canvas, noise and value range (issue 15 §5).

Both sides maximize the same objective (``units_objective`` of the unit, averaged over the
crops) on timm ``vit_tiny_patch16_224`` with random weights, and both final images are
scored by the same :func:`lightning_fv.optvis.maco.crop_values` (16 fixed crops, no
noise). Horama reads its magnitude template from ``spectrum_decorrelated.npy`` in the
working directory (downloading it otherwise): the script writes that file, in a temporary
folder, from :func:`spectrum_from_data` on the embedded photos, so both sides use the same
spectrum and nothing is downloaded.

Horama 0.3.0's ``__init__`` imports modules its wheel does not ship (``fourier_fv``,
``losses``) and ``einops``, so ``import horama`` fails; the script loads Horama's own
``horama/maco_fv.py`` (and its ``common.py``) unchanged, without running ``__init__``.

    python benchmarks/bench_maco.py --device cpu --small        # ~2 min on 2 cores
    python benchmarks/bench_maco.py --device cuda               # the GPU figure
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from lightning_fv.modules.feature_visualizer import photo_spectrum
from lightning_fv.optvis.hooks import capture, parse_units
from lightning_fv.optvis.maco import crop_values, render_maco
from lightning_fv.optvis.objectives import INPUT, OUTPUT, units_objective
from lightning_fv.utils.device import resolve_device, synchronize


def load_horama_maco() -> types.ModuleType:
    """Horama 0.3's ``maco_fv`` module, imported without the package's broken ``__init__``."""
    spec = importlib.util.find_spec("horama")
    if spec is None or spec.origin is None:
        raise ImportError("horama is not installed: pip install horama==0.3.0")
    pkg = types.ModuleType("horama")
    pkg.__path__ = [str(Path(spec.origin).parent)]  # type: ignore[attr-defined]
    sys.modules.setdefault("horama", pkg)
    mod = importlib.import_module("horama.maco_fv")
    version = (Path(spec.origin).parent / "__init__.py").read_text().split("__version__ = ")[1]
    mod.VERSION = version.split("\n")[0].strip("'\"")  # type: ignore[attr-defined]
    return mod


def horama_objective(model: torch.nn.Module, unit: str, crops: int):  # noqa: ANN201
    """Horama's ``objective_function(crops) → score``: our unit objective averaged over crops."""
    obj = units_objective([unit] * crops)

    def fn(x: torch.Tensor) -> torch.Tensor:
        with capture(model, obj.model_layers) as acts:
            out = model(x)
            acts[OUTPUT], acts[INPUT] = out, x
            return obj(acts).mean()

    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--small", action="store_true",
                    help="CPU size: 4 units, 6 steps, 2 crops, 512 px")
    ap.add_argument("--units", type=int, default=32, help="units in the batched sweep")
    ap.add_argument("--peer-units", type=int, default=4,
                    help="units Horama renders (per-unit time)")
    ap.add_argument("--layer", default="blocks.5")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--crops", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=1280)
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()
    if args.small:
        args.units, args.peer_units, args.steps, args.crops, args.image_size = 4, 2, 6, 2, 512
    import timm

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    units = [str(u) for u in parse_units(f"{args.layer}:0-{args.units - 1}")]
    spectrum = photo_spectrum(args.image_size)
    kw = dict(config="horama", steps=args.steps, crops=args.crops, image_size=args.image_size,
              input_size=224, spectrum=spectrum)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"{args.units} units of {args.layer}, {args.steps} steps, {args.crops} crops, "
          f"{args.image_size} px canvas, 224 px input, Horama preset")

    render_maco(model, units[:1], **{**kw, "steps": 1})  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    ours = render_maco(model, units, seed=list(range(args.units)), **kw)
    synchronize(device)
    t_ours = time.perf_counter() - t0

    hm = load_horama_maco()
    peer = units[: args.peer_units]
    imgs = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            np.save(hm.MACO_SPECTRUM_FILENAME, spectrum.numpy())
            synchronize(device)
            t0 = time.perf_counter()
            for i, u in enumerate(peer):
                torch.manual_seed(i)
                img, _alpha = hm.maco(horama_objective(model, u, args.crops),
                                      total_steps=args.steps, learning_rate=1.0,
                                      image_size=args.image_size, model_input_size=224,
                                      noise=0.05, values_range=(-2.5, 2.5),
                                      crops_per_iteration=args.crops, box_size=(0.20, 0.25),
                                      device=str(device))
                imgs.append(img.detach().float().cpu())
            synchronize(device)
            t_peer = time.perf_counter() - t0
        finally:
            os.chdir(cwd)
    v_peer = crop_values(model, peer, torch.stack(imgs), input_size=224)
    v_ours = ours.values
    res = {
        "device": str(device), "units": args.units, "peer_units": args.peer_units,
        "steps": args.steps, "crops": args.crops, "image_size": args.image_size,
        "horama_version": hm.VERSION,
        "ours_s_per_unit": t_ours / args.units, "horama_s_per_unit": t_peer / len(peer),
        "speedup": (t_peer / len(peer)) / (t_ours / args.units),
        "ours_value_mean_all": float(v_ours.mean()),
        "ours_value_mean_peer_units": float(v_ours[: len(peer)].mean()),
        "horama_value_mean": float(v_peer.mean()),
        "ours_values_peer_units": [round(float(v), 4) for v in v_ours[: len(peer)]],
        "horama_values": [round(float(v), 4) for v in v_peer],
    }
    print(f"ours   (one batch of {args.units}): {res['ours_s_per_unit']:.3f} s/unit, "
          f"objective mean {res['ours_value_mean_all']:.4f} (same {len(peer)} units as Horama: "
          f"{res['ours_value_mean_peer_units']:.4f}, {res['ours_values_peer_units']})")
    print(f"Horama {hm.VERSION} (one unit at a time, {len(peer)} units): "
          f"{res['horama_s_per_unit']:.3f} s/unit, objective mean {res['horama_value_mean']:.4f} "
          f"({res['horama_values']})")
    print(f"speed-up per unit: {res['speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
