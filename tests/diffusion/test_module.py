"""LatentDiffusionModule (training, EMA, resume, bf16), pipeline export/load, sample command."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.commands.diffusion import sample as sample_command
from lightning_fv.diffusion import LatentDiffusionPipeline, load_pipeline
from lightning_fv.modules.latent_diffusion import (
    LatentDiffusionModule,
    flow_matching_loss,
    sample_timesteps,
)

TINY = dict(input_size=4, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2,
            num_classes=3, ae_factor=2, ae_latent_channels=1, sample_steps=3, ema_decay=0.5)


def _loader(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _trainer(tmp_path, steps=2, **kw):
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_flow_matching_loss_equals_hand_computation():
    class Lin(torch.nn.Module):
        def forward(self, x, t, y):
            return 2 * x + t.view(-1, 1, 1, 1)

    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.rand(4, generator=g)
    out = flow_matching_loss(Lin(), x1, torch.zeros(4, dtype=torch.long), t, x0)
    tb = t.view(-1, 1, 1, 1)
    pred = 2 * (tb * x1 + (1 - tb) * x0) + tb
    u = x1 - x0
    mse = ((pred - u) ** 2).mean()
    cos = (1 - (pred * u).sum(1) / (pred.norm(dim=1) * u.norm(dim=1))).mean()
    torch.testing.assert_close(out["mse"], mse)
    torch.testing.assert_close(out["cos"], cos)
    torch.testing.assert_close(out["loss"], mse + cos)


def test_lognormal_timesteps_have_standard_normal_logits():
    t = sample_timesteps(40000, True, generator=torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean()) < 0.02 and abs(logit.std() - 1) < 0.02
    u = sample_timesteps(40000, False, generator=torch.Generator().manual_seed(0))
    assert abs(u.mean() - 0.5) < 0.01 and u.min() >= 0 and u.max() <= 1


def test_ema_update_is_the_exponential_average():
    m = LatentDiffusionModule(**TINY)
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.ema.parameters()]
    m.update_ema(0.25)
    for b, e, p in zip(before, m.ema.parameters(), m.model.parameters()):
        torch.testing.assert_close(e, 0.25 * b + 0.75 * p)


def test_training_estimates_stats_updates_ema_and_resumes_exactly(tmp_path):
    L.seed_everything(0)
    m = LatentDiffusionModule(**TINY)
    tr = _trainer(tmp_path, steps=3)
    tr.fit(m, train_dataloaders=_loader())
    assert bool(m.stats_ready) and float(m.normalizer.std) > 0
    # EMA moved away from the initial weights but differs from the trained ones
    w, e = m.model.blocks[0].attn.qkv.weight, m.ema.blocks[0].attn.qkv.weight
    assert not torch.equal(w, e)
    ckpt = tmp_path / "last.ckpt"
    tr.save_checkpoint(ckpt)
    m2 = LatentDiffusionModule.load_from_checkpoint(ckpt, weights_only=False)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    # resuming continues from the saved step
    tr2 = _trainer(tmp_path, steps=5)
    tr2.fit(LatentDiffusionModule(**TINY), train_dataloaders=_loader(), ckpt_path=ckpt)
    assert tr2.global_step == 5


def test_bf16_mixed_training_runs_with_finite_loss(tmp_path):
    m = LatentDiffusionModule(**TINY)
    tr = _trainer(tmp_path, steps=2, precision="bf16-mixed")
    tr.fit(m, train_dataloaders=_loader())
    assert torch.isfinite(tr.callback_metrics["train/loss"])


def test_export_load_round_trip_and_gradients_through_the_pipeline(tmp_path):
    torch.manual_seed(0)
    m = LatentDiffusionModule(**TINY, latent_mean=0.1, latent_std=0.5)
    with torch.no_grad():
        for p in m.ema.parameters():
            if p is not m.ema.pos_embed:
                p.add_(0.05 * torch.randn_like(p))
    path = m.export(tmp_path / "dit.safetensors")
    pipe = load_pipeline(path)
    assert isinstance(pipe, LatentDiffusionPipeline)
    for (k, a), b in zip(m.ema.state_dict().items(), pipe.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert float(pipe.normalizer.mean) == pytest.approx(0.1)
    z = pipe.noise(2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 2])
    imgs = pipe.generate(z, y, enable_grad=False, cfg_scale=2.0)
    assert imgs.shape == (2, 3, 8, 8) and imgs.min() >= 0 and imgs.max() <= 1
    torch.testing.assert_close(imgs, m.generate(y, generator=torch.Generator().manual_seed(0),
                                                cfg_scale=2.0))
    grads = []
    for ckpt in (False, True):
        zz = z.clone().requires_grad_(True)
        pipe.generate(zz, y, checkpoint=ckpt, enable_grad=True, clamp=False).sum().backward()
        grads.append(zz.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-6)


def test_sample_command_writes_a_grid(tmp_path):
    m = LatentDiffusionModule(**TINY, latent_mean=0.0, latent_std=1.0)
    path = m.export(tmp_path / "dit.safetensors")
    files = sample_command(checkpoint=str(path), labels=[0, 2, -1], per_label=2, num_steps=2,
                           output_dir=str(tmp_path / "out"), device="cpu")
    saved = torch.load(files[1], weights_only=True)
    assert saved["images"].shape == (6, 3, 8, 8)
    assert saved["labels"].tolist() == [0, 2, 3, 0, 2, 3]  # -1 → null class 3
    with pytest.raises(ValueError, match=r"labels \[7\] are invalid"):
        sample_command(checkpoint=str(path), labels=[7], output_dir=str(tmp_path / "o2"))



@pytest.mark.slow
def test_ddp_spawn_training_checkpoints_stats_and_ema(tmp_path):
    L.seed_everything(0)
    m = LatentDiffusionModule(**TINY)
    tr = L.Trainer(max_steps=2, accelerator="cpu", devices=2, strategy="ddp_spawn",
                   logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path, enable_checkpointing=False)
    tr.fit(m, train_dataloaders=_loader(32))
    ckpt = tmp_path / "ddp.ckpt"
    tr.save_checkpoint(ckpt)
    m2 = LatentDiffusionModule.load_from_checkpoint(ckpt, weights_only=False)
    assert bool(m2.stats_ready) and float(m2.normalizer.std) > 0
    # adaLN-Zero gates start at 0, so not every weight moves in 2 steps: compare them all
    pairs = zip(m2.model.state_dict().values(), m2.ema.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in pairs)
