"""Deprecated location: preprocessing lives in :mod:`lightning_fv.utils.preprocess`."""

from lightning_fv.utils.preprocess import (  # noqa: F401
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    preprocessing_from,
)
