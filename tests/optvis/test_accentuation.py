"""Feature accentuation (Hamblin et al. 2024): the unit rises while the regularized layer
stays closer to the seed than without the regularizer; seed and image share each step's
transform; batch independence; wiring through FeatureVisualizer and the callback."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.models import bundled_model
from lightning_fv.modules.feature_visualizer import seed_photos
from lightning_fv.optvis.accentuation import (
    _PairWithSeed,
    _split_pair,
    accentuate,
    accentuation_terms,
)
from lightning_fv.optvis.transform import TransformChain, standard_transforms


@pytest.fixture(scope="module")
def photo_cnn() -> torch.nn.Module:
    return bundled_model("photo_patches")


@pytest.fixture(scope="module")
def seeds() -> torch.Tensor:
    return seed_photos(3, 48)


def test_accentuation_raises_the_unit_and_the_regularizer_keeps_the_layer_near_the_seed(
        photo_cnn, seeds):
    units = ["fc:1", "fc:4", "fc:7"]  # not the seeds' own photos (0, 1, 2 → other classes)
    kw = dict(steps=30, image_size=48, seed=0)
    free = accentuate(photo_cnn, units, seeds, layer="block2", weight=0.0, **kw)
    reg = accentuate(photo_cnn, units, seeds, layer="block2", weight=10.0, **kw)
    start, d0 = accentuation_terms(photo_cnn, units, reg.seeds, reg.seeds, "block2")
    assert torch.equal(d0, torch.zeros(3))
    # the unit rises a lot in both runs ...
    # measured (30 steps): start 0.35, −4.88, −6.67 → λ=10: 12.2, −2.81, 23.4
    assert (free.values > start + 1.5).all() and (reg.values > start + 1.5).all(), \
        (start, free.values, reg.values)
    # ... and the regularized layer drifts less from the seed with λ = 10 than with λ = 0
    # (measured: D = 0.44, 0.066, 0.86 with λ = 10 against 0.67, 0.096, 0.96 with λ = 0)
    assert (reg.distances < 0.95 * free.distances).all(), (reg.distances, free.distances)
    assert reg.distances.sum() < 0.8 * free.distances.sum()
    # the images stay in [0, 1] and closer to the seed in pixels too
    assert reg.images.min() >= 0 and reg.images.max() <= 1
    assert (reg.images - reg.seeds).abs().mean() < (free.images - free.seeds).abs().mean()


def test_the_seed_goes_through_the_same_transform_as_the_image():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 20)
    chain = TransformChain([_PairWithSeed(x.clone()), *standard_transforms(), _split_pair])
    u = torch.rand(2, chain.n_random)
    out = chain(x, u)
    assert out.shape[0] == 4
    assert torch.equal(out[:2], out[2:])  # identical inputs, identical random transform
    plain = TransformChain(standard_transforms())(x, u)
    assert torch.allclose(out[:2], plain, atol=1e-6)  # the pairing changes nothing else


def test_weight_zero_is_plain_maximization_from_the_seed(photo_cnn, seeds):
    kw = dict(steps=5, image_size=48, seed=[1, 2])
    with_layer = accentuate(photo_cnn, ["fc:3", "block3:2"], seeds[:2], layer="block2",
                            weight=0.0, **kw)
    without = accentuate(photo_cnn, ["fc:3", "block3:2"], seeds[:2], layer=None, **kw)
    assert (with_layer.images - without.images).abs().max() < 1e-4
    assert torch.equal(without.distances, torch.zeros(2))


def test_a_unit_accentuated_alone_equals_the_same_unit_in_a_batch(photo_cnn, seeds):
    units = ["fc:2", "block3:1", "fc:9"]
    kw = dict(layer="block1", weight=5.0, steps=4, image_size=48)
    batch = accentuate(photo_cnn, units, seeds, seed=[3, 4, 5], **kw)
    for i, u in enumerate(units):
        alone = accentuate(photo_cnn, [u], seeds[i:i + 1], seed=[3 + i], **kw)
        assert (alone.images[0] - batch.images[i]).abs().max() < 1e-4
        assert alone.values[0].item() == pytest.approx(batch.values[i].item(), abs=1e-3)


def test_one_unit_is_accentuated_in_every_seed_and_mismatches_are_named(photo_cnn, seeds):
    res = accentuate(photo_cnn, "fc:5", seeds, layer=None, steps=1, image_size=48)
    assert res.units == ["fc:5"] * 3 and res.images.shape == (3, 3, 48, 48)
    with pytest.raises(ValueError, match="3 seed image.* for 2 unit"):
        accentuate(photo_cnn, ["fc:1", "fc:2"], seeds, layer=None, steps=1)
    with pytest.raises(ValueError, match="weight .* got -1"):
        accentuate(photo_cnn, "fc:1", seeds, layer="block1", weight=-1.0, steps=1)
    with pytest.raises(KeyError, match="closest layer names"):
        accentuate(photo_cnn, "fc:1", seeds, layer="blok2", steps=1)


# -- wiring ----------------------------------------------------------------------------------
def test_feature_visualizer_method_accentuation_uses_photo_patch_seeds(tmp_path, photo_cnn):
    from lightning_fv.modules.feature_visualizer import FeatureVisualizer, load_sweep

    fv = FeatureVisualizer("bundled", units=["fc:0", "fc:1", "fc:2"], image_size=32,
                           thresholds=[3], method="accentuation", accent_layer="block2",
                           batch_size=2, output_dir=str(tmp_path / "o"), progress=False)
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False).predict(
        fv, return_predictions=False)
    out = load_sweep(str(tmp_path / "o"))
    assert out["images"].shape == (3, 3, 32, 32)
    # the same images as the core call on the same seeds (chunks of 2: [0, 1], [2])
    s = seed_photos(3, 32)
    ref = torch.cat([
        accentuate(fv.net, ["fc:0", "fc:1"], s[:2], layer="block2", steps=3).images,
        accentuate(fv.net, ["fc:2"], s[2:], layer="block2", steps=3).images])
    assert (ref - out["images"]).abs().max() < 1e-4
    with pytest.raises(KeyError, match="closest layer names"):
        FeatureVisualizer("bundled", units=["fc:0"], image_size=32, method="accentuation",
                          accent_layer="blok2")


def _cb_common():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "callbacks"))
    import cb_common

    return cb_common


@pytest.mark.parametrize("method", ["maco", "accentuation"])
def test_callback_renders_with_the_method_every_epoch(method):
    from lightning_fv.callbacks.feature_visualization import FeatureVisualizationCallback

    cbc = _cb_common()
    x, y = cbc.data()
    train = DataLoader(TensorDataset(x, y), batch_size=10)
    val = DataLoader(TensorDataset(x, y), batch_size=10)
    cb = FeatureVisualizationCallback(["block2:0", "fc:1", "fc:2"], module="model",
                                      image_size=16, steps=2, method=method,
                                      canvas_size=24, accent_layer="block1",
                                      max_seed_images=2, on_error="raise")
    cbc.trainer(callbacks=[cb], max_epochs=2).fit(cbc.module(), train, val)
    epochs = [h for h in cb.history if h["tag"] == "epoch"]
    assert len(epochs) == 2 and all(not h["errors"] for h in cb.history)
    assert set(epochs[0]["values"]) == {"block2:0", "fc:1", "fc:2"}
    assert all(math.isfinite(v) for v in epochs[0]["values"].values())
    side = 24 if method == "maco" else 16
    assert cb.last_images is not None and cb.last_images.shape == (3, 3, side, side)
    if method == "accentuation":  # seeds: the 2 kept validation images, unit i → image i mod 2
        assert cb._seeds is not None and cb._seeds.shape[0] == 2
        seeds = cb._seed_images_for(["block2:0", "fc:1", "fc:2"])
        assert torch.equal(seeds[0], seeds[2]) and not torch.equal(seeds[0], seeds[1])


def test_callback_rejects_an_unknown_method():
    from lightning_fv.callbacks.feature_visualization import FeatureVisualizationCallback

    with pytest.raises(ValueError, match="method must be one of .* got 'deepdream'"):
        FeatureVisualizationCallback(["fc:0"], method="deepdream")
