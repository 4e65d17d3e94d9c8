"""Small shared utilities: seeding/RNG state and image grids."""

from lightning_fv.utils.images import image_grid, save_grid, save_png
from lightning_fv.utils.rng import get_rng_state, make_generator, preserved_rng, set_rng_state

__all__ = [
    "get_rng_state",
    "image_grid",
    "make_generator",
    "preserved_rng",
    "save_grid",
    "save_png",
    "set_rng_state",
]
