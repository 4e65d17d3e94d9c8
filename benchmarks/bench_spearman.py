"""Batched Spearman (lightning_fv.analysis.rank) vs a loop of ``scipy.stats.spearmanr``.

The sanity check of `dont-trust-your-eyes…` App. C.3 compares flattened activations of up
to 802,816 values (Inception-V1's largest layer; "about one third of a second" per pair
with SciPy). Here ``N`` ReLU-like activation vectors (many tied zeros) of ``D`` values are
compared all-pairs: ``N (N − 1) / 2`` pairs, every vector ranked once, then one chunked
matrix product. SciPy is timed on ``--scipy-pairs`` of those pairs (a loop, as a user
would write it) and extrapolated per pair; exactness is the largest absolute difference
over those pairs.

GPU (issue sizes):   python benchmarks/bench_spearman.py --device cuda
CPU (reduced size):  python benchmarks/bench_spearman.py --device cpu --small
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import scipy
import scipy.stats
import torch

from lightning_fv.analysis.rank import similarity_matrix
from lightning_fv.utils.device import synchronize


def run(device: str, n: int, dim: int, scipy_pairs: int, dtype: str, repeats: int) -> dict:
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(n, dim, generator=g))  # ~50 % tied zeros, like ReLU maps
    x[1::2] = x[::2][: x[1::2].shape[0]] + 0.5 * torch.relu(torch.randn(n // 2, dim, generator=g))
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    xd = x.to(dev)
    similarity_matrix(xd[:4], metric="spearman", dtype=tdtype)  # warm-up
    synchronize(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s = similarity_matrix(xd, metric="spearman", dtype=tdtype)
        synchronize(dev)
        times.append(time.perf_counter() - t0)
    t_batched = min(times)
    pairs = n * (n - 1) // 2
    iu = np.stack(np.triu_indices(n, 1), 1)
    pick = iu[np.linspace(0, len(iu) - 1, scipy_pairs).round().astype(int)]
    xn = x.numpy()
    t0 = time.perf_counter()
    ref = [scipy.stats.spearmanr(xn[i], xn[j])[0] for i, j in pick]
    t_scipy_pair = (time.perf_counter() - t0) / len(pick)
    got = s.cpu().double().numpy()[pick[:, 0], pick[:, 1]]
    max_err = float(np.abs(got - np.array(ref)).max())
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
        or "cpu",
        "threads": torch.get_num_threads(), "vectors": n, "values_per_vector": dim,
        "pairs": pairs, "dtype": dtype,
        "batched_seconds_all_pairs": t_batched,
        "batched_pairs_per_second": pairs / t_batched,
        "scipy_seconds_per_pair": t_scipy_pair,
        "scipy_seconds_all_pairs_extrapolated": t_scipy_pair * pairs,
        "speedup": t_scipy_pair * pairs / t_batched,
        "max_abs_error_vs_scipy": max_err, "checked_pairs": len(pick),
        "exact_to_1e-5": max_err < 1e-5,
        "torch": torch.__version__, "scipy": scipy.__version__,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="reduced CPU size")
    ap.add_argument("--n", type=int, default=None, help="vectors (pairs = n(n-1)/2)")
    ap.add_argument("--dim", type=int, default=None, help="values per vector")
    ap.add_argument("--scipy-pairs", type=int, default=None)
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.small:
        n, dim, sp = args.n or 48, args.dim or 50_176, args.scipy_pairs or 20
    else:
        n, dim, sp = args.n or 100, args.dim or 802_816, args.scipy_pairs or 10
    rows = [run(args.device, n, dim, sp, dt, args.repeats) for dt in args.dtype]
    print(json.dumps(rows, indent=1))
    print("\n| device | dtype | vectors × values | pairs | batched (s) | scipy/pair (s) "
          "| speedup | max err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['dtype']} | {r['vectors']} × {r['values_per_vector']} | "
              f"{r['pairs']} | {r['batched_seconds_all_pairs']:.3f} | "
              f"{r['scipy_seconds_per_pair']:.4f} | {r['speedup']:.0f}× | "
              f"{r['max_abs_error_vs_scipy']:.1e} |")
    return rows


if __name__ == "__main__":
    main()
