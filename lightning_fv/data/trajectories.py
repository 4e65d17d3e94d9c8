"""The visualization-detector data set of `dont-trust-your-eyes…` App. C.1.

Natural images (label 1) against intermediate steps of feature-visualization
trajectories (label 0): every unit is visualized ``trajectories_per_unit`` times (one seed
each) and ``n_log_steps`` = 15 steps of each optimization are kept, sampled
logarithmically (:func:`lightning_fv.optvis.render.log_spaced_steps`). The units of the
training and the test split are disjoint (C.1: "we use different units for the two
sets"), chosen by a seeded permutation. Natural images of the two splits are the
disjoint train/val splits of the embedded data sets, or of an ``ImageFolder``
(``root/{train,val}/<class>/*``; C.1 uses the 1,281,167 ImageNet training images), read
lazily from disk.

A model that expects normalized input (torchvision/timm ImageNet weights) is rendered with
its ``mean``/``std`` (``(x − mean)/std`` after the render transforms, never guessed); the
data set itself holds [0, 1] RGB pixels, the input space of the detector (the fooling gate
sees the model's pixel input, §2.1).

Rendering is batched (:func:`lightning_fv.optvis.render.render_units`, many units and
seeds per batch) and cached on disk as safetensors (float16) under a key that hashes every
setting and the model's weights, so changing any of them renders anew.

Optionally (``augment_fraction``) a fraction of the visualization images is passed through
the rendering transforms (pad, jitter, scale, rotate) and resized back: during feature
visualization the model, and hence the fooling-circuit gate, sees transformed images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from lightning_fv.data.folders import check_natural, natural_set
from lightning_fv.optvis.hooks import parse_unit, parse_units
from lightning_fv.optvis.render import log_spaced_steps, preset_settings, render_units
from lightning_fv.optvis.transform import TransformChain, standard_transforms
from lightning_fv.utils.checkpoint import save_tensors
from lightning_fv.utils.device import resolve_device
from lightning_fv.utils.preprocess import check_mean_std
from lightning_fv.utils.rng import make_generator

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def layer_units(model: nn.Module, layers: Sequence[str], image_size: int,
                max_per_layer: int | None = None) -> list[str]:
    """All units ``"layer:i"`` of ``layers`` (the first ``max_per_layer`` of each if given):
    ``"layer:*"`` of the unit grammar, so channels are counted in the layer's layout."""
    out = []
    for layer in layers:
        units = parse_units([f"{layer}:*"], model, image_size)
        out += [str(u) for u in units[:max_per_layer]]
    return out


