"""``FeatureVisualizer``: a unit sweep as a Lightning ``predict`` run.

Each predict batch is a fixed chunk of unit indices; ``predict_step`` renders those units
as one batch with :func:`lightning_fv.optvis.render.render`. Under a DDP strategy the
distributed sampler shards the units across devices and nodes; at the end of the epoch
the images are all-gathered (shards may differ in length), de-duplicated and put back in
unit order,
and rank zero writes them (``units.safetensors`` + one PNG grid per layer) if
``output_dir`` is set. Every unit uses the same seed and the chunks are fixed, so the images are
bit-for-bit those of a single-process run, however the sweep was sharded.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_fv.data.embedded import PHOTO_CLASSES, photo_patches
from lightning_fv.models import build_model
from lightning_fv.optvis.accentuation import DEFAULT_WEIGHT, accentuate
from lightning_fv.optvis.hooks import parse_unit, parse_units
from lightning_fv.optvis.maco import (
    DEFAULT_MACO_PRESET,
    maco_config,
    render_maco,
    spectrum_from_data,
)
from lightning_fv.optvis.objectives import units_objective
from lightning_fv.optvis.render import render
from lightning_fv.optvis.transform import model_input_size
from lightning_fv.utils.checkpoint import save_tensors
from lightning_fv.utils.console import StepProgress
from lightning_fv.utils.device import model_device, model_dtype
from lightning_fv.utils.files import apply_umask, run_folder
from lightning_fv.utils.preprocess import Normalize, as_normalize, check_mean_std

log = logging.getLogger(__name__)

#: where a sweep goes when neither ``output_dir`` nor a logger says otherwise
DEFAULT_ROOT = "outputs/feature_visualizer"
#: smallest tile side (pixels) of the saved PNG grids, so captions and pictures are legible
GRID_TILE_PX = 128
#: the rendering methods: Lucent-style ``render``, MACO (``optvis.maco``), feature
#: accentuation from natural seed images (``optvis.accentuation``)
METHODS = ("standard", "maco", "accentuation")


@functools.lru_cache(maxsize=8)
def photo_spectrum(size: int) -> Tensor:
    """MACO's magnitude template ``(3, size, size // 2 + 1)`` from the embedded photos: the
    mean spectrum of 100 training photo patches (10 per photo) of side ``min(size, 128)``,
    resized to the canvas (:func:`~lightning_fv.optvis.maco.spectrum_from_data`)."""
    side = min(size, 128)
    x, _ = photo_patches("train", n_per_class=10, size=side, resize=max(256, 4 * side))
    return spectrum_from_data(x, size, compute_size=side)


def seed_photos(n: int, size: int) -> Tensor:
    """``n`` validation photo patches ``(n, 3, size, size)`` in [0, 1], cycling through the
    photos (image ``i`` comes from photo ``i mod 10``): the default seeds of feature
    accentuation."""
    k = math.ceil(n / len(PHOTO_CLASSES))
    x, _ = photo_patches("val", n_per_class=k, size=size, resize=max(256, 4 * size))
    x = x.view(len(PHOTO_CLASSES), k, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])
    return x[:n].contiguous()


class _Chunks(torch.utils.data.Dataset):
    """Item ``k`` is the tensor of unit indices of chunk ``k`` (a fixed partition, so a
    unit is rendered with the same batch-mates however the chunks are sharded)."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return (self.n + self.size - 1) // self.size

    def __getitem__(self, k: int) -> Tensor:
        return torch.arange(k * self.size, min(self.n, (k + 1) * self.size))


def warn_untrained_or_unnormalized(name: str, net: nn.Module, checkpoint_path: str | None,
                                   mean: list[float] | None) -> list[str]:
    """Log (and return) the warnings for a model built by name that silently renders
    something else than the user means: random weights (no ``checkpoint_path`` for a
    torchvision/timm/``small_cnn`` name; weights are never downloaded) and no input
    normalization (no ``mean``/``std`` and no :class:`Normalize` inside the model)."""
    msgs = []
    if not name.startswith("bundled") and checkpoint_path is None:
        msgs.append(f"model {name!r} has random weights (no checkpoint_path given): the "
                    f"pictures show an untrained network; pass checkpoint_path (--checkpoint_path)")
    if mean is None and not any(isinstance(m, Normalize) for m in net.modules()):
        msgs.append(f"model {name!r} gets no input normalization (no mean/std given and it has "
                    f"no Normalize module): images in [0, 1] go in as they are; pass the mean "
                    f"and std of its weights (ImageNet: --mean '[0.485,0.456,0.406]' "
                    f"--std '[0.229,0.224,0.225]')")
    for m in msgs:
        log.warning("warning: %s", m)
    return msgs


