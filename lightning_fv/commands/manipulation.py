"""``lightning-fv`` commands for `dont-trust-your-eyes…` §2: train the visualization
detector (App. C.1), build a manipulated model (fooling circuit §2.1 or silent units §2.2)
and save it as safetensors, and render before/after grids (Fig. 2, Fig. 5).

At paper scale the model is a torchvision/timm name with local weights (``checkpoint_path``,
read weights-only through :mod:`lightning_fv.utils.checkpoint`) and its input
normalization (``mean``/``std``, never guessed). The manipulated model takes [0, 1] pixels:
its normalization is applied *after* the fooling gate has seen the pixels (the detector
of App. C.1 is trained on pixels), as a forward pre-hook registered after the gate's
(:func:`~lightning_fv.utils.preprocess.normalized_input`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from lightning_fv.data.embedded import load_photos
from lightning_fv.models import build_model
from lightning_fv.utils.device import resolve_device
from lightning_fv.utils.files import apply_umask, output_file
from lightning_fv.utils.preprocess import check_mean_std, normalized_input

log = logging.getLogger(__name__)


def train_detector(
    model: str = "bundled:photo_patches",
    layers: list[str] | None = None,
    units: list[str] | None = None,
    max_units_per_layer: int | None = None,
    natural: str = "photo_patches",
    n_natural_per_class: int = 100,
    image_size: int = 64,
    trajectories_per_unit: int = 2,
    steps: int = 64,
    test_fraction: float = 0.2,
    epochs: int = 20,
    batch_size: int = 32,
    cache_dir: str = "outputs/cache/trajectories",
    device: str = "auto",
    output: str = "outputs/manipulation/detector.safetensors",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Train the Table 3 detector on natural images vs. visualization trajectories of
    ``model`` (App. C.1) and save it (safetensors). Returns held-out accuracies.

    This is ``lightning-fv fit`` of :class:`VisualizationDetector` on a
    :class:`TrajectoryDataModule` (the arguments below become that config; the YAML route
    is ``lightning-fv fit --config examples/configs/detector_photo_patches.yaml``), then one
    validation pass and the detector file.

    Args:
        model: model name for :func:`lightning_fv.models.build_model`.
        layers, units, max_units_per_layer: which units to visualize (default ``fc``).
        natural: embedded natural images (``photo_patches`` or ``digits``).
        n_natural_per_class: natural training images per class.
        image_size: image side in pixels.
        trajectories_per_unit: runs (seeds) per unit; steps: optimizer steps per run.
        test_fraction: fraction of units held out.
        epochs, batch_size: SGD training (lr 0.01, momentum 0.9, wd 5e-5).
        cache_dir: trajectory cache folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        output: detector file (an existing file is refused unless ``overwrite``).
        overwrite: replace an existing ``output``.
        progress: Lightning's progress bars (``--progress false`` for scripts).
    """
    from lightning_fv.cli import run_lightning_cli
    from lightning_fv.modules.detector import save_detector

    out = output_file(output, overwrite=overwrite)
    data = {"model": model, "layers": layers, "units": units,
            "max_units_per_layer": max_units_per_layer, "natural": natural,
            "n_natural_per_class": n_natural_per_class, "image_size": image_size,
            "trajectories_per_unit": trajectories_per_unit, "steps": steps,
            "test_fraction": test_fraction, "cache_dir": cache_dir, "device": device,
            "batch_size": batch_size}
    args = ["fit", "--model", "lightning_fv.modules.detector.VisualizationDetector",
            "--model.image_size", str(image_size), "--model.max_epochs", str(epochs),
            "--data", "lightning_fv.data.trajectories.TrajectoryDataModule"]
    for key, value in data.items():
        if value is not None:
            args += [f"--data.{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    dev = resolve_device(device)
    args += ["--trainer.max_epochs", str(epochs), "--trainer.logger", "false",
             "--trainer.accelerator", "gpu" if dev.type == "cuda" else "cpu",
             "--trainer.enable_checkpointing", "false", "--trainer.num_sanity_val_steps", "0",
             "--trainer.enable_progress_bar", str(bool(progress)).lower()]
    cli = run_lightning_cli(args)
    metrics = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]
    save_detector(cli.model.net.cpu(), out)
    apply_umask(out)
    log.info("detector saved to %s: %s", out, metrics)
    return {k: float(v) for k, v in metrics.items()}