def split_units(units: Sequence[str], test_fraction: float = 0.1,
                seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint ``(train_units, test_units)``: a seeded permutation, the first
    ``round(test_fraction·N)`` (at least 1) units are the test units; order kept."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(units) < 2:
        raise ValueError(f"need at least 2 units to split, got {len(units)}")
    if len(set(units)) != len(units):
        raise ValueError("units contain duplicates")
    perm = torch.randperm(len(units), generator=make_generator(seed)).tolist()
    n_test = min(len(units) - 1, max(1, round(test_fraction * len(units))))
    test = set(perm[:n_test])
    return ([u for i, u in enumerate(units) if i not in test],
            [u for i, u in enumerate(units) if i in test])


def render_trajectories(model: nn.Module, units: Sequence[str], trajectories_per_unit: int = 1,
                        steps: int = 64, n_log_steps: int = 15, image_size: int = 64,
                        transforms: str | None = "standard", batch_size: int = 64,
                        seed: int = 0, progress: bool = False,
                        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                        preset: str = "lucid") -> Tensor:
    """Log-sampled trajectory images ``(U·T·S, 3, H, W)`` in [0, 1] (App. C.1).

    Unit ``u`` is rendered ``T = trajectories_per_unit`` times with seeds ``seed + t``;
    ``S = n_log_steps`` steps of each ``steps``-step optimization are kept. Order: unit-major,
    then trajectory, then step. ``normalize``: the model's ``(mean, std)``, applied to its
    input after the transforms (``None``: the model takes [0, 1] pixels); the returned
    images are the un-normalized [0, 1] pixels. ``preset``: the renderer
    (:data:`lightning_fv.optvis.render.PRESETS`); ``"lucid"`` (default) is C.1's "parameters
    used by Olah et al. (2017)": Lucid's ``render_vis`` redirects ReLU gradients for its
    first 16 steps; ``"lucent"`` is C.2's Lucent 0.1.8, without the redirection.
    """
    if trajectories_per_unit < 1:
        raise ValueError(f"trajectories_per_unit must be >= 1, got {trajectories_per_unit}")
    names = [str(parse_unit(u)) for u in units for _ in range(trajectories_per_unit)]
    seeds = [seed + t for _ in units for t in range(trajectories_per_unit)]
    res = render_units(model, names, batch_size=batch_size, seed=seeds, progress=progress,
                       thresholds=(steps,), image_size=image_size,
                       transforms="standard" if transforms == "standard" else None,
                       record=log_spaced_steps(steps, n_log_steps), record_grads=False,
                       normalize=normalize, preset=preset)
    imgs = res.trajectory.images  # (S, N, 3, H, W)
    return imgs.transpose(0, 1).reshape(-1, *imgs.shape[2:]).clamp(0, 1)


def augment_like_rendering(images: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Pass a random ``fraction`` of ``images`` through Lucent's standard transforms and
    resize them back to their size (what the model sees during rendering)."""
    if fraction <= 0:
        return images
    g = make_generator(seed)
    pick = (torch.rand(images.shape[0], generator=g) < fraction).nonzero().flatten()
    if pick.numel() == 0:
        return images
    chain = TransformChain(standard_transforms())
    u = torch.rand(pick.numel(), chain.n_random, generator=g)
    out = images.clone()
    h, w = images.shape[-2:]
    for s in range(0, pick.numel(), 512):
        idx = pick[s:s + 512]
        t = chain(images[idx].float(), u[s:s + 512])
        t = F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out[idx] = t.clamp(0, 1).to(images.dtype)
    return out


def _model_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TrajectoryDataModule(L.LightningDataModule):
    """Natural images (label 1) vs. visualization trajectories (label 0), App. C.1.

    Args:
        model: a model name for :func:`lightning_fv.models.build_model`
            (``"bundled:photo_patches"``, a torchvision/timm name) or an ``nn.Module``.
        layers: layers whose units are visualized (ignored when ``units`` is given).
        units: explicit unit names (``"fc:3"``, ranges ``"fc:0-9"``, ``"block4:*"``).
        max_units_per_layer: cap on units per layer.
        natural: ``"photo_patches"`` or ``"digits"`` (embedded natural images), or the
            root of an ``ImageFolder`` ``root/{train,val}/<class>/*`` (C.1: ImageNet; its
            ``train`` split gives the training naturals, ``val`` the held-out ones),
            resized and centre-cropped to ``image_size`` and read lazily.
        n_natural_per_class: natural images per class for the training split (the
            held-out split gets half, at least 1); for an ImageFolder the first ones of
            each class folder, ``None`` for all (C.1 uses the whole training set).
        mean, std: the model's input normalization (both or neither; C.2's Lucent
            InceptionV1 normalizes itself, torchvision's ``googlenet`` weights expect
            ``(x − 0.5)/0.5``). Applied to the model's input while rendering only.
        image_size: side of natural images and visualizations.
        trajectories_per_unit: optimization runs per unit (different seeds); C.1 uses 35.
        steps: optimizer steps per run (C.1: 512).
        n_log_steps: log-spaced steps kept per run (C.1: 15).
        test_fraction: fraction of units held out for the test split (C.1: 10 %).
        split_seed: seed of the unit split.
        augment_fraction: fraction of visualizations passed through the render transforms.
        transforms: ``"standard"`` or ``"none"`` during rendering.
        render_batch_size: units rendered together (``render_units``' ``batch_size``);
            ``chunk_size`` is its deprecated name.
        cache_dir: folder for the safetensors cache (``None``: no cache).
        checkpoint_path: local weights for a named ``model``.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``.
        batch_size, num_workers: loader settings.
        preset: the renderer of the trajectories (:func:`render_trajectories`): ``"lucid"``
            (default), C.1's Olah et al. (2017) settings with redirected ReLU gradients for
            16 steps; ``"lucent"``, C.2's renderer without them.
        shard_units: ``None`` (default): all visualizations are rendered, held in memory and
            cached as one file. A number: they are rendered ``shard_units`` units at a
            time, each group written to its own cache file
            (``<cache_dir>/trajectories-<key>/{train,test}-<i>.safetensors``), and read
            lazily from those files while training. Memory then holds one group, not C.1's
            525,000 images (≈ 160 GB at 224 px). A group already on disk is not rendered
            again, so an interrupted run resumes. The augmented fraction is drawn per
            group (seed ``split_seed + 1000·split + group``), so the images differ from the
            unsharded layout's; needs ``cache_dir``.
    """

    def __init__(
        self,
        model: str | nn.Module = "bundled:photo_patches",
        layers: list[str] | None = None,
        units: list[str] | None = None,
        max_units_per_layer: int | None = None,
        natural: str = "photo_patches",
        n_natural_per_class: int | None = 200,
        image_size: int = 64,
        trajectories_per_unit: int = 2,
        steps: int = 64,
        n_log_steps: int = 15,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        augment_fraction: float = 0.5,
        transforms: str = "standard",
        render_batch_size: int = 64,
        cache_dir: str | None = "outputs/cache/trajectories",
        checkpoint_path: str | None = None,
        device: str = "auto",
        batch_size: int = 128,
        num_workers: int = 0,
        chunk_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        preset: str = "lucid",
        shard_units: int | None = None,
    ) -> None:
        super().__init__()
        if shard_units is not None and shard_units < 1:
            raise ValueError(f"shard_units must be >= 1 or None (one file), got {shard_units}")
        check_natural(natural, n_natural_per_class)
        preset_settings(preset)  # an unknown preset fails here, naming the valid ones
        if transforms not in ("standard", "none"):
            raise ValueError(f"transforms must be 'standard' or 'none', got {transforms!r}")
        self.model_spec = model
        self.layers = list(layers or ["fc"])
        self.units = list(units) if units else None
        self.max_units_per_layer = max_units_per_layer
        self.natural = natural
        self.n_natural_per_class = n_natural_per_class
        self.image_size = image_size
        self.trajectories_per_unit = trajectories_per_unit
        self.steps = steps
        self.n_log_steps = n_log_steps
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.augment_fraction = augment_fraction
        self.transforms = transforms
        if chunk_size is not None:
            warnings.warn("TrajectoryDataModule(chunk_size=...) is deprecated; use "
                          "render_batch_size=", DeprecationWarning, stacklevel=2)
            render_batch_size = chunk_size
        self.render_batch_size = render_batch_size
        self.cache_dir = cache_dir
        self.checkpoint_path = checkpoint_path
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.normalize = check_mean_std(mean, std)
        self.preset = preset
        self.shard_units = shard_units
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.cache_path: Path | None = None
        self.loaded_from_cache = False

    # -- building blocks ---------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if isinstance(self.model_spec, nn.Module):
            return self.model_spec
        from lightning_fv.models import build_model

        return build_model(self.model_spec, checkpoint_path=self.checkpoint_path)

    def natural_images(self, split: str) -> Tensor | Dataset:
        """Natural images of ``split`` (``"train"``/``"val"``): ``(N, 3, H, W)`` in [0, 1]
        for an embedded set; for an ImageFolder a lazy data set of ``(image, class)``
        pairs (images ``(3, H, W)`` in [0, 1]; the class is replaced by label 1 in
        :meth:`setup`)."""
        n = self.n_natural_per_class
        if n is not None and split != "train":
            n = max(1, n // 2)
        return natural_set(self.natural, split, n, self.image_size)

    def settings(self, model: nn.Module, units: Sequence[str]) -> dict[str, object]:
        """Everything the cached visualizations depend on (hashed into the cache key)."""
        return {
            "version": CACHE_VERSION,
            "model": _model_digest(model),
            "units": list(units),
            "image_size": self.image_size,
            "trajectories_per_unit": self.trajectories_per_unit,
            "steps": self.steps,
            "n_log_steps": self.n_log_steps,
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            "augment_fraction": self.augment_fraction,
            "transforms": self.transforms,
            **({} if self.normalize is None else {"normalize": [list(v) for v in
                                                               self.normalize]}),
            # the default renderer keeps the keys of caches written before it was an option
            **({} if self.preset == "lucid" else {"preset": self.preset}),
            **({} if self.shard_units is None else {"shard_units": self.shard_units}),
        }

    @staticmethod
    def cache_key(settings: dict[str, object]) -> str:
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]

    def visualizations(self) -> tuple[Tensor | Dataset, Tensor | Dataset, list[str], list[str]]:
        """``(train_vis, test_vis, train_units, test_units)``, rendered or from the cache:
        ``(N, 3, H, W)`` tensors, or with ``shard_units`` lazy data sets of ``(3, H, W)``
        images (:class:`ShardedImages`)."""
        model = self.build_model()
        dev = resolve_device(self.device)
        model = model.to(dev).eval()
        units = ([str(u) for u in parse_units(self.units, model, self.image_size)]
                 if self.units else
                 layer_units(model, self.layers, self.image_size, self.max_units_per_layer))
        train_units, test_units = split_units(units, self.test_fraction, self.split_seed)
        settings = self.settings(model, units)
        key = self.cache_key(settings)
        if self.shard_units is not None:
            return (*self.sharded_visualizations(model, train_units, test_units, key, settings),
                    train_units, test_units)
        path = Path(self.cache_dir) / f"trajectories-{key}.safetensors" if self.cache_dir else None
        self.cache_path = path
        if path is not None and path.is_file():
            from lightning_fv.utils.checkpoint import load_state_dict

            data = load_state_dict(path, prefixes=())
            self.loaded_from_cache = True
            log.info("loaded visualization trajectories from %s", path)
            return (data["train"].float(), data["test"].float(), train_units, test_units)
        self.loaded_from_cache = False
        parts = []
        for k, us in enumerate((train_units, test_units)):
            parts.append(self._render(model, us, self.split_seed + k))
        if path is not None:
            save_tensors({"train": parts[0].half(), "test": parts[1].half()}, path,
                         metadata={"settings": json.dumps(settings)})
            log.info("cached visualization trajectories in %s", path)
            # the cache holds float16: use the same precision now as after a reload
        return parts[0].half().float(), parts[1].half().float(), train_units, test_units

    def _render(self, model: nn.Module, units: Sequence[str], augment_seed: int) -> Tensor:
        """The trajectories of ``units`` ``(U·T·S, 3, H, W)``, ``augment_fraction`` of them
        passed through the render transforms (seeded by ``augment_seed``)."""
        v = render_trajectories(model, units, self.trajectories_per_unit, self.steps,
                                self.n_log_steps, self.image_size,
                                None if self.transforms == "none" else "standard",
                                self.render_batch_size, seed=0, progress=True,
                                normalize=self.normalize, preset=self.preset)
        return augment_like_rendering(v, self.augment_fraction, augment_seed)

    def sharded_visualizations(self, model: nn.Module, train_units: Sequence[str],
                               test_units: Sequence[str], key: str,
                               settings: dict[str, object]) -> tuple[Dataset, Dataset]:
        """Render ``shard_units`` units at a time into their own cache files (groups already
        on disk are kept) and return the two splits as lazy data sets over those files."""
        if not self.cache_dir:
            raise ValueError("shard_units needs a cache_dir: the groups are read from disk")
        folder = Path(self.cache_dir) / f"trajectories-{key}"
        self.cache_path = folder
        size = int(self.shard_units)  # type: ignore[arg-type]
        out: list[Dataset] = []
        rendered = 0
        for k, (name, us) in enumerate((("train", train_units), ("test", test_units))):
            paths = []
            for g, start in enumerate(range(0, len(us), size)):
                path = folder / f"{name}-{g:05d}.safetensors"
                if not path.is_file():
                    v = self._render(model, us[start:start + size],
                                     self.split_seed + 1000 * k + g)
                    # written under a temporary name first: a killed run leaves no half file
                    tmp = path.with_suffix(".partial")
                    save_tensors({"images": v.half()}, tmp,
                                 metadata={"settings": json.dumps(settings),
                                           "units": json.dumps(list(us[start:start + size]))})
                    tmp.replace(path)
                    rendered += 1
                paths.append(path)
            out.append(ShardedImages(paths))
        self.loaded_from_cache = rendered == 0
        log.info("visualization trajectories in %s (%d group file(s) rendered now)", folder,
                 rendered)
        return out[0], out[1]

    # -- LightningDataModule -----------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        vis_train, vis_test, self.train_units, self.test_units = self.visualizations()
        nat_train, nat_test = self.natural_images("train"), self.natural_images("val")
        self.vis_train, self.vis_test = vis_train, vis_test
        self.natural_train, self.natural_test = nat_train, nat_test
        self.train_set = _labelled(nat_train, vis_train)
        self.test_set = _labelled(nat_test, vis_test)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          generator=make_generator(self.split_seed), num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.test_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class _Relabelled(Dataset):
    """``(image, 1)`` for every ``(image, class)`` of a natural-image data set."""

    def __init__(self, dataset: Dataset, label: int = 1) -> None:
        self.dataset, self.label = dataset, label

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.dataset[i][0].float(), torch.tensor(self.label, dtype=torch.long)


class ShardedImages(Dataset):
    """The images ``(3, H, W)`` (float32) of several safetensors files, each holding an
    ``"images"`` tensor ``(N_i, 3, H, W)``, as one data set of length ``Σ N_i``, read
    lazily: only the headers are read up front; each item is one slice of a memory-mapped
    file (the files are opened again in every worker process)."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        from safetensors import safe_open

        self.paths = [str(p) for p in paths]
        sizes = []
        for path in self.paths:
            with safe_open(path, framework="pt") as f:
                sizes.append(int(f.get_slice("images").get_shape()[0]))
        self.offsets = torch.tensor([0, *sizes]).cumsum(0)
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i = i % len(self)
        shard = int(torch.searchsorted(self.offsets, torch.tensor(i), right=True)) - 1
        if shard not in self._open:
            from safetensors import safe_open

            self._open[shard] = safe_open(self.paths[shard], framework="pt")
        handle = self._open[shard]
        j = i - int(self.offsets[shard])
        return handle.get_slice("images")[j:j + 1][0].float()  # type: ignore[attr-defined]

    def __getstate__(self) -> dict[str, object]:  # open handles do not cross processes
        return {**self.__dict__, "_open": {}}


class _Labelled(Dataset):
    """``(image, label)`` for every image of an image-only data set."""

    def __init__(self, images: Dataset, label: int) -> None:
        self.images, self.label = images, label

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], torch.tensor(self.label, dtype=torch.long)


def _labelled(natural: Tensor | Dataset, vis: Tensor | Dataset) -> Dataset:
    """Natural images (label 1) then visualizations (label 0): one ``TensorDataset`` when
    both are tensors, else the lazy natural set followed by the visualizations."""
    vis_set = (TensorDataset(vis.float(), torch.zeros(vis.shape[0], dtype=torch.long))
               if isinstance(vis, Tensor) else _Labelled(vis, 0))
    if not isinstance(natural, Tensor) or not isinstance(vis, Tensor):
        nat_set = (_Relabelled(natural) if not isinstance(natural, Tensor) else
                   TensorDataset(natural.float(), torch.ones(natural.shape[0], dtype=torch.long)))
        return ConcatDataset([nat_set, vis_set])
    x = torch.cat([natural.float(), vis.float()])
    y = torch.cat([torch.ones(natural.shape[0], dtype=torch.long),
                   torch.zeros(vis.shape[0], dtype=torch.long)])
    return TensorDataset(x, y)


__all__ = [
    "ShardedImages",
    "TrajectoryDataModule",
    "augment_like_rendering",
    "layer_units",
    "render_trajectories",
    "split_units",
]
