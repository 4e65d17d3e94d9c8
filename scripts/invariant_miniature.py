"""Invariant sets in miniature: the bundled digits LightningDiT + the bundled digits CNN.

    python scripts/invariant_miniature.py            # ~5–10 min on 2 CPU cores
    python scripts/invariant_miniature.py --quick    # a smoke run (2 classes, 8 steps)

For validation digits of several classes (the queries ``x*``) it samples invariant sets of the
classifier's logits with Algorithm 1 of ``equidiff-invariant-sets-thesis`` App. .1
(:func:`lightning_fv.diffusion.invariant.invariant_set_sample`): unconditional generation
(null class), SGD on ``z_T`` through the whole Euler sampler with per-step checkpointing, loss
``λ·(‖L(x) − L(x*)‖² + ‖L(F(x)) − L(x*)‖²)`` with the ideal low-pass filter ``F`` (cutoff 0.5),
early stop at ``τ``. The same starting latents are optimized with the unfiltered-only loss
for comparison. Reported: fraction of samples reaching ``τ`` and the steps used, the RMS pixel
distance of each sample to its query and to its own unoptimized start image, the set
diversity (mean pairwise RMS distance), the spectral sweep of App. .4.2 (deviation of the
response of the low-pass filtered sample from the target for cutoffs 0.1…0.9; also for the
queries themselves as the natural reference), FID (torchmetrics) on the classifier's
penultimate features, and a sparse-autoencoder feature objective (§4.3) as a second
objective. Writes ``docs/figures/invariant_*.png`` and ``outputs/invariant_miniature.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_fv.analysis.invariance import (
    DEFAULT_CUTOFFS,
    ClassifierFeatures,
    fid_metric,
    pairwise_diversity,
    query_distance,
    spectral_sweep,
    spectral_sweep_figure,
)
from lightning_fv.data import digits
from lightning_fv.diffusion.invariant import (
    invariant_set_sample,
    logits_response,
    sae_response,
    seeded_latents,
)
from lightning_fv.diffusion.pipeline import ASSET, load_pipeline
from lightning_fv.models import bundled_model
from lightning_fv.models.sae import layer_tokens, train_sae
from lightning_fv.modules.invariant_sampler import select_queries
from lightning_fv.utils import save_grid

ROOT = Path(__file__).resolve().parent.parent
FIG = ROOT / "docs" / "figures"  # set from --figures in main()


def wait_for(path: Path, minutes: float) -> None:
    t0 = time.time()
    while not path.is_file():
        if time.time() - t0 > minutes * 60:
            raise FileNotFoundError(f"{path} did not appear within {minutes} min "
                                    "(run scripts/train_diffusion.py)")
        print(f"waiting for {path} ...", flush=True)
        time.sleep(30)


def describe(name: str, res, q: torch.Tensor, start: torch.Tensor, n: int) -> dict:
    """Numbers of one run (``res``: InvariantSetResult)."""
    qq = q[res.query_index]
    dist_q = query_distance(res.images, qq)
    dist_start = query_distance(res.images, start)
    sets = res.images.reshape(-1, n, *res.images.shape[1:])
    div = torch.stack([pairwise_diversity(s) for s in sets])
    reached = res.reached
    out = {
        "run": name,
        "samples": int(reached.numel()),
        "fraction_reached": float(reached.float().mean()),
        "median_steps_reached": (float(res.steps[reached].float().median())
                                 if reached.any() else None),
        "mean_steps_all": float(res.steps.float().mean()),
        "final_loss_median": float(res.losses.median()),
        "unfiltered_term_median": float(res.loss_unfiltered.median()),
        "filtered_term_median": float(res.loss_filtered.median()),
        "pixel_distance_to_query_mean": float(dist_q.mean()),
        "pixel_distance_to_start_mean": float(dist_start.mean()),
        "diversity_mean": float(div.mean()),
        "argmax_agrees_with_query": float((res.responses.argmax(1) ==
                                           res.target.argmax(1)).float().mean()),
        "seconds": round(res.seconds, 1),
    }
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 2, 4, 6, 8])
    ap.add_argument("--samples", type=int, default=4, help="samples per query")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--tau", type=float, default=0.01)
    ap.add_argument("--lr", type=float, default=30.0)
    ap.add_argument("--step-size", type=float, default=0.01, help="λ of Alg. 1 line 20")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on busy shared cores)")
    ap.add_argument("--cutoff", type=float, default=0.5)
    ap.add_argument("--num-steps", type=int, default=10, help="Euler steps of the sampler")
    ap.add_argument("--pipeline", default="bundled")
    ap.add_argument("--wait-minutes", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-sae", action="store_true")
    ap.add_argument("--sae-step-size", type=float, default=1.0)
    ap.add_argument("--sae-tau", type=float, default=1e-3)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "invariant_miniature.json"))
    ap.add_argument("--figures", default=None,
                    help="figure folder (default docs/figures; with --quick "
                         "outputs/invariant_miniature_quick)")
    args = ap.parse_args()
    global FIG
    if args.figures is not None:
        FIG = Path(args.figures)
    elif args.quick:
        FIG = ROOT / "outputs" / "invariant_miniature_quick"
    if args.quick:
        args.classes, args.samples, args.budget, args.num_steps = [1, 7], 2, 8, 5
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.pipeline == "bundled":
        wait_for(ASSET, args.wait_minutes)
    pipe = load_pipeline(args.pipeline)
    clf = bundled_model("digits").eval()
    xv, yv = digits("val")
    q, qy = select_queries(xv, yv, 1, args.classes)
    n = args.samples
    obj = logits_response(clf)
    seeds = list(range(q.shape[0] * n))
    z0 = seeded_latents(pipe, seeds, "cpu")
    common = dict(num_samples=n, z_T=z0, budget=args.budget, tau=args.tau, lr=args.lr,
                  step_size=args.step_size, num_steps=args.num_steps)
    with torch.no_grad():
        start = pipe.generate(z0, None, num_steps=args.num_steps)
        start = torch.nn.functional.interpolate(start, size=q.shape[-2:], mode="bilinear",
                                                antialias=True) \
            if start.shape[-2:] != q.shape[-2:] else start
        tgt = clf(q)
    print(f"queries: classes {qy.tolist()}, {n} samples each, logits norm "
          f"{float(tgt.norm(dim=1).mean()):.2f}", flush=True)

    runs = {}
    results = {}
    for name, cutoff in (("dual", args.cutoff), ("unfiltered", None)):
        res = invariant_set_sample(pipe, obj, q, cutoff=cutoff, **common)
        results[name] = res
        runs[name] = describe(name, res, q, start, n)

    cutoffs = DEFAULT_CUTOFFS
    sweeps = {}
    with torch.no_grad():
        for name, res in results.items():
            sweeps[f"{name} loss samples"] = spectral_sweep(obj, res.images, res.target, cutoffs)
        sweeps["queries (natural)"] = spectral_sweep(obj, q, tgt, cutoffs)
        sweeps["unoptimized starts"] = spectral_sweep(obj, start, tgt.repeat_interleave(n, 0),
                                                      cutoffs)
    sweep_table = {k: [round(float(v), 4) for v in s.median(1).values]
                   for k, s in sweeps.items()}
    print(json.dumps({"sweep_median": sweep_table}), flush=True)

    # FID on the classifier's penultimate features: samples vs. validation digits
    feats = ClassifierFeatures(clf)
    fid = {}
    for name, imgs in (("dual", results["dual"].images), ("unfiltered",
                                                          results["unfiltered"].images),
                       ("unoptimized starts", start)):
        m = fid_metric(feats)
        m.update(xv, real=True)
        m.update(imgs, real=False)
        fid[name] = round(float(m.compute()), 3)
    xt, _ = digits("train")
    m = fid_metric(feats)
    m.update(xv, real=True)
    m.update(xt[: len(start)], real=False)
    fid[f"train digits (n={len(start)}, reference)"] = round(float(m.compute()), 3)
    print(json.dumps({"fid_penultimate": fid}), flush=True)

    FIG.mkdir(parents=True, exist_ok=True)
    for name, res in results.items():
        sets = res.images.reshape(-1, n, *res.images.shape[1:])
        rows = torch.cat([q[:, None], start.reshape(-1, n, *start.shape[1:])[:, :1], sets], 1)
        save_grid(rows.flatten(0, 1), FIG / f"invariant_samples_{name}.png", nrow=n + 2)
    fig = spectral_sweep_figure(cutoffs, sweeps, title="Spectral sweep (App. .4.2), digits")
    fig.savefig(FIG / "invariant_sweep.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    f2 = Figure(figsize=(5.0, 3.4), dpi=100)
    FigureCanvasAgg(f2)
    ax = f2.add_subplot(1, 1, 1)
    for name, res in results.items():
        h = res.history.clone()
        # frozen samples keep their last value so that medians over all samples are defined
        for i in range(h.shape[1]):
            last = int(torch.nonzero(~torch.isnan(h[:, i])).max())
            h[last + 1:, i] = h[last, i]
        ax.plot(h.median(1).values.numpy(), label=f"{name}: median")
        ax.fill_between(range(h.shape[0]), h.quantile(0.25, 1).numpy(),
                        h.quantile(0.75, 1).numpy(), alpha=0.2)
    ax.axhline(args.tau, color="k", ls="--", lw=1, label="τ")
    ax.set_yscale("log")
    ax.set_xlabel("SGD step on z_T")
    ax.set_ylabel("loss (frozen after τ)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    f2.tight_layout()
    f2.savefig(FIG / "invariant_loss.png")

    sae_out = None
    if not args.no_sae:
        layer = "block3"
        tokens = layer_tokens(clf, layer, xt[:300])
        sae, stats = train_sae(tokens, d_hidden=192, k=8, steps=400, lr=3e-3, seed=0)
        # the most active SAE feature on validation digits, and its top query
        with torch.no_grad():
            from lightning_fv.optvis.hooks import capture

            with capture(clf, [layer]) as a:
                clf(xv)
                codes = sae.encode(a[layer].movedim(1, -1)).flatten(1, 2).mean(1)
        feat = int(codes.mean(0).argmax())
        sobj = sae_response(clf, layer, sae, [feat])
        with torch.no_grad():
            acts = sobj.fn(xv)[:, 0]
        top = int(acts.argmax())
        sq = xv[top: top + 1]
        sres = invariant_set_sample(pipe, sobj, sq, cutoff=args.cutoff,
                                    **{**common, "num_samples": 4, "tau": args.sae_tau,
                                       "step_size": args.sae_step_size,
                                       "z_T": seeded_latents(pipe, range(1000, 1004), "cpu")})
        with torch.no_grad():
            sstart = pipe.generate(sres.z_init, None, num_steps=args.num_steps)
        sae_out = {"layer": layer, "d_hidden": 192, "k": 8, "fvu": round(stats["fvu"], 4),
                   "feature": feat, "query_activation": round(float(acts[top]), 4),
                   "start_activation": [round(float(v), 4) for v in sobj.fn(sstart)[:, 0]],
                   "final_activation": [round(float(v), 4) for v in sres.responses[:, 0]],
                   "fraction_reached": sres.fraction_reached,
                   "steps": sres.steps.tolist(), "final_loss": sres.losses.tolist(),
                   "pixel_distance_to_query": query_distance(sres.images, sq).tolist()}
        save_grid(torch.cat([sq, sres.images, sq, sstart]), FIG / "invariant_samples_sae.png",
                  nrow=5)
        print(json.dumps({"sae": sae_out}), flush=True)

    report = {"config": {**vars(args), "queries_classes": qy.tolist()}, "runs": runs,
              "sweep_cutoffs": list(cutoffs), "sweep_median": sweep_table,
              "fid_penultimate": fid, "sae": sae_out}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} and {FIG}/invariant_*.png")


if __name__ == "__main__":
    main()