def _load_images(images: list[str], size: int) -> torch.Tensor:
    """``photo:NAME`` (an embedded photo) or an image file path → ``(N, 3, size, size)``."""
    import torch.nn.functional as F

    from lightning_fv.data.embedded import PHOTO_CLASSES

    out = []
    for spec in images:
        if spec.startswith("photo:"):
            name = spec[6:]
            if name not in PHOTO_CLASSES:
                raise ValueError(f"unknown photo {name!r}; valid: {PHOTO_CLASSES}")
            img = load_photos(size)[PHOTO_CLASSES.index(name)][:, :size, :size]
        else:
            import numpy as np
            from PIL import Image

            arr = np.asarray(Image.open(spec).convert("RGB"), dtype=np.float32) / 255.0
            img = F.interpolate(torch.from_numpy(arr).permute(2, 0, 1)[None], size=(size, size),
                                mode="bilinear", antialias=True, align_corners=False)[0]
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def natural_images(natural: str, split: str = "train", n_per_class: int | None = 100,
                   image_size: int = 64, batch_size: int | None = None
                   ) -> Tensor | Iterable[tuple[Tensor, Tensor]]:
    """Natural images ``(N, 3, image_size, image_size)`` in [0, 1] RGB: an embedded set
    (``"photo_patches"``: ``n_per_class`` patches per class; ``"digits"``: the whole split)
    or the root of an ImageFolder ``root/{train,val}/<class>/*`` (the first ``n_per_class``
    images of each class folder of ``split``, ``None`` for all; resized and centre-cropped).
    With ``batch_size``, an ImageFolder is not loaded but returned as a ``DataLoader`` of
    ``(images, classes)`` batches, read lazily (50,000 ImageNet images need not fit in
    memory); embedded sets are tensors either way.

    Raises:
        ValueError: an unknown embedded set that is no folder either, or a bad ``split``.
    """
    from torch.utils.data import DataLoader

    from lightning_fv.data.folders import load_images, natural_set

    if split not in ("train", "val"):
        raise ValueError(f"natural_split must be 'train' or 'val', got {split!r}")
    x = natural_set(natural, split, n_per_class, image_size)
    if isinstance(x, Tensor):
        return x
    return load_images(x)[0] if batch_size is None else DataLoader(x, batch_size=batch_size)


def labelled_batches(data: str, split: str = "val", n_per_class: int | None = None,
                     image_size: int = 64, batch_size: int = 64
                     ) -> Iterable[tuple[Tensor, Tensor]]:
    """Labelled images ``(B, 3, image_size, image_size)`` in [0, 1] with labels ``(B,)``, in
    batches: an embedded set (``"photo_patches"``: ``n_per_class`` per class, default 30;
    ``"digits"``: the whole split) or the root of an ImageFolder ``root/<split>/<class>/*``
    read lazily (label = the class folder's index in sorted order, which is the ImageNet
    output index for the 1000 synset folders; ``n_per_class=None`` takes every image).

    Raises:
        ValueError: a bad ``split``, or a name that is neither an embedded set nor a folder.
    """
    from torch.utils.data import DataLoader

    from lightning_fv.data.embedded import digits, photo_patches
    from lightning_fv.data.folders import check_natural, image_folder

    if split not in ("train", "val"):
        raise ValueError(f"eval_split must be 'train' or 'val', got {split!r}")
    check_natural(data, n_per_class)
    if data in ("photo_patches", "digits"):
        x, y = (photo_patches(split, n_per_class or 30, image_size) if data == "photo_patches"
                else digits(split, image_size))
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return DataLoader(image_folder(data, image_size, split, per_class=n_per_class),
                      batch_size=batch_size, shuffle=False)


