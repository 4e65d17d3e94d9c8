"""Image data sets on local disk: one transform, one class filter, one loader to tensors.

Used by :class:`~lightning_fv.data.TorchvisionDataModule`, the natural images of
:class:`~lightning_fv.data.TrajectoryDataModule` (`dont-trust-your-eyes…` App. C.1) and
``lightning-fv manipulate`` (the images that set the silent units' bias, §2.2):

- :func:`image_transform`: short side resized to ``size``, centre crop ``size × size``,
  [0, 1] RGB ``(3, size, size)`` tensors (normalization belongs to the model, never here);
- :func:`filter_classes`: keep the samples of some classes with their *original* labels, so
  label ``c`` is still output ``c`` of an ImageNet model (App. C.3 picks ten classes);
- :func:`image_folder`: ``root/<split>/<class>/*`` as a filtered ``ImageFolder``;
- :func:`load_images`: a data set into ``(images (N, 3, H, W), labels (N,))`` tensors;
- :func:`folder_images`: both at once, e.g. the query images of the invariant-set sampler
  (``equidiff-invariant-sets-thesis`` §4.2.2: query images ``x*`` from a data set);
- :func:`natural_set`: the natural images of a split, embedded (photo patches, digits) or
  an ``ImageFolder`` root, chosen by one name (:func:`check_natural` checks it early).

Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_fv.data.embedded import EMBEDDED, digits, photo_patches

FOLDER_DATASETS = ("ImageFolder", "DatasetFolder")


def _to_rgb(im: object) -> object:
    """PIL images of any mode (greyscale, palette, RGBA) as RGB; tensors unchanged."""
    return im.convert("RGB") if hasattr(im, "convert") else im


def image_transform(size: int) -> Callable[[object], Tensor]:
    """PIL image → ``(3, size, size)`` float tensor in [0, 1] RGB: the short side resized to
    ``size`` (bilinear, antialiased), then the centre ``size × size`` crop (C.2/C.3 use
    224 px and ``center_crop(224, 224)``)."""
    from torchvision import transforms as T

    if int(size) < 1:
        raise ValueError(f"image size must be a positive number of pixels, got {size}")
    return T.Compose([T.Lambda(_to_rgb), T.Resize(size), T.CenterCrop(size), T.ToTensor()])


def dataset_targets(dataset: Dataset) -> list[int]:
    """The label of every sample of ``dataset``, in order: read from ``targets`` /
    ``labels`` / ``samples`` when the data set has them (``ImageFolder``, CIFAR, MNIST,
    SVHN…), otherwise by loading every sample (slow, but exact)."""
    for attr in ("targets", "labels"):
        t = getattr(dataset, attr, None)
        if t is not None:
            return [int(v) for v in (t.tolist() if isinstance(t, Tensor) else t)]
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return [int(s[1]) for s in samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def check_class_indices(classes: Sequence[int] | None) -> list[int] | None:
    """``classes`` as a list of distinct non-negative ints (``None`` stays ``None``); a bad
    entry raises, naming it."""
    if classes is None:
        return None
    out = list(classes)
    if not out:
        raise ValueError("classes is empty; give the class indices to keep (e.g. "
                         "[20, 71, 102]) or null for all classes")
    bad = [c for c in out if isinstance(c, bool) or not isinstance(c, int) or c < 0]
    if bad:
        raise ValueError(f"classes must be non-negative integer labels, got {bad}")
    dup = sorted({c for c in out if out.count(c) > 1})
    if dup:
        raise ValueError(f"classes lists {dup} more than once")
    return out


def filter_classes(dataset: Dataset, classes: Sequence[int] | None,
                   per_class: int | None = None, name: str = "data set") -> Dataset:
    """The samples of ``dataset`` whose label is in ``classes``, in the data set's order,
    with their **original** labels (label ``c`` = model output ``c``); at most the first
    ``per_class`` of each class (``None``: all).

    Args:
        dataset: any map-style data set of ``(image, label)`` pairs.
        classes: labels to keep (``None``: every class).
        per_class: cap on samples per class (``None``: no cap).
        name: the data set's name in error messages (e.g. its folder).

    Raises:
        ValueError: a class that is not a label of ``dataset`` (naming it and the valid
            range) or that has no sample in it.
    """
    keep = check_class_indices(classes)
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1 or None (all), got {per_class}")
    if keep is None and per_class is None:
        return dataset
    targets = dataset_targets(dataset)
    n_classes = len(getattr(dataset, "classes", None) or []) or (max(targets, default=-1) + 1)
    if keep is not None:
        out_of_range = [c for c in keep if c >= n_classes]
        if out_of_range:
            raise ValueError(f"classes {out_of_range} are not labels of {name}: it has "
                             f"{n_classes} classes, valid labels 0..{n_classes - 1}")
        present = set(targets)
        empty = [c for c in keep if c not in present]
        if empty:
            raise ValueError(f"classes {empty} have no images in {name}")
    wanted = set(keep) if keep is not None else None
    seen: dict[int, int] = {}
    idx = []
    for i, t in enumerate(targets):
        if wanted is not None and t not in wanted:
            continue
        if per_class is not None and seen.get(t, 0) >= per_class:
            continue
        seen[t] = seen.get(t, 0) + 1
        idx.append(i)
    return Subset(dataset, idx)


def image_folder(root: str | Path, size: int, split: str | None = None,
                 classes: Sequence[int] | None = None, per_class: int | None = None
                 ) -> Dataset:
    """``root/<split>/<class>/*`` (or ``root/<class>/*`` when ``split`` is ``None``) as a
    torchvision ``ImageFolder`` of ``(3, size, size)`` [0, 1] RGB images with
    :func:`image_transform`, filtered by :func:`filter_classes`.

    Labels are the positions of the class folders in sorted order, so an ImageNet folder
    with all 1000 synset folders gives label ``c`` = output ``c`` of an ImageNet model.

    Raises:
        FileNotFoundError: the folder does not exist (naming it and the layout expected).
    """
    import torchvision

    folder = Path(root) / split if split else Path(root)
    if not folder.is_dir():
        layout = f"{root}/{{train,val}}/<class>/*" if split else f"{root}/<class>/*"
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist; expected the "
                                f"layout {layout}")
    ds = torchvision.datasets.ImageFolder(str(folder), transform=image_transform(size))
    return filter_classes(ds, classes, per_class, name=repr(str(folder)))


def load_images(dataset: Dataset, batch_size: int = 64, num_workers: int = 0
                ) -> tuple[Tensor, Tensor]:
    """Every sample of ``dataset`` as ``(images (N, 3, H, W) float32, labels (N,) int64)``,
    in order."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the data set holds no images")
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False,
                           num_workers=num_workers):
        xs.append(x.float())
        ys.append(torch.as_tensor(y).long())
    return torch.cat(xs), torch.cat(ys)


def folder_images(root: str | Path, size: int, classes: Sequence[int] | None = None,
                  per_class: int | None = None, split: str | None = None
                  ) -> tuple[Tensor, Tensor]:
    """The images of ``root/<class>/*`` (or ``root/<split>/<class>/*``) as tensors: at most
    the first ``per_class`` of each class in ``classes`` (``None``: all), in the folder's
    order, ``(N, 3, size, size)`` [0, 1] RGB (:func:`image_transform`) and their original
    labels ``(N,)`` (:func:`image_folder` + :func:`load_images`)."""
    return load_images(image_folder(root, size, split, classes, per_class))


def check_natural(natural: str, n_per_class: int | None) -> None:
    """Raise when ``natural`` is neither an embedded set nor an existing ImageFolder root,
    or ``n_per_class`` cannot be honoured (``None``, "all", needs a folder)."""
    if natural not in EMBEDDED and not Path(natural).is_dir():
        raise ValueError(f"unknown natural data set {natural!r}: neither an embedded set "
                         f"{sorted(EMBEDDED)} nor an existing ImageFolder root (a folder "
                         "holding train/<class>/* and val/<class>/*)")
    if natural == "photo_patches" and n_per_class is None:
        raise ValueError("n_natural_per_class=None (all images) needs an ImageFolder "
                         "natural set; give a number of photo patches per class")
    if n_per_class is not None and n_per_class < 1:
        raise ValueError(f"n_natural_per_class must be >= 1 or None (all), got {n_per_class}")


def natural_set(natural: str, split: str, n_per_class: int | None, image_size: int
                ) -> Tensor | Dataset:
    """Natural images of ``split`` (``"train"``/``"val"``) in [0, 1] RGB at ``image_size``:
    ``(N, 3, H, W)`` for an embedded set (``"photo_patches"``: ``n_per_class`` patches per
    class; ``"digits"``: the whole split), or, for the root of an ImageFolder
    ``root/{train,val}/<class>/*``, a lazy data set of ``(image, class)`` pairs holding the
    first ``n_per_class`` images of each class folder (``None``: all)."""
    check_natural(natural, n_per_class)
    if natural == "photo_patches":
        return photo_patches(split, n_per_class, image_size)[0]
    if natural == "digits":
        return digits(split, image_size)[0]
    return image_folder(natural, image_size, split, per_class=n_per_class)


__all__ = [
    "FOLDER_DATASETS",
    "check_natural",
    "check_class_indices",
    "dataset_targets",
    "filter_classes",
    "folder_images",
    "image_folder",
    "image_transform",
    "load_images",
    "natural_set",
]
