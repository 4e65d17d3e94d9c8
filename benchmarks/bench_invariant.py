"""One infinite-optimization step (thesis App. .1, Algorithm 1 loop body) through LightningDiT.

    python benchmarks/bench_invariant.py                        # CUDA: XL/1 at 256 px
    python benchmarks/bench_invariant.py --device cpu --small   # tiny model, a few steps

A step = draw-free body of Algorithm 1: run the whole Euler sampler from ``z_T`` with
gradients (per-step checkpointing on or off, :func:`lightning_fv.diffusion.sample`), decode,
evaluate the dual loss ``λ·(‖L(x) − L(x*)‖² + ‖L(F(x)) − L(x*)‖²)``
(:func:`lightning_fv.diffusion.invariant.invariant_loss`, low-pass cutoff 0.5), back-propagate
to ``z_T`` and take the SGD step (η = 10). Model: LightningDiT-XL/1 with the release options
(32×16×16 latents = 256 px with the f16 VA-VAE), random weights, unconditional (null class),
bf16 autocast on CUDA. The VA-VAE decoder needs ``diffusers`` (absent on the GPU machine), so
a stand-in decoder is used: a 1×1 conv 32→3 and 16× bilinear up-sampling to 256 px (its cost
is negligible next to the sampler; the real VA-VAE decoder adds roughly one decoder
forward+backward per step). Objective ``L``: the logits of a randomly initialised SmallCNN
(widths 32/64/96/128) at 256 px.

Reported per (batch, sampler steps, checkpointing): seconds per optimization step, time per
sample and step, peak CUDA memory (``max_memory_allocated``), the bytes autograd keeps for
the backward pass (``saved_MB``, device-independent: with checkpointing only each step's
input latent is kept), and achieved TFLOP/s = useful FLOPs (3 × the forward FLOPs of the DiT
calls, counted with ``torch.utils.flop_counter``; the checkpoint recomputation is not
counted) / time. Combinations whose memory, extrapolated from 1- and 2-step runs, exceeds 90%
of the device memory without checkpointing are skipped and marked so. Prints a markdown
table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_fv.diffusion import LatentDiffusionPipeline, LightningDiT, lightningdit
from lightning_fv.diffusion.invariant import invariant_loss, logits_response
from lightning_fv.diffusion.pipeline import SamplerConfig
from lightning_fv.models import SmallCNN


class StandInDecoder(nn.Module):
    """``decode(z)``: 1×1 conv ``C → 3`` then bilinear up-sampling by ``factor`` (in [-1, 1])."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, 3, 1)
        self.factor = factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.proj(z)
        return torch.tanh(F.interpolate(x, scale_factor=self.factor, mode="bilinear",
                                        align_corners=False))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build(small: bool, dev: torch.device) -> tuple[LatentDiffusionPipeline, nn.Module, int]:
    torch.manual_seed(0)
    if small:
        dit = LightningDiT(input_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=2,
                           num_heads=4, num_classes=10, use_swiglu=True, use_rope=True,
                           use_rmsnorm=True)
        factor, widths = 2, (8, 8, 16, 16)
    else:
        dit = lightningdit("LightningDiT-XL/1")
        factor, widths = 16, (32, 64, 96, 128)
    with torch.no_grad():  # random weights everywhere (the release zero-inits the outputs)
        for m in dit.modules():
            if isinstance(m, nn.Linear) and m.weight.abs().sum() == 0:
                m.weight.normal_(0, 0.02)
    pipe = LatentDiffusionPipeline(dit, StandInDecoder(dit.in_channels, factor),
                                   sampler=SamplerConfig(num_steps=25)).to(dev).eval()
    clf = SmallCNN(num_classes=10, widths=widths).to(dev).eval()
    return pipe, clf, dit.input_size * factor


def dit_forward_flops(pipe: LatentDiffusionPipeline, batch: int, dev: torch.device) -> int:
    m = pipe.model
    s = m.input_size
    x = torch.randn(batch, m.in_channels, s, s, device=dev)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(x, torch.rand(batch, device=dev), torch.full((batch,), m.null_class, device=dev))
    return int(fc.get_total_flops())


