"""MACO sweep of N ViT units as one batch (``render_maco``) vs its floor and vs Horama 0.3
``maco``, one unit at a time, with the same steps, crops, canvas, noise and value range
(issue 15 §5, issue 19).

Both sides maximize the same objective (``units_objective`` of the unit, averaged over the
crops) on timm ``vit_tiny_patch16_224`` with random weights, and both final images are
scored by the same :func:`lightning_fv.optvis.maco.crop_values` (16 fixed crops, no
noise). Horama reads its magnitude template from ``spectrum_decorrelated.npy`` in the
working directory (downloading it otherwise): the script writes that file, in a temporary
folder, from :func:`spectrum_from_data` on the embedded photos, so both sides use the same
spectrum and nothing is downloaded.

What one MACO step of ``render_maco`` runs (``lightning_fv/optvis/maco.py``,
``_maco_batch``), for ``U`` units and ``K`` crops: the parameterization
(phase → spectrum → ``irfft2`` → standardize → colour → sigmoid to the value range) of
``U`` canvases; ``crop_resize`` of ``K`` crops per canvas (``grid_sample`` at twice the
input size, then antialiased bicubic to the input size) plus Gaussian and uniform noise
drawn per unit; **one forward of the whole ViT** (all 12 blocks and the head: the hooked
block is read by a forward hook, the forward does not stop there) on ``U·K`` crops of
224 px in the model's dtype (fp32 here, no autocast); the objective (sample ``i``'s
channel, mean over patch tokens, averaged over its ``K`` crops); backward; the
non-finite check (one GPU→CPU sync per step); ``alpha += |grad|``; one NAdam step.

- **Floor** (issue 19): the time of the same forward+backward passes of the model at the
  same batch in a plain loop: ``steps`` iterations of forward of the whole ViT (eval
  mode, frozen parameters, like the sweep) on a random ``(U·K, 3, 224, 224)`` input with
  ``requires_grad``, the same objective on the same hooked block reduced the same way
  (``view(U, K).mean(1)``), backward to the input. ``--floor-steps`` passes (default 32,
  after 3 warm-ups) are timed and scaled to ``steps``. **Goal: sweep / floor ≤ 1.2**
  (``over_floor``). The sweep's time is all of ``render_maco`` (setup and the final
  ``crop_values`` scoring included). A second, informative row times the same loop with
  the forward cut at the hooked block (``floor_cut_seconds``, an exception raised by a
  forward hook after the objective's hook): what the forward would cost if ``render_maco``
  stopped there.
- **Shares** (fractions of the sweep's time): ``model`` (the floor); ``setup`` (the phase
  drawn on the CPU from one generator per unit, moved to the device, and the crop boxes;
  once); ``param`` (the parameterization, forward + backward from a fixed random gradient
  to the phase); ``transforms`` (crops + noise, forward + backward from a fixed random
  gradient to a canvas); ``optimizer`` (one NAdam step on the phase); ``bookkeeping``
  (the non-finite checks with their sync and ``alpha += |grad|``); ``eval`` (the final
  ``crop_values``, once); ``other`` what remains (Python, launch gaps, the per-step sync
  stalling the queue). Each per-step part is timed over the same ``--floor-steps`` passes
  on the same batch and scaled to ``steps``. Timed alone, the parts cannot hide their
  kernel launches behind the model's work, so on a GPU the shares are upper bounds (and
  ``other`` may come out negative).

Horama 0.3.0's ``__init__`` imports modules its wheel does not ship (``fourier_fv``,
``losses``) and ``einops``, so ``import horama`` fails; the script loads Horama's own
``horama/maco_fv.py`` (and its ``common.py``) unchanged, without running ``__init__``.
``--no-peer`` skips Horama, ``--no-floor`` the floor and the shares.

Rows are printed as they finish; ``--json PATH`` writes everything there (rewritten after
each stage, so a run cut short keeps what it measured).

    python benchmarks/bench_maco.py --device cpu --small        # ~1 min on one busy core
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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lightning_fv.modules.feature_visualizer import photo_spectrum
from lightning_fv.optvis.hooks import Unit, capture, get_layer, parse_units
from lightning_fv.optvis.maco import (
    NOISE_SEED_OFFSET,
    MacoConfig,
    MacoParam,
    crop_resize,
    crop_values,
    draw_boxes,
    maco_config,
    render_maco,
)
from lightning_fv.optvis.objectives import INPUT, OUTPUT, Objective, units_objective
from lightning_fv.utils.device import resolve_device, synchronize
from lightning_fv.utils.rng import make_generator

WARMUP = 3  # bench_render.per_pass's default warm-up calls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import per_pass  # noqa: E402


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


def horama_objective(model: nn.Module, unit: str, crops: int
                     ) -> Callable[[Tensor], Tensor]:
    """Horama's ``objective_function(crops) → score``: our unit objective averaged over crops."""
    obj = units_objective([unit] * crops)

    def fn(x: Tensor) -> Tensor:
        with capture(model, obj.model_layers) as acts:
            out = model(x)
            acts[OUTPUT], acts[INPUT] = out, x
            return obj(acts).mean()

    return fn