def check_image_size(net: nn.Module, image_size: int, normalize: object = None,
                     max_size: int = 1024) -> None:
    """Run one ``(1, 3, image_size, image_size)`` forward of ``net`` (no grad); if the model
    cannot take that size, raise :class:`ValueError` naming it and the smallest size in
    ``[1, max_size]`` that works (found by bisection)."""
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    device, dtype = model_device(net), model_dtype(net)
    norm = as_normalize(normalize, device)

    def works(size: int) -> bool:
        x = torch.rand(1, 3, size, size, device=device)
        if norm is not None:
            x = norm(x)
        was = net.training
        try:
            net.eval()
            with torch.no_grad():
                net(x.to(dtype))
            return True
        except (RuntimeError, ValueError):
            return False
        finally:
            net.train(was)

    if works(image_size):
        return
    lo, hi = image_size, max_size
    if not works(hi):
        raise ValueError(f"image_size {image_size} is too small for this model, and so is "
                         f"every size up to {max_size} px (check the model's input)")
    while hi - lo > 1:  # lo fails, hi works
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    raise ValueError(f"image_size {image_size} is too small for this model (its forward fails "
                     f"at {image_size}x{image_size} px); the smallest size that works is {hi}")


class FeatureVisualizer(L.LightningModule):
    """Render a sweep of units with ``trainer.predict``; shards across devices under DDP.

    Args:
        model: a model name for :func:`lightning_fv.models.build_model` (``"bundled"``, a
            torchvision/timm name) or an ``nn.Module``.
        units: Lucent-style unit names; ``"layer:*"`` expands to all channels and
            ``"layer:0-9"`` to a range (default ``["fc:*"]``; an empty list is an error).
        checkpoint_path: local weights for a named model (safetensors / weights_only).
        mean, std: input normalization applied before the model (``None`` when the model
            normalizes itself, like the bundled model). Never guessed.
        image_size: side of the rendered images (pixels); checked with one forward.
        thresholds: optimizer steps at which images are kept (the last is the result).
        transforms: ``"standard"`` (Lucent's) or ``"none"``.
        fft, decorrelate: image parameterization.
        lr: Adam learning rate.
        seed: seed of every unit.
        batch_size: units rendered together per predict step.
        bf16: render under bf16 autocast (CUDA).
        channels_last, compile: GPU options passed to ``render``.
        method: ``"standard"`` (``render``: ``fft``/``decorrelate``/``transforms``/``lr``),
            ``"maco"`` (:func:`~lightning_fv.optvis.maco.render_maco`: phase-only images on
            a ``canvas_size`` canvas with the embedded photos' spectrum, crops of
            ``image_size`` fed to the model; settings from ``maco_preset``, steps from
            ``thresholds``) or ``"accentuation"``
            (:func:`~lightning_fv.optvis.accentuation.accentuate`: unit ``i`` accentuated in
            validation photo patch ``i``, regularized at ``accent_layer``).
        maco_preset: ``"lightning"`` ([0, 1] images, then ``mean``/``std``) or ``"horama"``
            (Horama 0.3's values in (−2.5, 2.5) fed to the model as they are; saved
            mapped to [0, 1]).
        canvas_size: MACO canvas side (default ``image_size · 1280 / 224``, Horama's ratio).
        accent_layer: layer whose activations stay close to the seed's (``None``: none).
        accent_weight: ``λ`` of the accentuation regularizer.
        output_dir: where rank zero writes ``units.safetensors``, ``units.pt`` and one PNG
            grid per layer. ``None``: the run's log folder (``trainer.log_dir``, beside the
            ``config.yaml`` of ``lightning-fv predict``) when the trainer has a logger, else
            a fresh ``outputs/feature_visualizer/version_N``. An existing non-empty folder
            that already holds a sweep is refused unless ``overwrite``.
        overwrite: allow writing into a folder that already holds a result.
        progress: a progress bar over units × optimizer steps (with ETA) on rank zero.
    """

    def __init__(
        self,
        model: str | nn.Module = "bundled",
        units: list[str] | None = None,
        checkpoint_path: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        image_size: int = 64,
        thresholds: list[int] | None = None,
        transforms: str = "standard",
        fft: bool = True,
        decorrelate: bool = True,
        lr: float = 0.05,
        seed: int = 0,
        batch_size: int = 32,
        bf16: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        output_dir: str | None = None,
        overwrite: bool = False,
        progress: bool = True,
        method: str = "standard",
        maco_preset: str = DEFAULT_MACO_PRESET,
        canvas_size: int | None = None,
        accent_layer: str | None = None,
        accent_weight: float = DEFAULT_WEIGHT,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        maco = maco_config(maco_preset)  # an unknown preset fails here, naming the valid ones
        if canvas_size is not None and canvas_size < 2:
            raise ValueError(f"canvas_size must be >= 2 pixels, got {canvas_size}")
        if transforms not in ("standard", "none"):
            raise ValueError(f"transforms must be 'standard' or 'none', got {transforms!r}")
        check_mean_std(mean, std)
        if units is not None and len(units) == 0:
            raise ValueError("units is empty ([]); name at least one unit, e.g. ['fc:*'] (all "
                             "channels of fc), ['block3:0-15'] or ['fc:3'], or leave it unset "
                             "for ['fc:*']")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.net = model if isinstance(model, nn.Module) else build_model(
            model, checkpoint_path=checkpoint_path)
        self.net.eval().requires_grad_(False)
        if isinstance(model, str):
            warn_untrained_or_unnormalized(model, self.net, checkpoint_path, mean)
        check_image_size(self.net, image_size, None if mean is None else (mean, std))
        # the unit grammar, parsed once; names for the outputs and the hparams
        self.parsed_units = parse_units(list(units or ["fc:*"]), self.net, image_size)
        self.units = [str(u) for u in self.parsed_units]
        self.mean, self.std = mean, std
        self.image_size = image_size
        self.thresholds = sorted(thresholds or [512])
        self.transforms = transforms
        self.fft, self.decorrelate, self.lr = fft, decorrelate, lr
        self.seed = seed
        self.batch_size = batch_size
        self.bf16, self.channels_last, self.compile_model = bf16, channels_last, compile
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.progress = progress
        self.method = method
        self.maco_preset = maco_preset
        self.canvas_size = canvas_size or round(maco.canvas_ratio * image_size)
        self.accent_layer = accent_layer
        self.accent_weight = accent_weight
        if method == "accentuation" and accent_layer is not None:
            from lightning_fv.optvis.hooks import get_layer

            get_layer(self.net, accent_layer)  # an unknown layer lists the closest names
        self._seeds: Tensor | None = None
        self.written: list[Path] = []
        self._run_dir: Path | None = None
        self._bar: StepProgress | None = None
        self._outputs: list[tuple[Tensor, Tensor, Tensor]] = []
        self.results: dict[str, object] = {}

    def resolve_output_dir(self) -> Path:
        """The folder this run writes to (chosen once per run; see ``output_dir``)."""
        if self._run_dir is None:
            trainer = self._trainer
            logged = trainer is not None and trainer.logger is not None
            log_dir = trainer.log_dir if logged else None
            self._run_dir = run_folder(self.output_dir, log_dir, DEFAULT_ROOT,
                                       "units.safetensors", "a sweep", self.overwrite)
        return self._run_dir

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Chunks(len(self.units), self.batch_size), batch_size=None,
                          shuffle=False)

    def forward(self, idx: Tensor) -> dict[str, Tensor]:
        names = [self.units[int(i)] for i in idx]
        normalize = None if self.mean is None else (self.mean, self.std)
        bar = self._bar
        report = (lambda step, total: bar.update(len(names))) if bar else False
        if self.method != "standard":
            with torch.inference_mode(False), torch.enable_grad():
                images, values = self._render_other(idx, names, normalize, report)
            return {"index": idx.detach().clone(), "images": images, "values": values}
        with torch.inference_mode(False), torch.enable_grad():
            res = render(
                self.net,
                units_objective([self.parsed_units[int(i)] for i in idx]),
                param={"fft": self.fft, "decorrelate": self.decorrelate},
                transforms="standard" if self.transforms == "standard" else None,
                optimizer=lambda p: torch.optim.Adam(p, lr=self.lr),
                thresholds=self.thresholds,
                batch=len(names),
                image_size=self.image_size,
                normalize=normalize,
                seed=self.seed,
                autocast_dtype=torch.bfloat16 if self.bf16 else None,
                channels_last=self.channels_last,
                compile=self.compile_model,
                unit_names=names,
                progress=report,
            )
        return {"index": idx.detach().clone(), "images": res.final, "values": res.values[
            self.thresholds[-1]]}

    def _render_other(self, idx: Tensor, names: list[str], normalize: object,
                      report: object) -> tuple[Tensor, Tensor]:
        """MACO or accentuation of the units ``names`` (global indices ``idx``): images in
        [0, 1] ``(n, 3, S, S)`` and objective values ``(n,)``."""
        steps = self.thresholds[-1]
        if self.method == "maco":
            res = render_maco(self.net, names, config=self.maco_preset, steps=steps,
                              spectrum=photo_spectrum(self.canvas_size),
                              image_size=self.canvas_size,
                              # crops of the size a fixed-size model (a ViT) enforces
                              input_size=None if model_input_size(self.net) else self.image_size,
                              normalize=normalize, seed=self.seed,  # type: ignore[arg-type]
                              progress=report)  # type: ignore[arg-type]
            return res.images_01(), res.values
        if self._seeds is None or len(self._seeds) < len(self.units):
            self._seeds = seed_photos(len(self.units), self.image_size)
        seeds = self._seeds[idx.cpu()]
        res = accentuate(self.net, names, seeds, layer=self.accent_layer,
                         weight=self.accent_weight, steps=steps, lr=self.lr,
                         param={"fft": self.fft, "decorrelate": self.decorrelate},
                         transforms=self.transforms, normalize=normalize,  # type: ignore[arg-type]
                         seed=self.seed, progress=report,
                         autocast_dtype=torch.bfloat16 if self.bf16 else None)
        return res.images, res.values

    def predict_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        out = self(batch)
        self._outputs.append((out["index"].cpu(), out["images"], out["values"]))
        return out

    def on_predict_epoch_start(self) -> None:
        self._outputs = []
        if self.trainer.is_global_zero and self.output_dir is not None:
            self.resolve_output_dir()  # refuse an earlier result before rendering
        if self.progress and self.trainer.is_global_zero:
            world, rank = self.trainer.world_size, self.trainer.global_rank
            n_chunks = len(_Chunks(len(self.units), self.batch_size))
            mine = sum(min(self.batch_size, len(self.units) - k * self.batch_size)
                       for k in range(rank, n_chunks, world))
            self._bar = StepProgress(mine * self.thresholds[-1],
                                     desc=f"render {mine} unit(s) x {self.thresholds[-1]} steps",
                                     unit="unit-step")

    def on_predict_epoch_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        idx = torch.cat([o[0] for o in self._outputs]).to(self.device)
        imgs = torch.cat([o[1] for o in self._outputs]).to(self.device)
        vals = torch.cat([o[2] for o in self._outputs]).to(self.device)
        if self.trainer.world_size > 1:
            # Lightning's predict sampler does not pad: shards may differ in length.
            sizes = self.all_gather(torch.tensor(len(idx), device=self.device)).flatten()
            n = int(sizes.max())
            gathered = []
            for t in (idx, imgs, vals):
                padded = t.new_zeros((n, *t.shape[1:]))
                padded[: len(t)] = t
                g = self.all_gather(padded)
                gathered.append(torch.cat([g[r, : int(sizes[r])] for r in range(len(sizes))]))
            idx, imgs, vals = gathered
        order = torch.argsort(idx.cpu(), stable=True)
        idx, imgs, vals = idx.cpu()[order], imgs.cpu()[order], vals.cpu()[order]
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[1:] = idx[1:] != idx[:-1]
        self.results = {"units": [self.units[int(i)] for i in idx[keep]],
                        "images": imgs[keep], "values": vals[keep]}
        if self.trainer.is_global_zero:
            out = self.resolve_output_dir()
            self.written = save_sweep(self.results, out)
            log.info("wrote %d unit(s) to %s/ (units.safetensors, units.pt, %s)",
                     len(self.results["units"]), out,  # type: ignore[arg-type]
                     ", ".join(p.name for p in self.written[2:]))

    def on_predict_end(self) -> None:
        self._run_dir = None  # a further predict call gets a folder of its own


