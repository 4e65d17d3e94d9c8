"""One InvariantConfig shared by loop, module, command and YAML; the loop runs invariant_loss;
strict metrics.json; stopping within one SGD step (on_step, SIGTERM) keeps what was done."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from _invariant_helpers import TinyClassifier, make_pipeline
from PIL import Image
from torch.utils.data import DataLoader

import lightning_fv.diffusion.invariant as inv
from lightning_fv.diffusion.invariant import (
    INVARIANT_PRESETS,
    InvariantConfig,
    invariant_set_sample,
    logits_response,
)
from lightning_fv.modules.invariant_sampler import (
    DEFAULT_ALGORITHM,
    InvariantSetSampler,
    QueryDataset,
)

CONFIGS = Path(__file__).parents[2] / "examples" / "configs"


def test_config_errors_name_the_bad_value_and_unknown_fields() -> None:
    with pytest.raises(ValueError, match="budget must be a non-negative integer, got -1"):
        InvariantConfig(budget=-1)
    with pytest.raises(ValueError, match=r"cutoff must be in \(0, 1\] or None, got 1.5"):
        InvariantConfig(cutoff=1.5)
    with pytest.raises(ValueError, match=r"optimizer must be one of \['sgd', 'adam'\], "
                                         r"got 'lbfgs'"):
        InvariantConfig(optimizer="lbfgs")
    with pytest.raises(TypeError, match=r"unknown invariant-set setting\(s\) \['budgte'\]"):
        InvariantConfig().replace(budgte=3)
    with pytest.raises(ValueError, match="unknown invariant-set preset 'fast'"):
        InvariantConfig.preset("fast")
    assert InvariantConfig.preset("thesis") == InvariantConfig(budget=512, lr=10.0)


def test_command_module_and_yaml_share_one_set_of_defaults() -> None:
    import inspect

    from lightning_fv.commands.invariant import invariant

    assert DEFAULT_ALGORITHM == INVARIANT_PRESETS["digits"]
    assert inspect.signature(invariant).parameters["algorithm"].default == DEFAULT_ALGORITHM
    assert (inspect.signature(InvariantSetSampler).parameters["algorithm"].default
            == DEFAULT_ALGORITHM)
    cfg = yaml.safe_load((CONFIGS / "invariant_digits.yaml").read_text())
    assert InvariantConfig(**cfg["model"]["init_args"]["algorithm"]) == DEFAULT_ALGORITHM
    assert (DEFAULT_ALGORITHM.budget, DEFAULT_ALGORITHM.lr, DEFAULT_ALGORITHM.step_size,
            DEFAULT_ALGORITHM.num_steps) == (64, 30.0, 0.01, 10)


def test_yaml_configs_parse_with_the_nested_algorithm(capsys) -> None:
    from lightning_fv.cli import main

    with pytest.raises(SystemExit):
        main(["predict", "--config", str(CONFIGS / "invariant_digits.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["algorithm"]["budget"] == 64
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "invariant_callback.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    algo = printed["trainer"]["callbacks"][0]["init_args"]["algorithm"]
    assert (algo["budget"], algo["lr"], algo["num_steps"]) == (16, 30.0, 8)


def test_the_loop_evaluates_invariant_loss_once_per_iterate(monkeypatch) -> None:
    calls = []
    real = inv.invariant_loss

    def counting(*args, **kwargs):
        calls.append(kwargs.get("return_response", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(inv, "invariant_loss", counting)
    torch.manual_seed(0)
    obj = logits_response(TinyClassifier().eval())
    res = invariant_set_sample(make_pipeline(), obj, torch.rand(2, 3, 8, 8), budget=3, tau=0.0,
                               lr=1.0)
    assert calls == [True] * 4  # budget + 1 evaluated iterates, all through invariant_loss
    assert res.steps.tolist() == [3, 3] and res.config["budget"] == 3
    # the recorded final loss is exactly invariant_loss at the returned images
    with torch.no_grad():
        total, d1, d2 = real(obj, res.images, res.target, 1.0, 0.5)
    torch.testing.assert_close(res.losses, total)


def test_on_step_stops_within_one_step_and_keeps_the_iterate() -> None:
    torch.manual_seed(0)
    obj = logits_response(TinyClassifier().eval())
    seen = []

    def on_step(step: int, reached: int, active: int) -> bool:
        seen.append((step, reached, active))
        return step == 2

    res = invariant_set_sample(make_pipeline(), obj, torch.rand(1, 3, 8, 8), num_samples=2,
                               budget=50, tau=0.0, lr=1.0, on_step=on_step)
    assert seen == [(1, 0, 2), (2, 0, 2)] and res.stopped
    assert res.steps.tolist() == [2, 2]
    assert torch.isfinite(res.history[:2]).all() and torch.isnan(res.history[3:]).all()


def _query_loader(n: int = 4, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = QueryDataset(torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % 3)
    return DataLoader(ds, batch_size=batch_size)


def test_metrics_json_is_strict_json_with_null_for_missing_values(tmp_path) -> None:
    torch.manual_seed(1)
    m = InvariantSetSampler(make_pipeline(), TinyClassifier().eval(), samples_per_query=1,
                            budget=1, lr=1.0, tau=0.0, num_steps=2, cutoffs=[0.5],
                            output_dir=str(tmp_path), progress=False)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False).predict(m, _query_loader(2))
    text = (tmp_path / "metrics.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data["diversity"] is None and data["kl"] is None  # one sample; logits: no KL
    assert data["mean_steps"] == 1.0 and math.isfinite(data["l2"])
    assert data["settings"]["budget"] == 1 and data["settings"]["stopped"] is False
    png = Image.open(tmp_path / "invariant_sets.png")
    assert png.width >= 2 * 128 and png.height >= 2 * 128  # 2 rows × (query + 1 sample)


def test_sigterm_during_predict_stops_within_a_step_and_writes_what_was_done(tmp_path) -> None:
    pipe = make_pipeline()
    calls = [0]
    real_generate = pipe.generate

    def generate(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # during the forward pass of the 3rd SGD step of the first batch
            os.kill(os.getpid(), signal.SIGTERM)
        return real_generate(*args, **kwargs)

    pipe.generate = generate  # type: ignore[method-assign]
    before = signal.getsignal(signal.SIGTERM)
    torch.manual_seed(1)
    m = InvariantSetSampler(pipe, TinyClassifier().eval(), samples_per_query=2, budget=40,
                            lr=1.0, tau=0.0, num_steps=2, cutoffs=[0.5],
                            output_dir=str(tmp_path), progress=True)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False).predict(m, _query_loader(4, batch_size=2))
    assert m.stop_requested
    assert m.results["index"].tolist() == [0, 1]  # the second batch was never started
    # not 40: the step in progress (the 3rd) completes, then the run stops
    assert m.results["steps"].tolist() == [[3, 3], [3, 3]]
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["settings"]["stopped"] is True and data["mean_steps"] == 3.0
    assert signal.getsignal(signal.SIGTERM) == before  # the handler was restored
