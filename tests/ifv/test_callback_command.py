"""The Lightning callback and the ``lightning-fv ifv`` command on a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.callbacks.inverse_fv import InverseFeatureVisualizationCallback


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(F.relu(h).mean((2, 3)))


class Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = TinyConv()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], _i: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], _i: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.rand(8, 3, 12, 12, generator=g),
                                    torch.randint(0, 3, (8,), generator=g)), batch_size=4)


def test_callback_logs_angles_and_figure_and_restores_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Module()
    cb = InverseFeatureVisualizationCallback(layer="model.bn", n_targets=3, steps=4,
                                             lbfgs_steps=2, reopt_steps=2, image_size=12)
    trainer = L.Trainer(max_epochs=1, logger=CSVLogger(tmp_path), callbacks=[cb],
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", num_sanity_val_steps=0, limit_train_batches=1)
    trainer.fit(module, _loader(), _loader())  # validation runs under inference_mode
    assert len(cb.history) == 1
    h = cb.history[0]
    for kind in ("predicted", "response", "random"):
        assert 0.0 <= h[f"ifv/val/angle_{kind}_mean_deg"] <= 90.0
    assert -1.0 <= h["ifv/val/ssim_target_mean"] <= 1.0
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    assert any(r.get("ifv/val/angle_predicted_mean_deg") for r in rows)
    assert list((Path(trainer.logger.log_dir) / "ifv").glob("val_angles_ssim_step*.png"))
    # direct run: RNG, mode, flags and grads untouched
    module.train()
    for p in module.parameters():
        p.grad = None
    state = torch.get_rng_state()
    cb._run(trainer, module, "test")
    assert torch.equal(torch.get_rng_state(), state)
    assert module.training and all(p.requires_grad and p.grad is None
                                   for p in module.parameters())
    # state_dict round trip
    cb2 = InverseFeatureVisualizationCallback(layer="model.bn")
    cb2.load_state_dict(cb.state_dict())
    assert cb2.history == cb.history


def test_ifv_command_writes_metrics_and_figures(tmp_path: Path) -> None:
    from lightning_fv.commands.ifv import ifv

    torch.manual_seed(0)
    paths = ifv(model="small_cnn", layer="block1.bn", n_targets=2, steps=3, lbfgs_steps=1,
                reopt_steps=1, image_size=16, device="cpu", output_dir=str(tmp_path / "out"))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["angle_predicted_mean_deg"] <= 90.0
    assert any(p.endswith(".png") for p in paths)


def test_ifv_command_jacobian_dtype(tmp_path: Path) -> None:
    """float64 with pinned decisions gives the float32 run's predictions; bad names fail."""
    from lightning_fv.commands.ifv import ifv

    kw = dict(model="small_cnn", layer="block1.bn", n_targets=2, steps=3, lbfgs_steps=1,
              reopt_steps=0, image_size=16, device="cpu")
    out = {}
    for dtype in (None, "float64"):
        torch.manual_seed(0)
        ifv(**kw, jacobian_dtype=dtype, output_dir=str(tmp_path / str(dtype)))
        out[dtype] = json.loads((tmp_path / str(dtype) / "metrics.json").read_text())
    assert out["float64"]["angle_predicted_mean_deg"] == pytest.approx(
        out[None]["angle_predicted_mean_deg"], abs=0.05)
    with pytest.raises(ValueError, match="jacobian_dtype"):
        ifv(**kw, jacobian_dtype="half", output_dir=str(tmp_path / "bad"))


def test_two_callbacks_keep_separate_states_through_a_checkpoint(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def make() -> list[InverseFeatureVisualizationCallback]:
        kw = dict(n_targets=2, steps=2, lbfgs_steps=1, reopt_steps=0, image_size=12)
        return [InverseFeatureVisualizationCallback(layer="model.bn", k=2.0, **kw),
                InverseFeatureVisualizationCallback(layer="model.conv1", k=0.0,
                                                    log_prefix="ifv_conv1", **kw)]

    def fit(cbs: list, epochs: int, ckpt: str | None, out: Path) -> None:
        torch.manual_seed(0)
        L.Trainer(max_epochs=epochs, logger=False, callbacks=[*cbs, ModelCheckpoint(
            dirpath=out, save_last=True)], enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
            limit_train_batches=1, default_root_dir=out).fit(Module(), _loader(), _loader(),
                                                             ckpt_path=ckpt)

    first = make()
    fit(first, 1, None, tmp_path / "a")
    assert first[0].state_key != first[1].state_key
    assert not (tmp_path / "a" / "ifv").exists()  # logger=False: no figure files anywhere
    saved = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["callbacks"]
    assert saved[first[0].state_key]["history"] == first[0].history
    assert saved[first[1].state_key]["history"] == first[1].history
    assert set(first[0].history[0]) - {"epoch"} == {
        f"ifv/val/{k}" for k in first[0]._keys()}
    assert set(first[1].history[0]) - {"epoch"} == {
        f"ifv_conv1/val/{k}" for k in first[1]._keys()}
    resumed = make()
    fit(resumed, 2, str(tmp_path / "a" / "last.ckpt"), tmp_path / "b")
    for old, new in zip(first, resumed):
        assert new.history[:1] == old.history and new.history[1]["epoch"] == 1.0
