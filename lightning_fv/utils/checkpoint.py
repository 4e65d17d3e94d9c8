"""The one checkpoint reader: safetensors, ``torch.save`` files and Lightning ``.ckpt``.

Every file the package reads weights from goes through :func:`read_checkpoint` (or its
short forms :func:`load_state_dict` and :func:`checkpoint_metadata`):

- the format is detected from the file's first bytes, not its suffix: ``safetensors``
  (8-byte little-endian header length, then a JSON header), ``torch-zip`` (``torch.save``
  since PyTorch 1.6, a zip archive, also Lightning's ``.ckpt``) or ``torch-pickle`` (the
  legacy ``torch.save`` format);
- ``torch.save`` files are read with ``torch.load(..., weights_only=True)``: a pickle that
  holds anything but tensors and plain containers is refused (:class:`UnsafeCheckpointError`,
  a :class:`pickle.UnpicklingError`), pickled code never runs;
- a training checkpoint's weights are taken from ``key`` if given, else from the first of
  ``"state_dict"`` (Lightning), ``"model"``, ``"ema"`` holding a dict; the other top-level
  entries (``hyper_parameters``, ``epoch``…) are kept in :attr:`Checkpoint.extra`;
- wrapper prefixes (``model.``, ``backbone.``, ``module.`` of DDP, ``_orig_mod.`` of
  ``torch.compile``) are removed when *every* key carries them, repeatedly, so nested
  wrappers unwrap too;
- a missing, truncated or garbage file raises :class:`CheckpointError` naming the file, the
  format detected and what was expected (never the raw reader message, which for ``.pt``
  would suggest ``weights_only=False``).
"""

from __future__ import annotations

import pickle
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_PREFIXES",
    "FORMATS",
    "Checkpoint",
    "CheckpointError",
    "MissingEntryError",
    "UnsafeCheckpointError",
    "checkpoint_metadata",
    "detect_format",
    "load_state_dict",
    "read_checkpoint",
    "save_tensors",
    "strip_prefixes",
]

#: Wrapper prefixes removed when every key of a state dict starts with one of them.
DEFAULT_PREFIXES: tuple[str, ...] = ("model.", "backbone.", "module.", "_orig_mod.")
#: Entries of a ``torch.save`` dict that hold the weights, in order of preference.
STATE_KEYS: tuple[str, ...] = ("state_dict", "model", "ema")
#: Formats :func:`detect_format` recognises.
FORMATS: tuple[str, ...] = ("safetensors", "torch-zip", "torch-pickle")
_EXPECTED = ("a .safetensors file, a torch.save file (zip archive or legacy pickle) or a "
             "Lightning .ckpt")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: missing entries, wrong content, truncated or
    not a checkpoint at all. The message names the file, the detected format and what was
    expected."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A ``torch.save`` pickle that holds objects other than tensors and plain containers
    (or is corrupted so that it cannot be told apart); it is refused, never unpickled."""


class MissingEntryError(CheckpointError, KeyError):
    """A ``torch.save`` dict without the requested ``key`` (a :class:`KeyError` too)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`read_checkpoint` read.

    Attributes:
        path: the file.
        format: one of :data:`FORMATS`.
        state_dict: name → tensor (prefixes removed as asked).
        metadata: the safetensors header metadata (str → str); empty for torch files.
        extra: the other top-level entries of a ``torch.save`` dict (``hyper_parameters``,
            ``epoch``…); empty for safetensors and flat state dicts.
        key: the entry the weights were taken from (``None``: the file is the state dict).
    """

    path: Path
    format: str
    state_dict: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    key: str | None = None


def _describe(path: Path) -> str:
    return repr(str(path))


def detect_format(path: str | Path) -> str:
    """The format of ``path`` from its first bytes: one of :data:`FORMATS`.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CheckpointError: the bytes match no known format (names the first bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {_describe(path)} does not exist "
                                f"(expected {_EXPECTED})")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 0:
        return "safetensors"  # a header length, then JSON (maybe truncated later)
    if head[:1] == b"\x80":
        return "torch-pickle"
    raise CheckpointError(
        f"checkpoint {_describe(path)} ({size} bytes) is not a checkpoint: its first bytes "
        f"{head!r} match no known format; expected {_EXPECTED}")


