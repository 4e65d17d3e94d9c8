"""Composition of LightningDiT, the flow-matching sampler and the decoder (thesis App. .1).

``generate(z_T, y)`` = decode(denormalize(sample(model, z_T, y))) mapped to [0, 1] RGB.
Everything is differentiable with respect to ``z_T`` when gradients are enabled, with
optional per-step checkpointing of the sampler (thesis Alg. 1 lines 9–14) and of the decoder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from lightning_fv.diffusion.model import LightningDiT
from lightning_fv.diffusion.sampler import sample
from lightning_fv.diffusion.vae import LatentNormalizer, ResizeAutoencoder, decode_latents
from lightning_fv.utils.checkpoint import save_tensors

__all__ = [
    "ASSET",
    "LatentDiffusionPipeline",
    "SamplerConfig",
    "load_pipeline",
    "pipeline_metadata",
    "save_pipeline",
]

ASSET = Path(__file__).resolve().parent.parent / "assets" / "dit_digits.safetensors"


@dataclass
class SamplerConfig:
    """Settings of :func:`~lightning_fv.diffusion.sampler.sample` (release defaults noted)."""

    num_steps: int = 250          # release: 250 grid points (249 steps)
    shift: float | None = None    # release: 0.3
    cfg_scale: float = 1.0        # release: 6.7–10 with the interval
    cfg_interval_start: float = 0.0  # release: 0.11
    guidance_channels: int | None = 3  # release: first 3 channels
    method: str = "euler"

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


class LatentDiffusionPipeline(nn.Module):
    """LightningDiT + sampler + latent normalization + decoder.

    Args:
        model: the velocity model.
        decoder: an autoencoder with ``decode(z)`` returning images in [-1, 1] (diffusers
            ``AutoencoderKL``, :class:`ResizeAutoencoder`, …).
        normalizer: maps diffusion latents back to decoder latents (default identity).
        sampler: default sampler settings (overridable per call).
    """

    def __init__(self, model: LightningDiT, decoder: nn.Module,
                 normalizer: LatentNormalizer | None = None,
                 sampler: SamplerConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.decoder = decoder
        self.normalizer = normalizer if normalizer is not None else LatentNormalizer()
        self.sampler = sampler if sampler is not None else SamplerConfig()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the starting latent."""
        s = self.model.input_size
        return (self.model.in_channels, s, s)

    def noise(self, batch: int, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> Tensor:
        """Starting latents ``z_T ~ N(0, I)`` ``(batch, C, H, W)`` on the model's device."""
        device = device if device is not None else self.model.pos_embed.device
        return torch.randn(batch, *self.latent_shape, generator=generator, device=device)

    def sample_latents(self, z_T: Tensor, y: Tensor | None = None, checkpoint: bool = False,
                       enable_grad: bool | None = None, **overrides: Any) -> Tensor:
        """Clean diffusion latents ``z_0`` ``(B, C, H, W)``; ``overrides`` replace fields of
        :class:`SamplerConfig` for this call."""
        cfg = {**self.sampler.as_kwargs(), **overrides}
        return sample(self.model, z_T, y, checkpoint=checkpoint, enable_grad=enable_grad, **cfg)

    def decode(self, z0: Tensor, clamp: bool = True, checkpoint: bool = False) -> Tensor:
        """Diffusion latents → images ``(B, 3, H', W')`` in [0, 1].

        ``clamp`` clips to [0, 1] as the release does (zero gradient outside); with
        ``clamp=False`` the affine map ``(x + 1)/2`` is returned unclipped.
        """
        def run(z: Tensor) -> Tensor:
            return decode_latents(self.decoder, self.normalizer.denormalize(z))

        if checkpoint and torch.is_grad_enabled():
            x = _checkpoint(run, z0, use_reentrant=False)
        else:
            x = run(z0)
        x = (x.float() + 1) / 2
        return x.clamp(0, 1) if clamp else x

    def generate(self, z_T: Tensor, y: Tensor | None = None, checkpoint: bool = False,
                 enable_grad: bool | None = None, clamp: bool = True,
                 **overrides: Any) -> Tensor:
        """``z_T`` ``(B, C, H, W)`` (+ labels ``(B,)`` or ``None`` = unconditional) →
        images ``(B, 3, H', W')`` in [0, 1]; differentiable in ``z_T`` when grad is enabled."""
        grad = torch.is_grad_enabled() if enable_grad is None else enable_grad
        with torch.set_grad_enabled(grad):
            z0 = self.sample_latents(z_T, y, checkpoint=checkpoint, enable_grad=grad, **overrides)
            return self.decode(z0, clamp=clamp, checkpoint=checkpoint)

    def forward(self, z_T: Tensor, y: Tensor | None = None, **kwargs: Any) -> Tensor:
        return self.generate(z_T, y, **kwargs)


def load_pipeline(path: str | Path = "bundled", map_location: str | torch.device = "cpu"
                  ) -> LatentDiffusionPipeline:
    """Load a pipeline saved by ``LatentDiffusionModule.export`` / ``scripts/train_diffusion.py``
    (``.safetensors``: model weights ``model.*`` (cast to float32), metadata ``config`` with
    the LightningDiT arguments, ``autoencoder``, ``normalizer``, ``sampler``). ``"bundled"``
    is the small class-conditional digits model ``lightning_fv/assets/dit_digits.safetensors``.
    """
    from lightning_fv.utils.checkpoint import read_checkpoint

    path = ASSET if str(path) == "bundled" else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"diffusion checkpoint {str(path)!r} does not exist"
                                + (" (run scripts/train_diffusion.py)" if path == ASSET else ""))
    ck = read_checkpoint(path, prefixes=(), map_location=map_location)
    meta = ck.metadata
    if "config" not in meta:
        raise ValueError(f"{str(path)!r} has no LightningDiT config in its metadata (expected "
                         f"a file written by save_pipeline / LatentDiffusionModule.export)")
    model = LightningDiT(**json.loads(meta["config"]))
    model.load_state_dict({k[6:]: v for k, v in ck.state_dict.items()
                           if k.startswith("model.")}, strict=True)
    ae_cfg = json.loads(meta.get("autoencoder", '{"factor": 1, "latent_channels": 3}'))
    norm = json.loads(meta.get("normalizer", '{"mean": 0.0, "std": 1.0, "multiplier": 1.0}'))
    sampler = SamplerConfig(**json.loads(meta.get("sampler", "{}")))
    pipe = LatentDiffusionPipeline(
        model.eval(), ResizeAutoencoder(**ae_cfg),
        LatentNormalizer(norm["mean"], norm["std"], norm.get("multiplier", 1.0)), sampler)
    return pipe.to(map_location).eval()


