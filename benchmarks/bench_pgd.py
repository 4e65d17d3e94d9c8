"""PGD-k adversarial training step vs. its floor and vs. torchattacks' and captum's PGD.

Measured in one run on the same model, batch and device (median over repeats):

- floor: ``k`` forward/backward passes computing only the input gradient
  (``torch.autograd.grad`` w.r.t. the images, parameters frozen, eval mode) plus one ordinary
  training step (train-mode forward, cross-entropy, backward, SGD step);
- ours: :func:`lightning_fv.adversarial.pgd` (k steps, random start) + the same training step;
- torchattacks: ``torchattacks.PGD`` / ``PGDL2`` (k steps, random start) + the same step;
- captum: ``captum.robust.PGD(model, loss_func, 0, 1).perturb(x, radius=ε, step_size=α,
  step_num=k, target=y, random_start=True, norm="Linf")`` + the same step (ℓ∞ only).

All three attacks use the same ε (8/255 ℓ∞, 0.5 ℓ2), step size α = 2.5·ε/k, k and
random start, on the same model, batch, device and autocast/memory format.

Targets (SPEC): ours / floor ≤ 1.15, ours faster than torchattacks and captum's
``robust.PGD``.

Differences of captum 0.9.0's ``robust.PGD`` that bear on the comparison:

- its default loss is ``-log(output)`` at the target (meant for probabilities), so the
  script passes ``loss_func = cross_entropy(reduction="none")``; captum differentiates
  the per-sample losses through ``autograd.grad(unbind(loss), x)``, i.e. the gradient of
  their sum, as ours does (torchattacks takes the mean; the sign step is the same);
- its FGSM step moves only the pixels whose gradient exceeds ``zero_thresh = 1e-6`` in
  magnitude (``torch.where(|g| > 1e-6, x + α·sign(g), x)``): pixels with a smaller, non-zero
  gradient stay put where ours and torchattacks move them. The row's
  ``captum_small_grad_frac`` is the fraction of such pixels at the clean batch (one
  extra pass, untimed);
- it leaves the model's mode alone: the script puts the model in eval mode for the
  attack (as torchattacks does itself and ours does inside ``pgd``); it does not
  freeze the parameters (neither does torchattacks; ``autograd.grad`` w.r.t. the input
  computes no weight gradients either way);
- random start: uniform in [−ε, ε] per pixel, then clamped to [0, 1], as ours and
  torchattacks (per sample and per pixel, from the global generator);
- ℓ2 is not compared: captum 0.9.0's ℓ2 random start draws its per-sample radius as a
  CPU tensor of shape ``(B,)`` and multiplies it into ``(B, C, H, W)``, broadcasting over
  the last image dimension, which fails unless ``W == B`` (and on CUDA, mixes devices);
  ``--norm l2`` skips captum.

    python benchmarks/bench_pgd.py                       # CUDA: ResNet-50 224 px, CIFAR ResNet-18
    python benchmarks/bench_pgd.py --bf16 --channels-last
    python benchmarks/bench_pgd.py --device cpu --small  # SmallCNN, 64 px, CPU

Peers: ``torchattacks`` and ``captum`` (0.9.0; ``pip install --no-deps captum``, it
imports matplotlib, numpy, packaging and tqdm); ``--no-torchattacks`` / ``--no-captum``
skip one. Output: one JSON line per model as it finishes, then a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from lightning_fv.adversarial import pgd
from lightning_fv.models import IMAGENET_MEAN, IMAGENET_STD, Normalize, SmallCNN
from lightning_fv.utils.preprocess import NormalizedModel


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem (3×3 stride-1 conv, no max pool)."""
    import torchvision

    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


def build(name: str) -> tuple[nn.Module, int, int]:
    """``(model with normalization inside, image size, classes)``."""
    if name == "resnet50":
        import torchvision

        return (NormalizedModel(torchvision.models.resnet50(),
                                Normalize(IMAGENET_MEAN, IMAGENET_STD)), 224, 1000)
    if name == "cifar_resnet18":
        return NormalizedModel(cifar_resnet18(), Normalize((0.5,) * 3, (0.25,) * 3)), 32, 10
    if name == "small_cnn":
        return SmallCNN(num_classes=10), 64, 10
    raise ValueError(f"unknown model {name!r}; choose resnet50, cifar_resnet18, small_cnn")


