"""``write_report``: an :class:`~lightning_fv.report.audit.AuditResult` to files.

Writes into a new ``<out_dir>/version_N`` folder (``N`` one more than the largest present;
an existing folder is never reused):

- ``report.html``: one self-contained page (CSS inline, every image a base64 ``data:``
  URI, no script, no external URL), from the Jinja2 template
  ``lightning_fv/report/templates/report.html.j2``;
- ``report.md``: a Markdown summary (numbers, verdicts, errors) with links to
- ``figures/*.png``: the figures and tiles as files;
- ``report.json``: every number with its settings, the library version and the data size.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_fv.report.audit import AuditResult
from lightning_fv.utils.files import next_version_dir


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` wrote: the version folder and its three files."""

    directory: Path
    html: Path
    markdown: Path
    json: Path


def format_number(value: float | None) -> str:
    """How the report prints a number: integers in full, others with 4 significant digits,
    ``n/a`` for NaN/None (the JSON holds ``null`` there)."""
    if value is None:
        return "n/a"
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    if v == int(v) and abs(v) < 1e12:
        return str(int(v))
    return f"{v:.4g}"


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).resolve().parent / "templates")),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = format_number
    return env


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_report(result: AuditResult, out_dir: str | Path = "outputs/audit") -> ReportPaths:
    """Write ``report.html``, ``report.md``, ``report.json`` and ``figures/`` into a new
    ``out_dir/version_N`` folder (see the module docstring); returns the paths."""
    directory = next_version_dir(out_dir)
    figures = directory / "figures"
    figures.mkdir()
    sections = list(result.sections.values())
    b64: dict[str, dict[str, str]] = {}
    files: dict[str, dict[str, str]] = {}
    for s in sections:
        b64[s.name] = {k: base64.b64encode(v).decode("ascii") for k, v in s.images.items()}
        files[s.name] = {}
        for k, v in s.images.items():
            path = figures / f"{s.name}__{_safe_name(k)}.png"
            path.write_bytes(v)
            files[s.name][k] = f"figures/{path.name}"
    env = _environment()
    context = {"result": result, "meta": result.meta, "settings": result.settings,
               "sections": sections, "by_name": result.sections, "b64": b64, "files": files,
               "settings_json": {s.name: json.dumps(s.to_json()["settings"], indent=1,
                                                    ensure_ascii=False) for s in sections}}
    html = env.get_template("report.html.j2").render(**context)
    md = env.get_template("report.md.j2").render(**context)
    paths = ReportPaths(directory, directory / "report.html", directory / "report.md",
                        directory / "report.json")
    paths.html.write_text(html, encoding="utf-8")
    paths.markdown.write_text(md, encoding="utf-8")
    payload = result.to_json()
    payload["files"] = {"html": "report.html", "markdown": "report.md", "figures": files}
    paths.json.write_text(json.dumps(payload, indent=1, ensure_ascii=False, allow_nan=False),
                          encoding="utf-8")
    return paths


__all__ = ["ReportPaths", "format_number", "next_version_dir", "write_report"]
