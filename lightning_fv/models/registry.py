"""Build a model by name, with explicit ``pretrained`` / checkpoint arguments (timm style).

One registry maps names to builders (:func:`register_model`); :func:`build_model` builds by
name and loads a local checkpoint through the one reader
(:func:`lightning_fv.utils.checkpoint.read_checkpoint`). Registered names:

- ``"bundled"`` or ``"bundled:photo_patches"`` / ``"bundled:digits"``: the small CNNs
  trained by ``scripts/train_bundled.py`` and shipped in ``lightning_fv/assets``;
  ``"bundled:photo_patches_vit"``: the tiny ViT trained the same way (``--arch vit``).
- ``"small_cnn"``: a :class:`SmallCNN` (its config is read from a ``save_small_cnn`` file).
- ``"tiny_vit"``: a :class:`~lightning_fv.models.vit.TinyViT` (config read from the file).
- ``"lightningdit"`` or ``"lightningdit:LightningDiT-XL/1"`` (any preset): LightningDiT,
  release checkpoints load from their ``"ema"`` entry.
- ``"vavae"``: the VA-VAE (diffusers ``AutoencoderKL``); LDM-layout checkpoints are converted.
- ``"detector"``: the visualization detector (``image_size`` read from the file).
- ``"sae"``: a Top-K sparse autoencoder (sizes read from the file).
- Anything else: ``"torchvision:<name>"`` or ``"timm:<name>"``, or a bare name looked up in
  torchvision first, then timm.

Checkpoints load with ``safetensors`` or ``torch.load(..., weights_only=True)``; pickled
code is never executed.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_fv.models.small_cnn import SmallCNN, small_cnn_config
from lightning_fv.utils.checkpoint import (
    Checkpoint,
    MissingEntryError,
    checkpoint_metadata,
    detect_format,
    load_state_dict,
    read_checkpoint,
    save_tensors,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = {"photo_patches": "small_cnn_photo_patches", "digits": "small_cnn_digits",
           "photo_patches_vit": "vit_photo_patches"}

__all__ = [
    "ASSETS",
    "BUNDLED",
    "ModelEntry",
    "build_model",
    "bundled_metadata",
    "bundled_model",
    "list_models",
    "load_small_cnn",
    "load_state_dict_file",
    "model_entry",
    "register_model",
    "save_small_cnn",
    "strip_prefix",
]

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Attributes:
        name: the registry name (``"family"``; ``"family:variant"`` passes ``variant=``).
        builder: ``builder(variant=..., num_classes=..., pretrained=..., **kwargs)`` → module
            (it receives only the arguments it declares).
        checkpoint_key: entry of a ``torch.save`` dict holding the weights (``None``: the
            reader's default ``"state_dict"``/``"model"``/``"ema"``).
        config_from_checkpoint: ``Checkpoint → builder kwargs`` read from the file (sizes
            stored in safetensors metadata or Lightning ``hyper_parameters``).
        convert: ``state dict → state dict`` before the strict load (renames, sub-modules).
    """

    name: str
    builder: Builder
    checkpoint_key: str | None = None
    config_from_checkpoint: Callable[[Checkpoint], dict[str, Any]] | None = None
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, checkpoint_key: str | None = None,
                   config_from_checkpoint: Callable[[Checkpoint], dict[str, Any]] | None = None,
                   convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
                   | None = None) -> Callable[[B], B]:
    """Decorator: register ``builder`` under ``name`` (see :class:`ModelEntry`)."""
    if not name or ":" in name:
        raise ValueError(f"model name must be non-empty without ':', got {name!r}")

    def deco(builder: B) -> B:
        if name in _REGISTRY:
            raise KeyError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, builder, checkpoint_key, config_from_checkpoint,
                                     convert)
        return builder

    return deco


def list_models() -> list[str]:
    """Registered names (torchvision/timm names are available besides these)."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of a registered family name (``"lightningdit"``)."""
    family = name.partition(":")[0]
    if family not in _REGISTRY:
        close = difflib.get_close_matches(family, list(_REGISTRY), n=5)
        raise KeyError(f"unknown registered model {name!r}; closest names: {close}; "
                       f"registered: {list_models()}")
    return _REGISTRY[family]


