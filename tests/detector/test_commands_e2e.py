"""`lightning-fv train-detector | manipulate | render-comparison` end to end (tiny settings)."""

from __future__ import annotations

import json

import torch

from lightning_fv.cli import main
from lightning_fv.data import digits
from lightning_fv.manipulation import FoolingLayer, SilentUnits, load_manipulated
from lightning_fv.manipulation.fooling import set_gate_override
from lightning_fv.models import bundled_model


def test_detector_permute_silent_and_comparison_from_the_command_line(tmp_path) -> None:
    det = tmp_path / "det.safetensors"
    main(["train-detector", "--model", "bundled:digits", "--natural", "digits",
          "--units", "[fc:0-3, fc:4]", "--image_size", "16", "--steps", "4",
          "--trajectories_per_unit", "1", "--n_natural_per_class", "4", "--epochs", "1",
          "--batch_size", "16", "--device", "cpu", "--cache_dir", str(tmp_path / "cache"),
          "--output", str(det)])
    assert det.exists()

    permuted = tmp_path / "permuted.safetensors"
    main(["manipulate", "--model", "bundled:digits", "--method", "permute", "--layer", "fc",
          "--detector_path", str(det), "--shift", "3", "--mode", "split",
          "--output", str(permuted)])
    base = bundled_model("digits").eval()
    fooled = load_manipulated(base, permuted)
    assert isinstance(fooled.fc, FoolingLayer)
    x, _ = digits("val", size=32)
    x = x[:64]
    set_gate_override(fooled, 1.0)  # a perfect gate: every input natural → A = F exactly
    with torch.no_grad():
        assert torch.equal(fooled(x), base(x))

    silent = tmp_path / "silent.safetensors"
    main(["manipulate", "--model", "bundled:digits", "--method", "silent", "--layer", "block3",
          "--natural", "digits", "--image_size", "32", "--pattern", "visualization",
          "--pattern_steps", "8", "--output", str(silent)])
    quiet = load_manipulated(bundled_model("digits").eval(), silent)
    assert isinstance(quiet.block3.conv, SilentUnits)
    xn, _ = digits("train", size=32)  # the natural images that set b
    with torch.no_grad():
        assert torch.equal(quiet(xn), base(xn))

    grid = tmp_path / "before_after.png"
    main(["render-comparison", "--manipulated_path", str(silent), "--units",
          "[block3:1, block3:2]", "--steps", "3", "--image_size", "16", "--device", "cpu",
          "--output", str(grid)])
    assert grid.exists()
    vals = json.loads(grid.with_suffix(".json").read_text())
    assert vals["units"] == ["block3:1", "block3:2"] and len(vals["values_after"]) == 2


def test_example_configs_parse(capsys) -> None:
    from pathlib import Path

    import pytest
    import yaml

    configs = Path(__file__).parents[2] / "examples" / "configs"
    for command, name, key, value in (
            ("train-detector", "manipulate_train_detector.yaml", "trajectories_per_unit", 2),
            ("manipulate", "manipulate_permute.yaml", "method", "permute"),
            ("manipulate", "manipulate_silent.yaml", "beta", 1000.0)):
        with pytest.raises(SystemExit) as exc:
            main([command, "--config", str(configs / name), "--print_config"])
        assert exc.value.code in (0, None)
        assert yaml.safe_load(capsys.readouterr().out)[key] == value