def _short(err: BaseException) -> str:
    """The first sentence of a reader's message, without advice to unpickle code."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text.split(". ")[0]
    if "weights_only" in text:
        return type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _unsafe_detail(err: BaseException) -> str:
    m = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+|class \S+)", str(err))
    return f"unpickler: Unsupported {m.group(1)}" if m else type(err).__name__


def _read_safetensors(path: Path, map_location: str | torch.device
                      ) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f"cannot read checkpoint {_describe(path)}: detected format safetensors, but "
            f"reading failed ({_short(err)}); the file is probably truncated or corrupted. "
            f"Expected a complete .safetensors file") from None
    return state, meta


def _read_torch(path: Path, fmt: str, map_location: str | torch.device) -> Any:
    try:
        with open(path, "rb") as f:  # a file object: torch never dispatches on the suffix
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused checkpoint {_describe(path)} (detected format {fmt}): it holds objects "
            f"other than tensors and plain containers ({_unsafe_detail(err)}), or is "
            f"corrupted; it is never unpickled with code execution. Expected "
            f"{_EXPECTED} holding only tensors, numbers, strings and containers; re-save the "
            f"weights with torch.save(model.state_dict(), path) or as safetensors") from None
    except Exception as err:  # noqa: BLE001 - zip/EOF/key errors of a damaged file
        raise CheckpointError(
            f"cannot read checkpoint {_describe(path)}: detected format {fmt}, but reading "
            f"failed ({_short(err)}); the file is probably truncated or corrupted. Expected "
            f"{_EXPECTED}") from None


def strip_prefixes(state: dict[str, Tensor],
                   prefixes: tuple[str, ...] | list[str] = DEFAULT_PREFIXES
                   ) -> dict[str, Tensor]:
    """Remove each of ``prefixes`` while *every* key starts with it (repeatedly, so that
    ``module._orig_mod.`` unwraps fully). Keys of a state dict with mixed top-level names
    (a LightningModule with ``model.`` and ``ema.``) are left unchanged."""
    changed = True
    while changed and state:
        changed = False
        for p in prefixes:
            if p and all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
    return state


def _select(obj: Any, path: Path, fmt: str, key: str | None
            ) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {_describe(path)} (format {fmt}) holds a {type(obj).__name__}, "
            f"expected a dict of tensors (a state dict) or a training checkpoint dict")
    if key is not None:
        if not isinstance(obj.get(key), dict):
            raise MissingEntryError(
                f"checkpoint {_describe(path)} (format {fmt}) has no entry {key!r} holding "
                f"weights; entries: {sorted(map(str, obj))}")
        return obj[key], {k: v for k, v in obj.items() if k != key}, key
    for k in STATE_KEYS:
        if isinstance(obj.get(k), dict):
            return obj[k], {n: v for n, v in obj.items() if n != k}, k
    return obj, {}, None


def read_checkpoint(path: str | Path, *, key: str | None = None,
                    prefixes: tuple[str, ...] | list[str] = DEFAULT_PREFIXES,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read the weights (and metadata) of a checkpoint file safely.

    Args:
        path: a ``.safetensors``, ``torch.save`` or Lightning ``.ckpt`` file (the format is
            read from the content, see :func:`detect_format`).
        key: the entry holding the weights in a ``torch.save`` dict (``"ema"``, ``"model"``…);
            ``None``: the first of ``"state_dict"``, ``"model"``, ``"ema"`` present, else the
            dict itself.
        prefixes: wrapper prefixes to strip (see :func:`strip_prefixes`); ``()`` keeps keys.
        map_location: device the tensors are loaded to.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: a pickle holding more than tensors and containers.
        CheckpointError: unknown format, truncated/corrupted file, missing ``key``, or
            weights that are not all tensors.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        if key is not None:
            raise CheckpointError(f"checkpoint {_describe(path)} is a flat safetensors file; "
                                  f"key={key!r} only applies to torch.save dicts")
        state, meta = _read_safetensors(path, map_location)
        return Checkpoint(path, fmt, strip_prefixes(state, tuple(prefixes)), meta)
    obj = _read_torch(path, fmt, map_location)
    state, extra, used = _select(obj, path, fmt, key)
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if bad:
        where = f"entry {used!r}" if used else "the file"
        raise CheckpointError(
            f"checkpoint {_describe(path)} (format {fmt}): {where} is not a state dict; "
            f"non-tensor values at {bad[:5]}{' …' if len(bad) > 5 else ''}. Expected a dict "
            f"of tensors or a training checkpoint with one of {list(STATE_KEYS)} (or pass key=)")
    return Checkpoint(path, fmt, strip_prefixes(state, tuple(prefixes)), {}, extra, used)


def load_state_dict(path: str | Path, *, key: str | None = None,
                    prefixes: tuple[str, ...] | list[str] = DEFAULT_PREFIXES,
                    map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The state dict of a checkpoint file (see :func:`read_checkpoint` for the arguments
    and errors)."""
    return read_checkpoint(path, key=key, prefixes=prefixes,
                           map_location=map_location).state_dict


def checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata (str → str) of a ``.safetensors`` file, without reading tensors.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not (a complete) safetensors file.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt != "safetensors":
        raise CheckpointError(f"checkpoint {_describe(path)} is a {fmt} file; metadata needs "
                              f"a .safetensors file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f"cannot read checkpoint {_describe(path)}: detected format safetensors, but its "
            f"header is unreadable ({_short(err)}); the file is probably truncated or "
            f"corrupted. Expected a complete .safetensors file") from None


def save_tensors(tensors: dict[str, Tensor], path: str | Path,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (detached, contiguous, on the CPU) as ``.safetensors`` with string
    ``metadata``, creating the folder; the file gets the user's umask (safetensors alone
    creates it ``0600``). The writing counterpart of :func:`read_checkpoint`."""
    from safetensors.torch import save_file

    from lightning_fv.utils.files import apply_umask

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata=metadata)
    apply_umask(path)
    return path