# ----------------------------------------------------------------- compatibility names
def load_state_dict_file(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict with its keys as written (``safetensors`` or a ``torch.save`` file,
    ``weights_only``); see :func:`lightning_fv.utils.checkpoint.load_state_dict`."""
    return load_state_dict(path, key=key, prefixes=())


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that starts with it (e.g. ``"model."``)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


# ------------------------------------------------------------------------ SmallCNN
def save_small_cnn(model: SmallCNN, path: str | Path,
                   extra: dict[str, object] | None = None) -> None:
    """Save a :class:`SmallCNN` as safetensors with its config in the metadata."""
    meta = {"config": json.dumps(small_cnn_config(model)), **{
        k: json.dumps(v) for k, v in (extra or {}).items()}}
    save_tensors(model.state_dict(), path, metadata=meta)


def _small_cnn_config(ck: Checkpoint) -> dict[str, Any]:
    return json.loads(ck.metadata["config"]) if "config" in ck.metadata else {}


def load_small_cnn(path: str | Path) -> SmallCNN:
    """Rebuild a :class:`SmallCNN` saved by :func:`save_small_cnn` (eval mode)."""
    if "config" not in checkpoint_metadata(path):
        raise ValueError(f"{str(path)!r} has no SmallCNN config in its metadata")
    return build_model("small_cnn", checkpoint_path=str(path)).eval()  # type: ignore[return-value]


def bundled_metadata(name: str = "photo_patches") -> dict[str, object]:
    """Training metadata stored with a bundled checkpoint (accuracy, classes, input size…)."""
    return {k: json.loads(v) for k, v in checkpoint_metadata(_bundled_path(name)).items()}


def _bundled_path(name: str) -> Path:
    if name not in BUNDLED:
        raise KeyError(f"unknown bundled model {name!r}; available: {sorted(BUNDLED)}")
    path = ASSETS / f"{BUNDLED[name]}.safetensors"
    if not path.is_file():
        dataset = name.removesuffix("_vit")
        flag = " --arch vit" if name.endswith("_vit") else ""
        raise FileNotFoundError(
            f"bundled checkpoint {str(path)!r} is missing; rebuild it with "
            f"`python scripts/train_bundled.py --dataset {dataset}{flag}`"
        )
    return path


def bundled_model(name: str = "photo_patches") -> nn.Module:
    """The bundled model ``name`` in eval mode: the small CNN trained on
    ``"photo_patches"`` or ``"digits"``, or the tiny ViT ``"photo_patches_vit"``
    (:class:`~lightning_fv.models.vit.TinyViT`, 64×64 input)."""
    path = _bundled_path(name)
    if json.loads(checkpoint_metadata(path).get("arch", '"small_cnn"')) == "tiny_vit":
        return build_model("tiny_vit", checkpoint_path=str(path)).eval()
    return load_small_cnn(path)


# ----------------------------------------------------------------- registered models
@register_model("small_cnn", config_from_checkpoint=_small_cnn_config)
def _small_cnn(num_classes: int = 10, **kwargs: Any) -> nn.Module:
    return SmallCNN(num_classes=num_classes, **kwargs)


@register_model("tiny_vit", config_from_checkpoint=_small_cnn_config)
def _tiny_vit(num_classes: int = 10, **kwargs: Any) -> nn.Module:
    from lightning_fv.models.vit import TinyViT

    return TinyViT(num_classes=num_classes, **kwargs)


@register_model("bundled")
def _bundled(variant: str = "") -> nn.Module:
    return bundled_model(variant or "photo_patches")


@register_model("lightningdit", checkpoint_key="ema")
def _lightningdit(variant: str = "", num_classes: int | None = None, **kwargs: Any
                  ) -> nn.Module:
    from lightning_fv.diffusion.model import LightningDiT, lightningdit

    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return lightningdit(variant, **kwargs) if variant else LightningDiT(**kwargs)


def _vavae_convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from lightning_fv.diffusion.vae import vavae_state_dict

    return vavae_state_dict(state)


@register_model("vavae", convert=_vavae_convert)
def _vavae(**overrides: Any) -> nn.Module:
    from lightning_fv.diffusion.vae import build_vavae

    return build_vavae(**overrides)


def _detector_config(ck: Checkpoint) -> dict[str, Any]:
    from lightning_fv.manipulation.detector_net import detector_config

    return detector_config(ck)


def _detector_convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from lightning_fv.manipulation.detector_net import detector_state_dict

    return detector_state_dict(state)


@register_model("detector", config_from_checkpoint=_detector_config, convert=_detector_convert)
def _detector(image_size: int = 224, in_channels: int = 3) -> nn.Module:
    from lightning_fv.manipulation.detector_net import DetectorCNN

    return DetectorCNN(image_size, in_channels)


def _sae_config(ck: Checkpoint) -> dict[str, Any]:
    meta = {k: json.loads(v) for k, v in ck.metadata.items()}
    missing = {"d_in", "d_hidden", "k"} - set(meta)
    if missing:
        raise ValueError(f"{str(ck.path)!r} lacks {sorted(missing)} metadata (an SAE file "
                         f"written by save_sae has d_in/d_hidden/k); found {sorted(meta)}")
    return {"d_in": int(meta["d_in"]), "d_hidden": int(meta["d_hidden"]), "k": int(meta["k"])}


@register_model("sae", config_from_checkpoint=_sae_config)
def _sae(d_in: int, d_hidden: int, k: int) -> nn.Module:
    from lightning_fv.models.sae import TopKSAE

    return TopKSAE(d_in, d_hidden, k)


# ------------------------------------------------------------------------- building
def _call(builder: Builder, **kwargs: Any) -> nn.Module:
    """Call ``builder``; an argument it does not take raises naming the valid ones."""
    import inspect

    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return builder(**kwargs)
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise TypeError(f"model {builder.__name__.lstrip('_')!r} does not take {unknown}; "
                        f"valid: {list(params)}")
    return builder(**kwargs)


def _external(name: str, num_classes: int | None, pretrained: bool, **kwargs: Any
              ) -> nn.Module:
    """torchvision / timm models (``"torchvision:<name>"``, ``"timm:<name>"`` or bare)."""
    source, _, arch = name.partition(":") if ":" in name else ("", "", name)
    if source not in ("", "torchvision", "timm"):
        raise KeyError(f"unknown model source {source!r} in {name!r}; valid: 'torchvision:', "
                       f"'timm:' or a registered name {list_models()}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if source in ("", "torchvision"):
        import torchvision

        if arch in torchvision.models.list_models():
            weights = "DEFAULT" if pretrained else None
            return torchvision.models.get_model(arch, weights=weights, **kwargs)
    if source in ("", "timm"):
        import timm

        if timm.is_model(arch):
            return timm.create_model(arch, pretrained=pretrained, **kwargs)
    import timm
    import torchvision

    pool = list(_REGISTRY) + list(torchvision.models.list_models()) + list(timm.list_models())
    close = difflib.get_close_matches(arch, pool, n=5)
    raise KeyError(f"unknown model {name!r}; closest names: {close}")


def build_model(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    checkpoint_key: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name (see the module docstring), optionally loading a local checkpoint.

    Args:
        name: a registered name (``"small_cnn"``, ``"bundled:digits"``,
            ``"lightningdit:LightningDiT-B/2"``…) or a torchvision/timm name.
        num_classes: output classes (``None``: the builder's default).
        pretrained: torchvision/timm released weights (they must be in the local cache;
            nothing is downloaded here).
        checkpoint_path: a local weights file (safetensors, ``torch.save``, Lightning
            ``.ckpt``) loaded strictly through the one reader; wrapper prefixes
            (``model.``, ``backbone.``, ``module.``, ``_orig_mod.``) are removed.
        checkpoint_key: entry of a ``torch.save`` dict holding the weights (default: the
            registered model's, else ``"state_dict"``/``"model"``/``"ema"``).
        kwargs: further builder arguments (e.g. ``widths`` of ``small_cnn``).

    Raises:
        KeyError: an unknown name (the message lists the closest names).
    """
    family, _, variant = name.partition(":")
    entry = _REGISTRY.get(family)
    ck = None
    if checkpoint_path is not None:
        key = checkpoint_key or (entry.checkpoint_key if entry else None)
        if detect_format(checkpoint_path) == "safetensors":
            key = None  # a flat file: nothing to select
        try:
            ck = read_checkpoint(checkpoint_path, key=key)
        except MissingEntryError:
            if checkpoint_key is not None:
                raise
            ck = read_checkpoint(checkpoint_path)  # no preferred entry: the reader's default
    if entry is None:
        model = _external(name, num_classes, pretrained, **kwargs)
    else:
        cfg = dict(entry.config_from_checkpoint(ck)) if ck and entry.config_from_checkpoint \
            else {}
        cfg.update(kwargs)
        args: dict[str, Any] = dict(cfg)
        if num_classes is not None:
            args["num_classes"] = num_classes
        if pretrained:
            args["pretrained"] = True
        if variant:
            args["variant"] = variant
        model = _call(entry.builder, **args)
    if ck is not None:
        state = ck.state_dict
        if entry is not None and entry.convert is not None:
            state = entry.convert(state)
        model.load_state_dict(state, strict=True)
    return model
