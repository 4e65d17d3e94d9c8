"""RobustClassifier: adversarial training and robust evaluation under the Trainer's
inference mode, bf16 autocast, ε warm-up, 2-process DDP, YAML and bad configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.adversarial import attack_success
from lightning_fv.models import SmallCNN
from lightning_fv.modules.robust_classifier import RobustClassifier

ROOT = Path(__file__).resolve().parents[2]


def _data(n: int = 24, size: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, size, size, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _module(**kw) -> RobustClassifier:
    torch.manual_seed(0)
    net = SmallCNN(num_classes=3, widths=(4, 6, 8, 8))
    args = {"num_classes": 3, "norm": "linf", "eps": 0.03, "steps": 2, "lr": 0.05}
    args.update(kw)
    return RobustClassifier(net, **args)


def _trainer(**kw) -> L.Trainer:
    args = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False,
            "enable_checkpointing": False}
    args.update(kw)
    return L.Trainer(**args)


def test_validation_and_test_attacks_run_under_default_inference_mode():
    module, dl = _module(test_steps=4, test_restarts=2), _data()
    modes = []

    class Rec(L.Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args):
            modes.append(torch.is_inference_mode_enabled())

        on_test_batch_start = on_validation_batch_start

    trainer = _trainer(callbacks=[Rec()])
    trainer.fit(module, dl, dl)  # fit's own validation runs under no_grad
    for key in ("train/robust_acc", "train/clean_acc", "val/robust_acc"):
        assert 0.0 <= float(trainer.callback_metrics[key]) <= 1.0, key
    modes.clear()
    trainer.validate(module, dl, verbose=False)  # trainer.validate/test: inference_mode
    assert len(modes) == 3 and all(modes)
    m = trainer.callback_metrics
    assert 0.0 <= float(m["val/robust_acc"]) <= float(m["val/clean_acc"]) + 1e-6
    # clean validation accuracy equals an independent evaluation of the same weights
    x, y = dl.dataset.tensors
    module.eval()
    with torch.no_grad():
        ref = (module(x).argmax(1) == y).float().mean()
    torch.testing.assert_close(m["val/clean_acc"], ref)
    modes.clear()
    res = trainer.test(module, dl, verbose=False)[0]
    assert len(modes) == 3 and all(modes)
    assert res["test/robust_acc"] <= res["test/clean_acc"] + 1e-6
    # the test adversary is the stronger one
    assert module.test_attack.steps == 4 and module.test_attack.restarts == 2
    # robust accuracy = accuracy on adversarial examples built outside the Trainer
    adv = module.adversarial_examples(x, y, module.test_attack)
    assert float((~attack_success(module, adv, y)).float().mean()) <= float(ref) + 1e-6


def test_bf16_autocast_training_gives_finite_loss():
    module, dl = _module(), _data()
    losses = []

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    _trainer(precision="bf16-mixed", callbacks=[Rec()]).fit(module, dl, dl)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_eps_warmup_ramps_linearly_to_full_eps():
    module, dl = _module(eps_warmup_steps=4), _data(n=48)
    seen = []

    class Rec(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(pl_module.current_eps_fraction())

    _trainer(callbacks=[Rec()], limit_val_batches=0).fit(module, dl)
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_adversarial_training_leaves_bn_running_stats_to_the_training_forward_only():
    """With adversarial=False the same data gives the same BN statistics as with the attack:
    the attack's forward passes never touch them."""
    dl = _data()
    a, b = _module(adversarial=False), _module()
    _trainer(limit_val_batches=0, max_steps=1).fit(a, dl)
    torch.manual_seed(0)
    bn_a = a.model.backbone.block1.bn.num_batches_tracked.item()
    _trainer(limit_val_batches=0, max_steps=1).fit(b, dl)
    assert bn_a == b.model.backbone.block1.bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"eps": -1.0}, ValueError, "eps must be"),
        ({"norm": "l3"}, ValueError, "unknown norm 'l3'"),
        ({"steps": 1, "eps": 0.1, "step_size": 0.2}, ValueError, "larger than eps"),
        ({"eps_warmup_steps": -3}, ValueError, "eps_warmup_steps"),
        ({"preset": "cifar100_l7"}, KeyError, "available"),
        ({"mean": [0.5, 0.5, 0.5]}, ValueError, "both mean and std"),
        ({"num_classes": 1}, ValueError, "num_classes"),
    ],
)
def test_bad_configuration_is_rejected_with_a_clear_error(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _module(**kwargs)


def test_backbone_without_normalization_needs_mean_and_std():
    with pytest.raises(ValueError, match="pass mean= and std="):
        RobustClassifier("torchvision:resnet18", num_classes=3)
    m = RobustClassifier("torchvision:resnet18", num_classes=3, mean=[0.5] * 3, std=[0.25] * 3)
    x = torch.rand(1, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.model.backbone((x - 0.5) / 0.25))


def test_paper_preset_is_rescaled_to_the_input_size():
    m = _module(preset="paper_training", input_shape=(3, 64, 64))
    assert m.attack.norm == "l2" and m.attack.steps == 7
    assert abs(m.attack.eps - 3.5 * (64 / 224)) < 1e-9


def test_two_process_ddp_gloo_run_keeps_replicas_identical(tmp_path):
    script = Path(__file__).with_name("ddp_robust_script.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == 2 and r0["steps"] == 2  # 32 samples / (8 per batch · 2 ranks)
    assert r0["checksum"] == pytest.approx(r1["checksum"], rel=1e-6)
    assert 0 <= r0["metrics"]["val/robust_acc"] <= 1


def test_yaml_config_fits_through_the_cli(tmp_path, monkeypatch):
    import lightning.pytorch as pl
    import yaml

    from lightning_fv.cli import main

    seen = {}
    fit = pl.Trainer.fit

    def spy(trainer, *args, **kwargs):
        seen["trainer"] = trainer
        return fit(trainer, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", spy)
    cfg = ROOT / "examples" / "configs" / "robust_photo_patches.yaml"
    main(["fit", "--config", str(cfg), "--trainer.fast_dev_run=1",
          "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
          "--data.init_args.batch_size=4", "--data.init_args.n_train_per_class=1",
          "--data.init_args.n_val_per_class=1", "--model.init_args.steps=1",
          "--model.init_args.step_size=0.5"])
    trainer = seen["trainer"]
    assert trainer.state.finished and trainer.global_step == 1
    module = trainer.lightning_module
    assert isinstance(module, RobustClassifier)
    model_cfg = yaml.safe_load(cfg.read_text())["model"]["init_args"]
    assert module.attack.eps == pytest.approx(float(model_cfg["eps"]))
    assert module.attack.norm == model_cfg["norm"]
    assert module.attack.steps == 1 and module.attack.step_size == pytest.approx(0.5)
