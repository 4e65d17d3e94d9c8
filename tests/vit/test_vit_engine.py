"""Every part of the engine on vision transformers: rendering at a fixed input size with the
standard transforms, the sanity check's activations, path linearity, Grad-IFV's Jacobian on
token features, the bundled tiny ViT and the feature-visualization callback in a user's
Lightning training run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.analysis.path_linearity import path_linearity, unit_activations
from lightning_fv.analysis.similarity import layer_activations
from lightning_fv.callbacks.feature_visualization import FeatureVisualizationCallback
from lightning_fv.data.embedded import photo_patches
from lightning_fv.ifv.jacobian import feature_jacobian
from lightning_fv.models import build_model, bundled_metadata, bundled_model
from lightning_fv.models.vit import TinyViT
from lightning_fv.modules.classifier import ImageClassifier
from lightning_fv.optvis import model_input_size, render, render_units
from lightning_fv.optvis.hooks import capture


def _x(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()


def _patch_mean(model: nn.Module, layer: str, x: torch.Tensor, c: int) -> torch.Tensor:
    with torch.no_grad(), capture(model, [layer]) as acts:
        model(x)
    return acts[layer][:, model.num_prefix_tokens:, c].mean(1)


def test_input_size_is_read_from_what_the_model_states(small_vit):
    assert model_input_size(small_vit) == (32, 32)  # patch_embed.img_size beats the cfg
    assert model_input_size(TinyViT(img_size=48, patch_size=8, embed_dim=12, depth=1,
                                    num_heads=2)) == (48, 48)
    assert model_input_size(nn.Conv2d(3, 4, 3)) is None


def test_render_vit_tiny_224_with_standard_transforms():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    res = render(vit, "blocks.5:3", image_size=224, thresholds=(0, 2))
    assert res.final.shape == (1, 3, 224, 224)
    assert torch.isfinite(res.values[2]).all()
    with pytest.raises(ValueError, match=r"rejected its 236x236 input before the first step: "
                                         r"the 224x224 rendered images become 236x236"):
        render(vit, "blocks.5:3", image_size=224, thresholds=(1,), input_size=None)


def test_render_resizes_to_the_fixed_input_and_raises_the_unit(small_vit):
    res = render_units(small_vit, ["blocks.1:3", "blocks.1:4@cls"], image_size=48,
                       thresholds=(0, 8), seed=0)
    assert res.final.shape == (2, 3, 48, 48)  # rendered at 48, shown to the model at 32
    assert (res.values[8] > res.values[0]).all()
    # the reported value is the unit on the image resized to the model's 32x32 input
    x = torch.nn.functional.interpolate(res.final[:1], size=(32, 32), mode="bilinear",
                                        align_corners=False)
    assert res.values[8][0] == pytest.approx(float(_patch_mean(small_vit, "blocks.1", x, 3)),
                                             abs=1e-5)


def test_sanity_check_activations_of_a_token_layer_are_every_token(small_vit):
    x = _x(3, 32)
    acts = layer_activations(small_vit, x, ["blocks.1"])
    with torch.no_grad(), capture(small_vit, ["blocks.1"]) as raw:
        small_vit(x)
    assert acts["blocks.1"].shape == (3, (1 + 4) * 192)
    assert torch.equal(acts["blocks.1"], raw["blocks.1"].flatten(1))


def test_path_linearity_reads_vit_units_as_patch_token_means(small_vit):
    x = _x(4, 32)
    vals, imgs = unit_activations(small_vit, "blocks.1:3", x, batch_size=3)
    assert torch.allclose(vals, _patch_mean(small_vit, "blocks.1", x, 3), atol=1e-6)
    assert torch.equal(imgs, x)
    res = path_linearity(small_vit, "blocks.1:3", x[:2], steps=3)
    assert res.agpa.shape == (2,) and 0.0 <= res.aga <= 180.0


def test_grad_ifv_jacobian_of_token_features(small_vit):
    v = _x(2, 32)
    feats = torch.tensor([0, 5, 191])
    y, jac = feature_jacobian(small_vit, "blocks.1", v, aggregation="mean", features=feats)
    with torch.no_grad(), capture(small_vit, ["blocks.1"]) as acts:
        small_vit(v)
    want = acts["blocks.1"][:, 1:, :].mean(1)[:, feats]  # patch tokens, CLS excluded
    assert y.shape == (2, 3) and torch.allclose(y, want, atol=1e-5)
    assert jac.shape == (2, 3, 3, 32, 32)
    x = v[1:].clone().requires_grad_(True)
    with capture(small_vit, ["blocks.1"]) as acts:
        small_vit(x)
    (g,) = torch.autograd.grad(acts["blocks.1"][0, 1:, 5].mean(), x)
    assert torch.allclose(jac[1, 1], g[0], atol=1e-5)


def test_bundled_vit_is_a_64px_token_model_with_its_accuracy():
    model = bundled_model("photo_patches_vit")
    meta = bundled_metadata("photo_patches_vit")
    assert isinstance(model, TinyViT) and not model.training
    assert model_input_size(model) == (64, 64) and meta["input_size"] == [3, 64, 64]
    assert meta["val_acc"] >= 0.8
    assert type(build_model("bundled:photo_patches_vit")) is TinyViT
    assert sum(p.numel() for p in model.parameters()) < 2_000_000  # a few MB
    x, y = photo_patches("val", 10, 64, 256, 0)  # 100 held-out crops (the stored split)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc >= 0.9


def test_feature_visualization_callback_renders_a_vit_every_epoch(tmp_path: Path):
    torch.manual_seed(0)
    net = TinyViT(num_classes=4, img_size=32, patch_size=8, embed_dim=24, depth=2,
                  num_heads=2)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(24) % 4
    x = torch.rand(24, 3, 32, 32, generator=g) * 0.5
    x[:, 0] += 0.12 * y.view(-1, 1, 1).float()
    ds = TensorDataset(x, y)
    module = ImageClassifier(net, num_classes=4, lr=0.05, max_epochs=2)
    cb = FeatureVisualizationCallback(["blocks.1:0", "blocks.1:1@cls", "blocks.1:2@1,3",
                                       "head:2"], module="model", image_size=24, steps=2,
                                      tile_size=None)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="vit")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=logger, callbacks=[cb],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(module, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    assert [h["errors"] for h in cb.history] == [[], [], []]  # 2 epochs + fit end
    pngs = sorted(p.name for p in Path(logger.log_dir, "images").glob("*.png"))
    assert len(pngs) == 3 * 2  # one grid per layer (blocks.1, head) per run
    assert cb.last_images.shape == (4, 3, 24, 24)
