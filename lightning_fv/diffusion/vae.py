"""VA-VAE tokenizer (diffusers ``AutoencoderKL``), LDM→diffusers key converter, latent scaling.

The release's VA-VAE f16d32 is an LDM-style KL autoencoder: base width 128, channel
multipliers (1, 1, 2, 2, 4) (five levels, four 2× down-samplings: f16), two residual blocks
per level in the encoder and three in the decoder, single-head self-attention at resolution
16 (i.e. in the lowest level of both encoder and decoder) and in the middle blocks, 32 latent
channels (``double_z``: the encoder emits mean and log-variance), 1×1 ``quant_conv`` /
``post_quant_conv``. Images are in [-1, 1].

diffusers' ``AutoencoderKL`` expresses all of this: its ``AttnDownEncoderBlock2D`` /
``AttnUpDecoderBlock2D`` are the LDM levels with attention, its ``Downsample2D`` with
``padding=0`` pads (0, 1, 0, 1) like LDM, and its single-head ``Attention`` with
``Linear`` projections equals LDM's 1×1-conv ``AttnBlock``. So no own module is needed;
:func:`convert_ldm_vae_state_dict` renames keys and squeezes the 1×1 attention kernels.
diffusers is imported lazily (only when a VA-VAE is built), so the rest of
``lightning_fv.diffusion`` works without it.

Latent normalization (release ``ImgLatentDataset``; thesis App. .3 uses the release setup):
``z_n = (z − μ) / σ · m`` with per-channel ``μ, σ`` of shape ``(1, 32, 1, 1)`` from the released
``latents_stats.pt`` and multiplier ``m`` (1.0 for VA-VAE); inverted before decoding.

For the small offline model :class:`ResizeAutoencoder` is a weight-free "autoencoder"
(average-pool down, bilinear up) used in place of a VAE.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "VAVAE_CONFIG",
    "LatentNormalizer",
    "ResizeAutoencoder",
    "build_vavae",
    "convert_ldm_vae_state_dict",
    "decode_latents",
    "decoder_factor",
    "encode_latents",
    "load_vavae",
]

VAVAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
    up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 128, 256, 256, 512),
    layers_per_block=2,
    latent_channels=32,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=1.0,
    use_quant_conv=True,
    use_post_quant_conv=True,
    mid_block_add_attention=True,
)
"""diffusers ``AutoencoderKL`` arguments of the release's VA-VAE f16d32."""


