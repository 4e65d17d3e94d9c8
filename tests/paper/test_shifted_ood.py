"""`photo_patches_shifted`: the ImageNet-V2-like OOD set of the sanity-check miniature (App. E)."""

from __future__ import annotations

import pytest
import torch

from lightning_fv.data import photo_patches_shifted


def test_shifted_patches_keep_the_classes_and_are_deterministic() -> None:
    x, y = photo_patches_shifted(4, 32)
    assert x.shape == (40, 3, 32, 32) and y.bincount().tolist() == [4] * 10
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    x2, _ = photo_patches_shifted(4, 32)
    assert torch.equal(x, x2)
    assert not torch.equal(x, photo_patches_shifted(4, 32, seed=1)[0])


def test_bad_scale_and_jitter_are_named() -> None:
    with pytest.raises(ValueError, match="scale"):
        photo_patches_shifted(2, 32, scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="contrast"):
        photo_patches_shifted(2, 32, contrast=1.5)
    with pytest.raises(ValueError, match="grid cell"):
        photo_patches_shifted(2, 64, scale=(1.5, 1.5))
