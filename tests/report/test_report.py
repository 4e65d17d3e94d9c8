"""The audit report: every section present, self-contained images, HTML numbers equal to the
JSON, a failing section isolated, versioned output folders, input validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from report_common import decode_png, parse_report, tiny_audit

import lightning_fv
from lightning_fv.report import SECTIONS, audit, format_number, next_version_dir, write_report


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, dict]:
    tmp = tmp_path_factory.mktemp("audit")
    # robustness is forced to fail: an l-inf radius of 8 is outside the [0, 1] pixel range
    result = tiny_audit(tmp, pgd_norm="linf", pgd_eps=8.0)
    paths = write_report(result, tmp / "out")
    return result, paths, json.loads(paths.json.read_text(encoding="utf-8"))


def test_html_has_every_section_and_the_reading_guide(written):
    _, paths, _ = written
    p = parse_report(paths.html)
    assert set(SECTIONS) | {"summary", "how-to-read"} <= set(p.sections)
    assert {k: p.sections[k] for k in SECTIONS} == {
        "model": "ok", "visualizations": "ok", "sanity": "ok", "detector": "ok",
        "path_linearity": "ok", "robustness": "error"}


def test_every_image_is_an_embedded_png_and_nothing_is_fetched(written):
    _, paths, _ = written
    p = parse_report(paths.html)
    by_section: dict[str, int] = {}
    for section, src in p.images:
        w, h = decode_png(src)
        assert w >= 32 and h >= 32
        by_section[section] = by_section.get(section, 0) + 1
    # 4 render tiles; 1 sanity figure; detector figure + 2 examples; AGA/ALD bars + AGPA
    assert by_section == {"visualizations": 4, "sanity": 1, "detector": 3, "path_linearity": 2}
    assert not [u for u in p.urls if not u.startswith(("#", "data:image/png;base64,"))]
    assert not {"script", "link", "iframe", "object"} & p.tags
    html = paths.html.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "url(" not in html


def test_numbers_in_the_html_are_the_json_numbers(written):
    result, paths, js = written
    p = parse_report(paths.html)
    assert len(p.numbers) >= 40
    shown_keys = set()
    for section, key, text in p.numbers:
        owner = section if section in SECTIONS else None
        if owner is None:  # the summary table repeats headline numbers of a section
            owner = next(s for s in SECTIONS if key in js["sections"][s]["numbers"])
        value = js["sections"][owner]["numbers"][key]
        assert text == format_number(value), (owner, key)
        shown_keys.add((owner, key))
    # every number of the sanity section and every render value is shown in the page
    assert {("sanity", k) for k in js["sections"]["sanity"]["numbers"]} <= shown_keys
    units = js["sections"]["visualizations"]["settings"]["units"]
    assert {("visualizations", f"value/{u}") for u in units} <= shown_keys
    assert js["meta"]["version"] == lightning_fv.__version__
    assert js["meta"]["data"]["n_images"] == 40
    assert js["sections"]["visualizations"]["settings"]["steps"] == 4
    assert js["sections"]["visualizations"]["settings"]["preset"] == "lucid"
    assert js["sections"]["sanity"]["settings"]["seeds"] == [0]
    assert js["sections"]["path_linearity"]["settings"]["steps"] == 3


def test_section_numbers_are_consistent_with_their_definitions(written):
    result, _, js = written
    sanity = js["sections"]["sanity"]["numbers"]
    layers = js["sections"]["sanity"]["settings"]["layers"]
    norm = [sanity[f"normalized/{lay}"] for lay in layers]
    norm = [v for v in norm if v is not None]
    assert math.isclose(sanity["score"], sum(norm) / len(norm), rel_tol=1e-9)
    for lay in layers:
        u, lo, fv = sanity[f"upper/{lay}"], sanity[f"lower/{lay}"], sanity[f"fv/{lay}"]
        if sanity[f"normalized/{lay}"] is not None:
            assert math.isclose(sanity[f"normalized/{lay}"], (fv - lo) / (u - lo), rel_tol=1e-9)
    det = js["sections"]["detector"]["numbers"]
    ps = [v for k, v in det.items() if k.startswith("p_natural/")]
    assert len(ps) == 4
    assert det["fraction_natural/all"] == sum(p > 0.5 for p in ps) / 4
    units = js["sections"]["visualizations"]["settings"]["units"]
    assert [u.split(":")[0] for u in units] == ["block2", "block2", "fc", "fc"]
    pl = js["sections"]["path_linearity"]["numbers"]
    assert 0 <= pl["aga/" + units[0]] <= 180 and pl["ald/" + units[0]] >= 0
    assert result.failed == ["robustness"]


def test_failing_section_shows_its_error_while_the_others_render(written):
    _, paths, js = written
    p = parse_report(paths.html)
    err = p.errors["robustness"]
    assert err.startswith("ValueError: linf eps=8.0 exceeds the [0, 1] pixel range")
    assert js["sections"]["robustness"]["status"] == "error"
    assert js["sections"]["robustness"]["error"] == err
    assert js["sections"]["robustness"]["numbers"] == {}
    assert set(p.errors) == {"robustness"}
    md = paths.markdown.read_text(encoding="utf-8")
    assert "## Robustness (error)" in md and "linf eps=8.0" in md
    assert f"score {format_number(js['sections']['sanity']['numbers']['score'])}" in md


def test_second_report_goes_to_version_1_and_never_overwrites(written, tmp_path):
    result, paths, _ = written
    assert paths.directory.name == "version_0"
    first = write_report(result, tmp_path)
    second = write_report(result, tmp_path)
    assert (first.directory.name, second.directory.name) == ("version_0", "version_1")
    assert first.html.read_bytes() == second.html.read_bytes()
    (tmp_path / "version_7").mkdir()
    assert next_version_dir(tmp_path).name == "version_8"


def test_skipped_sections_say_why(tmp_path):
    result = tiny_audit(tmp_path, detector_ckpt=None, pgd_eps=None,
                        sections=["model", "detector", "robustness"])
    status = {k: (s.status, s.error) for k, s in result.sections.items()}
    assert status["model"] == ("ok", None)
    assert status["detector"][0] == "skipped" and "detector_ckpt" in status["detector"][1]
    assert status["robustness"][0] == "skipped" and "pgd_eps" in status["robustness"][1]
    assert status["sanity"] == ("skipped", "not requested (sections argument)")
    p = parse_report(write_report(result, tmp_path / "out").html)
    assert p.sections["detector"] == "skipped" and p.images == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"preset": "fancy"}, "unknown preset 'fancy'; valid: ['lucent', 'lucid']"),
    ({"sections": ["model", "colour"]}, "unknown section(s) ['colour']"),
    ({"layers": []}, "audit needs at least one layer"),
    ({"path_steps": 1}, "path_steps must be >= 2"),
    ({"metric": "kendall"}, "unknown metric 'kendall'"),
])
def test_bad_arguments_name_the_value_and_what_is_valid(kwargs, message):
    import torch

    args = {"layers": ["fc"], **kwargs}
    with pytest.raises(ValueError) as err:
        audit(torch.nn.Linear(3, 2), (torch.zeros(2, 3, 4, 4), torch.zeros(2)), **args)
    assert message in str(err.value)


def test_template_ships_beside_the_package():
    root = Path(lightning_fv.__file__).parent / "report" / "templates"
    assert (root / "report.html.j2").is_file() and (root / "report.md.j2").is_file()