def build_vavae(**overrides: Any) -> nn.Module:
    """An (untrained) diffusers ``AutoencoderKL`` with the VA-VAE layout; ``overrides`` change
    any argument (e.g. a tiny ``block_out_channels`` for tests)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the VA-VAE needs `diffusers` (pip install diffusers)") from e
    return AutoencoderKL(**{**VAVAE_CONFIG, **overrides})


_RESNET = {"nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_DROP_PREFIXES = ("loss.", "foundation_model.", "linear_proj.", "model_ema.")


def _rename_inner(rest: str, attn: bool) -> str:
    name, _, leaf = rest.partition(".")
    table = _ATTN if attn else _RESNET
    return f"{table.get(name, name)}.{leaf}"


def convert_ldm_vae_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an LDM/VA-VAE ``AutoencoderKL`` state dict to diffusers' layout.

    Mapping (``i`` level, ``j`` block; ``n`` levels): ``encoder.down.i.block.j`` →
    ``encoder.down_blocks.i.resnets.j``; ``.attn.j`` → ``.attentions.j``;
    ``encoder.down.i.downsample.conv`` → ``encoder.down_blocks.i.downsamplers.0.conv``;
    ``decoder.up.i`` → ``decoder.up_blocks.(n−1−i)`` (diffusers orders from the lowest
    resolution) with ``upsample.conv`` → ``upsamplers.0.conv``; ``mid.block_1/2`` →
    ``mid_block.resnets.0/1``; ``mid.attn_1`` → ``mid_block.attentions.0``; ``norm_out`` →
    ``conv_norm_out``; ``nin_shortcut`` → ``conv_shortcut``; attention ``norm, q, k, v,
    proj_out`` → ``group_norm, to_q, to_k, to_v, to_out.0`` with the 1×1 kernels squeezed to
    linear weights. Training-only entries (``loss.*``, ``foundation_model.*``, ``linear_proj.*``)
    are dropped; any other unknown key raises ``KeyError``.
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    ups = [int(m.group(1)) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.", k))]
    n_up = max(ups) + 1 if ups else 0
    out: dict[str, Tensor] = {}
    for key, val in state.items():
        if key.startswith(_DROP_PREFIXES):
            continue
        new = None
        attn = False
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            new = key
        elif m := re.match(r"(encoder|decoder)\.(conv_in|conv_out)\.(.*)", key):
            new = key
        elif m := re.match(r"(encoder|decoder)\.norm_out\.(.*)", key):
            new = f"{m.group(1)}.conv_norm_out.{m.group(2)}"
        elif m := re.match(r"(encoder|decoder)\.mid\.block_(\d)\.(.*)", key):
            new = (f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}."
                   + _rename_inner(m.group(3), False))
        elif m := re.match(r"(encoder|decoder)\.mid\.attn_1\.(.*)", key):
            attn = True
            new = f"{m.group(1)}.mid_block.attentions.0." + _rename_inner(m.group(2), True)
        elif m := re.match(r"encoder\.down\.(\d+)\.(block|attn)\.(\d+)\.(.*)", key):
            attn = m.group(2) == "attn"
            kind = "attentions" if attn else "resnets"
            new = (f"encoder.down_blocks.{m.group(1)}.{kind}.{m.group(3)}."
                   + _rename_inner(m.group(4), attn))
        elif m := re.match(r"encoder\.down\.(\d+)\.downsample\.conv\.(.*)", key):
            new = f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
        elif m := re.match(r"decoder\.up\.(\d+)\.(block|attn)\.(\d+)\.(.*)", key):
            attn = m.group(2) == "attn"
            kind = "attentions" if attn else "resnets"
            new = (f"decoder.up_blocks.{n_up - 1 - int(m.group(1))}.{kind}.{m.group(3)}."
                   + _rename_inner(m.group(4), attn))
        elif m := re.match(r"decoder\.up\.(\d+)\.upsample\.conv\.(.*)", key):
            new = f"decoder.up_blocks.{n_up - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
        if new is None:
            raise KeyError(f"unexpected key {key!r} in an LDM autoencoder state dict")
        if attn and new.endswith(".weight") and val.dim() == 4:
            val = val[:, :, 0, 0]
        out[new] = val
    return out


def load_vavae(path: str | Path, **overrides: Any) -> nn.Module:
    """Build the VA-VAE and load a release checkpoint (LDM layout, ``torch.load`` with
    ``weights_only=True``; or an already converted ``.safetensors``) with ``strict=True``
    through the one checkpoint reader (:mod:`lightning_fv.utils.checkpoint`; the same as
    ``build_model("vavae", checkpoint_path=path)``). Returns the model in eval mode."""
    from lightning_fv.utils.checkpoint import load_state_dict

    vae = build_vavae(**overrides)
    vae.load_state_dict(vavae_state_dict(load_state_dict(path, prefixes=())), strict=True)
    return vae.eval()


def vavae_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A VA-VAE state dict in diffusers' layout: an LDM-layout one is converted
    (:func:`convert_ldm_vae_state_dict`), a converted one is returned as is."""
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in state):
        return convert_ldm_vae_state_dict(state)
    return state


def decoder_factor(decoder: nn.Module) -> int | None:
    """The up-sampling factor latents → images of ``decoder``: ``factor`` of a
    :class:`ResizeAutoencoder`, ``2^(levels − 1)`` of a diffusers ``AutoencoderKL`` (16 for the
    VA-VAE f16d32: five levels, four 2× up-samplings); ``None`` for anything else."""
    if isinstance(decoder, ResizeAutoencoder):
        return decoder.factor
    widths = getattr(getattr(decoder, "config", None), "block_out_channels", None)
    if widths is not None:
        return 2 ** (len(widths) - 1)
    return None


