"""Build a model by name, with explicit ``pretrained`` / checkpoint arguments (timm style).

Names:
- ``"bundled"`` or ``"bundled:photo_patches"`` / ``"bundled:digits"``: the small CNNs
  trained by ``scripts/train_bundled.py`` and shipped in ``lightning_fv/assets``.
- ``"small_cnn"``: an untrained :class:`SmallCNN`.
- ``"torchvision:<name>"`` or ``"timm:<name>"``, or a bare name looked up in torchvision
  first, then timm.

Checkpoints load with ``safetensors`` or ``torch.load(..., weights_only=True)``; pickled
code is never executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lightning_fv.models.small_cnn import SmallCNN, small_cnn_config

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = {"photo_patches": "small_cnn_photo_patches", "digits": "small_cnn_digits"}


def load_state_dict_file(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only``).

    For a training checkpoint the weights are taken from ``key`` if given, else from the
    first of ``"state_dict"``, ``"model"``, ``"ema"`` present. Lightning's ``"model."``
    prefixes are kept; strip them with :func:`strip_prefix`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict")
    keys = [key] if key else ["state_dict", "model", "ema"]
    for k in keys:
        if k in obj and isinstance(obj[k], dict):
            return obj[k]
    if key:
        raise KeyError(f"checkpoint {str(path)!r} has no entry {key!r}; entries: {list(obj)}")
    return obj


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that starts with it (e.g. ``"model."``)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def save_small_cnn(model: SmallCNN, path: str | Path,
                   extra: dict[str, object] | None = None) -> None:
    """Save a :class:`SmallCNN` as safetensors with its config in the metadata."""
    from safetensors.torch import save_file

    meta = {"config": json.dumps(small_cnn_config(model)), **{
        k: json.dumps(v) for k, v in (extra or {}).items()}}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def load_small_cnn(path: str | Path) -> SmallCNN:
    """Rebuild a :class:`SmallCNN` saved by :func:`save_small_cnn` (eval mode)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{str(path)!r} has no SmallCNN config in its metadata")
    model = SmallCNN(**json.loads(meta["config"]))
    model.load_state_dict(load_state_dict_file(path), strict=True)
    return model.eval()


def bundled_metadata(name: str = "photo_patches") -> dict[str, object]:
    """Training metadata stored with a bundled checkpoint (accuracy, classes, input size…)."""
    from safetensors import safe_open

    with safe_open(str(_bundled_path(name)), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def _bundled_path(name: str) -> Path:
    if name not in BUNDLED:
        raise KeyError(f"unknown bundled model {name!r}; available: {sorted(BUNDLED)}")
    path = ASSETS / f"{BUNDLED[name]}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled checkpoint {str(path)!r} is missing; rebuild it with "
            f"`python scripts/train_bundled.py --dataset {name}`"
        )
    return path


def bundled_model(name: str = "photo_patches") -> SmallCNN:
    """The bundled small CNN trained on ``name`` (``"photo_patches"`` or ``"digits"``)."""
    return load_small_cnn(_bundled_path(name))


def build_model(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
) -> nn.Module:
    """Build a model by name (see module docstring), optionally loading a local checkpoint.

    ``pretrained=True`` asks torchvision/timm for their released weights, which needs them
    in the local cache (no network here); ``checkpoint_path`` loads a local file strictly.
    """
    if name.startswith("bundled"):
        _, _, which = name.partition(":")
        model: nn.Module = bundled_model(which or "photo_patches")
    elif name == "small_cnn":
        model = SmallCNN(num_classes=num_classes or 10)
    else:
        source, _, arch = name.partition(":") if ":" in name else ("", "", name)
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = None  # type: ignore[assignment]
        if source in ("", "torchvision"):
            import torchvision

            if arch in torchvision.models.list_models():
                weights = "DEFAULT" if pretrained else None
                model = torchvision.models.get_model(arch, weights=weights, **kwargs)
        if model is None and source in ("", "timm"):
            import timm

            if timm.is_model(arch):
                model = timm.create_model(arch, pretrained=pretrained, **kwargs)
        if model is None:
            import difflib

            import timm
            import torchvision

            pool = list(torchvision.models.list_models()) + list(timm.list_models())
            close = difflib.get_close_matches(arch, pool, n=5)
            raise KeyError(f"unknown model {name!r}; closest names: {close}")
    if checkpoint_path is not None:
        state = load_state_dict_file(checkpoint_path)
        for prefix in ("model.", "backbone.", "module."):
            if all(k.startswith(prefix) for k in state):
                state = strip_prefix(state, prefix)
        model.load_state_dict(state, strict=True)
    return model
