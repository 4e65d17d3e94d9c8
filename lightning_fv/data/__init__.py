"""Data: embedded data sets (no download) and LightningDataModules."""

from lightning_fv.data.datamodules import (
    DigitsDataModule,
    PhotoPatchesDataModule,
    TorchvisionDataModule,
)
from lightning_fv.data.embedded import (
    PHOTO_CLASSES,
    digits,
    load_photos,
    photo_patches,
    photo_patches_shifted,
)
from lightning_fv.data.trajectories import (
    TrajectoryDataModule,
    augment_like_rendering,
    layer_units,
    render_trajectories,
    split_units,
)

__all__ = [
    "PHOTO_CLASSES",
    "DigitsDataModule",
    "PhotoPatchesDataModule",
    "TorchvisionDataModule",
    "TrajectoryDataModule",
    "augment_like_rendering",
    "digits",
    "load_photos",
    "layer_units",
    "photo_patches",
    "photo_patches_shifted",
    "render_trajectories",
    "split_units",
]
