"""Every part of lightning_fv on a vision transformer, end to end (issue 15 §4): the
similarity sanity check, the visualization detector on ViT trajectories, the sanity-check
callback in a user's Lightning training run, MACO and feature accentuation — on the bundled
tiny ViT and on timm's ``vit_tiny_patch16_224`` (random weights), each checked against an
independent computation from recorded activations."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.analysis.similarity import similarity_sanity_check
from lightning_fv.callbacks.feature_visualization import FeatureVisualizationCallback
from lightning_fv.callbacks.sanity_check import SanityCheckCallback
from lightning_fv.data.embedded import photo_patches
from lightning_fv.data.trajectories import TrajectoryDataModule, layer_units
from lightning_fv.models import bundled_model
from lightning_fv.models.vit import TinyViT
from lightning_fv.modules.classifier import ImageClassifier
from lightning_fv.modules.detector import VisualizationDetector
from lightning_fv.modules.feature_visualizer import photo_spectrum, seed_photos
from lightning_fv.optvis.accentuation import accentuate, image_rows
from lightning_fv.optvis.hooks import capture
from lightning_fv.optvis.layout import Layout
from lightning_fv.optvis.maco import (
    MacoParam,
    crop_values,
    maco_config,
    power_law_spectrum,
    render_maco,
)
from lightning_fv.optvis.objectives import INPUT, OUTPUT, units_objective
from lightning_fv.optvis.render import log_spaced_steps, render_units
from lightning_fv.utils.rng import make_generator


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    """The bundled tiny ViT: 64 px input, 8x8 patch grid + CLS, 4 blocks of width 96."""
    return bundled_model("photo_patches_vit").eval()


@pytest.fixture(scope="module")
def vit_224() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()


def _raw(model: nn.Module, layers: list[str], x: torch.Tensor
         ) -> tuple[dict[str, torch.Tensor], dict[str, Layout]]:
    """The layers' outputs as recorded, and the layouts ``capture`` detected for them."""
    with torch.no_grad(), capture(model, layers) as acts:
        model(x)
        return {k: acts[k].clone() for k in layers}, dict(acts.layouts)


def _channel_mean(model: nn.Module, layer: str, x: torch.Tensor, c: int) -> torch.Tensor:
    """Hand computation of the unit ``layer:c`` of a token layer: channel ``c`` averaged
    over the patch tokens, the prefix tokens left out."""
    raw, _ = _raw(model, [layer], x)
    return raw[layer][:, model.num_prefix_tokens:, c].mean(1)


