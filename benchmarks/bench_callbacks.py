"""What the analysis callbacks cost a ResNet-50 training run, as a fraction of an epoch.

One process, one data set, one fit per row (``trainer.fit`` on the same seed and data):

- *baseline*: torchvision ``resnet50(weights=None)`` (1000 classes, random weights; no input
  normalization, the inputs are uniform noise in [0, 1]), SGD (lr 0.01, momentum 0.9),
  ``--epochs`` epochs of ``--train-batches`` synthetic 3×224×224 batches of ``--batch``
  images and random labels, each epoch followed by validation on ``--val-images`` synthetic
  images (the natural images the callbacks keep), a CSV logger in a temporary folder (the
  callbacks' grids and figures are really written), no checkpointing, no Lightning
  sanity-validation steps;
- then one fit per callback, each alone, with its **default schedule and arguments**
  except what the issue fixes (``module="model"``, the torchvision layer names):

  - ``FeatureVisualizationCallback(["layer4:0-63"], steps=256)``: 64 channels of
    ``layer4``, 256 steps (the issue); defaults otherwise: every epoch **and** at fit end,
    ``image_size=64`` (``--fv-image-size 224`` for ImageNet resolution), batches of 64
    units, standard transforms, captioned 128 px tiles;
  - ``SanityCheckCallback(["conv1", "layer1", "layer2", "layer3", "layer4", "avgpool",
    "fc"])`` (the layers of ``examples/configs/imagefolder_resnet.yaml``): class units
    ``fc:0 … fc:999`` from the module's ``hparams.num_classes`` (the default when
    ``num_classes`` is not passed), one visualization per class, 128 steps at the natural
    images' 224 px, the first 500 validation images, Spearman, every epoch;
  - ``PathLinearityCallback(["fc:0", "fc:1", "layer4:0", "layer4:1"])`` (the units of that
    config): 4 start images per unit from the first 500 validation images, 32 steps,
    every epoch.

The sanity check drops misclassified natural images, and a random-weight model
misclassifies nearly all of them (the check would stop early with an error and skip its
similarity part). So by default (``--val-labels model``) the validation step writes the
model's own top-1 class into the batch's labels, as a trained model would classify most of
its validation images correctly; the labels the callbacks keep are then concentrated in
the few classes a random network predicts, which gives more same-class pairs than
ImageNet would (an upper bound on that part). If it predicts a single class, there are no
other-class pairs, every layer is excluded and the logged score is NaN; every step of the
check still runs. The row lists the natural images kept and excluded. With ``--bf16`` the
labels come from the autocast forward and the check's from a float32 one, so a few
near-ties may count as misclassified. ``--val-labels random`` keeps random labels.

Measured per callback (all clocks around ``torch.cuda.synchronize()`` on CUDA):

- *added s / run*: the callback's own work, timed directly by wrapping its ``run`` method
  (the whole scheduled run: render, gather, similarity, logging); the mean over its
  epoch runs after the first, which is reported separately as the warm-up run (cuDNN
  autotuning of new shapes); plus *buffer s / epoch*, its ``on_validation_batch_end``
  (copying up to ``max_images`` validation images to the CPU);
- *added fraction of an epoch*, amortized by the default schedule:
  ``(run_s / every_n_epochs + buffer_s) / epoch_s``, for (a) the measured synthetic
  epoch (baseline, epochs after the first, so cuDNN autotuning is excluded) and (b) a full
  ImageNet-1k epoch extrapolated from the baseline's measured time per training batch
  (1,281,167 training images) and per validation image (50,000). A fit-end run (the
  feature visualization's ``at_fit_end=True``) is not in the fraction: it adds
  ``run_s / max_epochs`` per epoch and is listed as *fit-end s*;
- *epoch diff s*: the cross-check from the two fits, mean over epochs after the first of
  (epoch with the callback − baseline epoch), epoch = ``on_train_epoch_start`` to
  ``on_train_epoch_end`` (training, validation and the callback's run);
- *peak added MB*: ``torch.cuda.max_memory_allocated`` over the fit with the callback minus
  over the baseline fit (reset before each fit); *own peak MB*: the callback run's peak
  above the memory allocated when it started. Not measured on the CPU.

The goal (issue): each callback under 5 % of an epoch at its default schedule. Timing
budget on one H100-class GPU (fp32; ResNet-50 batch 64 ≈ 0.05–0.1 s per training step,
a 64-unit 256-step render at 224 px ≈ 8 s, ``benchmarks/RESULTS.md``): 4 fits × 2 epochs
× 100 batches ≈ 40–80 s, the sanity check's 1000 class renders at 224 px ≈ 65 s per run,
twice; the whole script ≈ 3.5–4.5 min. ``--train-batches 100`` (6,400 images,
about 5–10 s per epoch) is long enough for a steady time per batch; a longer synthetic
epoch only lengthens all four fits, since the fraction that matters is the extrapolated
ImageNet one. Rows are printed as each fit ends and ``--json PATH`` is rewritten after
each, so a timeout keeps the finished ones (``--callbacks`` runs a subset; the sanity
check runs last). The output ends with the markdown table and one JSON line.

    python benchmarks/bench_callbacks.py --device cuda
    python benchmarks/bench_callbacks.py --device cuda --bf16 --channels-last
    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_callbacks.py --device cpu --small \\
        --threads 1    # smoke test: SmallCNN, 64 px, 8 units × 32 steps, ~70 s on one thread

``--small`` (CPU smoke test, numbers meaningless): the random-weight
:class:`~lightning_fv.models.SmallCNN` (10 classes) at 64 px, 2 epochs of 8 batches of 16
plus 64 validation images; ``FeatureVisualizationCallback(["block4:0-7"], steps=32)``,
``SanityCheckCallback(["block1", "block2", "block3", "block4", "fc"], steps=32)``,
``PathLinearityCallback(["fc:0", "fc:1", "block4:0", "block4:1"])`` (its errors for a unit
whose ReLU closes on the way are reported in the row and printed, not hidden).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import math
import platform
import statistics
import tempfile
import time
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_fv.callbacks import (
    FeatureVisualizationCallback,
    PathLinearityCallback,
    SanityCheckCallback,
)
from lightning_fv.callbacks._scheduled import ScheduledCallback
from lightning_fv.models import SmallCNN

IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000
MB = 2**20
CALLBACKS = ("fv", "linearity", "sanity")
NAMES = {"fv": "FeatureVisualizationCallback", "linearity": "PathLinearityCallback",
         "sanity": "SanityCheckCallback"}


# --------------------------------------------------------------------------- data, model
class SyntheticBatches(Dataset):
    """``n_batches`` whole batches (one per index, for ``DataLoader(batch_size=None)``) of
    uniform [0, 1) images and random labels, cycling over ``distinct`` stored batches (so
    data loading costs a slice and the host-to-device copy, not a generator). ``pin``: the
    images in pinned memory, so the copy is asynchronous as with ``pin_memory=True``."""

    def __init__(self, n_batches: int, batch: int, size: int, classes: int, distinct: int,
                 seed: int, pin: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.n, self.batch, self.distinct = n_batches, batch, max(1, min(distinct, n_batches))
        self.x = torch.rand(self.distinct * batch, 3, size, size, generator=g)
        if pin:
            self.x = self.x.pin_memory()
        self.y = torch.randint(0, classes, (self.distinct * batch,), generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = (i % self.distinct) * self.batch
        # labels cloned: the validation step may overwrite them in place (--val-labels model)
        return self.x[s:s + self.batch], self.y[s:s + self.batch].clone()


def build_net(arch: str, classes: int) -> nn.Module:
    if arch == "small_cnn":
        return SmallCNN(num_classes=classes)
    import torchvision

    return getattr(torchvision.models, arch)(weights=None, num_classes=classes)


class Classifier(L.LightningModule):
    """Cross-entropy + SGD around ``self.model``; ``hparams.num_classes`` is what
    :class:`SanityCheckCallback` reads when it gets no ``num_classes``."""

    def __init__(self, arch: str, num_classes: int, lr: float = 0.01,
                 channels_last: bool = False, labels_from_model: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_net(arch, num_classes)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x).float(), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x).float()
        self.log("val/loss", F.cross_entropy(logits, y))
        if self.hparams.labels_from_model:
            y.copy_(logits.argmax(1))  # the batch the callbacks' buffers receive next

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


# --------------------------------------------------------------------------- clocks
def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


class EpochClock(L.Callback):
    """Wall time of every epoch (``on_train_epoch_start`` → ``on_train_epoch_end``, which
    comes after validation and the callbacks' ``on_validation_epoch_end``) and of its
    training part (→ ``on_validation_start``)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.epoch_s: list[float] = []
        self.train_s: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(self.cuda)
        self._t0 = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            _sync(self.cuda)
            self.train_s.append(time.perf_counter() - self._t0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(self.cuda)
        self.epoch_s.append(time.perf_counter() - self._t0)


class HookTimer:
    """Times one callback instance's ``run`` (every scheduled run) and
    ``on_validation_batch_end`` (its image buffer) by replacing them on the instance; on
    CUDA also the run's own peak memory, keeping the fit's peak from before each reset."""

    def __init__(self, cb: ScheduledCallback, cuda: bool) -> None:
        self.cuda = cuda
        self.runs: list[dict[str, Any]] = []
        self.buffer_s: dict[int, float] = {}
        self.peak_before = 0
        run, batch_end = cb.run, cb.on_validation_batch_end

        def timed_run(trainer: L.Trainer, pl_module: L.LightningModule, *args: Any,
                      **kwargs: Any) -> Any:
            tag = kwargs.get("tag", args[0] if args else "manual")
            base = 0
            if cuda:
                torch.cuda.synchronize()
                self.peak_before = max(self.peak_before, torch.cuda.max_memory_allocated())
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = run(trainer, pl_module, *args, **kwargs)
            _sync(cuda)
            row: dict[str, Any] = {"tag": tag, "epoch": int(trainer.current_epoch),
                                   "s": round(time.perf_counter() - t0, 4)}
            if cuda:
                row["own_peak_mb"] = round((torch.cuda.max_memory_allocated() - base) / MB, 1)
                row["retained_mb"] = round((torch.cuda.memory_allocated() - base) / MB, 1)
            self.runs.append(row)
            print(f"    {type(cb).__name__} run ({tag}, epoch {row['epoch']}): "
                  f"{row['s']:.2f} s", flush=True)
            return out

        def timed_batch_end(trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
            _sync(cuda)
            t0 = time.perf_counter()
            batch_end(trainer, *args, **kwargs)
            _sync(cuda)
            e = int(trainer.current_epoch)
            self.buffer_s[e] = self.buffer_s.get(e, 0.0) + time.perf_counter() - t0

        cb.run = timed_run  # type: ignore[method-assign]
        cb.on_validation_batch_end = timed_batch_end  # type: ignore[method-assign]


# --------------------------------------------------------------------------- callbacks
def make_callback(name: str, a: argparse.Namespace) -> ScheduledCallback:
    """The callback as a user would add it: defaults, except the arguments listed in the
    module docstring (and the reduced ``--small`` sizes)."""
    if name == "fv":
        kw: dict[str, Any] = {"steps": a.fv_steps}
        if a.fv_image_size:
            kw["image_size"] = a.fv_image_size
        return FeatureVisualizationCallback(a.fv_units, module="model", **kw)
    if name == "sanity":
        kw = {"steps": a.sanity_steps} if a.sanity_steps else {}
        return SanityCheckCallback(a.sanity_layers, module="model", **kw)
    if name == "linearity":
        return PathLinearityCallback(a.pl_units, module="model")
    raise ValueError(f"unknown callback {name!r}; choose from {CALLBACKS}")


def passed_args(name: str, a: argparse.Namespace) -> str:
    if name == "fv":
        size = f", image_size={a.fv_image_size}" if a.fv_image_size else ""
        return f"units={a.fv_units}, module='model', steps={a.fv_steps}{size}"
    if name == "sanity":
        steps = f", steps={a.sanity_steps}" if a.sanity_steps else ""
        return f"layers={a.sanity_layers}, module='model'{steps}"
    return f"units={a.pl_units}, module='model'"


def schedule(cb: ScheduledCallback) -> str:
    n = cb.every_n_epochs
    s = "never during fit" if n == 0 else ("every epoch" if n == 1 else f"every {n} epochs")
    return s + (" + fit end" if cb.at_fit_end else "")


def errors_of(cb: ScheduledCallback) -> list[str]:
    return [e for entry in cb.history for e in entry.get("errors", [])]


# --------------------------------------------------------------------------- one fit
def fit(a: argparse.Namespace, train: Dataset, val: Dataset, name: str | None
        ) -> dict[str, Any]:
    """One ``trainer.fit`` (the baseline when ``name`` is None); clocks and memory."""
    cuda = a.device.startswith("cuda")
    torch.manual_seed(0)
    module = Classifier(a.arch, a.classes, channels_last=a.channels_last,
                        labels_from_model=a.val_labels == "model")
    clock = EpochClock(cuda)
    cb = make_callback(name, a) if name else None
    timer = HookTimer(cb, cuda) if cb is not None else None
    out: dict[str, Any] = {"callback": NAMES.get(name or "", "baseline")}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="gpu" if cuda else "cpu", devices=1, max_epochs=a.epochs,
            precision="bf16-mixed" if a.bf16 else "32-true", benchmark=cuda or None,
            logger=CSVLogger(tmp, name="bench"), default_root_dir=tmp,
            callbacks=[clock] + ([cb] if cb is not None else []),
            enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0,
            log_every_n_steps=min(50, a.train_batches))
        loaders = [DataLoader(d, batch_size=None, shuffle=False, num_workers=0)
                   for d in (train, val)]
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainer.fit(module, *loaders)
        _sync(cuda)
        out["fit_s"] = round(time.perf_counter() - t0, 3)
        if cuda:
            peak = torch.cuda.max_memory_allocated()
            if timer is not None:
                peak = max(peak, timer.peak_before)
            out["peak_mb"] = round(peak / MB, 1)
    out["epoch_s"] = [round(t, 4) for t in clock.epoch_s]
    out["train_s"] = [round(t, 4) for t in clock.train_s]
    if cb is not None and timer is not None:
        out.update(schedule=schedule(cb), every_n_epochs=cb.every_n_epochs,
                   at_fit_end=cb.at_fit_end, passed=passed_args(name or "", a),
                   runs=timer.runs,
                   buffer_s={e: round(s, 4) for e, s in sorted(timer.buffer_s.items())},
                   errors=errors_of(cb))
        if isinstance(cb, SanityCheckCallback) and cb.last_result is not None:
            r = cb.last_result
            out["sanity"] = {"score": None if math.isnan(r.score) else round(r.score, 4),
                             "n_natural": r.n_natural, "n_excluded": r.n_excluded,
                             "n_visualizations": r.n_visualizations}
    del trainer, module, cb, timer, clock
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- summary
def steady(values: list[float]) -> float:
    """Mean after the first (warm-up) value; the only value if there is one."""
    rest = values[1:] or values
    return statistics.mean(rest) if rest else float("nan")


def baseline_summary(base: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    epoch_s, train_s = steady(base["epoch_s"]), steady(base["train_s"])
    val_s = max(epoch_s - train_s, 0.0)
    per_batch = train_s / a.train_batches
    val_images = a.val_batches * a.batch
    imagenet = per_batch * math.ceil(IMAGENET_TRAIN / a.batch) + val_s * IMAGENET_VAL / val_images
    return {"epoch_s": round(epoch_s, 3), "train_s_per_batch": round(per_batch, 5),
            "val_s": round(val_s, 3), "imagenet_epoch_s_est": round(imagenet, 1)}


def summarize(res: dict[str, Any], base: dict[str, Any], bsum: dict[str, Any]
              ) -> dict[str, Any]:
    epoch_runs = [r["s"] for r in res["runs"] if r["tag"] == "epoch"]
    fit_end = [r["s"] for r in res["runs"] if r["tag"] == "fit_end"]
    run_s = steady(epoch_runs) if epoch_runs else 0.0
    buffer = steady(list(res["buffer_s"].values())) if res["buffer_s"] else 0.0
    every = res["every_n_epochs"]
    per_epoch = (run_s / every if every else 0.0) + buffer
    diffs = [w - b for w, b in zip(res["epoch_s"][1:], base["epoch_s"][1:])] or \
        [w - b for w, b in zip(res["epoch_s"], base["epoch_s"])]
    row: dict[str, Any] = {
        "callback": res["callback"], "schedule": res["schedule"], "passed": res["passed"],
        "runs": len(res["runs"]),
        "first_run_s": round(epoch_runs[0], 3) if epoch_runs else None,
        "added_s_per_run": round(run_s, 3), "buffer_s_per_epoch": round(buffer, 4),
        "added_s_per_epoch": round(per_epoch, 3),
        "fraction_measured_epoch": round(per_epoch / bsum["epoch_s"], 4),
        "fraction_imagenet_epoch": round(per_epoch / bsum["imagenet_epoch_s_est"], 5),
        "epoch_diff_s": round(statistics.mean(diffs), 3) if diffs else None,
        "fit_end_s": round(fit_end[0], 3) if fit_end else None,
        "fit_diff_s": round(res["fit_s"] - base["fit_s"], 3),
        "errors": res["errors"],
    }
    if "peak_mb" in res:
        row["peak_added_mb"] = round(res["peak_mb"] - base["peak_mb"], 1)
        row["own_peak_mb"] = max((r.get("own_peak_mb", 0.0) for r in res["runs"]), default=0.0)
    if "sanity" in res:
        row["sanity"] = res["sanity"]
    return row


COLUMNS = ("callback", "default schedule", "added s / run (first run)", "buffer s / epoch",
           "% of measured epoch", "% of ImageNet epoch (est.)", "goal ≤ 5 % (measured / "
           "ImageNet)", "epoch diff s", "fit-end s", "peak added MB", "own peak MB")


def _ok(frac: float) -> str:
    return "yes" if frac <= 0.05 else "**no**"


def table_row(r: dict[str, Any]) -> str:
    first = f" ({r['first_run_s']:.2f})" if r["first_run_s"] is not None else ""
    cells = [r["callback"], r["schedule"], f"{r['added_s_per_run']:.2f}{first}",
             f"{r['buffer_s_per_epoch']:.3f}", f"{100 * r['fraction_measured_epoch']:.1f} %",
             f"{100 * r['fraction_imagenet_epoch']:.2f} %",
             f"{_ok(r['fraction_measured_epoch'])} / {_ok(r['fraction_imagenet_epoch'])}",
             "–" if r["epoch_diff_s"] is None else f"{r['epoch_diff_s']:.2f}",
             "–" if r["fit_end_s"] is None else f"{r['fit_end_s']:.2f}",
             str(r.get("peak_added_mb", "–")), str(r.get("own_peak_mb", "–"))]
    if r["errors"]:
        cells[0] += f" ({len(r['errors'])} errors!)"
    return "| " + " | ".join(cells) + " |"


def table_header() -> str:
    return "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


# --------------------------------------------------------------------------- main
def apply_sizes(a: argparse.Namespace) -> None:
    """Fill the size arguments left unset from ``--small`` (CPU) or the GPU defaults."""
    small = a.small
    layer = "block4" if small else "layer4"
    sizes: dict[str, Any] = {
        "arch": "small_cnn" if small else "resnet50", "size": 64 if small else 224,
        "classes": 10 if small else 1000, "batch": 16 if small else 64,
        "train_batches": 8 if small else 100, "val_images": 64 if small else 512,
        "fv_units": [f"{layer}:0-{7 if small else 63}"], "fv_steps": 32 if small else 256,
        "sanity_layers": ["block1", "block2", "block3", "block4", "fc"] if small else
        ["conv1", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"],
        "sanity_steps": 32 if small else None,
        "pl_units": ["fc:0", "fc:1", f"{layer}:0", f"{layer}:1"],
    }
    for k, v in sizes.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.val_batches = math.ceil(a.val_images / a.batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true",
                    help="SmallCNN, 64 px, 8 batches of 16, 8 units × 32 steps (CPU size)")
    ap.add_argument("--arch", default=None, help="resnet50 (default), resnet18, small_cnn")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels")
    ap.add_argument("--classes", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--train-batches", type=int, default=None, help="batches per epoch")
    ap.add_argument("--val-images", type=int, default=None)
    ap.add_argument("--val-labels", default="model", choices=["model", "random"],
                    help="validation labels: the model's top-1 class (default) or random")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="precision='bf16-mixed'")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--callbacks", nargs="*", default=list(CALLBACKS), choices=CALLBACKS)
    ap.add_argument("--fv-units", nargs="*", default=None)
    ap.add_argument("--fv-steps", type=int, default=None)
    ap.add_argument("--fv-image-size", type=int, default=None,
                    help="FeatureVisualizationCallback image_size (default: its own, 64)")
    ap.add_argument("--sanity-layers", nargs="*", default=None)
    ap.add_argument("--sanity-steps", type=int, default=None,
                    help="SanityCheckCallback steps (default: its own, 128; --small: 32)")
    ap.add_argument("--pl-units", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the JSON line here too")
    a = ap.parse_args()
    apply_sizes(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_fv"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    L.seed_everything(0, verbose=False)

    train = SyntheticBatches(a.train_batches, a.batch, a.size, a.classes, 4, seed=1, pin=cuda)
    val = SyntheticBatches(a.val_batches, a.batch, a.size, a.classes, a.val_batches, seed=2,
                           pin=cuda)
    dev = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    meta: dict[str, Any] = {
        "date": str(datetime.date.today()), "device": dev, "torch": torch.__version__,
        "lightning": L.__version__, "threads": torch.get_num_threads(), "arch": a.arch,
        "size": a.size, "classes": a.classes, "batch": a.batch,
        "train_batches": a.train_batches, "val_images": a.val_batches * a.batch,
        "val_labels": a.val_labels, "epochs": a.epochs, "bf16": a.bf16,
        "channels_last": a.channels_last}
    print(json.dumps({"meta": meta}), flush=True)
    t_start = time.perf_counter()

    def report(base_res: dict[str, Any], bsum: dict[str, Any], rows: list[dict[str, Any]],
               final: bool) -> None:
        line = json.dumps({"meta": meta, "baseline": {**base_res, **bsum}, "rows": rows,
                           "complete": final,
                           "total_s": round(time.perf_counter() - t_start, 1)})
        if a.json:
            with open(a.json, "w", encoding="utf-8") as fh:
                fh.write(line + "\n")
        if final:
            print(line, flush=True)

    base = fit(a, train, val, None)
    bsum = baseline_summary(base, a)
    print(f"baseline: epochs {base['epoch_s']} s (training part {base['train_s']} s), "
          f"fit {base['fit_s']} s, peak {base.get('peak_mb', '–')} MB; steady epoch "
          f"{bsum['epoch_s']} s, {bsum['train_s_per_batch']} s per training batch, "
          f"ImageNet-1k epoch est. {bsum['imagenet_epoch_s_est']} s", flush=True)
    rows: list[dict[str, Any]] = []
    report(base, bsum, rows, False)
    order = [c for c in CALLBACKS if c in a.callbacks]  # the sanity check last (longest)
    print(table_header(), flush=True)
    for name in order:
        res = fit(a, train, val, name)
        rows.append(summarize(res, base, bsum))
        print(table_row(rows[-1]), flush=True)
        for e in res["errors"]:
            print(f"    error: {e}", flush=True)
        report(base, bsum, rows, False)

    print(f"\n{meta['date']} · {dev} · torch {torch.__version__} · lightning {L.__version__}"
          f" · {a.arch} {a.size} px, batch {a.batch}, {a.train_batches} training batches + "
          f"{a.val_batches * a.batch} validation images per epoch, {a.epochs} epochs"
          f"{', bf16-mixed' if a.bf16 else ''}{', channels_last' if a.channels_last else ''}"
          f"; baseline epoch {bsum['epoch_s']} s, ImageNet-1k epoch est. "
          f"{bsum['imagenet_epoch_s_est']} s\n")
    print(table_header())
    for r in rows:
        print(table_row(r))
    print()
    for r in rows:
        extra = f"; sanity {r['sanity']}" if "sanity" in r else ""
        print(f"- {r['callback']}({r['passed']}){extra}")
    report(base, bsum, rows, True)


if __name__ == "__main__":
    main()
