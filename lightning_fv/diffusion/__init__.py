"""Latent diffusion for invariant-set sampling: LightningDiT, flow-matching sampler, decoder.

Model (weights only), sampler (stateless step rules + a differentiable loop) and pipeline
(composition) live apart, as in diffusers. The VA-VAE helpers import ``diffusers`` lazily, so
this package imports with torch alone. See ``docs/diffusion.md``.
"""

from lightning_fv.diffusion.model import (
    LIGHTNINGDIT_PRESETS,
    LightningDiT,
    lightningdit,
    lightningdit_config,
    load_lightningdit_state_dict,
)
from lightning_fv.diffusion.pipeline import (
    LatentDiffusionPipeline,
    SamplerConfig,
    load_pipeline,
    save_pipeline,
)
from lightning_fv.diffusion.sampler import (
    euler_step,
    guided_velocity,
    heun_step,
    sample,
    shift_timesteps,
    time_grid,
    velocity_fn,
)
from lightning_fv.diffusion.vae import (
    VAVAE_CONFIG,
    LatentNormalizer,
    ResizeAutoencoder,
    build_vavae,
    convert_ldm_vae_state_dict,
    decode_latents,
    encode_latents,
    load_vavae,
)

__all__ = [
    "LIGHTNINGDIT_PRESETS",
    "VAVAE_CONFIG",
    "LatentDiffusionPipeline",
    "LatentNormalizer",
    "LightningDiT",
    "ResizeAutoencoder",
    "SamplerConfig",
    "build_vavae",
    "convert_ldm_vae_state_dict",
    "decode_latents",
    "encode_latents",
    "euler_step",
    "guided_velocity",
    "heun_step",
    "lightningdit",
    "lightningdit_config",
    "load_lightningdit_state_dict",
    "load_pipeline",
    "load_vavae",
    "sample",
    "save_pipeline",
    "shift_timesteps",
    "time_grid",
    "velocity_fn",
]
