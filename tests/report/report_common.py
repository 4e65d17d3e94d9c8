"""Shared helpers of the report tests: a tiny audit of the bundled CNN and an HTML reader."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import torch

from lightning_fv.data import PhotoPatchesDataModule
from lightning_fv.manipulation import DetectorCNN
from lightning_fv.models import bundled_model
from lightning_fv.modules.detector import save_detector
from lightning_fv.report import AuditResult, audit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_data() -> PhotoPatchesDataModule:
    """4 validation patches per class at 32 px (the bundled CNN is size-agnostic)."""
    return PhotoPatchesDataModule(n_train_per_class=1, n_val_per_class=4, size=32, resize=128)


def random_detector(path: Path, image_size: int = 32) -> Path:
    torch.manual_seed(0)
    return save_detector(DetectorCNN(image_size), path)


def tiny_audit(tmp: Path, **overrides: object) -> AuditResult:
    """Every section at a tiny size; ``pgd_norm='linf', pgd_eps=8`` makes robustness fail."""
    kwargs: dict[str, object] = dict(
        layers=["block2", "fc"], units_per_layer=2, steps=4, path_images=2, path_steps=3,
        pgd_eps=0.3, pgd_steps=2, robust_images=8, detector_ckpt=random_detector(
            tmp / "detector.safetensors"), detector_examples=2,
        model_name="bundled:photo_patches")
    kwargs.update(overrides)
    return audit(bundled_model("photo_patches"), tiny_data(), **kwargs)


class ReportParser(HTMLParser):
    """Collects section ids and statuses, ``<img>`` sources, ``span.num`` values per section,
    error texts, and every tag name and URL-valued attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[tuple[str | None, str]] = []
        self.numbers: list[tuple[str | None, str, str]] = []
        self.errors: dict[str, str] = {}
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self._section: str | None = None
        self._num: str | None = None
        self._err = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        for k in ("href", "src", "srcset", "action", "data"):
            if a.get(k):
                self.urls.append(a[k])
        if tag == "section":
            self._section = a.get("id")
            self.sections[a.get("id") or ""] = a.get("data-status") or ""
        elif tag == "img":
            self.images.append((self._section, a.get("src") or ""))
        elif tag == "span" and "num" in (a.get("class") or "").split():
            self._num, self._text = a.get("data-key"), []
        elif tag == "pre" and "error-text" in (a.get("class") or "").split():
            self._err, self._text = True, []

    def handle_data(self, data: str) -> None:
        if self._num is not None or self._err:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._num is not None:
            self.numbers.append((self._section, self._num, "".join(self._text)))
            self._num = None
        elif tag == "pre" and self._err:
            self.errors[self._section or ""] = "".join(self._text)
            self._err = False
        elif tag == "section":
            self._section = None


def parse_report(path: Path) -> ReportParser:
    p = ReportParser()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def decode_png(src: str) -> tuple[int, int]:
    """``(width, height)`` of a ``data:image/png;base64,…`` URI; raises if not a valid PNG."""
    from PIL import Image

    prefix = "data:image/png;base64,"
    if not src.startswith(prefix):
        raise AssertionError(f"image source is not a PNG data URI: {src[:60]!r}")
    raw = base64.b64decode(src[len(prefix):], validate=True)
    assert raw.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(raw)) as im:
        im.verify()
    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        return im.size