def _mean_spearman(a: np.ndarray, b: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    return float(np.mean([spearmanr(a[i], b[j])[0] for i, j in pairs]))


# --------------------------------------------------------------------------- sanity check


def test_sanity_check_on_the_bundled_vit_equals_scipy_on_the_recorded_token_activations(vit):
    natural, labels = photo_patches("val", 3, 64, 256, 0)  # 30 held-out crops
    units = [f"head:{c}" for c in range(10)]
    vis = render_units(vit, units, thresholds=(8,), image_size=64, seed=0).final
    layers = ["patch_embed", "blocks.0", "blocks.3", "norm", "head"]
    res = similarity_sanity_check(vit, layers, natural, labels, vis, torch.arange(10),
                                  strides=(1, 1, 1))

    raw_nat, layouts = _raw(vit, layers, natural)
    raw_vis, _ = _raw(vit, layers, vis)
    # the token layouts: patch_embed has no CLS yet, the blocks CLS + the 8x8 grid
    assert layouts["patch_embed"] == Layout("tokens", 0, (8, 8))
    assert layouts["blocks.0"] == layouts["blocks.3"] == Layout("tokens", 1, (8, 8), ("cls",))
    assert layouts["head"].kind == "vector"
    with torch.no_grad():
        keep = (vit(natural).argmax(1) == labels).numpy()
    lab = labels.numpy()[keep]
    assert (res.n_natural, res.n_excluded, res.n_visualizations) == (
        int(keep.sum()), int((~keep).sum()), 10)
    n = len(lab)
    same = [(i, j) for i, j in itertools.combinations(range(n), 2) if lab[i] == lab[j]]
    other = [(i, j) for i, j in itertools.combinations(range(n), 2) if lab[i] != lab[j]]
    fv = [(i, int(lab[i])) for i in range(n)]  # visualization c maximizes head:c
    for k, name in enumerate(layers):
        # every recorded entry, prefix tokens included (D = N*C), as documented
        a = raw_nat[name].flatten(1).double().numpy()[keep]
        v = raw_vis[name].flatten(1).double().numpy()
        upper, lower = _mean_spearman(a, a, same), _mean_spearman(a, a, other)
        fv_mean = _mean_spearman(a, v, fv)
        assert float(res.upper[k]) == pytest.approx(upper, abs=1e-9)
        assert float(res.lower[k]) == pytest.approx(lower, abs=1e-9)
        assert float(res.fv[k]) == pytest.approx(fv_mean, abs=1e-9)
        assert float(res.normalized[k]) == pytest.approx((fv_mean - lower) / (upper - lower),
                                                         abs=1e-9)
    assert res.counts["upper"].tolist() == [len(same)] * 5
    assert res.counts["lower"].tolist() == [len(other)] * 5
    assert res.counts["fv"].tolist() == [n] * 5
    assert res.undefined["fv"].tolist() == [0] * 5 and bool(res.included.all())
    assert torch.isfinite(res.normalized).all() and torch.isfinite(res.smoothed).all()
    assert res.score == pytest.approx(float(res.normalized.mean()), abs=1e-12)
    assert res.passes == (res.score >= 0.5)


# --------------------------------------------------------------------------- detector


def test_detector_is_trained_on_the_bundled_vits_trajectories_and_its_accuracy_recomputed(
        vit, tmp_path: Path):
    # "layer:*" counts the 96 feature channels of a token layer, not its 65 tokens
    assert layer_units(vit, ["blocks.3"], 64) == [f"blocks.3:{c}" for c in range(96)]
    steps = 24
    dm = TrajectoryDataModule(vit, units=["blocks.3:0-4"], n_natural_per_class=2,
                              image_size=64, trajectories_per_unit=1, steps=steps,
                              test_fraction=0.4, augment_fraction=0.0, cache_dir=None,
                              device="cpu", batch_size=16)
    dm.setup()
    kept = log_spaced_steps(steps, 15)
    s = len(kept)
    assert (len(dm.train_units), len(dm.test_units)) == (3, 2)
    assert dm.vis_train.shape == (3 * s, 3, 64, 64) and dm.vis_test.shape == (2 * s, 3, 64, 64)
    # the detector's visualization inputs are exactly the ViT's renders, unit-major
    for units, vis in ((dm.train_units, dm.vis_train), (dm.test_units, dm.vis_test)):
        ref = render_units(vit, units, thresholds=(steps,), image_size=64, seed=0,
                           record=kept, record_grads=False).trajectory
        assert ref.steps.tolist() == kept
        want = ref.images.transpose(0, 1).reshape(-1, 3, 64, 64).clamp(0, 1)
        assert torch.allclose(vis, want.half().float(), atol=1e-3)
        # and they optimize the ViT unit: channel c over the patch tokens rises along the path
        for k, unit in enumerate(units):
            c = int(unit.split(":")[1])
            first_last = vis[[k * s, k * s + s - 1]]
            start, end = _channel_mean(vit, "blocks.3", first_last, c).tolist()
            assert end > start, unit
    x, y = dm.train_set.tensors
    assert torch.equal(x[y == 0], dm.vis_train) and int(y.sum()) == 20

    torch.manual_seed(0)
    det = VisualizationDetector(image_size=64)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(det, datamodule=dm)
    out = trainer.validate(det, datamodule=dm, verbose=False)[0]
    xt, yt = dm.test_set.tensors
    with torch.no_grad():
        pred = (det.net(xt) > 0).long()
    assert out["val/acc"] == pytest.approx(float((pred == yt).float().mean()), abs=1e-6)
    assert out["val/acc_natural"] == pytest.approx(float(pred[yt == 1].float().mean()),
                                                   abs=1e-6)
    assert out["val/acc_vis"] == pytest.approx(float((pred[yt == 0] == 0).float().mean()),
                                               abs=1e-6)


# --------------------------------------------------------------------------- callback


def _vit_run_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(24) % 4
    x = torch.rand(24, 3, 32, 32, generator=g) * 0.5
    x[:, 0] += 0.12 * y.view(-1, 1, 1).float()  # class-dependent colour: learnable
    return TensorDataset(x, y)


def _warm_tiny_vit(ds: TensorDataset, steps: int = 30) -> TinyViT:
    """A 32 px ViT after ``steps`` full-batch AdamW steps (deterministic, no Trainer): it
    classifies the run's images, so the check has natural images of every class to keep."""
    torch.manual_seed(0)
    net = TinyViT(num_classes=4, img_size=32, patch_size=8, embed_dim=24, depth=2,
                  num_heads=2)
    x, y = ds.tensors
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    return net


def test_sanity_check_callback_scores_a_vit_every_epoch_as_the_analysis_api_does(
        tmp_path: Path):
    ds = _vit_run_data()
    net = _warm_tiny_vit(ds)
    module = ImageClassifier(net, num_classes=4, lr=0.01, max_epochs=3)
    layers = ["patch_embed", "blocks.0", "blocks.1", "head"]
    cb = SanityCheckCallback(layers, class_layer="head", module="model", steps=3,
                             strides=(1, 1, 1))
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="vit")
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=logger,
                        callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(module, DataLoader(ds, batch_size=8, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)),
                DataLoader(ds, batch_size=8))
    assert [h["epoch"] for h in cb.history] == [0, 1, 2]  # one score per epoch
    assert all("errors" not in h for h in cb.history)
    assert all(math.isfinite(h["score"]) for h in cb.history)
    metrics = pd.read_csv(Path(logger.log_dir, "metrics.csv"))
    scores = metrics["sanity/score"].dropna().tolist()
    assert scores == pytest.approx([h["score"] for h in cb.history], abs=1e-6)
    assert len(list(Path(logger.log_dir, "images").glob("sanity__figure*.png"))) == 3
    # the last epoch's result is the analysis API's on the final weights and the same renders
    vis = render_units(net, [f"head:{c}" for c in range(4)], thresholds=(3,),
                       image_size=(32, 32), seed=0).final
    x, y = ds.tensors
    want = similarity_sanity_check(net, layers, x, y, vis, torch.arange(4), strides=(1, 1, 1))
    got = cb.last_result
    assert got is not None and got.n_natural == want.n_natural == 24
    assert got.n_visualizations == 4 and bool(got.included.all())
    for key in ("upper", "lower", "fv", "normalized"):
        assert torch.allclose(getattr(got, key), getattr(want, key), atol=1e-6,
                              equal_nan=True), key
    assert cb.history[-1]["score"] == pytest.approx(want.score, abs=1e-6)