def save_sweep(results: dict[str, object], output_dir: str | Path) -> list[Path]:
    """Write ``units.safetensors`` (images ``(N, 3, H, W)`` in [0, 1], objective values
    ``(N,)``, unit names in the metadata), the same as ``units.pt`` (loads with
    ``weights_only=True``) and one PNG grid per layer (tiles in unit order, row-major, each
    captioned with its unit and final objective value, enlarged to at least
    :data:`GRID_TILE_PX` pixels); returns the written paths. Files get the user's umask."""
    import json

    from lightning_fv.utils.images import save_grid

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    units: list[str] = results["units"]  # type: ignore[assignment]
    images: Tensor = results["images"]  # type: ignore[assignment]
    values: Tensor = results["values"]  # type: ignore[assignment]
    paths = [out / "units.safetensors", out / "units.pt"]
    save_tensors({"images": images, "values": values}, paths[0],
                 metadata={"units": json.dumps(units)})
    # the same tensors for torch.load(..., weights_only=True) users
    torch.save({"images": images, "values": values, "units": list(units)}, paths[1])
    by_layer: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        by_layer.setdefault(parse_unit(u).layer, []).append(i)
    for layer, rows in by_layer.items():
        paths.append(save_grid(images[rows], out / f"{layer.replace('.', '_')}.png",
                               labels=[units[i] for i in rows], values=values[rows],
                               tile_size=GRID_TILE_PX))
    apply_umask(*paths)
    return paths


def load_sweep(output_dir: str) -> dict[str, object]:
    """Read back what :func:`save_sweep` wrote."""
    import json

    from safetensors import safe_open

    path = str(Path(output_dir) / "units.safetensors")
    with safe_open(path, framework="pt") as f:
        units = json.loads((f.metadata() or {})["units"])
        return {"units": units, "images": f.get_tensor("images"), "values": f.get_tensor("values")}
