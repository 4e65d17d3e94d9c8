"""Where results are written, and with which mode: versioned run folders (as Lightning's
``version_N``), refusal to overwrite an earlier result, and the user's umask for files
whose writer (safetensors) creates them ``0600``."""

from __future__ import annotations

import os
import re
from pathlib import Path

_VERSION = re.compile(r"^version_(\d+)$")


def next_version_dir(root: str | Path) -> Path:
    """``root/version_N`` with ``N`` one above the highest existing ``version_*`` folder
    (``version_0`` for a new ``root``), as Lightning's loggers number their runs. The
    folder is created, so two runs started one after the other never share it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION.match(p.name))]
        path = root / f"version_{max(taken, default=-1) + 1}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # a concurrent run took it: try the next number
            continue


def output_folder(output_dir: str | Path | None, default_root: str | Path,
                  overwrite: bool = False) -> Path:
    """The folder a command writes its result to, never an earlier run's result.

    - ``output_dir=None``: a fresh ``default_root/version_N`` (see :func:`next_version_dir`).
    - an explicit folder: created if missing; an existing non-empty folder raises
      :class:`FileExistsError` unless ``overwrite`` (then files of the same name are
      replaced and others are left).
    """
    if output_dir is None:
        return next_version_dir(default_root)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output_dir {str(out)!r} is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output_dir {str(out)!r} already holds an earlier result; pass a new folder, "
            f"leave output_dir unset for a fresh {Path(default_root) / 'version_N'}, or "
            f"pass overwrite=True (--overwrite true) to replace it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_folder(output_dir: str | Path | None, log_dir: str | Path | None,
               default_root: str | Path, result_file: str, what: str,
               overwrite: bool = False) -> Path:
    """The folder a Lightning run writes its result to: ``output_dir`` when given, else the
    run's log folder (``log_dir``, when the trainer has a logger), else a fresh
    ``default_root/version_N``. A folder that already holds ``result_file`` (an earlier
    result, ``what`` in the message) raises :class:`FileExistsError` unless ``overwrite``;
    other files in it (Lightning's ``config.yaml``, logs) are fine."""
    base = output_dir if output_dir is not None else log_dir or None
    out = output_folder(base, default_root, overwrite=True)
    if (out / result_file).exists() and not overwrite:
        raise FileExistsError(
            f"output_dir {str(out)!r} already holds {what} ({result_file}); pass a new folder, "
            f"leave output_dir unset for a fresh {Path(default_root) / 'version_N'}, or pass "
            f"overwrite=True (--model.overwrite true)")
    return out


def output_file(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` for a command's single-file result: its folder is created; an existing file
    raises :class:`FileExistsError` unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} already exists (an earlier result); pass another path or "
            f"overwrite=True (--overwrite true) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def apply_umask(*paths: str | Path) -> None:
    """Give files the mode a plain ``open(..., "w")`` would (``0o666`` minus the umask).

    Some writers (safetensors) create their files ``0600``; results meant to be shared
    should follow the user's umask like every other file.
    """
    mask = os.umask(0)
    os.umask(mask)
    for p in paths:
        if Path(p).is_file():
            os.chmod(p, 0o666 & ~mask)
