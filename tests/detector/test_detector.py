"""Visualization detector (`dont-trust-your-eyes…` App. C.1, Table 3) and its data set."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.data.trajectories import TrajectoryDataModule, split_units
from lightning_fv.manipulation import DetectorCNN, detector_feature_sizes, detector_flatten_size
from lightning_fv.models import SmallCNN
from lightning_fv.modules.detector import VisualizationDetector, load_detector, save_detector


def test_architecture_matches_table3_layer_by_layer() -> None:
    net = DetectorCNN(224)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    relus = [m for m in net.features if isinstance(m, torch.nn.ReLU)]
    assert [(c.kernel_size, c.out_channels, c.stride) for c in convs] == [
        ((3, 3), 16, (3, 3)), ((5, 5), 16, (2, 2)), ((5, 5), 16, (2, 2)),
        ((5, 5), 16, (2, 2)), ((5, 5), 16, (2, 2)), ((3, 3), 16, (2, 2))]
    assert len(relus) == 6 and isinstance(net.features[-1], torch.nn.ReLU)
    assert net.fc.in_features == 144 and net.fc.out_features == 1
    shapes, x = [], torch.zeros(2, 3, 224, 224)
    for m in net.features:
        x = m(x)
        if isinstance(m, torch.nn.Conv2d):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, s, s) for s in (75, 38, 19, 10, 5, 3)]
    assert detector_feature_sizes(224) == [75, 38, 19, 10, 5, 3]
    assert detector_flatten_size(64) == 16 and DetectorCNN(64).fc.in_features == 16
    assert net(torch.zeros(5, 3, 224, 224)).shape == (5,)


def test_wrong_input_size_names_the_sizes() -> None:
    net = DetectorCNN(64)
    with pytest.raises(ValueError, match="64, 64.*image_size=32"):
        net(torch.zeros(1, 3, 32, 32))
    assert net.resized(torch.zeros(2, 3, 32, 32)).shape == (2,)


def test_optimizer_is_sgd_with_c1_hyperparameters() -> None:
    opt = VisualizationDetector(image_size=32).configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.01, 0.9, 5e-5)


def test_accuracy_is_reported_overall_and_per_kind() -> None:
    module = VisualizationDetector(image_size=16)
    for p in module.net.parameters():
        torch.nn.init.zeros_(p)
    module.net.fc.bias.data.fill_(3.0)  # always says "natural"
    x = torch.rand(10, 3, 16, 16)
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    out = trainer.validate(module, DataLoader(TensorDataset(x, y), batch_size=4), verbose=False)[0]
    assert out["val/acc"] == pytest.approx(0.3)
    assert out["val/acc_natural"] == pytest.approx(1.0)
    assert out["val/acc_vis"] == pytest.approx(0.0)


def test_detector_file_round_trip(tmp_path) -> None:
    net = DetectorCNN(32)
    again = load_detector(save_detector(net, tmp_path / "d.safetensors"))
    x = torch.rand(3, 3, 32, 32)
    assert again.image_size == 32 and torch.equal(again(x), net(x))


def test_unit_split_is_disjoint_complete_and_reproducible() -> None:
    units = [f"fc:{i}" for i in range(40)]
    train, test = split_units(units, 0.1, seed=3)
    assert not set(train) & set(test) and set(train) | set(test) == set(units)
    assert len(test) == 4
    assert split_units(units, 0.1, seed=3) == (train, test)
    assert split_units(units, 0.1, seed=4)[1] != test
    with pytest.raises(ValueError, match="test_fraction"):
        split_units(units, 1.5)


@pytest.fixture
def tiny() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=4, widths=(4, 4, 4, 4)).eval()


def _dm(model: SmallCNN, cache: str, steps: int = 4) -> TrajectoryDataModule:
    return TrajectoryDataModule(model, units=[f"fc:{i}" for i in range(4)] + ["block4:0"],
                                natural="digits", image_size=16, trajectories_per_unit=2,
                                steps=steps, test_fraction=0.4, cache_dir=cache, device="cpu",
                                augment_fraction=0.5)


def test_trajectory_datamodule_counts_labels_and_cache(tiny: SmallCNN, tmp_path) -> None:
    dm = _dm(tiny, str(tmp_path))
    dm.setup()
    assert not set(dm.train_units) & set(dm.test_units)
    assert (len(dm.train_units), len(dm.test_units)) == (3, 2)
    # units x trajectories x min(15, steps) log-spaced steps
    assert dm.vis_train.shape == (3 * 2 * 4, 3, 16, 16)
    assert dm.vis_test.shape == (2 * 2 * 4, 3, 16, 16)
    x, y = dm.train_set.tensors
    assert int(y.sum()) == len(dm.natural_train) and int((y == 0).sum()) == 24
    assert float(dm.vis_train.min()) >= 0 and float(dm.vis_train.max()) <= 1
    assert not dm.loaded_from_cache and dm.cache_path.is_file()
    again = _dm(tiny, str(tmp_path))
    again.setup()
    assert again.loaded_from_cache and again.cache_path == dm.cache_path
    assert torch.equal(again.vis_train, dm.vis_train)
    changed = _dm(tiny, str(tmp_path), steps=5)
    changed.setup()
    assert not changed.loaded_from_cache and changed.cache_path != dm.cache_path
    assert changed.vis_train.shape[0] == 3 * 2 * 5
    with torch.no_grad():
        tiny.fc.bias.add_(1.0)  # new weights invalidate the cache too
    retrained = _dm(tiny, str(tmp_path))
    retrained.setup()
    assert not retrained.loaded_from_cache
