"""The example YAML configs parse with LightningCLI and name the three callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).parents[2] / "examples" / "configs"


@pytest.mark.parametrize("name", ["demo.yaml", pytest.param("imagefolder_resnet.yaml",
                                                              marks=pytest.mark.slow)])
def test_config_parses_and_configures_all_three_callbacks(name, capsys):
    from lightning_fv.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exc.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    paths = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
    assert paths == [
        "lightning_fv.callbacks.feature_visualization.FeatureVisualizationCallback",
        "lightning_fv.callbacks.sanity_check.SanityCheckCallback",
        "lightning_fv.callbacks.path_linearity.PathLinearityCallback",
    ]
    sanity = cfg["trainer"]["callbacks"][1]["init_args"]
    assert list(sanity["strides"]) == [10, 100, 5] and sanity["metric"] == "spearman"
    assert cfg["model"]["class_path"] == "lightning_fv.modules.classifier.ImageClassifier"
