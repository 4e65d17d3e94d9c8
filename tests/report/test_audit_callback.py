"""AuditReportCallback: a report at fit end, logged to TensorBoard (text + images), MLflow
(artifact folder) and W&B (artifact); the command's YAML config parses."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.callbacks.audit_report import AuditReportCallback
from lightning_fv.models import SmallCNN
from lightning_fv.modules.classifier import ImageClassifier


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(24) % 3
    x = torch.rand(24, 3, 16, 16, generator=g) * 0.5
    x[:, 0] += 0.15 * y.view(-1, 1, 1).float()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8)


def _fit(tmp: Path, loggers: list, **kw: object) -> AuditReportCallback:
    torch.manual_seed(0)
    module = ImageClassifier(SmallCNN(num_classes=3, widths=(4, 6, 8, 8)), num_classes=3,
                             max_epochs=1)
    cb = AuditReportCallback(["block2", "fc"], module="model", units_per_layer=1, steps=2,
                             path_images=2, path_steps=2, pgd_eps=0.1, pgd_steps=1,
                             robust_images=6, **kw)
    train, val = _loaders()
    L.Trainer(max_epochs=1, callbacks=[cb], logger=loggers, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, accelerator="cpu",
              default_root_dir=str(tmp)).fit(module, train, val)
    return cb


def test_fit_end_report_reaches_tensorboard_and_mlflow(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tb = TensorBoardLogger(tmp_path / "tb", name="run")
    ml = MLFlowLogger(experiment_name="audit", tracking_uri=(tmp_path / "mlruns").as_uri())
    cb = _fit(tmp_path, [tb, ml], output_dir=str(tmp_path / "audit"))
    assert [r["tag"] for r in cb.reports] == ["fit_end"]
    html = Path(cb.reports[0]["html"])
    assert html == tmp_path / "audit" / "version_0" / "report.html" and html.is_file()
    js = json.loads((html.parent / "report.json").read_text())
    assert js["sections"]["sanity"]["status"] == "ok"
    assert js["sections"]["robustness"]["settings"]["images"] == 6

    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "scalars": 0,
                                                      "tensors": 0})
    acc.Reload()
    assert {"audit/sanity/figure", "audit/path_linearity/bars"} <= set(acc.Tags()["images"])
    score = acc.Scalars("audit/sanity/score")
    assert score[0].value == pytest.approx(js["sections"]["sanity"]["numbers"]["score"])
    text = acc.Tensors("audit/report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("# Feature-visualization audit: SmallCNN")

    files = {f.path for f in MlflowClient(ml._tracking_uri).list_artifacts(
        ml.run_id, "audit/version_0")}
    assert {"audit/version_0/report.html", "audit/version_0/report.json",
            "audit/version_0/report.md"} <= files


def test_wandb_offline_run_logs_the_report_as_an_artifact(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wbdata"))  # artifact staging
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wbcache"))
    logger = WandbLogger(project="lfv-audit", save_dir=str(tmp_path), offline=True)
    cb = _fit(tmp_path, [logger], sections=["model", "sanity"])
    run_dir = Path(logger.experiment.dir).parent
    wandb.finish()
    html = Path(cb.reports[0]["html"])
    staged = [p for d in ("wbdata", "wbcache") for p in (tmp_path / d).rglob("*")
              if p.is_file() and p.read_bytes() == html.read_bytes()]
    assert list(run_dir.glob("*.wandb"))
    assert staged, "the artifact's report.html was not staged by wandb"


def test_callback_rejects_unknown_sections():
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['colour'\]"):
        AuditReportCallback(["fc"], sections=["colour"])


def test_audit_config_parses_into_the_command_arguments():
    from jsonargparse import ArgumentParser

    from lightning_fv.commands.audit import audit

    parser = ArgumentParser()
    parser.add_function_arguments(audit)
    cfg = parser.parse_path("examples/configs/audit_photo_patches.yaml")
    init = parser.instantiate_classes(cfg)
    assert type(init.datamodule).__name__ == "PhotoPatchesDataModule"
    assert init.datamodule.n_val_per_class == 20 and init.layers[-1] == "fc"
    assert (cfg.steps, cfg.preset, cfg.pgd_eps) == (64, "lucid", 0.5)
