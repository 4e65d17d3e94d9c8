"""Grad-IFV Jacobian: batched (torch.func vjp + vmap) vs a loop of n_f backward passes.

`inverse-feature-visualization` §3.3 / Table 1: ``Dy`` of 512 features of GoogLeNet
inception4c at 224 px takes 0.7 s per sample on a GTX 1080 Ti (n_f backward passes). Here:
torchvision ResNet-50 (random weights), features = the first ``n_f`` channels of
``layer4`` aggregated with 3×3 max pooling + mean (§2.3), parameters = the pixels of the
P_rgb parameterization (sigmoid raw tensor). Goal: batched ≥ 20× the loop.

    python benchmarks/bench_ifv_jacobian.py                      # CUDA: 512 features, 224 px
    python benchmarks/bench_ifv_jacobian.py --device cpu --small # 64 features, 96 px

Prints a JSON object and a markdown table (seconds per sample, speed-up, max |difference|).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lightning_fv.utils.device import synchronize


def main() -> None:
    from torchvision.models import resnet50

    from lightning_fv.ifv.jacobian import feature_jacobian, feature_jacobian_loop
    from lightning_fv.optvis.param import ImageParam

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="64 features at 96 px (CPU)")
    ap.add_argument("--n-features", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1, help="visualizations per call")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="features per vectorized backward (default: all on CUDA, 32 on CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--channels-last", action="store_true",
                    help="channels_last weights and input, for both paths")
    ap.add_argument("--bf16", action="store_true",
                    help="a bf16 copy of the model for both paths, ReLU/max-pool decisions "
                         "pinned to a float32 pass (reports the angle to the float32 rows)")
    ap.add_argument("--no-pin", action="store_true",
                    help="with --bf16: let the bf16 copy make its own ReLU/max-pool decisions")
    ap.add_argument("--no-affine-bn", action="store_true",
                    help="batched path: differentiate the batch norms as F.batch_norm instead "
                         "of their affine eval-mode form; the loop always runs F.batch_norm")
    ap.add_argument("--skip-ablation", action="store_true",
                    help="do not also time the batched path with the other batch-norm form")
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="keep cuDNN's default algorithm choice (autotuning is on by default "
                         "on CUDA, for both paths; the warm-up call pays for it)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cudnn_benchmark = device.type == "cuda" and not args.no_cudnn_benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    n_f = args.n_features or (64 if args.small else 512)
    size = args.image_size or (96 if args.small else 224)
    chunk = args.chunk_size or (n_f if device.type == "cuda" else 32)

    torch.manual_seed(0)
    model = resnet50(weights=None).to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    param = ImageParam(args.batch, 3, size, size, fft=False, decorrelate=False,
                       output="sigmoid", device=device)
    feats = torch.arange(n_f)
    v = param.raw.detach()

    dtype = torch.bfloat16 if args.bf16 else None

    def batched(affine_bn: bool = not args.no_affine_bn) -> torch.Tensor:
        return feature_jacobian(model, args.layer, v, param, features=feats,
                                chunk_size=chunk, compute_dtype=dtype,
                                pin_decisions=not args.no_pin, affine_bn=affine_bn)[1]

    def loop() -> torch.Tensor:
        return feature_jacobian_loop(model, args.layer, v, param, features=feats,
                                     compute_dtype=dtype, pin_decisions=not args.no_pin)[1]

    def timed(fn: object, reps: int) -> tuple[float, torch.Tensor]:
        fn()  # warm-up (vmap tracing, cuDNN autotune)
        synchronize(device)
        best = float("inf")
        out = None
        for _ in range(reps):
            t = time.perf_counter()
            out = fn()
            synchronize(device)
            best = min(best, time.perf_counter() - t)
        return best, out

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_b, j_b = timed(batched, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    t_other = None  # the batched path with the other batch-norm form, same run
    if not args.skip_ablation:
        t_other, _ = timed(lambda: batched(args.no_affine_bn), args.repeats)
    t_l, j_l = timed(loop, max(1, args.repeats - 1))
    diff = float((j_b - j_l).abs().max() / j_l.abs().max().clamp_min(1e-30))
    angle_fp32 = None
    if args.bf16:  # how far the bf16 rows are from the float32 ones (degrees, median)
        ref = feature_jacobian(model, args.layer, v, param, features=feats,
                               chunk_size=chunk)[1].flatten(2).double()
        cos = torch.nn.functional.cosine_similarity(j_b.flatten(2).double(), ref, dim=2)
        angle_fp32 = float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).median())
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "model": "resnet50 (random weights)", "layer": args.layer,
        "n_features": n_f, "image_size": size, "batch": args.batch, "chunk_size": chunk,
        "channels_last": args.channels_last, "bf16": args.bf16,
        "pinned_decisions": args.bf16 and not args.no_pin,
        "affine_bn": not args.no_affine_bn,
        "cudnn_benchmark": cudnn_benchmark,
        "median_row_angle_to_fp32_deg": angle_fp32,
        "n_params_per_sample": int(v[0].numel()),
        "batched_s_per_sample": t_b / args.batch, "loop_s_per_sample": t_l / args.batch,
        "speedup": t_l / t_b,
        "batched_other_bn_form_s_per_sample": None if t_other is None else t_other / args.batch,
        "speedup_other_bn_form": None if t_other is None else t_l / t_other,
        "max_rel_diff": diff, "peak_mem_gib_batched": peak,
        "paper_s_per_sample_gtx1080ti": 0.7,
    }
    print(json.dumps(res, indent=2))
    print("\n| device | n_f | px | batched s/sample | loop s/sample | speed-up | max rel diff |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {res['device']} | {n_f} | {size} | {res['batched_s_per_sample']:.3f} | "
          f"{res['loop_s_per_sample']:.3f} | {res['speedup']:.1f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
