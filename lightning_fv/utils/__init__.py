"""Small shared utilities: seeding/RNG state, devices and image grids."""

from lightning_fv.utils.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    checkpoint_metadata,
    load_state_dict,
    read_checkpoint,
)
from lightning_fv.utils.device import model_device, model_dtype, resolve_device
from lightning_fv.utils.images import image_grid, save_grid, save_png
from lightning_fv.utils.rng import get_rng_state, make_generator, preserved_rng, set_rng_state

__all__ = [
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
