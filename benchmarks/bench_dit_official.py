"""LightningDiT-XL/1 sampling, our sampler vs the official hustvl/LightningDiT code, same run.

    bash benchmarks/carry_lightningdit.sh                         # once: official code -> .carry/
    python benchmarks/bench_dit_official.py --device cuda         # GPU: XL/1, 250 steps, B 8, 32
    python benchmarks/bench_dit_official.py --device cuda --compile   # + ours with torch.compile
    OMP_NUM_THREADS=1 python benchmarks/bench_dit_official.py --device cpu --small  # smoke, ~1 min

Run from the repository root with ``lightning_fv`` importable (installed, or ``PYTHONPATH=.`` as
in ``gpu_pending.sh``). Expected GPU time at the defaults: ~3.5 min on one H100/H200
(estimate: ~1.5 min of sampling, the official rows' compile warm-ups, model set-up);
``--compile`` adds ~2 min (add ``--no-official-eager`` to stay well inside 6 min).
On the device machine, name ``.carry/LightningDiT`` in the tool's ``carry`` (it has no
network). The script imports the official code from there unchanged (``--official``):
``models/lightningdit.py`` (the model, ``forward_with_cfg``) and ``transport/``
(``create_transport``, ``Sampler.sample_ode``, which integrates with ``torchdiffeq.odeint``).

What is compared. The official ``LightningDiT-XL/1`` is built from the release config
(``--config``, default ``configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml``,
the 800-epoch FID-1.35 model: SwiGLU, RoPE, RMSNorm, no QK-norm, shift kept, 32 latent channels,
16×16 latents from 256 px / 16, 1000 classes, ``learn_sigma`` off) with random weights: the
release initialisation (seed ``--seed``) plus N(0, 0.02²) noise on every parameter but the fixed
``pos_embed`` (the release zeroes the adaLN and output layers, which would make every velocity 0).
Its ``state_dict`` (buffers ``pos_embed``, ``feat_rope.freqs_cos/sin`` included) is loaded into
OUR :class:`~lightning_fv.diffusion.LightningDiT` with ``load_lightningdit_state_dict``
(``strict=True``); a key or shape mismatch is printed and the script stops. Then, in fp32 with
TF32 off, one ``forward`` call of each on the same input and one guided velocity (official
``forward_with_cfg`` vs our ``guided_velocity``, at a time inside and one outside the guidance
interval) are compared (max |difference|, printed).

Timing, for each batch (default 8 and 32), same initial noise and labels, ``torch.no_grad``,
``--dtype`` autocast (bf16 default), one timed full run after a ``--warmup-steps`` run, a
``torch._dynamo.reset()`` before each batch:

- ``official``: exactly what ``inference.py`` (lines 95-114, 200-218) does: ``create_transport``
  and ``Sampler(transport).sample_ode(sampling_method, num_steps, atol, rtol, reverse,
  timestep_shift)`` from the config, the noise and labels doubled (``cat([z, z])``, null label
  1000 for the second half), ``model.forward_with_cfg(x, t, y, cfg_scale, cfg_interval=True,
  cfg_interval_start)`` as the drift, ``[-1]`` of the trajectory and its first half. NB the
  official model is *not* eager as released: ``models/lightningdit.py`` decorates
  ``modulate``, ``LightningDiTBlock.forward``, ``FinalLayer.forward``,
  ``TimestepEmbedder.forward``, ``LabelEmbedder.forward`` and ``SwiGLUFFN.forward`` with
  ``@torch.compile``, so this row includes that (per-module) compilation; its warm-up time and
  the number of dynamo graphs are in the row;
- ``official_eager``: the same with those decorators switched off
  (``torch.compiler.set_stance("force_eager")``); ``--no-official-eager`` drops the row;
- ``ours``: :func:`lightning_fv.diffusion.sample` with the same settings (our ``num_steps`` =
  ``num_sampling_steps - 1``: the release's 250 are grid points, 249 Euler steps, 249 model
  calls, on 2·B latents inside the guidance interval and B before it), eager;
- ``ours_compile`` (``--compile``): ours on ``torch.compile(model)``.

Each row: seconds, images/s, ``speedup`` = images/s ÷ the ``official`` row's (goal ≥ 1.5 for
``ours``), ``speedup_eager`` (÷ ``official_eager``), achieved TFLOP/s (``FlopCounterMode`` on one
call × calls: 2·B latents on every official call; ours evaluates B on the steps before the
guidance interval, 81 of 249), peak GPU memory (absolute: both models' weights, ~5.4 GB at XL/1, are
resident; ``run_mem_gb`` is the peak above what was allocated before the run, including the
official ``odeint`` trajectory of 250 states of 2·B latents), warm-up seconds, and the max |diff|
of the final latents against the official row's (``max_diff``, and ``rel_diff`` = that ÷
max |official|) and against the ``official_eager`` row's (``max_diff_eager``). A markdown
table and one JSON line are printed; ``--json PATH`` writes the JSON.

Release sampling settings (config ``sample:``/``transport:``, lines 58-76 of the 800-epoch
file: ``num_sampling_steps`` l. 65, ``cfg_scale`` l. 66, ``cfg_interval_start`` l. 75,
``timestep_shift`` l. 76; ``inference.py``):
Euler ODE (``mode: ODE``, ``sampling_method: euler``, torchdiffeq), ``num_sampling_steps: 250``
= ``linspace(0, 1, 250)`` (249 steps; ``transport/integrators.py`` line 94), ``timestep_shift:
0.3`` (``t ↦ s·t/(1 + (s−1)·t)``, lines 96-101; 0 = none), ``cfg_scale: 6.7``,
``cfg_interval_start: 0.125`` (the main ``configs/lightningdit_xl_vavae_f16d32.yaml`` has 0.11
with ``cfg_scale: 10.0``), guidance on the first 3 of 32 channels only
(``forward_with_cfg``, ``models/lightningdit.py`` line 432), off where ``t[0] <
cfg_interval_start``; the model always sees 2·B latents; Linear path, velocity prediction,
``sample_eps = 0``. These are taken from the config at run time and checked against
:func:`lightning_fv.diffusion.pipeline.release_sampler`. The release script runs the model in
fp32 with TF32 matmuls (``allow_tf32 = True``; ``accelerate launch --mixed_precision bf16`` does
not reach the model, which ``inference.py`` never passes to ``accelerator.prepare``): use
``--dtype fp32`` for that; TF32 is on for the timings here as in ``inference.py``.

Why the final latents differ slightly in bf16: torchdiffeq's Euler step computes ``dt · f`` in
the drift's dtype (bf16 under autocast: a 0-dim fp32 ``dt`` does not promote) before adding it
to the fp32 state, ours casts the velocity to fp32 first. That is the only difference from the
eager official run: on the ``--small`` model, ours with ``dt · f`` in bf16 equals
``official_eager`` bitwise, and in fp32 ours equals it bitwise (``max_diff_eager`` 0; the model
``forward`` and the guided velocity are bitwise equal too). The ``official`` row's inductor
kernels (the decorators) round differently again (``max_diff`` ~5e-7 in fp32). So in bf16 the
runs agree to ~1e-3 relative (tiny model, 7 steps), not bitwise; TF32 on a GPU adds ~1e-3 in fp32.

Packages the official model + sampler path imports: torch, numpy, timm (``PatchEmbed``, ``Mlp``),
einops (RoPE), torchdiffeq, scipy (``transport.py`` top level), tqdm, pyyaml (config) - all on
the H200 image. einops is not in this project's .venv: the script falls back to a pure-python
wheel in ``.whl/`` (``.venv/bin/pip download einops --no-deps -d .whl/``), put on ``sys.path``.
``models/rmsnorm.py`` imports ``fairscale`` at top level for a Llama ``Transformer`` that
LightningDiT does not use; fairscale has no wheel (sdist only), so when it is missing a tiny
``sys.modules`` shim stands in (its layers raise if ever built). xformers, flash-attn and apex
are not needed (``swiglu_ffn.py`` tries xformers only for a class LightningDiT does not use).
No VAE: ``tokenizer/`` and ``inference.py`` are not imported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from lightning_fv.diffusion.model import LightningDiT, load_lightningdit_state_dict
from lightning_fv.diffusion.pipeline import release_sampler
from lightning_fv.diffusion.sampler import guided_velocity, sample
from lightning_fv.utils.device import synchronize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dit_sampling import flops_per_call, model_calls  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_DIR = ROOT / ".carry" / "LightningDiT"
RELEASE_CONFIG = "configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml"
# the tiny architecture of --small (the official constructor takes any of these)
SMALL_ARCH = dict(input_size=8, in_channels=8, hidden_size=64, depth=2, num_heads=4,
                  num_classes=10)


# --------------------------------------------------------------------------- official code
def _fairscale_shim() -> None:
    """Stand-in for ``fairscale`` (imported at the top of the official ``models/rmsnorm.py``
    for a Llama model LightningDiT never builds)."""

    class _Unavailable(nn.Module):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("fairscale is not installed (benchmark shim)")

    names = ["fairscale", "fairscale.nn", "fairscale.nn.model_parallel",
             "fairscale.nn.model_parallel.initialize", "fairscale.nn.model_parallel.layers"]
    mods = {n: types.ModuleType(n) for n in names}
    for parent, child in zip(names, names[1:]):
        setattr(mods[parent], child.rsplit(".", 1)[1], mods[child])
    for cls in ("ColumnParallelLinear", "ParallelEmbedding", "RowParallelLinear"):
        setattr(mods["fairscale.nn.model_parallel.layers"], cls, _Unavailable)
    sys.modules.update(mods)


def import_official(path: Path) -> tuple[types.ModuleType, types.ModuleType, list[str]]:
    """Import the official ``models.lightningdit`` and ``transport`` from ``path``; returns
    them and notes on what was shimmed or taken from ``.whl/``."""
    if not (path / "models" / "lightningdit.py").is_file():
        raise SystemExit(f"official LightningDiT code not found at {path}: run "
                         f"`bash benchmarks/carry_lightningdit.sh` first")
    notes: list[str] = []
    try:
        import einops  # noqa: F401
    except ImportError:
        wheels = sorted((ROOT / ".whl").glob("einops-*.whl"))
        if not wheels:
            raise SystemExit("the official RoPE needs einops: pip install einops, or "
                             "`.venv/bin/pip download einops --no-deps -d .whl/`") from None
        sys.path.insert(0, str(wheels[-1]))
        notes.append(f"einops from {wheels[-1].name}")
    try:
        import fairscale  # noqa: F401
    except ImportError:
        _fairscale_shim()
        notes.append("fairscale shimmed")
    for name in ("models", "transport"):
        mod = sys.modules.get(name)
        if mod is not None and not str(getattr(mod, "__file__", "")).startswith(str(path)):
            raise SystemExit(f"a module named {name!r} is already imported from "
                             f"{getattr(mod, '__file__', '?')}; cannot import the official one")
    sys.path.insert(0, str(path))
    import models.lightningdit as official_models  # type: ignore[import-not-found]
    import transport as official_transport  # type: ignore[import-not-found]

    return official_models, official_transport, notes


def official_sample_fn(transport_mod: types.ModuleType, cfg: dict[str, Any],
                       num_steps: int) -> Callable[..., Tensor]:
    """``sample_fn`` built as ``inference.py`` builds it (lines 95-114)."""
    tr, s = cfg["transport"], cfg["sample"]
    if s["mode"] != "ODE":
        raise SystemExit(f"only the ODE sampling mode is benchmarked, config has {s['mode']}")
    transport = transport_mod.create_transport(
        tr["path_type"], tr["prediction"], tr["loss_weight"], tr["train_eps"], tr["sample_eps"],
        use_cosine_loss=tr.get("use_cosine_loss", False),
        use_lognorm=tr.get("use_lognorm", False))
    sampler = transport_mod.Sampler(transport)
    return sampler.sample_ode(sampling_method=s["sampling_method"], num_steps=num_steps,
                              atol=s["atol"], rtol=s["rtol"], reverse=s["reverse"],
                              timestep_shift=s.get("timestep_shift", 0))


def run_official(model: nn.Module, sample_fn: Callable[..., Tensor], z: Tensor, y: Tensor,
                 null: int, cfg_scale: float, cfg_start: float) -> Tensor:
    """The sampling loop body of ``inference.py`` (lines 202-218), without the VAE."""
    if cfg_scale > 1.0:
        z = torch.cat([z, z], 0)
        y = torch.cat([y, torch.full_like(y, null)], 0)
        kw: dict[str, Any] = dict(y=y, cfg_scale=cfg_scale, cfg_interval=True,
                                  cfg_interval_start=cfg_start)
        out = sample_fn(z, model.forward_with_cfg, **kw)[-1]
        return out.chunk(2, dim=0)[0]
    return sample_fn(z, model.forward, y=y)[-1]


# --------------------------------------------------------------------------- models
def build_models(official_models: types.ModuleType, cfg: dict[str, Any], small: bool,
                 dev: torch.device, seed: int) -> tuple[nn.Module, LightningDiT, dict[str, Any]]:
    """The official model from the config (random weights) and ours with its state dict."""
    m, d = cfg["model"], cfg["data"]
    opts: dict[str, Any] = dict(
        input_size=d["image_size"] // cfg["vae"].get("downsample_ratio", 16),
        num_classes=d["num_classes"], use_qknorm=m["use_qknorm"],
        use_swiglu=m.get("use_swiglu", False), use_rope=m.get("use_rope", False),
        use_rmsnorm=m.get("use_rmsnorm", False), wo_shift=m.get("wo_shift", False),
        in_channels=m.get("in_chans", 4), learn_sigma=m.get("learn_sigma", False))
    torch.manual_seed(seed)
    with torch.device(dev):
        if small:
            opts.update(SMALL_ARCH)
            official = official_models.LightningDiT(patch_size=1, **opts)
        else:
            official = official_models.LightningDiT_models[m["model_type"]](**opts)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in official.named_parameters():
            if name != "pos_embed":
                p.add_(0.02 * torch.randn(p.shape, generator=g).to(p.device))
    official.eval().requires_grad_(False)
    arch = dict(opts, patch_size=official.patch_size, hidden_size=official.hidden_size,
                depth=official.depth, num_heads=official.num_heads)
    with torch.device(dev):
        ours = LightningDiT(**arch)
    state = official.state_dict()
    own = ours.state_dict()
    only_official = sorted(set(state) - set(own))
    only_ours = sorted(set(own) - set(state))
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in sorted(set(state) & set(own))
              if state[k].shape != own[k].shape]
    if only_official or only_ours or shapes:
        print("STRICT LOAD FAILS: keys only in the official state dict:", only_official)
        print("keys only in ours:", only_ours)
        print("shape mismatches (key, official, ours):", shapes)
        raise SystemExit(1)
    load_lightningdit_state_dict(ours, state)  # strict=True
    ours.eval().requires_grad_(False)
    arch["keys"] = len(state)
    return official, ours, arch


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def forward_check(official: nn.Module, ours: LightningDiT, null: int, cfg_scale: float,
                  cfg_start: float, dev: torch.device) -> dict[str, float]:
    """Max |official − ours| in fp32 (TF32 off, official decorators eager): one ``forward``
    on 4 latents, and the guided velocity at t = 0.5 and at t = cfg_start / 2."""
    s = ours.input_size
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(4, ours.in_channels, s, s, device=dev, generator=g)
    t = torch.rand(4, device=dev, generator=g)
    y = torch.randint(0, ours.num_classes, (4,), device=dev, generator=g)
    y[-1] = null
    res: dict[str, float] = {}
    with _tf32(False), torch.no_grad(), torch.compiler.set_stance("force_eager"):
        res["forward"] = (official(x, t, y) - ours(x, t, y)).abs().max().item()
        for name, tv in (("cfg_on", 0.5), ("cfg_off", cfg_start / 2)):
            tt = torch.full((4,), tv, device=dev)
            ref = official.forward_with_cfg(
                torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, torch.full_like(y, null)]),
                cfg_scale, cfg_interval=True, cfg_interval_start=cfg_start)[:4]
            got = guided_velocity(ours, x, tt, y, cfg_scale, cfg_start, guidance_channels=3)
            res[name] = (ref - got).abs().max().item()
    return res


# --------------------------------------------------------------------------- timing
def _graphs() -> int:
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - private API, informative only
        return -1


def timed(fn: Callable[[], Tensor], dev: torch.device) -> tuple[Tensor, float, float | None,
                                                                float | None]:
    """(output, seconds, peak GB, peak GB above the memory allocated before the run)."""
    synchronize(dev)
    base = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    t0 = time.perf_counter()
    out = fn()
    synchronize(dev)
    secs = time.perf_counter() - t0
    if base is None:
        return out, secs, None, None
    peak = torch.cuda.max_memory_allocated(dev)
    return out, secs, round(peak / 2**30, 2), round((peak - base) / 2**30, 2)


def bench_batch(batch: int, official: nn.Module, ours: LightningDiT, compiled: nn.Module | None,
                mods: types.ModuleType, cfg: dict[str, Any], args: argparse.Namespace,
                dev: torch.device) -> list[dict[str, Any]]:
    s, c = ours.input_size, ours.in_channels
    g = torch.Generator(device=dev).manual_seed(args.seed + batch)
    z = torch.randn(batch, c, s, s, device=dev, generator=g)
    y = torch.randint(0, ours.num_classes, (batch,), device=dev, generator=g)
    null = ours.num_classes
    n = args.num_sampling_steps
    shift = args.shift if args.shift > 0 else None
    guided = args.cfg_scale > 1.0
    calls = n - 1
    # the official model sees 2·B latents on every call; ours only inside the interval
    official_flops = calls * flops_per_call(ours, 2 * batch if guided else batch, dev)
    with_cfg, without = model_calls(calls, args.cfg_start, shift) if guided else (0, calls)
    ours_flops = (with_cfg * flops_per_call(ours, 2 * batch, dev)
                  + without * flops_per_call(ours, batch, dev))
    full_fn = official_sample_fn(mods, cfg, n)
    warm_fn = official_sample_fn(mods, cfg, args.warmup_steps + 1)
    autocast = torch.autocast(dev.type, dtype=args.torch_dtype,
                              enabled=args.torch_dtype != torch.float32)
    ours_kw = dict(shift=shift, cfg_scale=args.cfg_scale, cfg_interval_start=args.cfg_start,
                   guidance_channels=3, enable_grad=False)

    def official_run(fn: Callable[..., Tensor]) -> Callable[[], Tensor]:
        return lambda: run_official(official, fn, z, y, null, args.cfg_scale, args.cfg_start)

    def ours_run(net: nn.Module, steps: int) -> Callable[[], Tensor]:
        return lambda: sample(net, z, y, num_steps=steps, **ours_kw)

    variants: list[tuple[str, Callable[[], Tensor], Callable[[], Tensor], Any]] = [
        ("official", official_run(warm_fn), official_run(full_fn), contextlib.nullcontext)]
    if not args.no_official_eager:
        variants.append(("official_eager", official_run(warm_fn), official_run(full_fn),
                         lambda: torch.compiler.set_stance("force_eager")))
    variants.append(("ours", ours_run(ours, args.warmup_steps), ours_run(ours, calls),
                     contextlib.nullcontext))
    if compiled is not None:
        variants.append(("ours_compile", ours_run(compiled, args.warmup_steps),
                         ours_run(compiled, calls), contextlib.nullcontext))

    torch._dynamo.reset()
    rows: list[dict[str, Any]] = []
    ref: Tensor | None = None
    ref_eager: Tensor | None = None
    base: dict[str, float] = {}
    with torch.no_grad(), _tf32(True):
        for name, warm, full, ctx in variants:
            graphs0 = _graphs()
            with ctx(), autocast:
                w0 = time.perf_counter()
                warm()
                synchronize(dev)
                warm_s = time.perf_counter() - w0
                out, secs, peak, run_mem = timed(full, dev)
            out = out.float()
            if ref is None:
                ref = out
            if name == "official_eager":
                ref_eager = out
            ips = batch / secs
            base.setdefault(name, ips)
            diff = (out - ref).abs().max().item()
            row: dict[str, Any] = dict(
                impl=name, batch=batch, seconds=round(secs, 3), images_per_s=round(ips, 3),
                speedup=round(ips / base["official"], 3),
                speedup_eager=round(ips / base["official_eager"], 3)
                if "official_eager" in base else None,
                tflops=round((ours_flops if name.startswith("ours") else official_flops)
                             / secs / 1e12, 2), peak_mem_gb=peak, run_mem_gb=run_mem,
                warmup_s=round(warm_s, 1), max_diff=float(f"{diff:.3g}"),
                rel_diff=float(f"{diff / max(ref.abs().max().item(), 1e-30):.3g}"),
                max_diff_eager=None if ref_eager is None
                else float(f"{(out - ref_eager).abs().max().item():.3g}"),
                finite=bool(torch.isfinite(out).all()))
            if name == "official":
                row["dynamo_graphs"] = _graphs() - graphs0 if graphs0 >= 0 else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny model and few steps (CPU smoke)")
    ap.add_argument("--official", type=Path, default=OFFICIAL_DIR,
                    help="the official code (default .carry/LightningDiT)")
    ap.add_argument("--config", default=RELEASE_CONFIG,
                    help="release config, relative to --official (or an absolute path)")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--num-sampling-steps", type=int, default=None,
                    help="grid points as in the config (default: config's, 250; --small 8)")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: config's (6.7)")
    ap.add_argument("--cfg-start", type=float, default=None,
                    help="cfg interval start, default: config's (0.125)")
    ap.add_argument("--shift", type=float, default=None,
                    help="timestep shift, default: config's (0.3); 0 = none")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    ap.add_argument("--no-official-eager", action="store_true",
                    help="skip the official run with its @torch.compile decorators off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    args.torch_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    official_models, transport_mod, notes = import_official(args.official.resolve())
    cfg_path = Path(args.config)
    cfg_path = cfg_path if cfg_path.is_absolute() else args.official / cfg_path
    cfg = yaml.safe_load(cfg_path.read_text())
    smp = cfg["sample"]
    rel = release_sampler()
    found = dict(num_sampling_steps=smp["num_sampling_steps"], cfg_scale=smp["cfg_scale"],
                 cfg_start=smp.get("cfg_interval_start", 0),
                 shift=smp.get("timestep_shift", 0), method=smp["sampling_method"])
    ours_release = dict(num_sampling_steps=rel.num_steps + 1, cfg_scale=rel.cfg_scale,
                        cfg_start=rel.cfg_interval_start, shift=rel.shift, method=rel.method)
    if found != ours_release:
        print(f"NOTE: config {cfg_path.name} sample settings {found} differ from "
              f"release_sampler() {ours_release}")
    for key in ("cfg_scale", "cfg_start", "shift"):
        if getattr(args, key) is None:
            setattr(args, key, float(found[key]))
    cfg["sample"].update(cfg_scale=args.cfg_scale, cfg_interval_start=args.cfg_start,
                         timestep_shift=args.shift)
    if args.num_sampling_steps is None:
        args.num_sampling_steps = 8 if args.small else int(found["num_sampling_steps"])
    batches = args.batches or ([2, 4] if args.small else [8, 32])

    t0 = time.perf_counter()
    official, ours, arch = build_models(official_models, cfg, args.small, dev, args.seed)
    null = ours.num_classes
    build_s = time.perf_counter() - t0
    name = (f"LightningDiT tiny (d{arch['depth']} h{arch['hidden_size']}, "
            f"{arch['in_channels']}x{arch['input_size']}x{arch['input_size']})" if args.small
            else cfg["model"]["model_type"])
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    check = forward_check(official, ours, null, args.cfg_scale, args.cfg_start, dev)
    commit_file = args.official / "COMMIT"
    commit = commit_file.read_text().strip()[:12] if commit_file.is_file() else "?"
    print(f"official code {commit} ({', '.join(notes) or 'all packages present'}); "
          f"{name}, {params:.1f} M params, "
          f"state dict {arch['keys']} keys loaded strictly into ours; built in {build_s:.1f} s")
    print(f"fp32 max |official - ours|: forward {check['forward']:.3g}, guided velocity "
          f"(t=0.5) {check['cfg_on']:.3g}, (t={args.cfg_start / 2:g}, no guidance) "
          f"{check['cfg_off']:.3g}", flush=True)

    compiled = torch.compile(ours) if args.compile else None
    rows: list[dict[str, Any]] = []
    for batch in batches:
        rows += bench_batch(batch, official, ours, compiled, transport_mod, cfg, args, dev)

    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    settings = (f"{args.num_sampling_steps} grid points = {args.num_sampling_steps - 1} Euler "
                f"steps, cfg {args.cfg_scale} from t={args.cfg_start} on 3 channels, shift "
                f"{args.shift}, {'bf16 autocast' if args.dtype == 'bf16' else 'fp32'}, TF32 on")
    print(f"\n{name}, {params:.1f} M params, {settings}, device {dev_name}, "
          f"torch {torch.__version__}\n")
    keys = [k for k in rows[0] if k != "dynamo_graphs"] + ["dynamo_graphs"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    speedup = {str(r["batch"]): r["speedup"] for r in rows if r["impl"] == "ours"}
    speedup_c = {str(r["batch"]): r["speedup"] for r in rows if r["impl"] == "ours_compile"}
    print(f"\nours eager / official (images/s): {speedup} (goal >= 1.5)"
          + (f"; ours compiled / official: {speedup_c}" if speedup_c else ""))
    result = dict(model=name, params_m=round(params, 1), settings=settings, device=dev_name,
                  torch=torch.__version__, forward_check=check, speedup_ours=speedup,
                  speedup_ours_compile=speedup_c or None, notes=notes, rows=rows)
    print(json.dumps(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
