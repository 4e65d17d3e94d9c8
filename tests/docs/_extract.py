"""Collect the command lines of README.md and docs/*.md (fenced ``bash`` blocks and inline
code spans) that start with ``lightning-fv``, ``make`` or ``python``."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ("lightning-fv ", "make ", "python ", "OMP_NUM_THREADS=1 python ")
_FENCE = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(text: str) -> list[str]:
    """Every command line in ``text``: backslash continuations joined, trailing ``# …``
    comments dropped, whitespace collapsed."""
    out: list[str] = []
    for block in _FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith(PREFIXES):
                out.append(" ".join(line.split()))
    no_fences = _FENCE.sub("", text)
    for span in _INLINE.findall(no_fences):
        span = " ".join(span.split())
        if span.startswith(PREFIXES):
            out.append(span)
    return out


def documented_commands() -> dict[str, list[str]]:
    """``{command: [documents that show it]}``."""
    found: dict[str, list[str]] = {}
    for doc in documents():
        for cmd in commands(doc.read_text()):
            found.setdefault(cmd, []).append(str(doc.relative_to(ROOT)))
    return found
