"""The three analysis callbacks: no effect on training, inference mode, failures, resume."""

from __future__ import annotations

import math
import random

import lightning as L
import numpy as np
import pytest
import torch
from cb_common import FV_UNITS, callbacks, loaders, module, trainer

from lightning_fv.callbacks._logging import isolated
from lightning_fv.callbacks.feature_visualization import FeatureVisualizationCallback
from lightning_fv.callbacks.path_linearity import PathLinearityCallback


def _weights(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_callbacks_leave_training_bitwise_identical_and_rng_untouched():
    train, val = loaders()
    L.seed_everything(123, verbose=False)
    plain = module()
    trainer().fit(plain, train, val)
    after_plain = (torch.rand(3), np.random.rand(), random.random())

    train, val = loaders()  # fresh loaders: the shuffling generator starts again
    L.seed_everything(123, verbose=False)
    with_cbs = module()
    cbs = callbacks()
    trainer(callbacks=cbs).fit(with_cbs, train, val)
    after_cbs = (torch.rand(3), np.random.rand(), random.random())

    wa, wb = _weights(plain), _weights(with_cbs)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise, BN running stats included
    assert torch.equal(after_plain[0], after_cbs[0]) and after_plain[1:] == after_cbs[1:]
    # every callback really ran (2 epochs; FV also at fit end) without errors
    assert [len(c.history) for c in cbs] == [3, 2, 2]
    assert not any(e.get("errors") for c in cbs for e in c.history)


def test_isolated_restores_mode_requires_grad_and_leaves_no_grad():
    m = module()
    m.train()
    m.model.fc.weight.requires_grad_(False)
    with torch.inference_mode():
        with isolated(m):
            x = torch.rand(2, 3, 16, 16, requires_grad=True)
            m(x).sum().backward()  # autograd works although the caller is in inference mode
            assert x.grad is not None
    assert m.training and all(mod.training for mod in m.modules())
    assert not m.model.fc.weight.requires_grad and m.model.fc.bias.requires_grad
    assert all(p.grad is None for p in m.parameters())


def test_callbacks_produce_finite_results_without_inference_mode():
    # (the default inference_mode=True is exercised by every other test here)
    train, val = loaders()
    cbs = callbacks()
    trainer(callbacks=cbs, max_epochs=1, inference_mode=False).fit(module(), train, val)
    fv, sanity, lin = cbs
    assert set(fv.history[0]["values"]) == set(FV_UNITS)
    assert all(math.isfinite(v) for v in fv.history[0]["values"].values())
    assert sanity.last_result is not None and sanity.last_result.n_visualizations == 4
    assert math.isfinite(sanity.history[0]["score"])
    assert set(lin.history[0]["aga"]) == {"block2:1", "fc:1"}
    assert all(0 <= v <= 180 for v in lin.history[0]["aga"].values())


def test_a_failing_render_names_callback_and_unit_and_training_goes_on(monkeypatch):
    import lightning_fv.callbacks.feature_visualization as fvmod

    def boom(*a, **k):
        raise FloatingPointError("non-finite objective or gradient for unit 'fc:1' at step 2")

    monkeypatch.setattr(fvmod, "render_units", boom)
    train, val = loaders()
    torch.manual_seed(1)
    ref = module()
    trainer(max_epochs=1).fit(ref, train, val)
    train, val = loaders()
    torch.manual_seed(1)
    m = module()
    cb = FeatureVisualizationCallback(["fc:1"], module="model", image_size=16, steps=2)
    with pytest.warns(UserWarning, match=r"FeatureVisualizationCallback: rendering unit\(s\) "
                                         r"\['fc:1'\] failed: FloatingPointError"):
        trainer(callbacks=[cb], max_epochs=1).fit(m, train, val)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(),
                                                  m.state_dict().values()))
    assert cb.history[0]["errors"] and "fc:1" in cb.history[0]["errors"][0]


def test_unknown_layer_fails_at_setup_with_the_closest_names():
    train, val = loaders()
    cb = PathLinearityCallback(["blok2:0"], module="model")
    with pytest.raises(KeyError, match=r"PathLinearityCallback: unit 'blok2:0'.*block2"):
        trainer(callbacks=[cb], max_epochs=1).fit(module(), train, val)


def test_checkpoint_resume_restores_callback_state(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    train, val = loaders()
    cbs = callbacks()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(callbacks=[*cbs, ckpt], max_epochs=1, enable_checkpointing=True).fit(
        module(), train, val)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    first = [saved[c.state_key]["history"] for c in cbs]
    # the checkpoint holds what the callbacks had at the end of epoch 0
    assert [len(h) for h in first] == [1, 1, 1]
    assert all(h[0] == c.history[0] for h, c in zip(first, cbs))

    fresh = callbacks()
    fresh[0].seed = 999  # restored from the checkpoint
    trainer(callbacks=[*fresh, ModelCheckpoint(dirpath=tmp_path / "b")], max_epochs=2,
            enable_checkpointing=True).fit(module(), train, val,
                                           ckpt_path=str(tmp_path / "last.ckpt"))
    assert fresh[0].seed == 0
    for old, new in zip(first, fresh):
        # the restored entries come first, then the resumed run's epoch 1
        assert new.history[:len(old)] == old
        assert new.history[len(old)]["epoch"] == 1


def test_detector_scores_every_render_and_logs_them(tmp_path):
    from lightning_fv.manipulation.detector_net import DetectorCNN
    from lightning_fv.modules.detector import save_detector

    torch.manual_seed(3)
    path = save_detector(DetectorCNN(64), tmp_path / "det.safetensors")
    cb = FeatureVisualizationCallback(FV_UNITS, module="model", image_size=16, steps=2,
                                      detector=str(path))
    logged: dict[str, float] = {}

    class Spy(L.pytorch.loggers.CSVLogger):
        def log_metrics(self, metrics, step=None):  # noqa: ANN001
            logged.update(metrics)
            super().log_metrics(metrics, step)

    t = trainer(callbacks=[cb], max_epochs=1, logger=Spy(tmp_path))
    t.fit(module(), *loaders())
    p = cb.detector_scores(cb.last_images)
    with torch.no_grad():
        det = DetectorCNN(64)
        det.load_state_dict(cb._detector_net.state_dict())
        expected = torch.sigmoid(det.resized(cb.last_images).flatten())
    torch.testing.assert_close(p, expected)
    entry = cb.history[-1]
    assert list(entry["detector_p_natural"]) == FV_UNITS
    for u, v in zip(FV_UNITS, p):
        assert logged[f"fv/detector/p_natural/{u}"] == pytest.approx(float(v))
    assert logged["fv/detector/vis_fraction"] == pytest.approx(float((p < 0.5).float().mean()))
    with pytest.raises(FileNotFoundError):
        FeatureVisualizationCallback(FV_UNITS, module="model",
                                     detector=str(tmp_path / "missing.safetensors")).setup(
            t, module(), "fit")