@pytest.mark.parametrize("method", ["maco", "accentuation"])
def test_feature_visualization_callback_renders_a_vit_with_maco_and_accentuation(
        method: str):
    # rendered at 24 px for a ViT that takes only 32 px: MACO crops and accentuated images
    # are brought to the model's size, every epoch, no failure
    ds = _vit_run_data()
    net = _warm_tiny_vit(ds, steps=5)
    units = ["blocks.1:0", "head:2"]
    cb = FeatureVisualizationCallback(units, module="model", image_size=24, steps=2,
                                      tile_size=None, method=method)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                        callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(ImageClassifier(net, num_classes=4, lr=0.01, max_epochs=2),
                DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    assert [h["errors"] for h in cb.history] == [[], [], []]  # 2 epochs + fit end
    side = round(24 * 1280 / 224) if method == "maco" else 24
    assert cb.last_images.shape == (2, 3, side, side)
    got = torch.tensor([cb.history[-1]["values"][u] for u in units])
    if method == "maco":  # MACO's value: the unit over 16 fixed 32 px crops of the canvas
        want = crop_values(net, units, cb.last_images, input_size=32)
    else:  # the unit on the image resized to 32 px, CLS token left out
        x = torch.nn.functional.interpolate(cb.last_images, size=(32, 32), mode="bilinear",
                                            align_corners=False)
        with torch.no_grad():
            want = torch.stack([_channel_mean(net, "blocks.1", x[:1], 0)[0], net(x[1:])[0, 2]])
    assert torch.allclose(got, want, atol=1e-4)


# --------------------------------------------------------------------------- MACO


def _maco_start(units: list[str], canvas: int, spectrum: torch.Tensor | None,
                seed: int = 0) -> torch.Tensor:
    """The images MACO starts from: the phase drawn from each sample's generator."""
    mag = power_law_spectrum(canvas) if spectrum is None else spectrum
    param = MacoParam(len(units), mag, canvas, maco_config().value_range,
                      generators=[make_generator(seed) for _ in units])
    with torch.no_grad():
        return param().float()


def test_maco_raises_units_of_timm_vit_tiny_224_with_finite_images(vit_224):
    units = ["blocks.5:3", "blocks.11:100"]
    res = render_maco(vit_224, units, steps=3, crops=2, image_size=256, eval_crops=4, seed=0)
    assert res.images.shape == res.alpha.shape == (2, 3, 256, 256)
    assert torch.isfinite(res.images).all() and torch.isfinite(res.alpha).all()
    assert float(res.images.min()) >= 0.0 and float(res.images.max()) <= 1.0
    assert (res.alpha.flatten(1).sum(1) > 0).all()
    start = crop_values(vit_224, units, _maco_start(units, 256, None), crops=4)
    assert (res.values > start).all(), (start, res.values)


def test_maco_on_the_bundled_vit_uses_its_64px_input_and_raises_the_unit(vit):
    units = ["blocks.3:17", "blocks.3:17@cls", "head:2"]
    canvas = round(1280 / 224 * 64)
    spec = photo_spectrum(canvas)
    res = render_maco(vit, units, steps=8, spectrum=spec, eval_crops=8, seed=0)
    assert res.images.shape == (3, 3, canvas, canvas) and torch.isfinite(res.images).all()
    start = crop_values(vit, units, _maco_start(units, canvas, spec), crops=8)
    assert (res.values > start).all(), (start, res.values)


def test_maco_reads_the_input_size_a_vit_enforces_not_its_pretrained_cfg():
    torch.manual_seed(0)
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    assert small.pretrained_cfg["input_size"] == (3, 224, 224)  # the config is stale
    res = render_maco(small, ["blocks.1:3"], steps=2, image_size=48, eval_crops=2)
    assert res.images.shape == (1, 3, 48, 48) and torch.isfinite(res.values).all()


# --------------------------------------------------------------------------- accentuation


def test_accentuation_on_the_bundled_vit_raises_the_unit_over_its_seed(vit):
    units = ["blocks.3:17", "head:2"]
    seeds = seed_photos(2, 64)
    res = accentuate(vit, units, seeds, layer="blocks.1", weight=10.0, steps=16, seed=0)
    assert res.images.shape == (2, 3, 64, 64) and torch.isfinite(res.images).all()
    assert float(res.images.min()) >= 0.0 and float(res.images.max()) <= 1.0
    with torch.no_grad():
        want = torch.stack([_channel_mean(vit, "blocks.3", res.images[:1], 17)[0],
                            vit(res.images[1:])[0, 2]])
        start = torch.stack([_channel_mean(vit, "blocks.3", res.seeds[:1], 17)[0],
                             vit(res.seeds[1:])[0, 2]])
    assert torch.allclose(res.values, want, atol=1e-4)
    assert (res.values > start).all(), (start, res.values)
    # D is the mean squared difference of the whole recorded token tensor of blocks.1
    a, _ = _raw(vit, ["blocks.1"], res.images)
    a0, _ = _raw(vit, ["blocks.1"], res.seeds)
    d = (a["blocks.1"] - a0["blocks.1"]).pow(2).flatten(1).mean(1)
    assert torch.allclose(res.distances, d, rtol=1e-4, atol=1e-7)
    assert (res.distances > 0).all()


def test_accentuation_objective_reads_vit_units_on_the_image_rows_without_the_cls_token(vit):
    # during optimization one forward holds the B images then their B seeds
    x = torch.cat([seed_photos(2, 64), torch.rand(2, 3, 64, 64,
                                                  generator=torch.Generator().manual_seed(3))])
    obj = image_rows(units_objective(["blocks.3:17", "blocks.3:5"]))
    with torch.no_grad(), capture(vit, obj.model_layers) as acts:
        out = vit(x)
        acts[OUTPUT], acts[INPUT] = out, x[:2]
        got = obj(acts)
        raw = acts["blocks.3"]
    want = torch.stack([raw[0, 1:, 17].mean(), raw[1, 1:, 5].mean()])
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, torch.stack([raw[0, :, 17].mean(), raw[1, :, 5].mean()]),
                              atol=1e-4)


