"""FeatureVisualizer: sharded sweeps equal single-process sweeps; CLI paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from lightning_fv.modules.feature_visualizer import load_sweep

SCRIPT = Path(__file__).with_name("ddp_feature_visualizer_script.py")


def _run(out: Path, devices: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices)], check=True,
                   env=env, timeout=300, capture_output=True)
    return load_sweep(str(out))


def test_two_process_ddp_sweep_yields_exactly_the_single_process_images(tmp_path):
    single = _run(tmp_path / "one", 1)
    ddp = _run(tmp_path / "two", 2)
    assert single["units"] == [f"fc:{i}" for i in range(5)] + ["block2:0", "block2:1"]
    assert ddp["units"] == single["units"]
    assert torch.equal(ddp["images"], single["images"])
    assert torch.equal(ddp["values"], single["values"])
    assert (tmp_path / "two" / "fc.png").is_file() and (tmp_path / "two" / "block2.png").is_file()


def test_render_command_writes_grids_and_tensors(tmp_path):
    from lightning_fv.cli import main

    main(["render", "--model", "bundled:digits", "--units", "[fc:0-2, block2:0]",
          "--image_size", "16", "--steps", "2", "--device", "cpu",
          "--output_dir", str(tmp_path)])
    sweep = load_sweep(str(tmp_path))
    assert sweep["images"].shape == (4, 3, 16, 16)
    assert torch.isfinite(sweep["images"]).all()
    assert (tmp_path / "fc.png").is_file() and (tmp_path / "block2.png").is_file()
    pt = torch.load(tmp_path / "units.pt", weights_only=True)
    assert pt["units"] == sweep["units"] and torch.equal(pt["images"], sweep["images"])


def test_lightning_cli_predict_runs_the_feature_visualizer(tmp_path):
    from lightning_fv.cli import main

    main(["predict", "--model", "lightning_fv.modules.FeatureVisualizer",
          "--model.model", "bundled:digits", "--model.units", "[fc:0-1]",
          "--model.image_size", "16", "--model.thresholds", "[2]",
          "--model.output_dir", str(tmp_path), "--trainer.accelerator", "cpu",
          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path)])
    assert load_sweep(str(tmp_path))["units"] == ["fc:0", "fc:1"]
