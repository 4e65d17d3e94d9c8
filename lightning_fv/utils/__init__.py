"""Shared utilities under every layer: devices, preprocessing, the checkpoint reader and
writer, result folders, RNG state and image grids."""

from lightning_fv.utils.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    checkpoint_metadata,
    load_state_dict,
    read_checkpoint,
    save_tensors,
)
from lightning_fv.utils.device import model_device, model_dtype, resolve_device, synchronize
from lightning_fv.utils.files import apply_umask, next_version_dir, output_file, output_folder
from lightning_fv.utils.images import image_grid, save_grid, save_png
from lightning_fv.utils.preprocess import (
    Normalize,
    NormalizedModel,
    as_normalize,
    check_mean_std,
    normalized_input,
    preprocessing_from,
)
from lightning_fv.utils.rng import get_rng_state, make_generator, preserved_rng, set_rng_state

__all__ = [
    "apply_umask",
    "next_version_dir",
    "output_file",
    "output_folder",
    "save_tensors",
    "Normalize",
    "NormalizedModel",
    "as_normalize",
    "check_mean_std",
    "normalized_input",
    "preprocessing_from",
    "synchronize",
    "CheckpointError",
    "UnsafeCheckpointError",
    "checkpoint_metadata",
    "load_state_dict",
    "read_checkpoint",
    "get_rng_state",
    "model_device",
    "model_dtype",
    "resolve_device",
    "image_grid",
    "make_generator",
    "preserved_rng",
    "save_grid",
    "save_png",
    "set_rng_state",
]
