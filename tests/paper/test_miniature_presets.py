"""Each miniature renders with its paper's own renderer by default (issue 17 §1)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from lightning_fv.optvis.render import preset_settings

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["manipulation_miniature", "ifv_miniature"])
def test_miniatures_default_to_the_papers_renderer(name: str) -> None:
    """`dont-trust-your-eyes…` §2 (the notebook's before/after rows) and
    `inverse-feature-visualization` §3.2 render without a redirected-ReLU warm-up."""
    args = _script(name).parser().parse_args([])
    assert args.preset == "lucent"
    assert preset_settings(args.preset)["redirect_relu_steps"] == 0
    assert preset_settings("lucid")["redirect_relu_steps"] == 16  # Lucid's first 16 steps
    with pytest.raises(SystemExit):
        _script(name).parser().parse_args(["--preset"])  # the option takes a value
