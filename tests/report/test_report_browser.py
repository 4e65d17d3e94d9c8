"""The audit report opened in headless Chromium (``slow``): no console error, every image
loads, and a screenshot for the README (``docs/figures/audit_report.png``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_common import tiny_audit

from lightning_fv.report import write_report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000"]
# Injected at the top of <head> of a copy of the page: records script errors, console.error
# calls and failed image loads, and on "load" writes what it saw into <body data-check>.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push("error:" + (e.message || (e.target && e.target.tagName) || "?"));
}, true);
var __ce = console.error; console.error = function () {
  window.__errors.push("console.error:" + Array.prototype.join.call(arguments, " "));
  __ce.apply(console, arguments); };
window.addEventListener("load", function () {
  var ims = document.images, ok = 0;
  for (var i = 0; i < ims.length; i++) if (ims[i].complete && ims[i].naturalWidth > 0) ok++;
  document.body.setAttribute("data-check", JSON.stringify(
    {images: ims.length, loaded: ok, errors: window.__errors}));
});
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: "
                    "`apt-get install -y chromium`); the fast HTML test still runs")
def test_report_opens_in_chromium_without_errors_and_every_image_loads(tmp_path):
    result = tiny_audit(tmp_path, steps=16)
    paths = write_report(result, tmp_path / "out")
    html = paths.html.read_text(encoding="utf-8")
    probe = paths.html.with_name("probe.html")
    probe.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")

    dom = _chromium(["--dump-dom", probe.as_uri()], tmp_path / "profile1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-check="([^"]*)"', dom.stdout)
    assert found, "the page did not finish loading"
    check = json.loads(found.group(1).replace("&quot;", '"'))
    assert check["images"] == html.count("<img ") and check["images"] >= 10
    assert check["loaded"] == check["images"]
    assert check["errors"] == []
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []

    shot = tmp_path / "shot.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1280,2200", paths.html.as_uri()],
                    tmp_path / "profile2")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2200)
        colours = im.convert("RGB").resize((64, 110)).getcolors(64 * 110)
        assert colours is not None and len(colours) > 20  # not a blank page
    if os.environ.get("LFV_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture
        docs = Path(__file__).resolve().parents[2] / "docs" / "figures"
        shutil.copyfile(shot, docs / "audit_report.png")