def manipulate(
    model: str = "bundled:photo_patches",
    method: str = "permute",
    layer: str = "fc",
    detector_path: str | None = None,
    shift: int = 1,
    channels: list[int] | None = None,
    images: list[str] | None = None,
    k: float = 1e4,
    mode: str = "relu",
    natural: str = "photo_patches",
    n_natural_per_class: int = 100,
    image_size: int = 64,
    pattern: str = "visualization",
    pattern_unit: int = 0,
    pattern_steps: int = 512,
    alpha: float = 100.0,
    beta: float = 300.0,
    bias: str = "max",
    percentile: float = 99.0,
    output: str = "outputs/manipulation/manipulated.safetensors",
    overwrite: bool = False,
    checkpoint_path: str | None = None,
    num_classes: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    natural_split: str = "train",
    eval_data: str | None = None,
    eval_split: str = "val",
    eval_per_class: int | None = None,
    eval_image_size: int | None = None,
    eval_batch_size: int = 64,
    device: str = "auto",
) -> str:
    """Build a manipulated model and save it (safetensors with the manipulation recipe and
    the model's ``mean``/``std``/``num_classes``); with ``eval_data``, also measure what the
    manipulation does to classification (§2.1: top-1 69.146 % → 68.744 %; §2.2: top-1 and
    top-5 unchanged) and write it beside the model as ``<output>.eval.json``.

    Args:
        model: the original model's name (also stored in the file).
        method: ``permute`` (Fig. 2), ``embed`` (images as visualizations, Fig. 1) or
            ``silent`` (§2.2, Fig. 5).
        layer: the manipulated layer (a ConvBlock / conv name for ``silent``).
        detector_path: trained detector (``permute``/``embed``), see :func:`train_detector`.
        shift: visualization of unit ``c`` becomes that of ``c + shift`` (``permute``).
        channels: channel indices of ``layer`` to manipulate (default all /
            ``0..len(images)-1``).
        images: ``photo:NAME`` or image files to embed (``embed``).
        k, mode: fooling-circuit constant and sign handling (``relu``/``split``/``offset``).
        natural, n_natural_per_class, image_size, natural_split: natural images that set
            the silent bias (:func:`natural_images`): an embedded set or the root of an
            ImageFolder (the notebook uses the ImageNet validation set:
            ``natural_split="val"``); ``n_natural_per_class=None`` takes every image.
        pattern: the silent units' shared target pattern: ``visualization`` (the authors'
            recipe: render unit ``pattern_unit`` of ``layer`` for ``pattern_steps`` steps and
            take the filter that image activates most, :func:`pattern_from_image`),
            ``filter`` (that unit's filter) or ``random``.
        alpha, beta, bias, percentile: silent-unit parameters (Eq. 2, App. D):
            ``Θ̄ = αΘ + βΔΘ⊥``; the defaults are the API's, the released notebook's
            (α = 100, β = 300; ``examples/configs/manipulate_silent.yaml`` uses β = 1000).
        output: output file (an existing file is refused unless ``overwrite``).
        overwrite: replace an existing ``output``.
        checkpoint_path: local weights for ``model`` (safetensors, a weights-only
            ``torch.save`` file or a Lightning checkpoint; pickled code is refused), e.g.
            torchvision's ``resnet50-0676ba61.pth``. Without it a torchvision/timm name is
            built with random weights. The output file holds all weights either way.
        num_classes: output classes of a torchvision/timm ``model``.
        mean, std: the model's input normalization (both or neither), e.g. ImageNet's for
            torchvision weights. ``silent`` renders its target and records the natural
            activations through it; the fooling circuit needs no forward pass to build
            (its gate sees [0, 1] pixels). They are stored in the output file, and
            ``render-comparison`` reads them from there.
        eval_data, eval_split, eval_per_class, eval_image_size, eval_batch_size: labelled
            images on which the original and the manipulated model are compared
            (:func:`labelled_batches`; e.g. the ImageNet validation folder for §2.1/§2.2,
            whose ``root/val/<synset>/*`` layout gives ImageNet's labels), resized and
            centre-cropped to ``eval_image_size`` (default ``image_size``). Top-1 and
            top-5 (top-min(5, K)) accuracy of both, their change in percentage points, the
            fraction of images with the same top-1 and with bit-identical outputs
            (:func:`~lightning_fv.manipulation.evaluation.compare_predictions`).
        device: where the evaluation runs (``auto``, ``cpu``, ``cuda``); the manipulation
            itself is built on the CPU.

    Returns:
        The written path.
    """
    output_file(output, overwrite=overwrite)
    eval_path = Path(output).with_suffix(".eval.json")
    if eval_data is not None:
        output_file(eval_path, overwrite=overwrite)
    norm = check_mean_std(mean, std)
    from lightning_fv.adversarial.representation import final_linear
    from lightning_fv.manipulation import (
        compare_predictions,
        embed_images,
        pattern_from_unit,
        permute_layer,
        save_manipulated,
        silence_block,
    )
    from lightning_fv.optvis.hooks import get_layer

    net = build_model(model, num_classes=num_classes, checkpoint_path=checkpoint_path).eval()
    original = copy.deepcopy(net) if eval_data is not None else None
    if method in ("permute", "embed"):
        if detector_path is None:
            raise ValueError(f"method {method!r} needs detector_path (train_detector's output)")
        from lightning_fv.modules.detector import load_detector

        det = load_detector(detector_path)
        if method == "permute":
            new = permute_layer(net, layer, det, shift=shift, channels=channels, k=k, mode=mode)
        else:
            if not images:
                raise ValueError("method 'embed' needs images (photo:NAME or file paths)")
            new = embed_images(net, layer, det, _load_images(images, image_size), channels=channels,
                               k=k, mode=mode)
    elif method == "silent":
        xn = natural_images(natural, natural_split, n_natural_per_class, image_size,
                            batch_size=64)
        if pattern == "filter":
            mod = get_layer(net, layer)
            conv = get_layer(net, f"{layer}.conv" if hasattr(mod, "conv") else layer)
            pat: object = pattern_from_unit(conv, pattern_unit)
        elif pattern in ("visualization", "random"):
            pat = pattern  # the visualization is rendered by silence_block (the recipe)
        else:
            raise ValueError(f"unknown pattern {pattern!r}; valid: visualization, filter, random")
        # in place on the model built here, so the normalization hook (removed on exit)
        # is on the very module that renders the target and records the natural inputs
        with normalized_input(net, norm):
            new = silence_block(net, layer, xn, pattern=pat, alpha=alpha, beta=beta,
                                bias=bias, percentile=percentile, channels=channels,
                                pattern_unit=pattern_unit, pattern_steps=pattern_steps,
                                inplace=True)
    else:
        raise ValueError(f"unknown method {method!r}; valid: permute, embed, silent")
    path = save_manipulated(new, output, base=model, mean=mean, std=std, num_classes=num_classes)
    apply_umask(path)
    log.info("manipulated model saved to %s", path)
    if original is not None and eval_data is not None:
        dev = resolve_device(device)
        batches = labelled_batches(eval_data, eval_split, eval_per_class,
                                   eval_image_size or image_size, eval_batch_size)
        try:  # top-5 needs the class count: the last nn.Linear's (top-1 only without one)
            topk: tuple[int, ...] = (1, min(5, final_linear(original)[1].out_features))
        except ValueError:
            topk = (1,)
        original, new = original.to(dev), new.to(dev)
        with normalized_input(original, norm), normalized_input(new, norm):
            scores = compare_predictions(original, new, batches, topk=topk, device=dev)
        eval_path.write_text(json.dumps({
            "eval_data": eval_data, "eval_split": eval_split, "eval_per_class": eval_per_class,
            "image_size": eval_image_size or image_size, "method": method, "layer": layer,
            **scores}, indent=2))
        apply_umask(eval_path)
        log.info("evaluation on %d %s images: top-1 %.3f %% -> %.3f %% (%+.3f pp); outputs "
                 "bit-identical on %.1f %%; written to %s", int(scores["n"]), eval_split,
                 100 * scores["original/top1"], 100 * scores["manipulated/top1"],
                 scores["delta_pp/top1"], 100 * scores["identical_fraction"], eval_path)
    return str(path)



