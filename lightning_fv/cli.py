"""The ``lightning-fv`` command.

- ``lightning-fv fit|validate|test|predict …``: Lightning's ``LightningCLI``; any
  LightningModule / DataModule / callback / logger by class path, from YAML
  (``--config examples/configs/demo.yaml``). The run's ``config.yaml`` goes to its log
  folder; with ``logger: false`` to the module's output folder if it has one
  (``resolve_output_dir()``), else nowhere (never into the working directory).
- Extra commands for work without a Lightning loop (plain functions with typed arguments,
  also configurable from YAML with ``--config``): those registered in :data:`COMMANDS`.
  ``render`` and ``train-detector`` are thin entry points over ``predict`` / ``fit``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from typing import Any

COMMANDS: dict[str, str] = {
    "render": "lightning_fv.commands.render:render",
    "sample": "lightning_fv.commands.diffusion:sample",
    "ifv": "lightning_fv.commands.ifv:ifv",
    "invariant": "lightning_fv.commands.invariant:invariant",
    "train-detector": "lightning_fv.commands.manipulation:train_detector",
    "manipulate": "lightning_fv.commands.manipulation:manipulate",
    "render-comparison": "lightning_fv.commands.manipulation:render_comparison",
    "audit": "lightning_fv.commands.audit:audit",
}

#: one complete sentence per LightningCLI subcommand for ``--help`` (Lightning's own
#: first docstring lines stop mid-sentence)
SUBCOMMAND_HELP: dict[str, str] = {
    "fit": "Train a model (the full optimization routine, with validation).",
    "validate": "Run one evaluation epoch over the validation set.",
    "test": "Run one evaluation epoch over the test set (e.g. of a checkpoint: --ckpt_path).",
    "predict": "Run inference, e.g. a FeatureVisualizer sweep (predict_step on each batch).",
}

log = logging.getLogger(__name__)


def _load(target: str):  # noqa: ANN202
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _available_commands() -> dict[str, str]:
    """Registered commands whose module imports (optional parts may be missing)."""
    out = {}
    for name, target in COMMANDS.items():
        try:
            _load(target)
        except (ImportError, AttributeError):
            continue
        out[name] = target
    return out


def _first_line(fn: Any) -> str:
    """The first sentence of ``fn``'s docstring, on one line, without RST markup."""
    doc = (getattr(fn, "__doc__", None) or "").strip()
    para = " ".join(doc.split("\n\n", 1)[0].split()).replace("``", "")
    head, sep, _ = para.partition(". ")
    return head + ("." if sep else "")


@functools.cache
def _trainer_class() -> type:
    """``lightning.Trainer`` with one-sentence first docstring lines on ``fit``,
    ``validate``, ``test`` and ``predict`` (LightningCLI shows only that first line)."""
    import lightning as L

    attrs: dict[str, Any] = {"__doc__": L.Trainer.__doc__, "__module__": __name__}
    for name, text in SUBCOMMAND_HELP.items():
        original = getattr(L.Trainer, name)

        @functools.wraps(original)
        def method(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            return __original(self, *args, **kwargs)

        method.__doc__ = f"{text}\n\n{original.__doc__ or ''}"
        attrs[name] = method
    return type("Trainer", (L.Trainer,), attrs)


def _save_config_callback() -> type:
    from lightning.pytorch.cli import SaveConfigCallback

    class RunFolderSaveConfig(SaveConfigCallback):
        """Lightning's ``SaveConfigCallback``, but with no logger the config goes to the
        module's output folder (``resolve_output_dir()``) or is not saved, instead of
        ``trainer.default_root_dir`` (the working directory)."""

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if trainer.logger is not None or self.already_saved:
                return super().setup(trainer, pl_module, stage)
            self.already_saved = True
            resolve = getattr(pl_module, "resolve_output_dir", None)
            if not callable(resolve):
                log.info("config.yaml not saved (logger: false and the module has no output "
                         "folder)")
                return None
            if trainer.is_global_zero:
                from pathlib import Path

                path = Path(resolve()) / self.config_filename
                # a module told to overwrite its folder's result replaces its config too
                overwrite = self.overwrite or bool(getattr(pl_module, "overwrite", False))
                self.parser.save(self.config, str(path), skip_none=False,
                                 overwrite=overwrite, multifile=self.multifile)
                log.info("config saved to %s", path)
            return None

    return RunFolderSaveConfig


def run_lightning_cli(argv: list[str] | dict | None = None, run: bool = True) -> Any:
    """Run ``LightningCLI`` (subclass mode for model and data) on ``argv`` (``None``: the
    process's own command line) and return it (``.trainer``, ``.model``, ``.datamodule``).

    A list or dict config is passed as ``args``; ``None`` reads ``sys.argv``. Lightning
    warns when it gets ``args`` while the process has command-line arguments of its own
    (``lightning-fv train-detector …``, pytest); here ``args`` is always meant, so the
    process's arguments are hidden from it while it parses.
    """
    from lightning.pytorch.cli import LightningCLI

    saved = sys.argv
    if argv is not None:
        sys.argv = saved[:1]
    try:
        return LightningCLI(
            model_class=None,
            datamodule_class=None,
            trainer_class=_trainer_class(),
            save_config_callback=_save_config_callback(),
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            run=run,
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = saved


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-fv``."""
    from_process = args is None
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        from lightning_fv.utils.console import enable_console_logging

        enable_console_logging()
        from jsonargparse import CLI

        fn = _load(COMMANDS[argv[0]])
        try:
            CLI(fn, args=argv[1:], as_positional=False)
        except (ValueError, KeyError, FileExistsError, FileNotFoundError,
                NotADirectoryError) as err:  # bad input: one clear line, not a traceback
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"lightning-fv {argv[0]}: error: {msg}", file=sys.stderr)
            raise SystemExit(2) from err
        return
    if argv and argv[0] in ("-h", "--help"):
        print("lightning-fv: fit | validate | test | predict (LightningCLI), or one of:")
        for name, target in sorted(_available_commands().items()):
            print(f"  {name:18s} {_first_line(_load(target))}")
        print()
    from lightning_fv.utils.console import enable_console_logging

    enable_console_logging()
    run_lightning_cli(None if from_process else argv)


if __name__ == "__main__":
    main()