def bench(name: str, batch: int, k: int, norm: str, device: str, bf16: bool,
          channels_last: bool, repeats: int, warmup: int, with_ta: bool,
          with_captum: bool = True) -> dict[str, object]:
    torch.manual_seed(0)
    model, size, classes = build(name)
    model = model.to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), device=device)
    eps = 8 / 255 if norm == "linf" else 0.5
    step = 2.5 * eps / k
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    amp = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
           if bf16 else nullcontext())

    def train_step(xa: torch.Tensor) -> None:
        model.train()
        with amp:
            loss = F.cross_entropy(model(xa).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def floor() -> None:
        model.eval()
        flags = [p.requires_grad_(False) for p in model.parameters()]
        xa = x.clone()
        for _ in range(k):
            xa.requires_grad_(True)
            with amp:
                loss = F.cross_entropy(model(xa).float(), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xa)
            xa = xa.detach()  # the input gradient g is computed and dropped
        for p in flags:
            p.requires_grad_(True)
        train_step(xa)

    def ours() -> None:
        model.train()
        with amp:
            xa = pgd(model, x, y, norm, eps, k, step)
        train_step(xa)

    fns: dict[str, Callable[[], None]] = {"floor": floor, "ours": ours}
    if with_ta:
        try:
            import torchattacks as ta

            atk = (ta.PGD(model, eps=eps, alpha=step, steps=k, random_start=True)
                   if norm == "linf" else
                   ta.PGDL2(model, eps=eps, alpha=step, steps=k, random_start=True))

            def theirs() -> None:
                model.train()
                with amp:
                    xa = atk(x, y)
                train_step(xa)

            fns["torchattacks"] = theirs
        except ImportError:
            print("torchattacks not importable: skipping the torchattacks comparison")
    small_grad_frac = None
    if with_captum and norm != "linf":
        print("captum's robust.PGD is compared for linf only (its L2 random start is broken "
              "in 0.9.0, see the docstring): skipping captum")
    elif with_captum:
        try:
            from captum.robust import PGD as CaptumPGD

            def ce_per_sample(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(out.float(), target, reduction="none")

            cap = CaptumPGD(model, ce_per_sample, lower_bound=0.0, upper_bound=1.0)

            def captum_step() -> None:
                model.eval()  # captum leaves the mode alone; torchattacks and ours use eval
                with amp, warnings.catch_warnings():
                    # "Input Tensor 0 did not already require gradients": captum sets it
                    warnings.simplefilter("ignore", UserWarning)
                    xa = cap.perturb(x, radius=eps, step_size=step, step_num=k, target=y,
                                     random_start=True, norm="Linf")
                train_step(xa)

            fns["captum"] = captum_step
            # pixels captum's FGSM step leaves in place (|grad| <= zero_thresh) at x, untimed
            model.eval()
            xg = x.clone().requires_grad_(True)
            with amp:
                (g,) = torch.autograd.grad(ce_per_sample(model(xg), y).sum(), xg)
            small_grad_frac = (g.abs() <= cap.fgsm.zero_thresh).float().mean().item()
        except ImportError as err:  # captum's __init__ also imports matplotlib (captum.attr)
            print(f"captum not importable ({err}): skipping the captum comparison")

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):  # interleaved, so drifts in clock/load hit all alike
        for n, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in times.items()}
    row: dict[str, object] = {
        "model": name, "batch": batch, "size": size, "k": k, "norm": norm, "device": device,
        "bf16": bf16, "channels_last": channels_last,
        **{f"{n}_s": round(v, 5) for n, v in med.items()},
        "ours_over_floor": round(med["ours"] / med["floor"], 3),
    }
    if "torchattacks" in med:
        row["torchattacks_over_ours"] = round(med["torchattacks"] / med["ours"], 3)
    if "captum" in med:
        row["captum_over_ours"] = round(med["captum"] / med["ours"], 3)
        row["captum_small_grad_frac"] = round(small_grad_frac or 0.0, 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="SmallCNN at 64 px (CPU size)")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=7, help="PGD steps k")
    ap.add_argument("--norm", default="linf", choices=["l2", "linf"])
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-torchattacks", action="store_true")
    ap.add_argument("--no-captum", action="store_true", help="skip captum's robust.PGD")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    models = a.models or (["small_cnn"] if a.small else ["resnet50", "cifar_resnet18"])
    default_batch = {"resnet50": 64, "cifar_resnet18": 256, "small_cnn": 32}
    rows = []
    for m in models:
        rows.append(bench(m, a.batch or default_batch[m], a.steps, a.norm, a.device, a.bf16,
                          a.channels_last, a.repeats or (5 if a.small else 20), a.warmup,
                          not a.no_torchattacks, not a.no_captum))
        print(json.dumps(rows[-1]), flush=True)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor()
    print(f"\n{datetime.date.today()} · {dev or platform.machine()} · torch {torch.__version__}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
