"""Measurements of the manipulation experiments (`dont-trust-your-eyes…` §2)."""

from __future__ import annotations

import pytest
import torch

from lightning_fv.manipulation import pairwise_similarity, texture_descriptors, texture_similarity
from lightning_fv.models import SmallCNN


@pytest.fixture
def net() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=5, widths=(8, 8, 8, 8)).eval()


def _texture(seed: int, n: int = 64, tile: int | None = None) -> torch.Tensor:
    """A periodic random texture ``(3, n, n)``: a random tile of 2–16 pixels, random colours."""
    g = torch.Generator().manual_seed(seed)
    t = tile or 2 ** int(torch.randint(1, 5, (1,), generator=g))
    tile = torch.rand(3, t, t, generator=g) * torch.rand(3, 1, 1, generator=g)
    return tile.repeat(1, n // t, n // t)


def test_descriptors_are_channel_means_and_stds(net: SmallCNN) -> None:
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    d = texture_descriptors(net, x, layers=("block1",))
    with torch.no_grad():
        f = net.block1(net.normalize(x)).double().flatten(2)
    torch.testing.assert_close(d, torch.cat([f.mean(2), f.std(2, unbiased=False)], 1))


def test_shifted_textures_are_identical_as_textures_not_as_pixels(net: SmallCNN) -> None:
    natural = torch.stack([_texture(s) for s in range(100, 160)])
    a = _texture(0, tile=16)
    # even shifts keep the 2×2 max-pooling phase of block2; the borders still differ
    same = torch.stack([torch.roll(a, (dy, dx), (1, 2)) for dy, dx in ((0, 0), (2, 4), (6, 2))])
    different = torch.stack([_texture(s) for s in (0, 1, 2, 3)])
    s_same = float(texture_similarity(net, same, natural))
    s_diff = float(texture_similarity(net, different, natural))
    assert s_same > 0.98 > s_diff
    assert float(pairwise_similarity(same)) < 0.5  # pixels do not see it
    with pytest.raises(ValueError, match="at least 2"):
        texture_similarity(net, same[:1], natural)