def test_accentuation_on_timm_vit_tiny_224_and_at_a_size_other_than_the_models(vit_224):
    seeds = seed_photos(2, 224)
    res = accentuate(vit_224, ["blocks.5:3", "blocks.5:40"], seeds, layer="blocks.2",
                     steps=3, seed=0)
    assert res.images.shape == (2, 3, 224, 224) and torch.isfinite(res.values).all()
    start = torch.stack([_channel_mean(vit_224, "blocks.5", res.seeds[i:i + 1], c)[0]
                         for i, c in enumerate((3, 40))])
    assert (res.values > start).all(), (start, res.values)
    # seeds at 160 px: the model sees image and seed resized to its 224 px input
    small = accentuate(vit_224, "blocks.5:3", seeds[:1], layer="blocks.2", steps=1,
                       image_size=160, seed=0)
    assert small.images.shape == (1, 3, 160, 160)
    x = torch.nn.functional.interpolate(small.images, size=(224, 224), mode="bilinear",
                                        align_corners=False)
    assert float(small.values[0]) == pytest.approx(
        float(_channel_mean(vit_224, "blocks.5", x, 3)[0]), abs=1e-4)


def test_feature_visualizer_maco_on_a_vit_crops_at_the_enforced_size(tmp_path):
    """``FeatureVisualizer(method="maco")`` with an ``image_size`` other than the ViT's:
    the crops fed to the model are the 32 px the model enforces (it would fail on 24 px),
    and the sweep's values are those of ``render_maco`` called directly with that size."""
    from lightning_fv.modules import FeatureVisualizer
    from lightning_fv.modules.feature_visualizer import photo_spectrum

    torch.manual_seed(0)
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    fv = FeatureVisualizer(small, units=["blocks.1:3", "blocks.1:7"], image_size=32,
                           thresholds=[2], method="maco", canvas_size=40,
                           output_dir=str(tmp_path / "a"), progress=False)
    fv.image_size = 24  # as if the user asked for 24 px renders of this 32 px model
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False).predict(fv)
    ref = render_maco(small, ["blocks.1:3", "blocks.1:7"], steps=2, image_size=40,
                      input_size=32, spectrum=photo_spectrum(40), seed=0)
    torch.testing.assert_close(fv.results["values"], ref.values)
    assert fv.results["images"].shape == (2, 3, 40, 40)
