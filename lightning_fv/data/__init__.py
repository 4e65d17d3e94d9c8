"""Data: embedded data sets (no download) and LightningDataModules."""

from lightning_fv.data.datamodules import (
    DigitsDataModule,
    PhotoPatchesDataModule,
    TorchvisionDataModule,
)
from lightning_fv.data.embedded import PHOTO_CLASSES, digits, load_photos, photo_patches

__all__ = [
    "PHOTO_CLASSES",
    "DigitsDataModule",
    "PhotoPatchesDataModule",
    "TorchvisionDataModule",
    "digits",
    "load_photos",
    "photo_patches",
]
