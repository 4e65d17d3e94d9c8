"""``lightning-fv invariant`` is ``predict`` of ``InvariantSetSampler`` with a config: the
config is saved beside the results and reruns the same samples; default folders are
versioned and an earlier result is never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from _invariant_helpers import TinyClassifier, make_pipeline
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from lightning_fv.cli import main
from lightning_fv.diffusion.pipeline import save_pipeline
from lightning_fv.modules.invariant_sampler import InvariantSetSampler, QueryDataset

SMALL = ["--classes", "[0, 1]", "--samples_per_query", "2", "--algorithm.budget", "2",
         "--algorithm.num_steps", "2", "--algorithm.lr", "1.0", "--device", "cpu",
         "--progress", "false"]


@pytest.fixture()
def pipeline(tmp_path: Path) -> str:
    return str(save_pipeline(make_pipeline(size=8, factor=4), tmp_path / "dit.safetensors"))


def test_command_is_predict_with_a_config_that_reruns_it(tmp_path: Path, pipeline: str,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.chdir(tmp_path)
    main(["invariant", "--pipeline", pipeline, *SMALL])
    run = tmp_path / "outputs" / "invariant" / "version_0"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.yaml", "invariant_sets.png", "invariant_sets.safetensors", "metrics.json"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    model = config["model"]
    assert model["class_path"] == "lightning_fv.modules.invariant_sampler.InvariantSetSampler"
    assert model["init_args"]["classes"] == [0, 1]
    assert model["init_args"]["algorithm"]["budget"] == 2
    assert model["init_args"]["algorithm"]["lr"] == 1.0
    # the saved config, run with `lightning-fv predict`, gives the same samples in version_1
    main(["predict", "--config", str(run / "config.yaml")])
    again = tmp_path / "outputs" / "invariant" / "version_1"
    first = load_file(run / "invariant_sets.safetensors")
    second = load_file(again / "invariant_sets.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, equal_nan=True)
    metrics = json.loads((again / "metrics.json").read_text())
    assert metrics["settings"]["budget"] == 2


def test_an_explicit_folder_with_a_result_is_refused_before_sampling(
        tmp_path: Path, pipeline: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sets"
    main(["invariant", "--pipeline", pipeline, *SMALL, "--output_dir", str(out)])
    before = (out / "invariant_sets.safetensors").read_bytes()
    with pytest.raises(SystemExit) as err:
        main(["invariant", "--pipeline", pipeline, *SMALL, "--output_dir", str(out),
              "--seed", "5"])
    assert err.value.code == 2
    assert "already holds invariant sets" in capsys.readouterr().err
    assert (out / "invariant_sets.safetensors").read_bytes() == before
    main(["invariant", "--pipeline", pipeline, *SMALL, "--output_dir", str(out),
          "--seed", "5", "--overwrite", "true"])
    assert (out / "invariant_sets.safetensors").read_bytes() != before


def test_module_without_output_dir_writes_a_fresh_version_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    ds = QueryDataset(torch.rand(2, 3, 8, 8, generator=g), torch.tensor([0, 1]))
    for expected in ("version_0", "version_1"):
        m = InvariantSetSampler(make_pipeline(), TinyClassifier().eval(), samples_per_query=1,
                                budget=1, lr=1.0, tau=0.0, num_steps=2, cutoffs=[0.5],
                                progress=False)
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                  enable_model_summary=False).predict(m, DataLoader(ds, batch_size=2))
        assert m.written[0].parent == Path("outputs/invariant") / expected
        assert (tmp_path / "outputs" / "invariant" / expected / "metrics.json").is_file()
