"""What the package's commands show at the edges: console log lines and progress bars
(their folders and file modes are in :mod:`lightning_fv.utils.files`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("lightning_fv")


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


class StepProgress:
    """A progress bar over optimization steps (e.g. units × steps of a sweep), with rate
    and ETA, or nothing when ``enabled`` is false.

    ``update(n)`` advances by ``n`` steps; use as a context manager or call ``close()``.
    """

    def __init__(self, total: int, desc: str, unit: str = "step", enabled: bool = True) -> None:
        self.total = int(total)
        self._bar = None
        if enabled and self.total > 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ProgressFn = Callable[[int, int], None]
