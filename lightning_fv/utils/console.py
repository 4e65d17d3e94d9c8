"""Console output of the package's own loggers (for the CLI and the demo)."""

from __future__ import annotations

import logging


def enable_console_logging(level: int = logging.INFO) -> None:
    """Print ``lightning_fv.*`` log records as plain lines on stderr (once).

    Only the package's logger gets a handler, so Lightning's own messages are not printed
    twice through the root logger.
    """
    pkg = logging.getLogger("lightning_fv")
    if not any(getattr(h, "_lightning_fv", False) for h in pkg.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._lightning_fv = True  # type: ignore[attr-defined]
        pkg.addHandler(handler)
    pkg.setLevel(level)
