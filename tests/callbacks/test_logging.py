"""Callback logging read back from the real stores: TensorBoard, CSV, MLflow, W&B offline."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from cb_common import callbacks, loaders, module, trainer
from PIL import Image


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One epoch with all callbacks and TensorBoard + CSV + MLflow loggers."""
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    root = tmp_path_factory.mktemp("logs")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow >= 3 keeps the file store opt-in
    loggers = [TensorBoardLogger(root / "tb", name="run"), CSVLogger(root / "csv", name="run"),
               MLFlowLogger(experiment_name="fv", tracking_uri=(root / "mlruns").as_uri())]
    cbs = callbacks()
    train, val = loaders()
    trainer(callbacks=cbs, max_epochs=1, logger=loggers, log_every_n_steps=1).fit(
        module(), train, val)
    yield root, loggers, cbs
    mp.undo()


def test_tensorboard_event_file_holds_images_and_scalars(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, loggers, (fv, sanity, lin) = logged_run
    acc = EventAccumulator(loggers[0].log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"fv/block2", "fv/fc", "sanity/figure", "linearity/agpa"} <= set(tags["images"])
    score = acc.Scalars("sanity/score")
    assert len(score) == 1 and score[0].value == pytest.approx(sanity.history[0]["score"])
    aga = acc.Scalars("linearity/aga/fc:1")[0].value
    assert aga == pytest.approx(lin.history[0]["aga"]["fc:1"], rel=1e-6)
    img = acc.Images("fv/block2")[-1]
    assert (img.width, img.height) == (2 * 16 + 3 * 2, 16 + 2 * 2)  # 1 row of 2 units


def test_csv_metrics_and_pngs_beside_metrics_csv(logged_run):
    root, loggers, (fv, sanity, lin) = logged_run
    log_dir = Path(loggers[1].log_dir)
    rows = list(csv.DictReader(open(log_dir / "metrics.csv")))
    scores = [float(r["sanity/score"]) for r in rows if r.get("sanity/score")]
    assert scores == pytest.approx([sanity.history[0]["score"]])
    pngs = sorted(p.name for p in (log_dir / "images").glob("*.png"))
    assert "sanity__figure_step4.png" in pngs and "fv__fc_step4.png" in pngs
    grid = Image.open(log_dir / "images" / "fv__fc_step4.png")
    assert grid.size == (2 * 16 + 3 * 2, 16 + 2 * 2)


def test_mlflow_file_store_has_metrics_and_image_artifacts(logged_run):
    from mlflow.tracking import MlflowClient

    root, loggers, (fv, sanity, lin) = logged_run
    client = MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    run_id = loggers[2].run_id
    hist = client.get_metric_history(run_id, "linearity/mean_ald")
    assert len(hist) == 1 and hist[0].value == pytest.approx(lin.history[0]["mean_ald"])
    arts = {a.path for a in client.list_artifacts(run_id, "sanity")}
    assert any(p.startswith("sanity/figure") for p in arts)
    files = [a.path for a in client.list_artifacts(run_id, "fv/block2")]
    assert files == ["fv/block2/step_4.png"]


def test_wandb_offline_run_directory_holds_images_and_summary(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="lfv", save_dir=str(tmp_path), offline=True)
    cbs = callbacks()[:1]
    train, val = loaders()
    trainer(callbacks=cbs, max_epochs=1, logger=logger).fit(module(), train, val)
    run_dir = Path(logger.experiment.dir).parent
    wandb.finish()
    assert run_dir.name.startswith("offline-run-")
    media = sorted((run_dir / "files" / "media" / "images" / "fv").glob("*.png"))
    # tag "fv/<layer>": 2 layers x (epoch 0, fit end)
    assert sorted(p.name.split("_")[0] for p in media) == ["block2", "block2", "fc", "fc"]
    assert Image.open(media[0]).size == (2 * 16 + 3 * 2, 16 + 2 * 2)
    assert list(run_dir.glob("*.wandb"))
    assert all(math.isfinite(v) for v in cbs[0].history[0]["values"].values())


def test_log_image_rejects_a_batch_instead_of_one_image():
    from lightning_fv.callbacks._logging import _to_uint8_hwc

    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        _to_uint8_hwc(torch.rand(2, 3, 4, 4))


def test_mlflow_keeps_the_fit_end_image_beside_the_last_epochs_image(logged_run):
    """Epoch 0 and the end of fit share step 4: before, both were ``fv/block2/step_4.png``
    and MLflow kept only the second."""
    from mlflow.tracking import MlflowClient

    root, loggers, (fv, sanity, lin) = logged_run
    client = MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    run_id = loggers[2].run_id
    epoch = client.download_artifacts(run_id, "fv/block2/step_4.png", str(root / "dl_a"))
    end = client.download_artifacts(run_id, "fv/block2_fit_end/step_4.png",
                                    str(root / "dl_b"))
    assert [h["tag"] for h in fv.history] == ["epoch", "fit_end"]
    assert Image.open(epoch).size == Image.open(end).size == (2 * 16 + 3 * 2, 16 + 2 * 2)


def test_mlflow_artifact_names_get_a_suffix_instead_of_replacing():
    from lightning_fv.callbacks._logging import _mlflow_name

    assert _mlflow_name("run-x", "fv/fc/step_3", ".png") == "fv/fc/step_3.png"
    assert _mlflow_name("run-x", "fv/fc/step_3", ".png") == "fv/fc/step_3_1.png"
    assert _mlflow_name("run-y", "fv/fc/step_3", ".png") == "fv/fc/step_3.png"