def once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, synchronized on both sides."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


class _StopForward(Exception):
    """Raised by a forward hook to cut the forward at the hooked block."""


def _stop(_m: nn.Module, _i: object, _o: object) -> None:
    raise _StopForward


def crops_objective(units: Sequence[Unit], crops: int) -> Objective:
    """As ``render_maco``: sample ``b``'s ``crops`` rows maximize ``units[b]``."""
    return units_objective([u for u in units for _ in range(crops)])


def floor_per_pass(model: nn.Module, units: Sequence[Unit], crops: int, in_size: int,
                   value_range: tuple[float, float], device: torch.device, timed: int,
                   cut: bool = False) -> float:
    """Seconds per plain forward+backward pass at the sweep's batch: a random
    ``(U·K, 3, in_size, in_size)`` input in ``value_range`` with ``requires_grad``, the
    sweep's objective reduced as the sweep does, gradient to the input. ``cut``: the
    forward stops at the hooked block (the units must share one layer)."""
    b = len(units)
    obj = crops_objective(units, crops)
    layers = obj.model_layers
    if cut and len(layers) != 1:
        raise ValueError(f"the cut floor needs the units in one layer, got {layers}")
    dtype = next(model.parameters()).dtype
    lo, hi = value_range
    x = (torch.rand(b * crops, 3, in_size, in_size, device=device) * (hi - lo) + lo)
    x = x.to(dtype).requires_grad_(True)
    with capture(model, layers) as acts:
        # registered after capture's hook, so the activation is recorded before the cut
        handle = get_layer(model, layers[0]).register_forward_hook(_stop) if cut else None

        def one() -> Tensor:
            try:
                acts[OUTPUT] = model(x)
            except _StopForward:
                pass
            acts[INPUT] = x
            vals = obj(acts).float().view(b, crops).mean(1)
            (g,) = torch.autograd.grad(-vals.sum(), x)
            return g

        try:
            return per_pass(one, timed, device)
        finally:
            if handle is not None:
                handle.remove()


def transforms_per_pass(canvas_img: Tensor, cfg: MacoConfig, in_size: int,
                        device: torch.device, timed: int) -> float:
    """Seconds per step of ``_maco_batch``'s crops and noise on ``canvas_img``
    ``(U, 3, S, S)``, forward + backward from a fixed random gradient."""
    b = canvas_img.shape[0]
    gens = [make_generator(i) for i in range(b)]
    boxes = draw_boxes(gens, timed + WARMUP, cfg.crops, cfg.crop_scale, cfg.center_std)
    noise_gens = [make_generator(i + NOISE_SEED_OFFSET, device) for i in range(b)]
    leaf = canvas_img.detach().requires_grad_(True)
    g_x = torch.randn(b * cfg.crops, 3, in_size, in_size, device=device)
    calls = [0]

    def one() -> Tensor:
        step = calls[0] % len(boxes)
        calls[0] += 1
        x = crop_resize(leaf, boxes[step], in_size, cfg.oversample)
        if cfg.noise > 0:
            shape = (cfg.crops, 3, in_size, in_size)
            gauss = torch.cat([torch.randn(shape, generator=g, device=device)
                               for g in noise_gens])
            unif = torch.cat([torch.rand(shape, generator=g, device=device)
                              for g in noise_gens])
            x = x + gauss * cfg.noise + (unif - 0.5) * cfg.noise
        (g,) = torch.autograd.grad(x, leaf, g_x)
        return g

    return per_pass(one, timed, device)