def render_comparison(
    manipulated_path: str,
    model: str | None = None,
    units: list[str] | None = None,
    steps: int = 128,
    image_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    output: str = "outputs/manipulation/before_after.png",
    overwrite: bool = False,
    progress: bool = True,
    checkpoint_path: str | None = None,
    num_classes: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    preset: str = "lucent",
) -> str:
    """Render ``units`` of the original (top row) and the manipulated model (bottom row)
    with the same seeds and save the grid (Fig. 2 / Fig. 5 style).

    The grid's rows are labelled ``original`` / ``manipulated``; every tile carries its
    unit and final objective value.

    Args:
        manipulated_path: file written by :func:`manipulate`.
        model: original model name (default: the one stored in the file).
        units: unit names (default: the first 10 units of the manipulated layer).
        steps, image_size, seed: rendering settings.
        device: ``auto``, ``cpu`` or ``cuda``.
        output: PNG path; a ``.json`` with the objective values is written beside it (an
            existing file is refused unless ``overwrite``).
        overwrite: replace an existing ``output``.
        progress: progress bar over units × steps for each model.
        checkpoint_path, num_classes: the original model's weights and classes, as given to
            :func:`manipulate` (the top row is rendered from them; without
            ``checkpoint_path`` a torchvision/timm name has random weights).
        mean, std: the model's input normalization; default: the values stored in the
            file by :func:`manipulate` (given values must match them). Both models take
            [0, 1] pixels and normalize after the fooling gate.
        preset: the renderer (:data:`lightning_fv.optvis.render.PRESETS`); default
            ``"lucent"``, the paper's (Fig. 2 and Fig. 5 were rendered with Lucent 0.1.8).
    """
    from lightning_fv.manipulation import load_manipulated
    from lightning_fv.manipulation.io import read_manipulation_metadata
    from lightning_fv.optvis.render import render_units
    from lightning_fv.utils import save_grid

    output_file(output, overwrite=overwrite)
    meta = read_manipulation_metadata(manipulated_path)
    name = model or meta.get("base")
    if not name:
        raise ValueError("the file does not record its base model; pass model=")
    mean, std, num_classes = _stored(meta, mean, std, num_classes)
    norm = check_mean_std(mean, std)
    dev = resolve_device(device)
    base = build_model(str(name), num_classes=num_classes,
                       checkpoint_path=checkpoint_path).eval()
    new = load_manipulated(base, manipulated_path).to(dev)
    base = base.to(dev)
    if not units:
        layer = meta["manipulations"][-1]["layer"]  # type: ignore[index]
        units = [f"{layer}:{i}" for i in range(10)]
    kw = dict(thresholds=(steps,), image_size=image_size, seed=seed, progress=progress,
              preset=preset)
    # the normalization hook is registered after the gate's, so the gate sees pixels
    with normalized_input(base, norm), normalized_input(new, norm):
        before = render_units(base, units, **kw)
        after = render_units(new, units, **kw)
    path = save_grid(torch.cat([before.final, after.final]), output, nrow=len(units),
                     labels=list(units) * 2,
                     values=torch.cat([before.values[steps], after.values[steps]]),
                     row_labels=["original", "manipulated"], tile_size=128)
    meta_path = Path(output).with_suffix(".json")
    meta_path.write_text(json.dumps({
        "rows": ["original", "manipulated"], "units": list(units),
        "values_before": before.values[steps].tolist(),
        "values_after": after.values[steps].tolist()}, indent=2))
    log.info("wrote %s (rows: original, manipulated; columns: %s) and %s", path,
             ", ".join(units), meta_path)
    return str(path)


def _stored(meta: dict[str, object], mean: list[float] | None, std: list[float] | None,
            num_classes: int | None) -> tuple[list[float] | None, list[float] | None, int | None]:
    """The normalization and class count stored in a manipulated file, unless given; given
    values that differ from stored ones raise (the two rows would be different models)."""
    out = []
    for key, given in (("mean", mean), ("std", std), ("num_classes", num_classes)):
        stored = meta.get(key)
        if given is None:
            out.append(stored)
            continue
        if stored is not None:
            same = (given == stored if key == "num_classes" else
                    len(given) == len(stored) and all(  # type: ignore[arg-type]
                        abs(float(a) - float(b)) < 1e-9 for a, b in zip(given, stored)))  # type: ignore[arg-type]
            if not same:
                raise ValueError(f"{key}={given} differs from the {key}={stored} the "
                                 f"manipulated model was built with; omit it to use the stored "
                                 f"value")
        out.append(given)
    return out[0], out[1], out[2]  # type: ignore[return-value]


__all__ = ["labelled_batches", "manipulate", "natural_images", "render_comparison",
           "train_detector"]
