"""The paper-scale configs (`examples/configs/paper_*.yaml`) run end to end with random
weights at a tiny size: sizes, steps and paths are overridden on the command line, every
other value (the paper's settings) is read from the file. A config that breaks here would
break the day a user points it at real weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lightning_fv.cli import main, run_lightning_cli
from lightning_fv.data.trajectories import render_trajectories
from lightning_fv.models import build_model

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
#: App. C.3 of dont-trust-your-eyes: the ten ImageNet classes of the sanity check
C3_CLASSES = [20, 71, 102, 106, 121, 270, 435, 614, 700, 860]


def _config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def _save_png(img: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images (low-resolution noise upsampled), [0, 1] RGB ``(n, 3, s, s)``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return nn.functional.interpolate(low, size=(size, size), mode="bilinear",
                                     align_corners=False)


def _labelled_imagefolder(root: Path, model: nn.Module, size: int, n: int,
                          mean: list[float], std: list[float]) -> None:
    """``root/{train,val}/class_{c}/*.png`` whose labels are ``model``'s own top-1 predictions
    on the PNGs as loaded (so no image is excluded as misclassified, C.3); ``model.fc``'s
    bias is shifted so that its two classes split the images in half."""
    x = _images(n, size, seed=1)
    tmp = root / "_tmp"
    for i, img in enumerate(x):
        _save_png(img, tmp / f"{i:03d}.png")
    import numpy as np
    from PIL import Image

    loaded = torch.stack([torch.from_numpy(np.asarray(Image.open(tmp / f"{i:03d}.png"),
                                                      dtype=np.float32) / 255.0).permute(2, 0, 1)
                          for i in range(n)])
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.eval()((loaded - m) / s)
        d = logits[:, 1] - logits[:, 0]
        ds = d.sort().values
        shift = (ds[n // 2 - 1] + ds[n // 2]) / 2  # half the images on each side
        model.fc.bias[1] -= shift
        pred = model((loaded - m) / s).argmax(1)
    assert set(pred.tolist()) == {0, 1}
    for split in ("train", "val"):
        for c in range(model.fc.out_features):
            (root / split / f"class_{c:04d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / split / f"class_{int(pred[i]):04d}" / f"{i:03d}.png").write_bytes(
                (tmp / f"{i:03d}.png").read_bytes())


def _audit_report(out: Path) -> dict:
    (report,) = out.glob("version_*/report.json")
    return json.loads(report.read_text())


@pytest.mark.parametrize(("config", "arch", "layers"), [
    ("paper_sanity_resnet50.yaml", "resnet50",
     '["conv1", "layer1.0", "layer2.0", "layer3.0", "layer4.2", "avgpool", "fc"]'),
    ("paper_sanity_googlenet.yaml", "googlenet",
     '["conv1", "inception3a", "inception4c", "inception5b", "avgpool", "fc"]'),
])
def test_paper_sanity_configs_run_the_sanity_check_from_an_imagefolder(
        tmp_path: Path, config: str, arch: str, layers: str) -> None:
    cfg = _config(config)
    assert (cfg["steps"], cfg["preset"], cfg["visualizations_per_class"], cfg["strides"],
            cfg["metric"], cfg["max_images"]) == (512, "lucent", 10, [10, 100, 5], "spearman",
                                                  500)
    assert cfg["datamodule"]["init_args"]["class_indices"] == C3_CLASSES  # App. C.3
    torch.manual_seed(0)
    model = build_model(f"torchvision:{arch}", num_classes=2, **(
        {"init_weights": False} if arch == "googlenet" else {}))
    _labelled_imagefolder(tmp_path / "data", model, 32, 8, cfg["mean"], cfg["std"])
    ckpt = tmp_path / "weights.pth"
    torch.save(model.state_dict(), ckpt)  # a plain state dict, like torchvision's files
    out = tmp_path / "out"
    main(["audit", "--config", str(CONFIGS / config), "--checkpoint_path", str(ckpt),
          "--num_classes", "2", "--datamodule.init_args.root", str(tmp_path / "data"),
          "--datamodule.init_args.image_size", "32", "--datamodule.init_args.num_workers", "0",
          "--datamodule.init_args.batch_size", "8",
          "--datamodule.init_args.class_indices", "[0, 1]",  # the two classes of the folder
          "--steps", "2", "--visualizations_per_class", "1", "--strides", "[1, 1, 1]",
          "--sanity_layers", layers, "--device", "cpu", "--progress", "false",
          "--output_dir", str(out)])
    rep = _audit_report(out)
    sanity = rep["sections"]["sanity"]
    assert sanity["status"] == "ok", sanity.get("error")
    n_layers = len(json.loads(layers))
    assert sum(k.startswith("normalized/") for k in sanity["numbers"]) == n_layers


