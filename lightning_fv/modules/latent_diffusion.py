"""LatentDiffusionModule: flow-matching training of LightningDiT (the release's recipe).

Per batch of images ``x`` in [0, 1] with labels ``y`` (thesis §3.1 uses the LightningDiT
release; its ``transport`` defines the loss):

- latents ``x₁ = normalize(encode(2x − 1))`` (frozen autoencoder, :class:`LatentNormalizer`);
- ``t ~ logit-normal(0, 1)`` (``use_lognorm``, i.e. ``t = sigmoid(n)``, ``n ~ N(0, 1)``) or
  ``U(0, 1)``; noise ``x₀ ~ N(0, I)``; ``x_t = t·x₁ + (1 − t)·x₀``; target ``u = x₁ − x₀``;
- loss ``mean‖v_θ(x_t, t, y) − u‖² + mean(1 − cos(v_θ, u))`` where the cosine similarity is taken
  over the channel dimension per position (``use_cosine_loss``, as the release does);
  labels are dropped to the null class with ``class_dropout_prob`` inside the model;
- AdamW (β = (0.9, 0.95), no weight decay), EMA of the weights (``ema_decay``; the release
  uses 0.9999) kept as a sub-module so it is checkpointed and resumed with the rest.

Works with any Lightning strategy/precision (DDP, ``bf16-mixed``): all state lives in
modules/buffers; the latent statistics estimated on the first batch are averaged over ranks.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fv.diffusion.model import LightningDiT
from lightning_fv.diffusion.pipeline import LatentDiffusionPipeline, SamplerConfig, save_pipeline
from lightning_fv.diffusion.vae import (
    LatentNormalizer,
    ResizeAutoencoder,
    encode_latents,
    load_vavae,
)

__all__ = ["SMALL_DIT", "LatentDiffusionModule", "flow_matching_loss", "sample_timesteps"]

#: The LightningDiT of ``LatentDiffusionModule()`` without a ``model`` (a small model for
#: digits; :class:`LightningDiT`'s own defaults are the release's XL model).
SMALL_DIT: dict[str, Any] = dict(
    input_size=16, patch_size=2, in_channels=1, hidden_size=128, depth=4, num_heads=4,
    num_classes=10, use_swiglu=True, use_rope=True, use_rmsnorm=True)


def sample_timesteps(n: int, lognorm: bool = True, device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> Tensor:
    """``(n,)`` training times: logit-normal ``sigmoid(N(0, 1))`` or uniform on [0, 1]."""
    if lognorm:
        return torch.sigmoid(torch.randn(n, device=device, generator=generator))
    return torch.rand(n, device=device, generator=generator)


def flow_matching_loss(model: nn.Module, x1: Tensor, y: Tensor, t: Tensor, x0: Tensor,
                       use_cosine_loss: bool = True) -> dict[str, Tensor]:
    """Release loss terms for data ``x1``, noise ``x0`` ``(B, C, H, W)`` and times ``t`` ``(B,)``.

    Returns ``{"loss", "mse", "cos"}`` (scalars; ``cos`` is 0 when disabled).
    """
    tb = t.view(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    xt = tb * x1 + (1 - tb) * x0
    ut = x1 - x0
    pred = model(xt, t, y).float()
    mse = (pred - ut).pow(2).mean()
    cos = ((1 - F.cosine_similarity(pred, ut, dim=1)).mean() if use_cosine_loss
           else mse.new_zeros(()))
    return {"loss": mse + cos, "mse": mse, "cos": cos}


class LatentDiffusionModule(L.LightningModule):
    """Class-conditional LightningDiT trained by flow matching (see the module docstring).

    Model: ``model`` is the :class:`LightningDiT` (in YAML a nested ``class_path`` /
    ``init_args`` config, see ``examples/configs/diffusion_digits.yaml``); ``None`` builds
    the small digits model :data:`SMALL_DIT` updated with ``model_kwargs`` (single
    LightningDiT arguments, for Python callers). The model's recorded ``config`` is what
    checkpoints store, so ``load_from_checkpoint`` rebuilds it. Autoencoder: ``vae_checkpoint``
    (a release VA-VAE file; needs diffusers) or, if ``None``, a weight-free
    :class:`ResizeAutoencoder` with ``ae_factor`` / ``ae_latent_channels``
    (``ae_factor=1``: pixel space). ``latent_mean`` / ``latent_std`` fix the normalization
    (``latent_stats`` reads the release's ``latents_stats.pt``); if all are ``None`` scalar
    statistics are estimated on the first training batch.
    """

    def __init__(
        self,
        model: LightningDiT | dict[str, Any] | None = None,
        vae_checkpoint: str | None = None,
        ae_factor: int = 2,
        ae_latent_channels: int = 1,
        latent_stats: str | None = None,
        latent_mean: float | None = None,
        latent_std: float | None = None,
        latent_multiplier: float = 1.0,
        use_lognorm: bool = True,
        use_cosine_loss: bool = True,
        lr: float = 2e-4,
        beta2: float = 0.95,
        weight_decay: float = 0.0,
        ema_decay: float = 0.9999,
        sample_steps: int = 50,
        sample_shift: float | None = None,
        cfg_scale: float = 1.0,
        cfg_interval_start: float = 0.0,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(model, nn.Module):
            if model_kwargs:
                raise TypeError(f"give the LightningDiT either as `model` or as single "
                                f"arguments, not both; got model and {sorted(model_kwargs)}")
            if not isinstance(getattr(model, "config", None), dict):
                raise TypeError(f"model must record its constructor config (LightningDiT "
                                f"does); got {type(model).__name__}")
        elif isinstance(model, dict):  # a recorded config (read back from a checkpoint)
            model = LightningDiT(**{**model, **model_kwargs})
        elif model is None:
            model = LightningDiT(**{**SMALL_DIT, **model_kwargs})
        else:
            raise TypeError(f"model must be a LightningDiT, its config dict or None; got "
                            f"{type(model).__name__}")
        self.save_hyperparameters(ignore=["model"])
        for k in model_kwargs:
            self.hparams.pop(k, None)
        self.hparams["model"] = dict(model.config)
        self.model = model
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if vae_checkpoint is not None:
            self.autoencoder = load_vavae(vae_checkpoint).requires_grad_(False)
        else:
            self.autoencoder = ResizeAutoencoder(ae_factor, ae_latent_channels)
        if latent_stats is not None:
            self.normalizer = LatentNormalizer.from_stats_file(latent_stats, latent_multiplier)
            ready = True
        else:
            ready = latent_mean is not None and latent_std is not None
            self.normalizer = LatentNormalizer(latent_mean if ready else 0.0,
                                               latent_std if ready else 1.0, latent_multiplier)
        self.register_buffer("stats_ready", torch.tensor(bool(ready)))

    # ----------------------------------------------------------------- latents
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] → normalized diffusion latents."""
        self.autoencoder.eval()
        return self.normalizer.normalize(encode_latents(self.autoencoder, images * 2 - 1).float())

    @torch.no_grad()
    def _estimate_stats(self, images: Tensor) -> None:
        z = encode_latents(self.autoencoder, images * 2 - 1).float()
        stats = torch.stack([z.mean(), z.std()])
        if self._trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="mean")
        self.normalizer.mean.fill_(float(stats[0]))
        self.normalizer.std.fill_(float(stats[1].clamp_min(1e-6)))
        self.stats_ready.fill_(True)

    # ---------------------------------------------------------------- training
    def _step(self, batch: Any, model: nn.Module) -> dict[str, Tensor]:
        images, y = batch[0], batch[1]
        x1 = self.encode(images)
        t = sample_timesteps(x1.shape[0], self.hparams.use_lognorm, x1.device)
        x0 = torch.randn_like(x1)
        return flow_matching_loss(model, x1, y, t, x0, self.hparams.use_cosine_loss)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if not bool(self.stats_ready):
            self._estimate_stats(batch[0])
        out = self._step(batch, self.model)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=True,
                      sync_dist=False)
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_ema()

    @torch.no_grad()
    def update_ema(self, decay: float | None = None) -> None:
        """``θ_ema ← d·θ_ema + (1 − d)·θ`` over parameters (buffers are copied)."""
        d = self.hparams.ema_decay if decay is None else decay
        ema_p = [p for p in self.ema.parameters()]
        mod_p = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_p, mod_p, 1 - d)
        for be, bm in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(bm)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        gen = torch.Generator(device=batch[0].device).manual_seed(batch_idx)
        x1 = self.encode(batch[0])
        t = sample_timesteps(x1.shape[0], False, x1.device, gen)
        x0 = torch.randn(x1.shape, generator=gen, device=x1.device)
        out = flow_matching_loss(self.ema, x1, batch[1], t, x0, self.hparams.use_cosine_loss)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, sync_dist=True)
        return out["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr,
                                 betas=(0.9, self.hparams.beta2),
                                 weight_decay=self.hparams.weight_decay)

    # ------------------------------------------------------------- inference
    def pipeline(self, use_ema: bool = True) -> LatentDiffusionPipeline:
        """A :class:`LatentDiffusionPipeline` sharing this module's (EMA) weights."""
        hp = self.hparams
        cfg = SamplerConfig(num_steps=hp.sample_steps, shift=hp.sample_shift,
                            cfg_scale=hp.cfg_scale, cfg_interval_start=hp.cfg_interval_start)
        return LatentDiffusionPipeline(self.ema if use_ema else self.model, self.autoencoder,
                                       self.normalizer, cfg)

    @torch.no_grad()
    def generate(self, y: Tensor, generator: torch.Generator | None = None,
                 **overrides: Any) -> Tensor:
        """Class-conditional samples ``(B, 3, H, W)`` in [0, 1] from the EMA model."""
        pipe = self.pipeline()
        z = pipe.noise(len(y), generator=generator, device=self.device)
        return pipe.generate(z, y.to(self.device), enable_grad=False, **overrides)

    def export(self, path: str | Path, extra: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> Path:
        """Save the EMA model + autoencoder/normalizer/sampler config as one safetensors file
        (read back with :func:`lightning_fv.diffusion.load_pipeline`)."""
        return save_pipeline(self.pipeline(), path, extra, dtype)
