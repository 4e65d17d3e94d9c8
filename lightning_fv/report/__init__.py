"""The audit report (edge layer: Jinja2, matplotlib, files).

:func:`audit` runs every check of the library on one model and one data set, each section
independently; :func:`write_report` turns the result into one self-contained
``report.html`` plus ``report.md`` and ``report.json`` in a new ``version_N`` folder.
See ``docs/audit.md``.
"""

from lightning_fv.report.audit import (
    RENDER_PRESETS,
    SECTIONS,
    AuditResult,
    Section,
    SectionSkipped,
    audit,
    collect_images,
)
from lightning_fv.report.writer import ReportPaths, format_number, next_version_dir, write_report

__all__ = [
    "RENDER_PRESETS",
    "SECTIONS",
    "AuditResult",
    "ReportPaths",
    "Section",
    "SectionSkipped",
    "audit",
    "collect_images",
    "format_number",
    "next_version_dir",
    "write_report",
]