def test_paper_detector_config_trains_on_trajectories_with_c1_settings(tmp_path: Path) -> None:
    cfg = _config("paper_detector_googlenet.yaml")
    data = cfg["data"]["init_args"]
    assert (data["trajectories_per_unit"], data["steps"], data["n_log_steps"],
            data["test_fraction"], data["units"]) == (35, 512, 15, 0.1, ["fc:0-999"])
    assert (cfg["model"]["init_args"]["lr"], cfg["trainer"]["max_epochs"]) == (0.01, 8)
    # C.1: every ImageNet training image; the released googlenet weights' normalization
    assert data["n_natural_per_class"] is None and data["natural"].endswith("imagenet")
    assert (data["mean"], data["std"]) == ([0.5] * 3, [0.5] * 3)
    assert data["preset"] == "lucid"  # C.1: Olah et al. (2017)'s renderer, ReLU redirection
    torch.manual_seed(0)
    ckpt = tmp_path / "googlenet.pth"
    torch.save(build_model("torchvision:googlenet", init_weights=False).state_dict(), ckpt)
    folder = tmp_path / "imagenet"
    for split, n in (("train", 3), ("val", 2)):
        for c in range(2):
            for i, img in enumerate(_images(n, 40, seed=10 * c + n)):
                _save_png(img, folder / split / f"class_{c}" / f"{i}.png")
    cli = run_lightning_cli([
        "fit", "--config", str(CONFIGS / "paper_detector_googlenet.yaml"),
        "--data.init_args.checkpoint_path", str(ckpt),
        "--data.init_args.natural", str(folder),
        "--data.init_args.units", '["fc:0-3"]', "--data.init_args.image_size", "32",
        "--data.init_args.trajectories_per_unit", "1", "--data.init_args.steps", "4",
        "--data.init_args.n_log_steps", "2", "--data.init_args.test_fraction", "0.25",
        "--data.init_args.device", "cpu",
        "--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.batch_size", "8",
        "--model.init_args.image_size", "32", "--model.init_args.max_epochs", "1",
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false"])
    dm = cli.datamodule
    assert len(dm.train_units) == 3 and len(dm.test_units) == 1
    assert set(dm.train_units).isdisjoint(dm.test_units)
    assert len(dm.vis_test) == 1 * 1 * 2  # held-out units × trajectories × log-spaced steps
    # C.1's 525,000 renders do not fit in memory: one cache file per 10 units, read lazily
    assert cfg["data"]["init_args"]["shard_units"] == 10
    assert sorted(p.name for p in dm.cache_path.iterdir()) == ["test-00000.safetensors",
                                                                "train-00000.safetensors"]
    vis_test = torch.stack([dm.vis_test[i] for i in range(len(dm.vis_test))])
    # natural images: every file of the folder's train (val) split, label 1, [0, 1] pixels
    assert (len(dm.natural_train), len(dm.natural_test)) == (6, 4)
    assert len(dm.train_set) == 6 + len(dm.vis_train)
    x0, y0 = dm.train_set[0]
    assert int(y0) == 1 and x0.shape == (3, 32, 32) and 0 <= float(x0.min()) <= 1
    # the renders are those of the checkpoint's model on (x − 0.5)/0.5 input
    net = build_model("torchvision:googlenet", checkpoint_path=str(ckpt)).eval()
    kw = dict(steps=4, n_log_steps=2, image_size=32, batch_size=64)
    ref = render_trajectories(net, dm.test_units, 1, normalize=([0.5] * 3, [0.5] * 3), **kw)
    assert torch.equal(vis_test, ref.half().float())
    raw = render_trajectories(net, dm.test_units, 1, **kw)
    assert not torch.equal(vis_test, raw.half().float())
    assert cli.trainer.global_step > 0


def _resnet50_checkpoint(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ResNet-50 saved as a plain state dict (like torchvision's files); returns it."""
    torch.manual_seed(seed)
    state = build_model("torchvision:resnet50").state_dict()
    torch.save(state, path)
    return state


def test_paper_silent_config_sets_the_bias_on_normalized_imagefolder_images_of_the_checkpoint(
        tmp_path: Path) -> None:
    from lightning_fv.data.folders import image_folder, load_images
    from lightning_fv.manipulation import SilentUnits, load_manipulated
    from lightning_fv.manipulation.silent import conv_inputs, delta_response
    from lightning_fv.utils.checkpoint import load_state_dict

    cfg = _config("paper_silent_resnet50.yaml")
    assert (cfg["layer"], cfg["alpha"], cfg["beta"], cfg["pattern"], cfg["pattern_steps"]) == (
        "layer4.1.conv2", 100.0, 300.0, "visualization", 2000)
    assert (cfg["natural_split"], cfg["n_natural_per_class"]) == ("val", 50)  # ImageNet val
    mean, std = cfg["mean"], cfg["std"]
    assert (mean, std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    folder = tmp_path / "imagenet"
    for c in range(2):
        for i, img in enumerate(_images(3, 40, seed=c)):
            _save_png(img, folder / "val" / f"class_{c}" / f"{i}.png")
    ckpt = tmp_path / "resnet50.pth"
    state = _resnet50_checkpoint(ckpt)
    out = tmp_path / "silent.safetensors"
    torch.manual_seed(1)  # a model built without the checkpoint would differ
    main(["manipulate", "--config", str(CONFIGS / "paper_silent_resnet50.yaml"),
          "--checkpoint_path", str(ckpt), "--natural", str(folder),
          "--n_natural_per_class", "2", "--image_size", "32", "--pattern_steps", "2",
          "--output", str(out), "--eval_data", str(folder), "--eval_image_size", "32",
          "--device", "cpu"])
    # §2.2's evaluation: top-1/top-5 of both models on val/ (the images that set the bias,
    # so every output is bit-identical and the accuracies equal)
    assert (cfg["eval_split"], cfg["eval_per_class"], cfg["eval_image_size"]) == ("val", None,
                                                                                  224)
    ev = json.loads(out.with_suffix(".eval.json").read_text())
    assert ev["n"] == 6 and ev["identical_fraction"] == 1.0
    assert ev["original/top1"] == ev["manipulated/top1"]
    assert ev["original/top5"] == ev["manipulated/top5"]
    # the checkpoint saved is the one used: every weight outside the manipulated conv/BN
    saved = load_state_dict(out, prefixes=())
    for key, value in state.items():
        if not key.startswith(("layer4.1.conv2.", "layer4.1.bn2.")):
            assert torch.equal(saved[key], value), key
    assert torch.equal(saved["layer4.1.conv2.conv.weight"], state["layer4.1.conv2.weight"])
    base = build_model("torchvision:resnet50", checkpoint_path=str(ckpt)).eval()
    silent = load_manipulated(base, out).eval()
    unit = silent.layer4[1].conv2
    assert isinstance(unit, SilentUnits)
    # the bias is −max over the normalized natural images (2 per class of val/) of Θ̄'s
    # response, with the margin of bias="max" (1e-3 relative + 1e-6)
    x, _ = load_images(image_folder(folder, 32, "val", per_class=2))
    assert x.shape[0] == 4
    xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    inputs = torch.cat(conv_inputs(base, "layer4.1.conv2", xn))
    m = delta_response(inputs, base.layer4[1].conv2, unit.delta.weight).amax(dim=(0, 2, 3))
    torch.testing.assert_close(unit.delta.bias, -(m + 1e-3 * m.abs() + 1e-6), rtol=1e-6,
                               atol=0)
    with torch.no_grad():  # bit identity on the images that set the bias, normalized
        assert torch.equal(silent(xn), base(xn))


def test_paper_fooling_config_permutes_the_checkpoints_last_layer_by_100(tmp_path: Path
                                                                         ) -> None:
    from lightning_fv.manipulation import FoolingLayer, load_manipulated
    from lightning_fv.manipulation.detector_net import DetectorCNN, save_detector
    from lightning_fv.manipulation.fooling import set_gate_override
    from lightning_fv.utils.checkpoint import load_state_dict

    cfg = _config("paper_fooling_resnet50.yaml")
    assert (cfg["shift"], cfg["layer"], cfg["mode"]) == (100, "fc", "split")
    assert (cfg["mean"], cfg["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    det = tmp_path / "det.safetensors"
    save_detector(DetectorCNN(32), det)
    ckpt = tmp_path / "resnet50.pth"
    state = _resnet50_checkpoint(ckpt)
    out = tmp_path / "permuted.safetensors"
    torch.manual_seed(1)
    folder = tmp_path / "imagenet"
    for c in range(2):
        for i, img in enumerate(_images(2, 40, seed=c)):
            _save_png(img, folder / "val" / f"class_{c}" / f"{i}.png")
    main(["manipulate", "--config", str(CONFIGS / "paper_fooling_resnet50.yaml"),
          "--checkpoint_path", str(ckpt), "--detector_path", str(det), "--output", str(out),
          "--eval_data", str(folder), "--eval_image_size", "32", "--device", "cpu"])
    # §2.1's accuracy change: both models on the 4 val/ images, labels = folder index
    ev = json.loads(out.with_suffix(".eval.json").read_text())
    assert cfg["eval_split"] == "val" and ev["n"] == 4
    assert ev["delta_pp/top1"] == pytest.approx(
        100 * (ev["manipulated/top1"] - ev["original/top1"]))
    saved = load_state_dict(out, prefixes=())
    assert torch.equal(saved["fc.layer.weight"], state["fc.weight"])
    assert torch.equal(saved["conv1.weight"], state["conv1.weight"])
    base = build_model("torchvision:resnet50", checkpoint_path=str(ckpt)).eval()
    fooled = load_manipulated(base, out).eval()
    assert isinstance(fooled.fc, FoolingLayer)
    x = _images(2, 32, seed=3)
    set_gate_override(fooled, 1.0)  # a perfect gate on natural input: A = F bit for bit
    with torch.no_grad():
        assert torch.equal(fooled(x), base(x))


def test_render_comparison_renders_the_checkpoint_on_normalized_input(tmp_path: Path) -> None:
    """The original row of ``render-comparison`` is the checkpoint's model rendered through
    the given normalization (the same images as ``render_units(..., normalize=)``)."""
    from lightning_fv.manipulation.detector_net import DetectorCNN, save_detector
    from lightning_fv.optvis.render import render_units

    cfg = _config("paper_fooling_resnet50.yaml")
    det = tmp_path / "det.safetensors"
    save_detector(DetectorCNN(32), det)
    ckpt = tmp_path / "resnet50.pth"
    _resnet50_checkpoint(ckpt)
    out = tmp_path / "permuted.safetensors"
    main(["manipulate", "--config", str(CONFIGS / "paper_fooling_resnet50.yaml"),
          "--checkpoint_path", str(ckpt), "--detector_path", str(det), "--output", str(out),
          "--eval_data", "null"])
    png = tmp_path / "grid.png"
    torch.manual_seed(1)
    # mean/std come from the manipulated file (the config's), the renderer is the paper's
    main(["render-comparison", "--manipulated_path", str(out), "--checkpoint_path", str(ckpt),
          "--units", '["fc:0"]', "--steps", "1", "--image_size", "32", "--device", "cpu",
          "--progress", "false", "--output", str(png)])
    values = json.loads(png.with_suffix(".json").read_text())
    base = build_model("torchvision:resnet50", checkpoint_path=str(ckpt)).eval()
    ref = render_units(base, ["fc:0"], thresholds=(1,), image_size=32, seed=0,
                       normalize=(cfg["mean"], cfg["std"]), preset="lucent")
    assert values["values_before"] == ref.values[1].tolist()


def test_paper_ifv_config_runs_plain_adam_on_the_sigmoid_of_unbounded_rgb(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import lightning_fv.ifv.experiment as experiment

    render_mod = importlib.import_module("lightning_fv.optvis.render")
    from lightning_fv.utils.checkpoint import load_state_dict

    cfg = _config("paper_ifv_googlenet.yaml")
    assert (cfg["layer"], cfg["n_targets"], cfg["n_canonical"], cfg["steps"],
            cfg["lbfgs_steps"], cfg["k"]) == ("inception4c", 150, 150, 3000, 500, 2.0)
    assert (cfg["parameterization"], cfg["preset"]) == ("p_rgb", "lucent")  # §3.2
    redirected: list[bool] = []
    real_redirect = render_mod.redirect_relus

    def spy_redirect(model: nn.Module, enabled: bool = True) -> object:
        redirected.append(bool(enabled))
        return real_redirect(model, enabled=enabled)

    params: list[object] = []
    real_jacobian = experiment.feature_jacobian

    def spy_jacobian(model: nn.Module, layer: str, v: torch.Tensor, param: object,
                     **kw: object) -> object:
        params.append(param)
        return real_jacobian(model, layer, v, param, **kw)

    monkeypatch.setattr(render_mod, "redirect_relus", spy_redirect)
    monkeypatch.setattr(experiment, "feature_jacobian", spy_jacobian)
    torch.manual_seed(0)
    ckpt = tmp_path / "googlenet.pth"
    torch.save(build_model("torchvision:googlenet", init_weights=False).state_dict(), ckpt)
    out = tmp_path / "ifv"
    main(["ifv", "--config", str(CONFIGS / "paper_ifv_googlenet.yaml"),
          "--checkpoint_path", str(ckpt), "--n_targets", "2", "--n_canonical", "1",
          "--steps", "2", "--lbfgs_steps", "1", "--reopt_steps", "1", "--image_size", "48",
          "--device", "cpu", "--progress", "false", "--output_dir", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["angle_predicted_mean_deg"] <= 90.0  # §3.4's angular distance
    assert metrics["settings"]["redirect_relu_steps"] == 0
    # no step of the Adam phases (2 realization steps, 1 re-optimization step) redirects
    assert redirected == [False] * 3
    # P_rgb: pixels v ∈ ℝ^{3×48×48} per image, image = sigmoid(v); the saved realizations
    (param,) = params
    assert (param.fft, param.decorrelate, param.output) == (False, False, "sigmoid")
    assert param.raw.shape == (3, 3, 48, 48)
    images = torch.sigmoid(param.raw.detach())
    assert torch.equal(param().detach(), images)
    assert torch.equal(load_state_dict(out / "ifv.safetensors", prefixes=())["images"], images)


def test_paper_robust_config_takes_one_l2_pgd_step_on_an_imagefolder(tmp_path: Path) -> None:
    cfg = _config("paper_robust_resnet50_l2.yaml")
    m = cfg["model"]["init_args"]
    assert (m["norm"], m["eps"], m["steps"], m["step_size"], m["lr"], m["lr_milestones"],
            m["weight_decay"], cfg["trainer"]["max_epochs"]) == (
        "l2", 3.5, 7, 0.1, 0.1, [30, 60], 0.0005, 110)
    torch.manual_seed(0)
    model = build_model("torchvision:resnet50", num_classes=2)
    _labelled_imagefolder(tmp_path / "data", model, 32, 8, m["mean"], m["std"])
    cli = run_lightning_cli([
        "fit", "--config", str(CONFIGS / "paper_robust_resnet50_l2.yaml"),
        "--model.init_args.num_classes", "2", "--model.init_args.steps", "1",
        "--data.init_args.root", str(tmp_path / "data"), "--data.init_args.image_size", "32",
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "32-true", "--trainer.max_steps", "1",
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.eps == 3.5 and cli.model.hparams.norm == "l2"


def test_paper_invariant_config_runs_algorithm_1_with_the_thesis_settings(tmp_path: Path
                                                                         ) -> None:
    """The config's separate release files (LightningDiT-XL/1, VA-VAE, latent statistics) and
    ImageFolder queries, with tiny random files in the release's formats."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "diffusion"))
    from test_invariant_dit_files import (
        MODEL_ARGS,
        VAE_ARGS,
        write_query_folder,
        write_release_files,
    )

    from lightning_fv.diffusion.invariant import InvariantConfig
    from lightning_fv.diffusion.pipeline import release_sampler

    cfg = _config("paper_invariant_dit_xl.yaml")
    init = cfg["model"]["init_args"]
    alg = init["algorithm"]
    thesis = InvariantConfig.preset("thesis")
    for key in ("budget", "tau", "lr", "step_size", "optimizer", "num_steps", "checkpoint"):
        assert alg[key] == getattr(thesis, key), key
    pipe = init["pipeline"]
    assert (pipe["model"], pipe["weights"], pipe["latent_multiplier"]) == (
        "LightningDiT-XL/1", "ema", 1.0)
    assert pipe["sampler"] == release_sampler().as_kwargs()
    assert (init["conditional"], init["samples_per_query"]) == (False, 32)  # App. .1.1, §4.2.2
    files = write_release_files(tmp_path / "release")
    folder = write_query_folder(tmp_path / "val", n_classes=2, per_class=1)
    torch.manual_seed(0)
    ckpt = tmp_path / "resnet50.pth"
    torch.save(build_model("torchvision:resnet50").state_dict(), ckpt)
    out = tmp_path / "inv"
    p = "--model.init_args.pipeline."
    run_lightning_cli([
        "predict", "--config", str(CONFIGS / "paper_invariant_dit_xl.yaml"),
        p + "dit", str(files["dit"]), p + "vae", str(files["vae"]),
        p + "latent_stats", str(files["latent_stats"]), p + "model_args", json.dumps(MODEL_ARGS),
        p + "vae_args", json.dumps(VAE_ARGS), p + "sampler.num_steps", "2",
        "--model.init_args.checkpoint_path", str(ckpt),
        "--model.init_args.queries", str(folder), "--model.init_args.classes", "[0]",
        "--model.init_args.image_size", "32",
        "--model.init_args.algorithm.budget", "2", "--model.init_args.samples_per_query", "1",
        "--model.init_args.progress", "false",
        "--model.init_args.output_dir", str(out), "--trainer.accelerator", "cpu"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {k: metrics["settings"][k] for k in ("tau", "lr", "step_size", "optimizer")} == {
        "tau": 0.01, "lr": 10.0, "step_size": 1.0, "optimizer": "sgd"}
    assert (out / "invariant_sets.safetensors").exists()