def one_step(pipe, obj, z, opt, target, steps, ckpt, dtype, dev) -> tuple[float, float]:
    """One Algorithm-1 iteration; returns (seconds, MB saved for backward)."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    _sync(dev)
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
        x = pipe.generate(z, None, checkpoint=ckpt, enable_grad=True, num_steps=steps)
        loss = invariant_loss(obj, x.float(), target, step_size=1.0, cutoff=0.5)[0]
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    opt.step()
    _sync(dev)
    return time.perf_counter() - t0, saved[0] / 2 ** 20


def measure(pipe, clf, batch, steps, ckpt, args, dev, dtype) -> dict[str, object]:
    obj = logits_response(clf)
    z = pipe.noise(batch, torch.Generator(device="cpu").manual_seed(0), device="cpu")
    z = z.to(dev).requires_grad_(True)
    opt = torch.optim.SGD([z], lr=10.0)
    target = torch.zeros(batch, 10, device=dev)
    for p in list(pipe.parameters()) + list(clf.parameters()):
        p.requires_grad_(False)
    one_step(pipe, obj, z, opt, target, steps, ckpt, dtype, dev)  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, saved = [], 0.0
    for _ in range(args.repeats):
        s, saved = one_step(pipe, obj, z, opt, target, steps, ckpt, dtype, dev)
        times.append(s)
    secs = min(times)
    flops = 3 * steps * dit_forward_flops(pipe, batch, dev)
    row: dict[str, object] = dict(
        batch=batch, steps=steps, checkpoint=ckpt, s_per_step=round(secs, 4),
        s_per_sample_step=round(secs / batch, 4), saved_MB=round(saved, 1),
        tflops=round(flops / secs / 1e12, 3))
    if dev.type == "cuda":
        row["peak_GB"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 2)
    return row


def predicted_gb(pipe, clf, batch, args, dev, dtype) -> float:
    """Peak memory without checkpointing extrapolated linearly from 1 and 2 sampler steps."""
    peaks = []
    for s in (1, 2):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        obj = logits_response(clf)
        z = torch.randn(batch, *pipe.latent_shape, device=dev, requires_grad=True)
        opt = torch.optim.SGD([z], lr=10.0)
        one_step(pipe, obj, z, opt, torch.zeros(batch, 10, device=dev), s, False, dtype, dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) / 2 ** 30)
    return peaks[0] + (peaks[1] - peaks[0]) * (max(args.steps) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny model (CPU smoke run)")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, nargs="+", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    args = ap.parse_args()
    dev = torch.device(args.device)
    args.batches = args.batches or ([1, 2] if args.small else [1, 8, 32])
    args.steps = args.steps or ([5, 10, 20] if args.small else [25, 50, 250])
    dtype = torch.bfloat16 if dev.type == "cuda" and not args.fp32 else torch.float32
    pipe, clf, px = build(args.small, dev)
    rows = []
    total = torch.cuda.get_device_properties(dev).total_memory / 2 ** 30 \
        if dev.type == "cuda" else float("inf")
    for batch in args.batches:
        for ckpt in (True, False):
            fits = True
            if not ckpt and dev.type == "cuda":
                need = predicted_gb(pipe, clf, batch, args, dev, dtype)
                fits_steps = [s for s in args.steps
                              if need / max(args.steps) * s <= 0.9 * total] if need else []
            for steps in args.steps:
                if not ckpt and dev.type == "cuda":
                    fits = steps in fits_steps
                if not fits:
                    rows.append(dict(batch=batch, steps=steps, checkpoint=ckpt,
                                     skipped="predicted memory > 90% of device"))
                    continue
                try:
                    rows.append(measure(pipe, clf, batch, steps, ckpt, args, dev, dtype))
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rows.append(dict(batch=batch, steps=steps, checkpoint=ckpt,
                                     skipped="out of memory"))
                print(json.dumps(rows[-1]), flush=True)
    name = "tiny LightningDiT (2×64, 4×8×8 latents)" if args.small else "LightningDiT-XL/1"
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"\n{name}, {px} px, Euler, {dtype}, device {dev_name}\n")
    cols = ["batch", "steps", "checkpoint", "s_per_step", "s_per_sample_step", "peak_GB",
            "saved_MB", "tflops", "skipped"]
    cols = [c for c in cols if any(c in r for r in rows)]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    print(json.dumps({"benchmark": "invariant_step", "model": name, "px": px,
                      "device": dev_name, "dtype": str(dtype), "rows": rows}))


if __name__ == "__main__":
    main()
