"""The ``lightning-fv`` command.

- ``lightning-fv fit|validate|test|predict …``: Lightning's ``LightningCLI``; any
  LightningModule / DataModule / callback / logger by class path, from YAML
  (``--config examples/configs/demo.yaml``).
- Extra commands (plain functions with typed arguments, also configurable from YAML with
  ``--config``): ``render`` and those registered in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, str] = {
    "render": "lightning_fv.commands.render:render",
    "sample": "lightning_fv.commands.diffusion:sample",
    "ifv": "lightning_fv.commands.ifv:ifv",
    "invariant": "lightning_fv.commands.invariant:invariant",
    "train-detector": "lightning_fv.commands.manipulation:train_detector",
    "manipulate": "lightning_fv.commands.manipulation:manipulate",
    "render-comparison": "lightning_fv.commands.manipulation:render_comparison",
}


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


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-fv``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        from lightning_fv.utils.console import enable_console_logging

        enable_console_logging()
        from jsonargparse import CLI

        fn = _load(COMMANDS[argv[0]])
        CLI(fn, args=argv[1:], as_positional=False)
        return
    if argv and argv[0] in ("-h", "--help"):
        extra = ", ".join(sorted(_available_commands()))
        print(f"lightning-fv: fit | validate | test | predict (LightningCLI) | {extra}")
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
