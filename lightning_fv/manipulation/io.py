"""Save and load manipulated models as safetensors (weights + the list of manipulations
in the metadata, so the structure is rebuilt on top of the original model)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from lightning_fv.manipulation.detector_net import DetectorCNN
from lightning_fv.manipulation.fooling import GATE_NAME, FoolingLayer, _ensure_gate, _set_layer
from lightning_fv.manipulation.silent import SilentUnits
from lightning_fv.optvis.hooks import get_layer
from lightning_fv.utils.checkpoint import checkpoint_metadata, load_state_dict, save_tensors


def save_manipulated(model: nn.Module, path: str | Path, base: str | None = None,
                     mean: list[float] | None = None, std: list[float] | None = None,
                     num_classes: int | None = None) -> Path:
    """Write ``model``'s state dict and its ``fv_manipulations`` to ``path`` (safetensors).
    ``base`` records how to build the original model (e.g. ``"bundled:photo_patches"``);
    ``mean``/``std`` its input normalization and ``num_classes`` its outputs, as the
    manipulation was built with them (``null`` when not given), so that
    ``render-comparison`` and evaluations rebuild the same model."""
    specs = getattr(model, "fv_manipulations", None)
    if not specs:
        raise ValueError("model carries no manipulation (fv_manipulations is empty)")
    meta = {"manipulations": json.dumps(specs), "base": json.dumps(base),
            "mean": json.dumps(None if mean is None else [float(v) for v in mean]),
            "std": json.dumps(None if std is None else [float(v) for v in std]),
            "num_classes": json.dumps(num_classes)}
    return save_tensors(model.state_dict(), path, metadata=meta)


def read_manipulation_metadata(path: str | Path) -> dict[str, object]:
    """``{"manipulations": [...], "base": ..., "mean": ..., "std": ..., "num_classes": ...}``
    stored by :func:`save_manipulated` (files written before 2026-12 lack the last three:
    they read as ``None``)."""
    meta = checkpoint_metadata(path)
    if "manipulations" not in meta:
        raise ValueError(f"{str(path)!r} is not a manipulated model (no 'manipulations' metadata)")
    out: dict[str, object] = {"mean": None, "std": None, "num_classes": None}
    out.update({k: json.loads(v) for k, v in meta.items()})
    return out


def load_manipulated(base_model: nn.Module, path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_manipulated` on a copy of ``base_model`` (the
    original architecture) and load its weights strictly; returns it in eval mode."""
    meta = read_manipulation_metadata(path)
    net = copy.deepcopy(base_model)
    for spec in meta["manipulations"]:  # type: ignore[union-attr]
        if spec["kind"] == "fooling":
            det = None if hasattr(net, GATE_NAME) else DetectorCNN(spec["detector_image_size"])
            gate = _ensure_gate(net, det, spec["threshold"])
            layer = get_layer(net, spec["layer"])
            n = spec["units"]
            new = FoolingLayer(layer, gate, torch.arange(n), torch.zeros(n, dtype=torch.bool),
                               torch.zeros(spec["embedded"]), 1.0, spec["mode"])
            _set_layer(net, spec["layer"], new)
        elif spec["kind"] == "silent":
            conv = get_layer(net, spec["conv"])
            bn = get_layer(net, spec["bn"])
            _set_layer(net, spec["conv"], SilentUnits(conv, bn, torch.zeros_like(conv.weight),
                                                      torch.zeros(conv.out_channels)))
            _set_layer(net, spec["bn"], nn.Identity())
        else:
            raise ValueError(f"unknown manipulation kind {spec['kind']!r}")
    net.load_state_dict(load_state_dict(path, prefixes=()), strict=True)
    net.fv_manipulations = list(meta["manipulations"])  # type: ignore[arg-type]
    return net.eval()


__all__ = ["load_manipulated", "read_manipulation_metadata", "save_manipulated"]