def pipeline_metadata(pipe: LatentDiffusionPipeline, extra: dict[str, Any] | None = None
                      ) -> dict[str, str]:
    """The safetensors metadata that :func:`load_pipeline` reads (small pipelines only)."""
    dec = pipe.decoder
    if not isinstance(dec, ResizeAutoencoder):
        raise TypeError("only pipelines with a ResizeAutoencoder can be exported to one file")
    norm = pipe.normalizer
    meta = {
        "config": json.dumps(pipe.model.config),
        "autoencoder": json.dumps({"factor": dec.factor, "latent_channels": dec.latent_channels}),
        "normalizer": json.dumps({"mean": norm.mean.flatten().tolist() if norm.mean.dim() else
                                  float(norm.mean), "std": norm.std.flatten().tolist()
                                  if norm.std.dim() else float(norm.std),
                                  "multiplier": norm.multiplier}),
        "sampler": json.dumps(pipe.sampler.as_kwargs()),
    }
    meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    return meta


def save_pipeline(pipe: LatentDiffusionPipeline, path: str | Path,
                  extra: dict[str, Any] | None = None,
                  dtype: torch.dtype | None = None) -> Path:
    """Save the model weights (``model.*``, optionally cast to ``dtype``, e.g. float16 to halve
    the file) and config metadata as ``.safetensors``; loading casts back to float32."""
    fixed = ("pos_embed", "feat_rope.")  # deterministic tables stay float32
    state = {f"model.{k}": v.detach().to(v.dtype if k.startswith(fixed) else (dtype or v.dtype))
             for k, v in pipe.model.state_dict().items()}
    return save_tensors(state, path, metadata=pipeline_metadata(pipe, extra))