def part_seconds(b: int, cfg: MacoConfig, spectrum: Tensor, canvas: int, in_size: int,
                 device: torch.device, timed: int) -> dict[str, float]:
    """``setup`` (seconds, once) and the per-step seconds of ``param``, ``transforms``,
    ``optimizer`` and ``bookkeeping`` of a batch of ``b`` units, each timed alone."""
    secs: dict[str, float] = {}
    gens = [make_generator(i) for i in range(b)]
    holder: list[MacoParam] = []

    def setup() -> None:  # as _maco_batch: phase from per-unit CPU generators, then boxes
        holder.append(MacoParam(b, spectrum, canvas, cfg.value_range, generators=gens,
                                device=device))
        draw_boxes(gens, cfg.steps, cfg.crops, cfg.crop_scale, cfg.center_std)

    secs["setup"] = once(setup, device)
    param = holder[0]

    g_img = torch.randn(param.shape, device=device)

    def param_pass() -> None:
        param.raw.grad = None
        img = param()
        img.retain_grad()
        img.backward(g_img)

    secs["param"] = per_pass(param_pass, timed, device)

    with torch.no_grad():
        canvas_img = param().detach()
    secs["transforms"] = transforms_per_pass(canvas_img, cfg, in_size, device, timed)
    del canvas_img

    opt = torch.optim.NAdam([param.raw], lr=cfg.lr)
    param.raw.grad = torch.randn_like(param.raw)
    secs["optimizer"] = per_pass(opt.step, timed, device)
    del opt

    grad = g_img
    alpha = torch.zeros(param.shape, device=device)
    vals = torch.randn(b, device=device)

    def bookkeeping() -> None:  # _maco_batch's non-finite check (a sync) and alpha
        ok = torch.isfinite(vals) & torch.isfinite(grad).flatten(1).all(1)
        if not bool(ok.all()):
            raise FloatingPointError("non-finite test gradient")
        alpha.add_(grad.abs())

    secs["bookkeeping"] = per_pass(bookkeeping, timed, device)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--small", action="store_true",
                    help="CPU size: 4 units, 2 Horama units, 6 steps, 2 crops, 512 px "
                         "(any of these given explicitly wins)")
    ap.add_argument("--units", type=int, default=32, help="units in the batched sweep")
    ap.add_argument("--peer-units", type=int, default=4,
                    help="units Horama renders (per-unit time)")
    ap.add_argument("--layer", default="blocks.5")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--crops", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=1280)
    ap.add_argument("--floor-steps", type=int, default=32,
                    help="passes timed for the floor and the shares (after 3 warm-ups), "
                         "scaled to --steps; 0: --steps")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor and the shares")
    ap.add_argument("--no-peer", action="store_true", help="skip Horama")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()
    if args.small:  # the reduced sizes, unless given explicitly
        ap.set_defaults(units=4, peer_units=2, steps=6, crops=2, image_size=512)
        args = ap.parse_args()
    import timm

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    in_size = 224
    units = [str(u) for u in parse_units(f"{args.layer}:0-{args.units - 1}")]
    parsed = parse_units(units, model)
    spectrum = photo_spectrum(args.image_size)
    kw = dict(config="horama", steps=args.steps, crops=args.crops, image_size=args.image_size,
              input_size=in_size, spectrum=spectrum)
    cfg = maco_config("horama", steps=args.steps, crops=args.crops)
    timed = min(args.floor_steps or args.steps, args.steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}", flush=True)
    print(f"{args.units} units of {args.layer}, {args.steps} steps, {args.crops} crops, "
          f"{args.image_size} px canvas, {in_size} px input, Horama preset: the ViT sees "
          f"{args.units * args.crops} crops per step, whole forward, "
          f"{next(model.parameters()).dtype}", flush=True)

    res: dict[str, object] = {
        "device": str(device), "device_name": name, "torch": torch.__version__,
        "units": args.units, "peer_units": args.peer_units, "layer": args.layer,
        "steps": args.steps, "crops": args.crops, "image_size": args.image_size,
        "input_size": in_size, "model_batch": args.units * args.crops,
        "date": time.strftime("%Y-%m-%d"),
    }

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))

    render_maco(model, units[:1], **{**kw, "steps": 1})  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    ours = render_maco(model, units, seed=list(range(args.units)), **kw)
    synchronize(device)
    t_ours = time.perf_counter() - t0
    v_ours = ours.values
    res.update({"ours_seconds": t_ours, "ours_s_per_unit": t_ours / args.units,
                "ours_value_mean_all": float(v_ours.mean())})
    print(f"ours   (one batch of {args.units}): {t_ours:.3f} s, "
          f"{res['ours_s_per_unit']:.4f} s/unit, objective mean "
          f"{res['ours_value_mean_all']:.4f}", flush=True)
    save()

    if not args.no_floor:
        shape = f"{args.units * args.crops} x 3 x {in_size} x {in_size}"
        fl = floor_per_pass(model, parsed, args.crops, in_size, cfg.value_range, device,
                            timed) * args.steps
        res.update({"floor_seconds": fl, "over_floor": t_ours / fl,
                    "floor_timed_passes": timed, "floor_input": shape})
        print(f"floor  (plain fwd+bwd of the whole ViT on {shape}, {timed} passes timed, "
              f"scaled to {args.steps}): {fl:.3f} s -> sweep / floor "
              f"{res['over_floor']:.3f}x (goal <= 1.2)", flush=True)
        save()
        fc = floor_per_pass(model, parsed, args.crops, in_size, cfg.value_range, device,
                            timed, cut=True) * args.steps
        res.update({"floor_cut_seconds": fc, "over_floor_cut": t_ours / fc})
        print(f"floor cut at {args.layer} (informative; render_maco runs the whole ViT): "
              f"{fc:.3f} s -> sweep / cut floor {res['over_floor_cut']:.3f}x", flush=True)
        save()

        parts = part_seconds(args.units, cfg, spectrum, args.image_size, in_size, device,
                             timed)
        secs = {"model": fl, "setup": parts["setup"]}
        for key in ("param", "transforms", "optimizer", "bookkeeping"):
            secs[key] = parts[key] * args.steps
            print(f"part   {key}: {secs[key]:.3f} s ({secs[key] / t_ours:.1%} of the sweep)",
                  flush=True)
        print(f"part   setup (once): {secs['setup']:.3f} s "
              f"({secs['setup'] / t_ours:.1%})", flush=True)
        secs["eval"] = once(lambda: crop_values(
            model, parsed, ours.images, input_size=in_size, crop_scale=cfg.crop_scale,
            center_std=cfg.center_std, oversample=cfg.oversample), device)
        print(f"part   eval (final crop_values, once): {secs['eval']:.3f} s "
              f"({secs['eval'] / t_ours:.1%})", flush=True)
        secs["other"] = t_ours - sum(secs.values())
        res["part_seconds"] = secs
        res["shares"] = {k: v / t_ours for k, v in secs.items()}
        save()
        print("\n| part | seconds | share of the sweep |\n|---|---|---|")
        for k, v in secs.items():
            print(f"| {k} | {v:.3f} | {v / t_ours:.1%} |")
        print(f"| **sweep** | {t_ours:.3f} | 100% (floor {fl:.3f} s, "
              f"sweep / floor {t_ours / fl:.2f}x, goal <= 1.2) |\n", flush=True)
        del parts
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if args.no_peer:
        return
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
                                      image_size=args.image_size, model_input_size=in_size,
                                      noise=0.05, values_range=(-2.5, 2.5),
                                      crops_per_iteration=args.crops, box_size=(0.20, 0.25),
                                      device=str(device))
                imgs.append(img.detach().float().cpu())
            synchronize(device)
            t_peer = time.perf_counter() - t0
        finally:
            os.chdir(cwd)
    v_peer = crop_values(model, peer, torch.stack(imgs), input_size=in_size)
    res.update({
        "horama_version": hm.VERSION, "horama_s_per_unit": t_peer / len(peer),
        "speedup": (t_peer / len(peer)) / (t_ours / args.units),
        "ours_value_mean_peer_units": float(v_ours[: len(peer)].mean()),
        "horama_value_mean": float(v_peer.mean()),
        "ours_values_peer_units": [round(float(v), 4) for v in v_ours[: len(peer)]],
        "horama_values": [round(float(v), 4) for v in v_peer],
    })
    print(f"ours   (one batch of {args.units}): {res['ours_s_per_unit']:.3f} s/unit, "
          f"objective mean {res['ours_value_mean_all']:.4f} (same {len(peer)} units as Horama: "
          f"{res['ours_value_mean_peer_units']:.4f}, {res['ours_values_peer_units']})")
    print(f"Horama {hm.VERSION} (one unit at a time, {len(peer)} units): "
          f"{res['horama_s_per_unit']:.3f} s/unit, objective mean {res['horama_value_mean']:.4f} "
          f"({res['horama_values']})")
    print(f"speed-up per unit: {res['speedup']:.2f}x", flush=True)
    save()


if __name__ == "__main__":
    main()
