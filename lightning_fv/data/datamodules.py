"""LightningDataModules over the embedded data sets and over any torchvision data set."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_fv.data.embedded import PHOTO_CLASSES, digits, photo_patches
from lightning_fv.data.folders import (
    FOLDER_DATASETS,
    check_class_indices,
    filter_classes,
    image_folder,
    image_transform,
)


class _TensorDataModule(L.LightningDataModule):
    """Common loaders for data held as ``(N, 3, H, W)`` tensors in [0, 1]."""

    classes: tuple[str, ...] = ()

    def __init__(self, batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _tensors(self, split: str) -> tuple[Tensor, Tensor]:
        raise TypeError(f"{type(self).__name__} must define _tensors(split)")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = TensorDataset(*self._tensors("train"))
            self.val_set = TensorDataset(*self._tensors("val"))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        g = torch.Generator().manual_seed(0)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          generator=g, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class PhotoPatchesDataModule(_TensorDataModule):
    """Random crops of the photos shipped with skimage/sklearn (10 classes, see
    :func:`lightning_fv.data.embedded.photo_patches`)."""

    classes = PHOTO_CLASSES

    def __init__(self, batch_size: int = 64, n_train_per_class: int = 300,
                 n_val_per_class: int = 60, size: int = 64, resize: int = 256,
                 seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.n_train_per_class = n_train_per_class
        self.n_val_per_class = n_val_per_class
        self.size = size
        self.resize = resize
        self.seed = seed

    def _tensors(self, split: str) -> tuple[Tensor, Tensor]:
        n = self.n_train_per_class if split == "train" else self.n_val_per_class
        return photo_patches(split, n, self.size, self.resize, self.seed)


class DigitsDataModule(_TensorDataModule):
    """sklearn's handwritten digits upsampled to ``size`` and repeated to RGB (10 classes)."""

    classes = tuple(str(i) for i in range(10))

    def __init__(self, batch_size: int = 64, size: int = 32, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.size = size
        self.seed = seed

    def _tensors(self, split: str) -> tuple[Tensor, Tensor]:
        return digits(split, self.size, seed=self.seed)


class TorchvisionDataModule(L.LightningDataModule):
    """Any ``torchvision.datasets`` class (or ``ImageFolder``) on local disk.

    Args:
        root: data directory. For ``ImageFolder`` it holds ``train/`` and ``val/``
            sub-folders of class folders.
        dataset: a ``torchvision.datasets`` class name (``"ImageFolder"``, ``"CIFAR10"``,
            ``"MNIST"``, …). Nothing is downloaded.
        image_size: images are resized (short side) and centre-cropped to this size, as
            [0, 1] RGB tensors; normalization belongs to the model.
        class_indices: keep only the samples of these classes, in both splits, with their
            **original** labels (label ``c`` stays output ``c`` of the model), e.g. the ten
            classes ``[20, 71, 102, 106, 121, 270, 435, 614, 700, 860]`` of
            `dont-trust-your-eyes…` App. C.3. ``None``: all classes. For ``ImageFolder``
            the labels are the sorted class folders' positions, so the folder must hold
            every class folder of the model (all 1000 synsets for ImageNet). A class that
            is not a label of the data set, or has no image in a split, raises. (Named
            ``class_indices``, not ``classes``: a data module's ``classes`` are class
            *names* elsewhere in the package.)
        batch_size, num_workers: loader settings.
    """

    def __init__(self, root: str, dataset: str = "ImageFolder", image_size: int = 224,
                 batch_size: int = 64, num_workers: int = 4,
                 class_indices: list[int] | None = None) -> None:
        super().__init__()
        self.root = root
        self.dataset = dataset
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.class_indices = check_class_indices(class_indices)

    def _make(self, train: bool) -> Dataset:
        import os

        import torchvision

        split = "train" if train else "val"
        if not hasattr(torchvision.datasets, self.dataset):
            raise ValueError(f"unknown torchvision dataset {self.dataset!r}; valid: "
                             "'ImageFolder' or a class of torchvision.datasets (e.g. "
                             "'CIFAR10', 'MNIST')")
        if self.dataset == "ImageFolder":
            return image_folder(self.root, self.image_size, split, self.class_indices)
        tf = image_transform(self.image_size)
        cls = getattr(torchvision.datasets, self.dataset)
        if self.dataset in FOLDER_DATASETS:
            ds = cls(os.path.join(self.root, split), transform=tf)
        else:
            try:
                ds = cls(self.root, train=train, transform=tf, download=False)
            except TypeError:
                ds = cls(self.root, split=split, transform=tf)
        return filter_classes(ds, self.class_indices, name=f"{self.dataset}({self.root!r}, "
                                                           f"{split})")

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._make(True)
        self.val_set = self._make(False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size,
                          num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
