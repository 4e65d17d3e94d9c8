"""The bundled tiny vision transformer: timm's ``VisionTransformer`` with small dimensions
and its input normalization inside the model.

Input: ``(B, 3, 64, 64)`` RGB in [0, 1] (the size is fixed: the position embedding has an
8×8 patch grid; ``model.patch_embed.img_size`` and ``model.pretrained_cfg["input_size"]``
say so, and :func:`lightning_fv.optvis.render` reads them). Layers, by name (timm's):
``patch_embed``, ``blocks.0 … blocks.{depth-1}`` (each output ``(B, 1 + 64, dim)``: the
CLS token then the 8×8 patch tokens, row-major), ``norm``, ``head`` (logits).
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from lightning_fv.utils.preprocess import Normalize


class TinyViT(VisionTransformer):
    """A small timm ``VisionTransformer`` that normalizes its own ``[0, 1]`` RGB input.

    Args:
        num_classes: output logits.
        img_size: input side in pixels (square).
        patch_size: patch side in pixels (``img_size`` must be a multiple).
        embed_dim: token width ``C`` (the channels of every block's output).
        depth: number of transformer blocks.
        num_heads: attention heads (``embed_dim`` must be a multiple).
        mlp_ratio: hidden width of each MLP relative to ``embed_dim``.
        mean, std: per-channel input normalization applied inside ``forward_features``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int = 64,
        patch_size: int = 8,
        embed_dim: int = 96,
        depth: int = 4,
        num_heads: int = 3,
        mlp_ratio: float = 2.0,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
    ) -> None:
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be a multiple of num_heads {num_heads}")
        super().__init__(img_size=img_size, patch_size=patch_size, num_classes=num_classes,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                         mlp_ratio=mlp_ratio)
        self.normalize = Normalize(mean, std)
        self.config = {
            "num_classes": num_classes, "img_size": img_size, "patch_size": patch_size,
            "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
            "mlp_ratio": mlp_ratio, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
        }
        self.pretrained_cfg = {**dict(getattr(self, "pretrained_cfg", None) or {}),
                               "input_size": (3, img_size, img_size)}

    def forward_features(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        """Tokens ``(B, 1 + N, embed_dim)`` after the final norm, from ``(B, 3, H, W)``
        images in [0, 1]."""
        return super().forward_features(self.normalize(x), *args, **kwargs)


def tiny_vit_config(model: TinyViT) -> dict[str, object]:
    """Constructor arguments that rebuild ``model`` (stored next to its weights)."""
    return dict(model.config)


__all__ = ["TinyViT", "tiny_vit_config"]
