"""The `lightning-fv` command for a new user: results are saved and never overwritten,
files follow the umask, bad input fails with one clear line, help text is whole."""

from __future__ import annotations

import logging
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

from lightning_fv.cli import SUBCOMMAND_HELP, main
from lightning_fv.modules.feature_visualizer import load_sweep
from lightning_fv.utils.files import next_version_dir, output_folder

TINY = ["--model", "bundled:digits", "--units", "[fc:0-1]", "--image_size", "16",
        "--steps", "2", "--device", "cpu", "--progress", "false"]


def test_render_default_folder_is_versioned_per_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    main(["render", *TINY])
    main(["render", *TINY])
    runs = sorted(p.name for p in (tmp_path / "outputs" / "render").iterdir())
    assert runs == ["version_0", "version_1"]
    for run in runs:
        assert load_sweep(str(tmp_path / "outputs" / "render" / run))["units"] == ["fc:0", "fc:1"]


def test_render_refuses_an_existing_result_unless_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    main(["render", *TINY, "--output_dir", str(out)])
    first = (out / "units.safetensors").stat().st_mtime_ns
    with pytest.raises(SystemExit) as exc:
        main(["render", *TINY, "--output_dir", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "already holds an earlier result" in err and "--overwrite true" in err
    assert (out / "units.safetensors").stat().st_mtime_ns == first
    main(["render", *TINY, "--output_dir", str(out), "--overwrite", "true"])
    assert (out / "units.safetensors").stat().st_mtime_ns >= first


def test_written_files_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        main(["render", *TINY, "--output_dir", str(tmp_path / "o")])
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "o").iterdir()}
    assert modes == {"units.safetensors": 0o644, "units.pt": 0o644, "fc.png": 0o644}


def test_empty_units_fail_with_a_clear_message(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["render", "--units", "[]", "--output_dir", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "units is empty ([])" in capsys.readouterr().err
    assert not (tmp_path / "o" / "units.safetensors").exists()


def test_too_small_image_size_names_the_smallest_that_works(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["render", "--model", "bundled", "--units", "[fc:0]", "--image_size", "4",
              "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "image_size 4 is too small" in err and "the smallest size that works is 8" in err


def test_random_weights_and_missing_normalization_are_announced(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="lightning_fv"):
        main(["render", "--model", "resnet18", "--units", "[fc:0]", "--image_size", "32",
              "--steps", "1", "--device", "cpu", "--progress", "false",
              "--output_dir", str(tmp_path / "o")])
    text = caplog.text
    assert "'resnet18' has random weights" in text
    assert "'resnet18' gets no input normalization" in text


def test_bundled_model_renders_without_those_warnings(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_fv"):
        main(["render", *TINY, "--output_dir", str(tmp_path / "o")])
    assert "random weights" not in caplog.text and "normalization" not in caplog.text


def test_predict_without_output_dir_saves_into_the_runs_log_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["predict", "--model", "lightning_fv.modules.FeatureVisualizer",
            "--model.model", "bundled:digits", "--model.units", "[fc:0-1]",
            "--model.image_size", "16", "--model.thresholds", "[2]",
            "--model.progress", "false", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false"]
    main(args)
    main(args)
    for v in (0, 1):
        run = tmp_path / "lightning_logs" / f"version_{v}"
        assert load_sweep(str(run))["units"] == ["fc:0", "fc:1"]
        assert (run / "config.yaml").is_file()


def test_predict_with_logger_false_keeps_config_out_of_the_working_directory(
        tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    main(["predict", "--model", "lightning_fv.modules.FeatureVisualizer",
          "--model.model", "bundled:digits", "--model.units", "[fc:0]",
          "--model.image_size", "16", "--model.thresholds", "[2]",
          "--model.progress", "false", "--trainer.accelerator", "cpu",
          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    assert not (tmp_path / "config.yaml").exists()
    run = tmp_path / "outputs" / "feature_visualizer" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "units.safetensors").is_file()


def test_no_args_warning_from_lightning_cli(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lightning-fv", "predict", "--print_config"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            main(["predict", "--model", "lightning_fv.modules.FeatureVisualizer",
                  "--print_config"])
    assert not [w for w in caught if "args parameter" in str(w.message)]


def test_help_descriptions_are_whole_sentences(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for text in SUBCOMMAND_HELP.values():
        assert text.endswith(".")
    flat = " ".join(out.split())
    for name in ("fit", "validate", "test", "predict"):
        assert " ".join(SUBCOMMAND_HELP[name].split()) in flat
    assert "It's separated from fit to make sure you never run on your" not in out
    for line in out.splitlines():
        if line.startswith("  render "):
            assert line.rstrip().endswith(".")


def test_version_folders_count_up_and_explicit_folders_refuse(tmp_path) -> None:
    assert next_version_dir(tmp_path / "r").name == "version_0"
    (tmp_path / "r" / "version_7").mkdir()
    assert next_version_dir(tmp_path / "r").name == "version_8"
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="already holds an earlier result"):
        output_folder(full, tmp_path / "root")
    assert output_folder(full, tmp_path / "root", overwrite=True) == full
    assert output_folder(tmp_path / "new", tmp_path / "root") == tmp_path / "new"


def test_render_comparison_labels_rows_and_refuses_to_overwrite(tmp_path) -> None:
    import json

    from PIL import Image

    silent = tmp_path / "silent.safetensors"
    main(["manipulate", "--model", "bundled:digits", "--method", "silent", "--layer",
          "block3", "--natural", "digits", "--image_size", "32", "--pattern", "filter",
          "--output", str(silent)])
    with pytest.raises(SystemExit):
        main(["manipulate", "--model", "bundled:digits", "--method", "silent", "--layer",
              "block3", "--natural", "digits", "--image_size", "32", "--pattern", "filter",
              "--output", str(silent)])
    grid = tmp_path / "before_after.png"
    args = ["render-comparison", "--manipulated_path", str(silent), "--units",
            "[block3:1, block3:2]", "--steps", "2", "--image_size", "16", "--device", "cpu",
            "--progress", "false", "--output", str(grid)]
    main(args)
    meta = json.loads(grid.with_suffix(".json").read_text())
    assert meta["rows"] == ["original", "manipulated"]
    w, h = Image.open(grid).size
    # labelled: tiles enlarged to 128 px, a row-label band on the left, captions below
    assert w > 2 * 128 and h > 2 * 128
    with pytest.raises(SystemExit):
        main(args)


def test_make_clean_keeps_results(tmp_path) -> None:
    text = (Path(__file__).parents[2] / "Makefile").read_text()
    clean = text.split("\nclean:", 1)[1].split("\n\n", 1)[0]
    assert "rm -rf outputs " not in clean + " " and "outputs/cache" in clean
