"""``image_correlation``, ``layer_response`` and ``target_hit_rate`` against independent
computations (numpy correlation, a direct forward pass, a hand-worked argmax)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_fv.manipulation import image_correlation, layer_response, target_hit_rate
from lightning_fv.models import SmallCNN


def test_image_correlation_is_numpy_pearson_per_pair() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, 6, 6, generator=g)
    b = torch.rand(4, 3, 6, 6, generator=g)
    b[1] = 3.0 * a[1] + 0.2  # brightness and contrast do not matter
    b[2] = -a[2]
    got = image_correlation(a, b)
    ref = [np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1] for i in range(4)]
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)
    assert got[1].item() == pytest.approx(1.0, abs=1e-6)
    assert got[2].item() == pytest.approx(-1.0, abs=1e-6)


def test_image_correlation_resizes_the_second_batch_to_the_first() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 8, 8, generator=g)
    big = torch.rand(2, 3, 16, 16, generator=g)
    small = torch.nn.functional.interpolate(big, size=(8, 8), mode="bilinear", antialias=True,
                                            align_corners=False)
    ref = [np.corrcoef(a[i].flatten().numpy(), small[i].flatten().numpy())[0, 1]
           for i in range(2)]
    np.testing.assert_allclose(image_correlation(a, big).numpy(), ref, atol=1e-6)


def test_layer_response_is_the_channel_mean_of_the_layer_in_any_batch_size() -> None:
    torch.manual_seed(0)
    net = SmallCNN(num_classes=5, widths=(4, 6, 8, 8)).train()
    x = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    got = layer_response(net, "block2", x, batch_size=3)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        ref = net.block2(net.pool1(net.block1(net.normalize(x)))).mean((2, 3))
        logits = net(x)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(layer_response(net, "fc", x), logits)  # (N, C) as is


def test_target_hit_rate_counts_argmax_at_the_target_after_scaling() -> None:
    response = torch.tensor([[1.0, 5.0, 2.2],
                             [4.0, 1.0, 3.0],
                             [0.0, 2.0, 6.0],
                             [3.0, 3.5, 0.0]])
    rate, arg = target_hit_rate(response, [1, 0, 0, 0])
    assert arg.tolist() == [1, 0, 2, 1] and rate == 0.5
    # per-unit scales (e.g. each unit's natural maximum) change which unit wins
    scale = torch.tensor([1.0, 10.0, 2.0])
    rate, arg = target_hit_rate(response, [1, 0, 0, 0], scale)
    assert arg.tolist() == [2, 0, 2, 0] and rate == 0.5