def encode_latents(vae: nn.Module, images: Tensor, sample: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
    """Images ``(B, 3, H, W)`` in [-1, 1] → raw latents (posterior mean, or a sample)."""
    out = vae.encode(images)
    dist = getattr(out, "latent_dist", None)
    if dist is None:
        return out
    return dist.sample(generator=generator) if sample else dist.mode()


def decode_latents(vae: nn.Module, z: Tensor) -> Tensor:
    """Raw latents → images ``(B, 3, H, W)`` in (about) [-1, 1]; differentiable."""
    out = vae.decode(z)
    return getattr(out, "sample", out)


class LatentNormalizer(nn.Module):
    """``normalize(z) = (z − mean)/std · multiplier`` and its inverse ``denormalize``.

    ``mean``/``std`` are buffers of shape ``(1, C, 1, 1)`` (scalars broadcast).
    """

    def __init__(self, mean: Tensor | float = 0.0, std: Tensor | float = 1.0,
                 multiplier: float = 1.0) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32)
        if (std_t <= 0).any():
            raise ValueError("latent std must be positive everywhere")
        self.register_buffer("mean", mean_t.reshape(1, -1, 1, 1) if mean_t.dim() else mean_t)
        self.register_buffer("std", std_t.reshape(1, -1, 1, 1) if std_t.dim() else std_t)
        self.multiplier = float(multiplier)

    @classmethod
    def from_stats_file(cls, path: str | Path, multiplier: float = 1.0) -> LatentNormalizer:
        """Read the release's ``latents_stats.pt`` (``{"mean", "std"}``, ``(1, C, 1, 1)``)."""
        from lightning_fv.utils.checkpoint import load_state_dict

        stats = load_state_dict(path, prefixes=())
        if not {"mean", "std"} <= set(stats):
            raise KeyError(f"{str(path)!r} must hold 'mean' and 'std'; found {sorted(stats)}")
        return cls(stats["mean"], stats["std"], multiplier)

    def normalize(self, z: Tensor) -> Tensor:
        """Raw VAE latents → diffusion latents."""
        return (z - self.mean) / self.std * self.multiplier

    def denormalize(self, z: Tensor) -> Tensor:
        """Diffusion latents → raw VAE latents (the release: ``z·std/m + mean``)."""
        return z * self.std / self.multiplier + self.mean

    def extra_repr(self) -> str:
        return f"multiplier={self.multiplier}"


class ResizeAutoencoder(nn.Module):
    """Weight-free stand-in for a VAE on small images (images in [-1, 1]).

    ``encode``: ``(B, 3, H, W)`` → average over colour (``latent_channels=1``) or keep RGB
    (``3``), then ``factor×factor`` average pooling → ``(B, c, H/f, W/f)``.
    ``decode``: bilinear up-sampling by ``factor`` and repetition to 3 channels.
    ``factor=1`` is the identity "VAE" (pixel-space diffusion).
    """

    def __init__(self, factor: int = 1, latent_channels: int = 3) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be ≥ 1, got {factor}")
        if latent_channels not in (1, 3):
            raise ValueError(f"latent_channels must be 1 or 3, got {latent_channels}")
        self.factor = int(factor)
        self.latent_channels = int(latent_channels)

    def encode(self, x: Tensor) -> Tensor:
        if self.latent_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        return F.avg_pool2d(x, self.factor) if self.factor > 1 else x

    def decode(self, z: Tensor) -> Tensor:
        if self.factor > 1:
            z = F.interpolate(z, scale_factor=self.factor, mode="bilinear", align_corners=False)
        return z.expand(-1, 3, -1, -1) if z.shape[1] == 1 else z

    def extra_repr(self) -> str:
        return f"factor={self.factor}, latent_channels={self.latent_channels}"
