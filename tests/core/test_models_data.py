"""Models by name, safe checkpoint loading, explicit preprocessing, embedded data, hooks."""

from __future__ import annotations

import pickle

import pytest
import torch

from lightning_fv.data import PHOTO_CLASSES, digits, photo_patches
from lightning_fv.models import (
    IMAGENET_MEAN,
    Normalize,
    SmallCNN,
    build_model,
    bundled_metadata,
    bundled_model,
    load_small_cnn,
    load_state_dict_file,
    preprocessing_from,
    save_small_cnn,
)
from lightning_fv.optvis.hooks import capture, get_layer, list_layers, parse_unit, preserved_state


def test_bundled_models_load_and_reach_their_recorded_accuracy():
    for name, size in (("photo_patches", 64), ("digits", 32)):
        meta = bundled_metadata(name)
        assert meta["input_size"] == [3, size, size]
        model = bundled_model(name)
        x, y = (photo_patches("val", 20) if name == "photo_patches" else digits("val"))
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        assert acc > 0.9, (name, acc)
        assert not model.training


def test_small_cnn_roundtrips_through_safetensors(tmp_path):
    m = SmallCNN(num_classes=4, widths=(4, 5, 6, 7)).eval()
    save_small_cnn(m, tmp_path / "m.safetensors")
    m2 = load_small_cnn(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(m(x), m2(x))


def test_checkpoints_load_weights_only_and_refuse_pickled_code(tmp_path):
    m = SmallCNN(num_classes=3)
    torch.save({"state_dict": {f"model.{k}": v for k, v in m.state_dict().items()}},
               tmp_path / "ckpt.pt")
    built = build_model("small_cnn", num_classes=3, checkpoint_path=str(tmp_path / "ckpt.pt"))
    assert torch.equal(built.fc.weight, m.fc.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict_file(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pt")


def test_build_model_by_torchvision_and_timm_name_and_unknown_names():
    assert type(build_model("resnet18", num_classes=7)).__name__ == "ResNet"
    assert build_model("timm:resnet10t", num_classes=7).num_classes == 7
    with pytest.raises(KeyError, match="closest names: .*resnet18"):
        build_model("resnet_18")


def test_preprocessing_is_read_from_timm_and_torchvision_not_guessed():
    import torchvision

    tm = build_model("timm:resnet10t")
    assert preprocessing_from(tm)[0] == pytest.approx(IMAGENET_MEAN)
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert preprocessing_from(w) == (tuple(IMAGENET_MEAN), (0.229, 0.224, 0.225))
    with pytest.raises(ValueError, match="pass mean/std explicitly"):
        preprocessing_from(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        Normalize((0.5,) * 3, (0.2,) * 3)(torch.rand(1, 1, 4, 4))


def test_photo_patch_splits_are_disjoint_and_deterministic():
    xa, ya = photo_patches("train", 30, seed=1)
    xb, _ = photo_patches("train", 30, seed=1)
    assert torch.equal(xa, xb)
    assert ya.bincount().tolist() == [30] * len(PHOTO_CLASSES)
    xv, _ = photo_patches("val", 30, seed=1)
    # no validation crop equals any training crop (disjoint grid cells)
    d = torch.cdist(xv.flatten(1), xa.flatten(1))
    assert d.min() > 1.0
    assert 0 <= xa.min() and xa.max() <= 1


def test_digits_are_rgb_in_unit_range_with_disjoint_splits():
    xt, yt = digits("train")
    xv, yv = digits("val")
    assert xt.shape[1:] == (3, 32, 32) and len(yt) + len(yv) == 1797
    assert 0 <= xt.min() and xt.max() <= 1


def test_hooks_capture_and_always_detach(tiny_net):
    with pytest.raises(RuntimeError):
        with capture(tiny_net, ["conv1", "fc"]) as acts:
            tiny_net(torch.rand(1, 3, 8, 8))
            assert acts["conv1"].shape == (1, 4, 8, 8)
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in tiny_net.modules())
    with pytest.raises(KeyError, match="closest layer names"):
        get_layer(tiny_net, "fc1")


def test_list_layers_reports_output_shapes(tiny_net):
    layers = {n: s for n, _, s in list_layers(tiny_net, (3, 10, 10))}
    assert layers["conv2"] == (6, 10, 10) and layers["fc"] == (5,)


def test_parse_unit_forms():
    u = parse_unit("layer4.1.conv2:37")
    assert (u.layer, u.index, u.position) == ("layer4.1.conv2", 37, None)
    assert parse_unit("b:3@2,5").position == (2, 5)
    assert parse_unit(("fc", 2)).index == 2
    with pytest.raises(ValueError, match="bad channel index"):
        parse_unit("fc:x")


def test_preserved_state_restores_everything_after_an_exception(tiny_net):
    tiny_net.train()
    tiny_net.fc.bias.requires_grad_(False)
    with pytest.raises(ValueError):
        with preserved_state(tiny_net):
            assert not tiny_net.training and not tiny_net.conv1.weight.requires_grad
            tiny_net.conv1.weight.grad = torch.ones_like(tiny_net.conv1.weight)
            raise ValueError
    assert tiny_net.training and tiny_net.conv1.weight.requires_grad
    assert not tiny_net.fc.bias.requires_grad and tiny_net.conv1.weight.grad is None
