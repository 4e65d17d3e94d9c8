"""Composition of LightningDiT, the flow-matching sampler and the decoder (thesis App. .1).

``generate(z_T, y)`` = decode(denormalize(sample(model, z_T, y))) mapped to [0, 1] RGB.
Everything is differentiable with respect to ``z_T`` when gradients are enabled, with
optional per-step checkpointing of the sampler (thesis Alg. 1 lines 9–14) and of the decoder.

Two ways to get a pipeline: one ``.safetensors`` file of ``save_pipeline`` (small models with
the weight-free :class:`ResizeAutoencoder`; :func:`load_pipeline`), or the three separate
files of the official ``hustvl/LightningDiT`` release, LightningDiT checkpoint + VA-VAE
checkpoint + ``latents_stats.pt`` (:class:`PipelineFiles`, :func:`load_release_pipeline`;
thesis §3.1 and App. .1: LightningDiT with the VA-VAE decoder).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from lightning_fv.diffusion.model import LIGHTNINGDIT_PRESETS, LightningDiT, lightningdit
from lightning_fv.diffusion.sampler import METHODS, sample
from lightning_fv.diffusion.vae import (
    LatentNormalizer,
    ResizeAutoencoder,
    decode_latents,
    decoder_factor,
)
from lightning_fv.utils.checkpoint import CheckpointError, save_tensors

__all__ = [
    "ASSET",
    "LatentDiffusionPipeline",
    "PipelineFiles",
    "SamplerConfig",
    "load_pipeline",
    "load_release_pipeline",
    "pipeline_metadata",
    "release_sampler",
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

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or int(self.num_steps) != self.num_steps \
                or self.num_steps < 1:
            raise ValueError(f"sampler num_steps must be a positive integer, got "
                             f"{self.num_steps!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown sampling method {self.method!r}; valid: {list(METHODS)}")

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


def release_sampler() -> SamplerConfig:
    """The sampler of the LightningDiT-XL/1 800-epoch release
    (``configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml``, ``sample:``):
    Euler ODE with ``num_sampling_steps: 250`` grid points (= 249 steps here),
    ``timestep_shift: 0.3``, ``cfg_scale: 6.7``, ``cfg_interval_start: 0.125``, guidance on
    the first 3 latent channels (``forward_with_cfg``). Guidance is unused when sampling
    unconditionally (thesis App. .1.1, ``C_t = ∅``)."""
    return SamplerConfig(num_steps=249, shift=0.3, cfg_scale=6.7, cfg_interval_start=0.125,
                         guidance_channels=3, method="euler")


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
    def image_size(self) -> int:
        """Side of the decoded images: latent side × the decoder's up-sampling factor (256 for
        LightningDiT-XL/1 on VA-VAE f16d32 latents, 16 × 16); decodes one zero latent for a
        decoder of unknown factor."""
        factor = decoder_factor(self.decoder)
        if factor is not None:
            return self.model.input_size * factor
        with torch.no_grad():
            z = torch.zeros(1, *self.latent_shape, device=self.model.pos_embed.device)
            return int(self.decode(z).shape[-1])

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



def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{', …' if len(keys) > limit else ''}] ({len(keys)} in all)"


def load_strict(module: nn.Module, state: dict[str, Tensor], path: str | Path,
                what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` that first checks names and shapes and
    raises :class:`~lightning_fv.utils.checkpoint.CheckpointError` naming the file, ``what``
    it was loaded into, and the missing, unexpected and mis-shaped keys (at most eight of
    each)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state)
                    if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        if shapes:
            parts.append("shape mismatches " + _listing(
                [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in shapes]))
        raise CheckpointError(f"{str(path)!r} does not fit {what}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def _dit_weights(path: Path, weights: str) -> tuple[dict[str, Tensor], str | None]:
    """The LightningDiT weights of a release file and the ``config.model.model_type`` it
    records (``None`` if it has none).

    The release's ``train.py`` saves ``{"model", "ema", "opt", "config"}`` (``config``: the
    training YAML as a plain dict) and its ``inference.py`` takes ``"ema"`` when present,
    else the file as a flat state dict; here ``weights`` names the entry (``"ema"`` or
    ``"model"``) and a flat file is taken as is. ``module.`` / ``_orig_mod.`` prefixes are
    removed. Read with ``torch.load(weights_only=True)`` (or safetensors)."""
    from lightning_fv.utils.checkpoint import MissingEntryError, read_checkpoint

    prefixes = ("module.", "_orig_mod.")
    try:
        ck = read_checkpoint(path, key=weights, prefixes=prefixes)
    except MissingEntryError:
        ck = read_checkpoint(path, prefixes=prefixes)
        if ck.key is not None:  # a training checkpoint without the entry asked for
            raise
    cfg = ck.extra.get("config")
    model = cfg.get("model") if isinstance(cfg, dict) else None
    model_type = model.get("model_type") if isinstance(model, dict) else None
    return ck.state_dict, model_type if isinstance(model_type, str) else None


def _check_file(path: str | Path, field_name: str, expected: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pipeline.{field_name}: {str(p)!r} is not a file; expected "
                                f"{expected}")
    return p


def load_release_pipeline(
    dit: str | Path,
    vae: str | Path,
    latent_stats: str | Path,
    model: str = "LightningDiT-XL/1",
    weights: str = "ema",
    latent_multiplier: float = 1.0,
    sampler: SamplerConfig | None = None,
    model_args: dict[str, Any] | None = None,
    vae_args: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> LatentDiffusionPipeline:
    """A :class:`LatentDiffusionPipeline` from the official release's three files.

    Args:
        dit: the LightningDiT checkpoint (``lightningdit-xl-imagenet256-800ep.pt``: a
            ``torch.save`` dict ``{"model", "ema", "opt", "config"}`` or a flat state dict,
            or an own ``.safetensors``), loaded strictly into ``lightningdit(model)``.
        vae: the VA-VAE checkpoint (``vavae-imagenet256-f16d32-dinov2.pt``, LDM key names
            under ``"state_dict"``; converted by
            :func:`~lightning_fv.diffusion.vae.convert_ldm_vae_state_dict`), loaded strictly.
        latent_stats: ``latents_stats.pt`` (``{"mean", "std"}``, ``(1, 32, 1, 1)`` each).
        model: a preset of :data:`~lightning_fv.diffusion.model.LIGHTNINGDIT_PRESETS`
            (release configs: ``model_type: LightningDiT-XL/1``) with the release's VA-VAE
            f16d32 options (16×16×32 latents, SwiGLU, RoPE, RMSNorm).
        weights: the entry of a training checkpoint to load (``"ema"``, as the release's
            ``inference.py``, or ``"model"``).
        latent_multiplier: ``data.latent_multiplier`` of the release configs (1.0).
        sampler: sampler settings (default :func:`release_sampler`).
        model_args, vae_args: overrides of the LightningDiT / diffusers ``AutoencoderKL``
            arguments (tests build tiny random versions of the release files with them).
        map_location: device the weights are read to.

    Raises:
        FileNotFoundError: a file is missing (naming the field and what was expected).
        CheckpointError: a file's keys or shapes do not fit the architecture (naming them),
            or the latent statistics do not fit the latent channels.
        ValueError: an unknown preset or model argument (naming the valid ones).
    """
    dit_path = _check_file(dit, "dit", "the LightningDiT checkpoint, e.g. "
                           "lightningdit-xl-imagenet256-800ep.pt")
    vae_path = _check_file(vae, "vae", "the VA-VAE checkpoint, e.g. "
                           "vavae-imagenet256-f16d32-dinov2.pt")
    stats_path = _check_file(latent_stats, "latent_stats", "the release's latents_stats.pt "
                             "({'mean', 'std'})")
    if model not in LIGHTNINGDIT_PRESETS:
        raise ValueError(f"pipeline.model: unknown LightningDiT preset {model!r}; valid: "
                         f"{sorted(LIGHTNINGDIT_PRESETS)}")
    valid = [k for k in inspect.signature(LightningDiT.__init__).parameters if k != "self"]
    bad = sorted(set(model_args or {}) - set(valid))
    if bad:
        raise ValueError(f"pipeline.model_args: unknown LightningDiT argument(s) {bad}; "
                         f"valid: {valid}")
    state, released = _dit_weights(dit_path, weights)
    if released is not None and released != model:
        raise ValueError(f"pipeline.model is {model!r} but {str(dit_path)!r} was trained as "
                         f"{released!r} (its config.model.model_type)")
    net = lightningdit(model, **(model_args or {}))
    what = model + (f" with {model_args}" if model_args else "")
    load_strict(net, state, dit_path, what)
    del state
    from lightning_fv.diffusion.vae import build_vavae, vavae_state_dict
    from lightning_fv.utils.checkpoint import load_state_dict

    decoder = build_vavae(**(vae_args or {}))
    load_strict(decoder, vavae_state_dict(load_state_dict(vae_path, prefixes=(),
                                                          map_location=map_location)),
                vae_path, "the VA-VAE" + (f" with {vae_args}" if vae_args else "")
                + " (keys in diffusers names)")
    latent = int(decoder.config.latent_channels)
    if latent != net.in_channels:
        raise ValueError(f"the VA-VAE has {latent} latent channels but the LightningDiT "
                         f"in_channels is {net.in_channels}")
    normalizer = LatentNormalizer.from_stats_file(stats_path, latent_multiplier)
    for name, t in (("mean", normalizer.mean), ("std", normalizer.std)):
        if t.numel() not in (1, latent):
            raise CheckpointError(f"{str(stats_path)!r}: {name} has {t.numel()} channels, "
                                  f"expected {latent} (the latent channels) or 1")
    pipe = LatentDiffusionPipeline(net.eval(), decoder.eval(), normalizer,
                                   sampler if sampler is not None else release_sampler())
    return pipe.to(map_location).eval()


@dataclass
class PipelineFiles:
    """The official release's separate files as one LightningCLI argument (YAML
    ``pipeline: {dit: …, vae: …, latent_stats: …}``); :meth:`load` calls
    :func:`load_release_pipeline` with these fields (see it for each)."""

    dit: str
    vae: str
    latent_stats: str
    model: str = "LightningDiT-XL/1"
    weights: str = "ema"
    latent_multiplier: float = 1.0
    sampler: SamplerConfig = field(default_factory=release_sampler)
    model_args: dict[str, Any] | None = None
    vae_args: dict[str, Any] | None = None

    def load(self, map_location: str | torch.device = "cpu") -> LatentDiffusionPipeline:
        """Build the pipeline from the files (strict loading)."""
        return load_release_pipeline(**asdict(self) | {"sampler": self.sampler},
                                     map_location=map_location)
