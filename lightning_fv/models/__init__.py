"""Models: the bundled small CNN and tiny ViT, explicit normalization and building by name."""

from lightning_fv.models.registry import (
    ModelEntry,
    build_model,
    bundled_metadata,
    bundled_model,
    list_models,
    load_small_cnn,
    load_state_dict_file,
    register_model,
    save_small_cnn,
    strip_prefix,
)
from lightning_fv.models.small_cnn import ConvBlock, SmallCNN
from lightning_fv.models.vit import TinyViT
from lightning_fv.utils.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    preprocessing_from,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ConvBlock",
    "ModelEntry",
    "Normalize",
    "SmallCNN",
    "TinyViT",
    "build_model",
    "bundled_metadata",
    "bundled_model",
    "list_models",
    "load_small_cnn",
    "load_state_dict_file",
    "preprocessing_from",
    "register_model",
    "save_small_cnn",
    "strip_prefix",
]
