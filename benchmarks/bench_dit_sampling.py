"""Sampling throughput of LightningDiT-XL/1 (256 px: 32×16×16 latents, random weights).

    python benchmarks/bench_dit_sampling.py                      # CUDA: XL/1, 250 Euler steps
    python benchmarks/bench_dit_sampling.py --device cpu --small # tiny model, a few steps
    python benchmarks/bench_dit_sampling.py --grad               # + backward to z_T (issue 7)

For each batch size (1, 8, 32) and each of eager / ``torch.compile``: images per second of a
full sampling run (``--steps`` Euler steps, bf16 autocast, classifier-free guidance with the
release's interval (scale 6.7 from t = 0.11, so the model sees 2·B latents on most steps),
achieved TFLOP/s (FLOPs of one model call counted with ``torch.utils.flop_counter`` times the
number of calls), and peak GPU memory. With ``--grad`` it also times one backward pass from
the final latent to ``z_T`` with and without per-step checkpointing (the infinite-optimization
step of thesis App. .1 without the decoder). The VAE decoder is not included (no diffusers
needed). Prints a markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_fv.diffusion.model import LightningDiT, lightningdit
from lightning_fv.diffusion.sampler import sample, time_grid
from lightning_fv.utils.device import synchronize


def model_calls(steps: int, cfg_interval_start: float, shift: float | None) -> tuple[int, int]:
    """(calls with guidance, calls without) over an Euler run: ``sample`` evaluates 2·B
    latents on the first kind, B on the second."""
    ts = time_grid(steps, shift)[:-1]
    guided = int((ts >= cfg_interval_start).sum())
    return guided, steps - guided


def flops_per_call(model: LightningDiT, batch: int, dev: torch.device) -> int:
    s = model.input_size
    x = torch.randn(batch, model.in_channels, s, s, device=dev)
    t = torch.rand(batch, device=dev)
    y = torch.zeros(batch, dtype=torch.long, device=dev)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, t, y)
    return int(fc.get_total_flops())


def run(model, compiled, batch, args, dev, dtype):
    s = model.input_size
    g = torch.Generator(device=dev).manual_seed(0)
    z = torch.randn(batch, model.in_channels, s, s, device=dev, generator=g)
    y = torch.randint(0, model.num_classes, (batch,), device=dev, generator=g)
    kw = dict(shift=args.shift, cfg_scale=args.cfg_scale, cfg_interval_start=args.cfg_start,
              guidance_channels=3)
    net = compiled if compiled is not None else model
    autocast = torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32)
    with autocast:
        sample(net, z, y, num_steps=args.warmup_steps, enable_grad=False, **kw)  # warm-up
        synchronize(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        sample(net, z, y, num_steps=args.steps, enable_grad=False, **kw)
        synchronize(dev)
        secs = time.perf_counter() - t0
    guided, plain = model_calls(args.steps, args.cfg_start, args.shift)
    if args.cfg_scale <= 1:
        guided, plain = 0, args.steps
    flops = guided * flops_per_call(model, 2 * batch, dev) + plain * flops_per_call(
        model, batch, dev)
    row = dict(batch=batch, compile=compiled is not None, seconds=round(secs, 3),
               images_per_s=round(batch / secs, 3), tflops=round(flops / secs / 1e12, 2),
               peak_mem_gb=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
               if dev.type == "cuda" else None)
    if args.grad:
        for ckpt in (False, True):
            zz = z.clone().requires_grad_(True)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            synchronize(dev)
            t0 = time.perf_counter()
            try:
                with autocast:
                    out = sample(net, zz, y, num_steps=args.steps, enable_grad=True,
                                 checkpoint=ckpt, **kw)
                out.float().square().mean().backward()
                synchronize(dev)
                key = "grad_ckpt" if ckpt else "grad_nockpt"
                row[f"{key}_s"] = round(time.perf_counter() - t0, 3)
                if dev.type == "cuda":
                    row[f"{key}_mem_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
            except torch.OutOfMemoryError:
                row["grad_ckpt_s" if ckpt else "grad_nockpt_s"] = "OOM"
            zz.grad = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny model for a CPU smoke run")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--cfg-scale", type=float, default=6.7)
    ap.add_argument("--cfg-start", type=float, default=0.11)
    ap.add_argument("--shift", type=float, default=0.3)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--grad", action="store_true", help="also time backward to z_T")
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    if args.small:
        model = LightningDiT(input_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=2,
                             num_heads=4, num_classes=10, use_swiglu=True, use_rope=True,
                             use_rmsnorm=True)
        batches, steps, name = args.batches or [1, 2, 4], args.steps or 10, "tiny (8x8x4, d2 h64)"
    else:
        model = lightningdit("LightningDiT-XL/1", num_classes=1000)
        batches, steps, name = args.batches or [1, 8, 32], args.steps or 250, "LightningDiT-XL/1"
    args.steps = steps
    model = model.to(dev).eval().requires_grad_(False)
    variants = [None] if args.no_compile else [None, torch.compile(model)]
    rows = []
    for batch in batches:
        for comp in variants:
            rows.append(run(model, comp, batch, args, dev, dtype))
            print(json.dumps(rows[-1]), flush=True)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"\n{name}, {params:.0f} M params, {steps} Euler steps, {args.dtype}, "
          f"cfg {args.cfg_scale} from t={args.cfg_start}, shift {args.shift}, device {dev_name}, "
          f"torch {torch.__version__}\n")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k)) for k in keys) + " |")
    print(json.dumps({"model": name, "steps": steps, "dtype": args.dtype, "device": dev_name,
                      "rows": rows}))


if __name__ == "__main__":
    main()
