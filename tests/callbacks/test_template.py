"""The shared callback template: unit grammar, errors reported every time, readable grids,
end-of-fit images that never replace the last epoch's, outputs a pure function of
(weights, epoch, seed), and the ShardedStack gather."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from cb_common import loaders, module, trained_module, trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from lightning_fv.analysis.metrics import ShardedStack
from lightning_fv.callbacks.feature_visualization import FeatureVisualizationCallback
from lightning_fv.callbacks.path_linearity import PathLinearityCallback


@pytest.mark.parametrize("spec", [["fc:*"], ["fc:0-3"]])
def test_fv_callback_accepts_wildcards_and_ranges(spec):
    cb = FeatureVisualizationCallback(spec, module="model", image_size=16, steps=2)
    m = trained_module(steps=0)
    t = trainer(callbacks=[cb])
    cb.setup(t, m, "fit")
    assert cb.units == ["fc:0", "fc:1", "fc:2", "fc:3"]  # SmallCNN has 4 classes
    entry = cb.run(t, m)
    assert list(entry["values"]) == cb.units and cb.last_images.shape == (4, 3, 16, 16)


def test_path_linearity_callback_accepts_wildcards_and_ranges():
    m = trained_module(steps=0)
    for spec in (["fc:*"], ["fc:1-2", "block2:0"]):
        cb = PathLinearityCallback(spec, module="model")
        cb.setup(trainer(callbacks=[cb]), m, "fit")
        assert cb.units == (["fc:0", "fc:1", "fc:2", "fc:3"] if spec == ["fc:*"]
                            else ["fc:1", "fc:2", "block2:0"])
    with pytest.raises(KeyError, match=r"PathLinearityCallback: units \['fx:\*'\].*fc"):
        cb = PathLinearityCallback(["fx:*"], module="model")
        cb.setup(trainer(callbacks=[cb]), m, "fit")


def _boom(*a, **k):
    raise IndexError("unit index 9 out of range for layer 'fc' with 4 channels (valid: 0..3)")


def test_a_failing_unit_is_reported_every_epoch_to_the_package_and_experiment_logger(
        tmp_path, monkeypatch, caplog):
    import lightning_fv.callbacks.feature_visualization as fvmod

    monkeypatch.setattr(fvmod, "render_units", _boom)
    cb = FeatureVisualizationCallback(["fc:1"], module="model", image_size=16, steps=2,
                                      at_fit_end=False)
    logger = CSVLogger(tmp_path, name="run", version=0)
    with caplog.at_level(logging.WARNING, logger="lightning_fv.callbacks"), \
            pytest.warns(UserWarning, match="out of range"):
        trainer(callbacks=[cb], max_epochs=3, logger=logger).fit(module(), *loaders())
    records = [r for r in caplog.records if "out of range" in r.getMessage()]
    assert [r.getMessage().rsplit("[", 1)[1] for r in records] == [
        "epoch 0, step 4]", "epoch 1, step 8]", "epoch 2, step 12]"]
    lines = (Path(logger.log_dir) / "errors.txt").read_text().splitlines()
    assert len(lines) == 3 and all("IndexError" in line for line in lines)
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    assert [float(r["fv/errors"]) for r in rows if r.get("fv/errors")] == [1.0, 1.0, 1.0]


def test_on_error_raise_stops_the_run_naming_callback_and_unit(monkeypatch):
    import lightning_fv.callbacks.feature_visualization as fvmod

    monkeypatch.setattr(fvmod, "render_units", _boom)
    cb = FeatureVisualizationCallback(["fc:1"], module="model", image_size=16, steps=2,
                                      on_error="raise")
    with pytest.raises(RuntimeError, match=r"(?s)FeatureVisualizationCallback \[epoch 0, step 4\]"
                                           r".*rendering unit\(s\) \['fc:1'\] failed"):
        trainer(callbacks=[cb], max_epochs=2).fit(module(), *loaders())
    with pytest.raises(ValueError, match="on_error must be 'warn' or 'raise', got 'ignore'"):
        FeatureVisualizationCallback(["fc:1"], on_error="ignore")


def test_logged_grid_is_captioned_and_enlarged_and_fit_end_gets_its_own_tag(tmp_path):
    cb = FeatureVisualizationCallback(["fc:1", "fc:2"], module="model", image_size=16,
                                      steps=2)  # default tile_size=128
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer(callbacks=[cb], max_epochs=1, logger=logger).fit(module(), *loaders())
    images = Path(logger.log_dir) / "images"
    assert sorted(p.name for p in images.glob("*.png")) == ["fv__fc_fit_end_step4.png",
                                                            "fv__fc_step4.png"]
    grid = Image.open(images / "fv__fc_step4.png")
    band = 2 * (12 + 3) + 2  # unit and value lines, font 12 px for 128-px tiles
    assert grid.size == (2 * 128 + 3 * 2, 128 + band + 2 * 2)


def test_two_callbacks_with_one_state_key_are_refused():
    cbs = [FeatureVisualizationCallback(["fc:1"], module="model"),
           FeatureVisualizationCallback(["fc:2"], module="model")]
    with pytest.raises(RuntimeError, match=r"state_key. must be unique"):
        trainer(callbacks=cbs, max_epochs=1).fit(module(), *loaders())
    cbs[1].log_prefix = "fv2"  # a prefix of its own: separate state and tags
    assert cbs[0].state_key != cbs[1].state_key


def test_callback_output_is_a_pure_function_of_weights_epoch_and_seed():
    """A resumed run can differ from an uninterrupted one only through the weights: the
    callbacks' results do not depend on the global RNG or on what they computed before."""
    m = trained_module(steps=5)
    _, val = loaders()
    x, y = next(iter(val))
    results = []
    for rng_seed, warmup in ((0, 0), (123, 2)):
        torch.manual_seed(rng_seed)
        fv = FeatureVisualizationCallback(["block2:0", "fc:1"], module="model", image_size=16,
                                          steps=3)
        lin = PathLinearityCallback(["fc:1"], module="model", num_images=2, steps=3)
        t = trainer(callbacks=[fv, lin])
        for cb in (fv, lin):
            cb.setup(t, m, "fit")
        lin.buffer.add((x, y))
        for _ in range(warmup + 1):  # earlier runs must not change the next one
            f_entry, l_entry = fv.run(t, m), lin.run(t, m)
            torch.rand(7)
        results.append((fv.last_images.clone(), f_entry["values"], l_entry["aga"]))
    (img_a, val_a, aga_a), (img_b, val_b, aga_b) = results
    assert torch.equal(img_a, img_b) and val_a == val_b and aga_a == aga_b


def test_sharded_stack_assembles_disjoint_items_in_item_order():
    parts = [ShardedStack(5, (2,)), ShardedStack(5, (2,))]
    rows = torch.arange(10.0).reshape(5, 2)
    parts[0].update([0, 2, 4], rows[[0, 2, 4]])
    parts[1].update([1, 3], rows[[1, 3]])
    merged = ShardedStack(5, (2,))  # what the summed states of two processes hold
    merged.stack = parts[0].stack + parts[1].stack
    merged.filled = parts[0].filled + parts[1].filled
    merged._update_count = 1
    stack, filled = merged.compute()
    assert torch.equal(stack, rows) and bool(filled.all())
    twice = ShardedStack(2)
    twice.update([0, 0], torch.ones(2))
    with pytest.raises(ValueError, match=r"items \[0\] were written by more than one"):
        twice.compute()
    with pytest.raises(ValueError, match=r"rows must have shape \(1, 2\)"):
        ShardedStack(3, (2,)).update([1], torch.ones(1, 3))
