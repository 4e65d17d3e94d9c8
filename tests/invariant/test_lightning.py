"""``InvariantSetSampler`` (predict) and ``InvariantSetCallback`` (training) on tiny models."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch
from _invariant_helpers import TinyClassifier, classifier_data, make_pipeline
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.callbacks.invariant_set import InvariantSetCallback
from lightning_fv.models import SmallCNN
from lightning_fv.modules.classifier import ImageClassifier
from lightning_fv.modules.invariant_sampler import InvariantSetSampler, QueryDataset


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, **kw)


def _classifier() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(SmallCNN(num_classes=4, widths=(4, 6, 8, 8)), num_classes=4,
                           lr=0.05, max_epochs=2)


def _loaders() -> tuple[DataLoader, DataLoader]:
    ds = TensorDataset(*classifier_data())
    return (DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(ds, batch_size=8))


def test_predict_returns_samples_with_metrics_independent_of_batching(tmp_path) -> None:
    torch.manual_seed(1)
    clf = TinyClassifier().eval()
    q = TensorDataset(torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2]))
    ds = QueryDataset(q.tensors[0], q.tensors[1])
    results = []
    for bs in (1, 3):
        m = InvariantSetSampler(make_pipeline(), clf, objective="probabilities",
                                samples_per_query=2, budget=2, lr=1.0, tau=0.0,
                                cutoffs=[0.3, 0.9], output_dir=str(tmp_path / f"b{bs}"))
        _trainer(logger=False).predict(m, DataLoader(ds, batch_size=bs))
        results.append(m.results)
    r1, r3 = results
    assert r3["samples"].shape == (3, 2, 3, 8, 8) and r3["sweep"].shape == (3, 2, 2)
    assert r3["index"].tolist() == [0, 1, 2] and r3["steps"].tolist() == [[2, 2]] * 3
    torch.testing.assert_close(r1["samples"], r3["samples"], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(r3["kl"]).all() and torch.isfinite(r3["diversity"]).all()
    assert (tmp_path / "b3" / "invariant_sets.png").is_file()
    assert (tmp_path / "b3" / "metrics.json").is_file()


def _weights(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("inference_mode", [True, False])
def test_callback_does_not_change_training_and_logs_sets(tmp_path, inference_mode) -> None:
    train, val = _loaders()
    L.seed_everything(7, verbose=False)
    plain = _classifier()
    _trainer(max_epochs=2, logger=False, inference_mode=inference_mode).fit(plain, train, val)
    after_plain = (torch.rand(3), np.random.rand(), random.random())

    train, val = _loaders()
    pipe = make_pipeline()  # built before seeding: its construction draws random weights
    L.seed_everything(7, verbose=False)
    m = _classifier()
    cb = InvariantSetCallback(pipe, module="model", num_queries=2,
                              samples_per_query=2, every_n_epochs=1, budget=2, lr=1.0,
                              num_steps=2, objective="probabilities")
    logger = L.pytorch.loggers.CSVLogger(str(tmp_path))
    _trainer(max_epochs=2, logger=logger, callbacks=[cb],
             inference_mode=inference_mode).fit(m, train, val)
    after_cb = (torch.rand(3), np.random.rand(), random.random())

    wa, wb = _weights(plain), _weights(m)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise, BN statistics included
    assert torch.equal(after_plain[0], after_cb[0]) and after_plain[1:] == after_cb[1:]
    assert all(p.grad is None for p in m.parameters())
    assert all(not h for mod in m.modules() for h in (mod._forward_hooks,))
    assert [e["tag"] for e in cb.history] == ["epoch", "epoch", "fit_end"]
    assert not any(e["errors"] for e in cb.history)
    met = cb.history[-1]["metrics"]
    assert {"fraction_reached", "mean_steps", "l1", "l2", "kl", "pixel_distance",
            "diversity", "sweep_c0.5"} <= set(met)
    assert cb.last_images.shape == (2, 3, 3, 8, 8)
    assert torch.equal(cb.last_images[:, 0], classifier_data()[0][:2])  # query first
    pngs = list((tmp_path / "lightning_logs").rglob("invariant__samples_step*.png"))
    assert len(pngs) == 3
    text = next((tmp_path / "lightning_logs").rglob("metrics.csv")).read_text()
    assert "invariant/fraction_reached" in text
    state = cb.state_dict()
    fresh = InvariantSetCallback(make_pipeline())
    fresh.load_state_dict(state)
    assert fresh.history == cb.history


def test_callback_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="objective"):
        InvariantSetCallback(objective="bogus")
    with pytest.raises(ValueError, match="num_queries"):
        InvariantSetCallback(num_queries=0)


def test_invariant_command_writes_sets_and_returns_summary(tmp_path) -> None:
    import json

    from lightning_fv.commands.invariant import invariant
    from lightning_fv.diffusion.pipeline import save_pipeline

    path = save_pipeline(make_pipeline(size=8, factor=4), tmp_path / "dit.safetensors")
    summary = invariant(pipeline=str(path), classifier="bundled:digits", classes=[0, 1],
                        samples_per_query=2, budget=1, num_steps=2, lr=1.0, device="cpu",
                        output_dir=str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["mean_steps"] == written["mean_steps"] <= 1
    assert set(written["sweep"]) == {f"{c:g}" for c in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                         0.8, 0.9)}
    with pytest.raises(ValueError, match="unknown objective"):
        invariant(pipeline=str(path), objective="bogus")
