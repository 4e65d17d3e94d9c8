"""Invariant sets from the official release's separate files (LightningDiT checkpoint, VA-VAE
checkpoint, ``latents_stats.pt``) and ImageFolder queries, with tiny random files in the
release's formats: the path of ``examples/configs/paper_invariant_dit_xl.yaml``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _dit_reference import random_official_state
from test_vae import TINY, LDMAutoencoder
from torch import nn

from lightning_fv.diffusion.invariant import seeded_latents
from lightning_fv.diffusion.pipeline import (
    PipelineFiles,
    SamplerConfig,
    load_release_pipeline,
    release_sampler,
)
from lightning_fv.utils.checkpoint import CheckpointError, load_state_dict

CONFIG = (Path(__file__).resolve().parents[2] / "examples" / "configs"
          / "paper_invariant_dit_xl.yaml")
#: a tiny LightningDiT-XL/1 (patch 1, the release's SwiGLU/RoPE/RMSNorm options) on 4×8×8
#: latents; the VA-VAE of TINY is f2, so images are 16 px
DIT = dict(input_size=8, patch_size=1, in_channels=4, hidden_size=32, depth=1, num_heads=2,
           num_classes=4, class_dropout_prob=0.1, use_qknorm=False, use_swiglu=True,
           use_rope=True, use_rmsnorm=True, wo_shift=False)
MODEL_ARGS = {k: DIT[k] for k in ("input_size", "in_channels", "hidden_size", "depth",
                                  "num_heads", "num_classes")}
VAE_ARGS: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
MULTIPLIER = 0.5  # the release uses 1.0; another value shows where the multiplier goes


def write_release_files(root: Path, seed: int = 0) -> dict[str, Any]:
    """``dit.pt`` like the release's ``train.py`` writes it (``{"model", "ema", "opt",
    "config"}``, official key names), ``vae.pt`` with LDM key names under ``"state_dict"``
    (plus a training-only ``loss.*`` entry) and ``latents_stats.pt`` (``{"mean", "std"}``,
    ``(1, C, 1, 1)``). Returns the paths and what was written."""
    root.mkdir(parents=True, exist_ok=True)
    ema = random_official_state(DIT, seed=seed)
    raw = random_official_state(DIT, seed=seed + 1)
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
           "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.95), "params": [0]}]}
    config = {"model": {"model_type": "LightningDiT-XL/1", "use_swiglu": True},
              "data": {"latent_multiplier": 1.0}}
    torch.save({"model": raw, "ema": ema, "opt": opt, "config": config}, root / "dit.pt")
    torch.manual_seed(seed)
    ldm = LDMAutoencoder().eval()
    with torch.no_grad():
        for p in ldm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae_state = {**ldm.state_dict(), "loss.logvar": torch.zeros(())}
    torch.save({"state_dict": vae_state, "global_step": 10}, root / "vae.pt")
    g = torch.Generator().manual_seed(seed)
    stats = {"mean": torch.randn(1, 4, 1, 1, generator=g),
             "std": torch.rand(1, 4, 1, 1, generator=g) + 0.5}
    torch.save(stats, root / "latents_stats.pt")
    return {"dit": root / "dit.pt", "vae": root / "vae.pt",
            "latent_stats": root / "latents_stats.pt", "ema": ema, "raw": raw, "ldm": ldm,
            "stats": stats}


def write_query_folder(root: Path, n_classes: int = 3, per_class: int = 3) -> Path:
    """``root/n0000000{c}/{i}.png``: non-square RGB images (20×28, so resizing and the centre
    crop both act) whose colour encodes class and index."""
    from PIL import Image

    for c in range(n_classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = torch.zeros(20, 28, 3, dtype=torch.uint8)
            arr[..., 0] = 40 * c + 10
            arr[..., 1] = 30 * i + 5
            arr[:, :14, 2] = 200
            Image.fromarray(arr.numpy()).save(d / f"{i}.png")
    return root


def _load(files: dict[str, Any], **kw: Any) -> Any:
    kw = {"model_args": MODEL_ARGS, "vae_args": VAE_ARGS, "latent_multiplier": MULTIPLIER,
          **kw}
    return load_release_pipeline(files["dit"], files["vae"], files["latent_stats"], **kw)


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_release_files(tmp_path_factory.mktemp("release"))


# -- loading ---------------------------------------------------------------------------------

def test_release_files_load_strictly_ema_by_default(files: dict[str, Any]) -> None:
    pipe = _load(files)
    state = pipe.model.state_dict()
    assert set(state) == set(files["ema"])
    for k, v in files["ema"].items():
        assert torch.equal(state[k], v), k
    raw = _load(files, weights="model").model.state_dict()
    assert torch.equal(raw["blocks.0.attn.qkv.weight"], files["raw"]["blocks.0.attn.qkv.weight"])
    assert not torch.equal(raw["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    # the LightningDiT-XL/1 preset with the release's options, shrunk by model_args
    cfg = pipe.model.config
    assert (cfg["patch_size"], cfg["use_swiglu"], cfg["use_rope"], cfg["use_rmsnorm"],
            cfg["use_qknorm"], cfg["wo_shift"]) == (1, True, True, True, False, False)
    assert pipe.image_size == 16 and pipe.latent_shape == (4, 8, 8)
    torch.testing.assert_close(pipe.normalizer.mean, files["stats"]["mean"], rtol=0, atol=0)
    torch.testing.assert_close(pipe.normalizer.std, files["stats"]["std"], rtol=0, atol=0)
    assert pipe.normalizer.multiplier == MULTIPLIER


def test_a_flat_dit_state_dict_loads_too(files: dict[str, Any], tmp_path: Path) -> None:
    torch.save(files["ema"], tmp_path / "flat.pt")  # inference.py: a file without "ema"
    pipe = _load({**files, "dit": tmp_path / "flat.pt"})
    assert torch.equal(pipe.model.final_layer.linear.weight,
                       files["ema"]["final_layer.linear.weight"])


def test_release_sampler_defaults() -> None:
    s = release_sampler()
    assert (s.num_steps, s.shift, s.cfg_scale, s.cfg_interval_start, s.guidance_channels,
            s.method) == (249, 0.3, 6.7, 0.125, 3, "euler")
    assert PipelineFiles("a", "b", "c").sampler == s


@pytest.mark.parametrize(("change", "named"), [
    ("drop", "blocks.0.attn.qkv.weight"),
    ("rename", "blocks.0.attn.qkv_renamed.weight"),
])
def test_a_missing_or_renamed_dit_key_raises_naming_it(files: dict[str, Any], tmp_path: Path,
                                                       change: str, named: str) -> None:
    ema = dict(files["ema"])
    w = ema.pop("blocks.0.attn.qkv.weight")
    if change == "rename":
        ema["blocks.0.attn.qkv_renamed.weight"] = w
    path = tmp_path / "dit.pt"
    torch.save({"ema": ema, "model": files["raw"]}, path)
    with pytest.raises(CheckpointError) as e:
        _load({**files, "dit": path})
    msg = str(e.value)
    assert named in msg and str(path) in msg and "LightningDiT-XL/1" in msg
    assert "missing keys ['blocks.0.attn.qkv.weight']" in msg
    assert ("unexpected keys" in msg) == (change == "rename")


def test_a_wrong_shape_or_preset_raises_naming_it(files: dict[str, Any],
                                                  tmp_path: Path) -> None:
    torch.save(files["ema"], tmp_path / "flat.pt")  # no config entry to compare with
    with pytest.raises(CheckpointError, match=r"x_embedder\.proj\.weight: file \(32, 4, 1, 1\) "
                                              r"vs model \(32, 4, 2, 2\)"):
        _load({**files, "dit": tmp_path / "flat.pt"}, model="LightningDiT-XL/2")
    with pytest.raises(ValueError,
                       match=r"'LightningDiT-B/1' but .* trained as 'LightningDiT-XL/1'"):
        _load(files, model="LightningDiT-B/1")  # the file's config.model.model_type
    with pytest.raises(ValueError, match=r"unknown LightningDiT preset 'XL'.*LightningDiT-XL/1"):
        _load(files, model="XL")
    with pytest.raises(ValueError, match=r"unknown LightningDiT argument\(s\) \['depthh'\]"):
        _load(files, model_args={**MODEL_ARGS, "depthh": 1})


def test_vae_keys_are_checked_strictly(files: dict[str, Any], tmp_path: Path) -> None:
    state = dict(files["ldm"].state_dict())
    state.pop("decoder.conv_out.bias")
    torch.save({"state_dict": state}, tmp_path / "vae.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['decoder\.conv_out\.bias'\]"):
        _load({**files, "vae": tmp_path / "vae.pt"})
    state = {**files["ldm"].state_dict(), "decoder.up.0.blok.0.conv1.weight": torch.zeros(1)}
    torch.save({"state_dict": state}, tmp_path / "vae2.pt")
    with pytest.raises(KeyError, match=r"decoder\.up\.0\.blok\.0\.conv1\.weight"):
        _load({**files, "vae": tmp_path / "vae2.pt"})


def test_missing_files_and_bad_stats_raise_naming_them(files: dict[str, Any],
                                                       tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"pipeline\.vae: .*nope\.pt.*vavae"):
        _load({**files, "vae": tmp_path / "nope.pt"})
    torch.save({"mean": torch.zeros(1, 3, 1, 1), "std": torch.ones(1, 3, 1, 1)},
               tmp_path / "stats.pt")
    with pytest.raises(CheckpointError, match=r"mean has 3 channels"):
        _load({**files, "latent_stats": tmp_path / "stats.pt"})
    torch.save({"avg": torch.zeros(1, 4, 1, 1)}, tmp_path / "stats2.pt")
    with pytest.raises(KeyError, match=r"'mean' and 'std'"):
        _load({**files, "latent_stats": tmp_path / "stats2.pt"})


def test_unsafe_pickles_are_refused(files: dict[str, Any], tmp_path: Path) -> None:
    torch.save({"ema": files["ema"], "config": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        _load({**files, "dit": tmp_path / "evil.pt"})


# -- decoding --------------------------------------------------------------------------------

def test_decode_is_the_vavae_decode_of_denormalized_latents_mapped_to_unit_range(
        files: dict[str, Any]) -> None:
    pipe = _load(files)
    z = 2 * torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    mean, std = files["stats"]["mean"], files["stats"]["std"]
    with torch.no_grad():
        ref = files["ldm"].decode(z * std / MULTIPLIER + mean)  # release: z·σ/m + μ, [-1, 1]
        out = pipe.decode(z, clamp=False)
        clamped = pipe.decode(z)
    torch.testing.assert_close(out, (ref + 1) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clamped, ((ref + 1) / 2).clamp(0, 1), atol=1e-5, rtol=1e-5)
    assert out.shape == (3, 3, 16, 16)
    assert float(out.min()) < 0 or float(out.max()) > 1  # the clamp is exercised


# -- ImageFolder queries and the module ------------------------------------------------------

def _sampler(files: dict[str, Any], folder: Path, **kw: Any) -> Any:
    from lightning_fv.modules.invariant_sampler import InvariantSetSampler

    pf = PipelineFiles(str(files["dit"]), str(files["vae"]), str(files["latent_stats"]),
                       latent_multiplier=MULTIPLIER, sampler=SamplerConfig(num_steps=2),
                       model_args=MODEL_ARGS, vae_args=VAE_ARGS)
    kw = {"samples_per_query": 2, "budget": 1, "lr": 1.0, "num_steps": None,
          "progress": False, **kw}
    return InvariantSetSampler(pf, TinyClassifier().eval(), queries=str(folder), **kw)


def test_imagefolder_queries_labels_count_order_and_size(files: dict[str, Any],
                                                         tmp_path: Path) -> None:
    from lightning_fv.data.folders import image_transform

    folder = write_query_folder(tmp_path / "val")
    m = _sampler(files, folder, queries_per_class=2, classes=[2, 0])
    x, y = m.query_images()
    assert y.tolist() == [2, 2, 0, 0]  # the classes' order, the first two files of each
    assert x.shape == (4, 3, 16, 16)  # default size: the pipeline's images
    from PIL import Image

    ref = image_transform(16)(Image.open(folder / "n00000002" / "1.png"))
    assert torch.equal(x[1], ref)
    assert abs(float(x[1, 0].mean()) - 90 / 255) < 1e-6  # red channel encodes the class
    m = _sampler(files, folder, image_size=12)
    x, y = m.query_images()
    assert y.tolist() == [0, 1, 2] and x.shape == (3, 3, 12, 12)
    with pytest.raises(ValueError, match=r"classes \[5\] are not labels"):
        _sampler(files, folder, classes=[5]).query_images()
    with pytest.raises(ValueError, match=r"queries must be 'digits' or the root of an "
                                         r"ImageFolder.*'/no/such/folder'"):
        _sampler(files, Path("/no/such/folder"))


def test_module_samples_are_the_release_pipelines_images(files: dict[str, Any],
                                                        tmp_path: Path) -> None:
    """With budget 0 the samples are the decoded images of the seeded starting latents,
    resized to the query size: the release pipeline is the one that is sampled."""
    import lightning as L

    folder = write_query_folder(tmp_path / "val", n_classes=2, per_class=1)
    m = _sampler(files, folder, budget=0, image_size=12, seed=5,
                 output_dir=str(tmp_path / "out"))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(m)
    res = m.results
    assert res["samples"].shape == (2, 2, 3, 12, 12) and res["labels"].tolist() == [0, 1]
    z = seeded_latents(m.pipeline, [5, 6, 7, 8])
    with torch.no_grad():
        ref = F.interpolate(m.pipeline.generate(z), size=(12, 12), mode="bilinear",
                            align_corners=False, antialias=True)
    torch.testing.assert_close(res["samples"].flatten(0, 1), ref, atol=1e-5, rtol=1e-5)
    assert {p.name for p in m.written} == {"invariant_sets.safetensors", "metrics.json",
                                           "invariant_sets.png"}


def test_paper_config_runs_through_the_cli_with_tiny_release_files(
        files: dict[str, Any], tmp_path: Path) -> None:
    """``lightning-fv predict --config examples/configs/paper_invariant_dit_xl.yaml`` with
    tiny files in the release's formats; only sizes, steps and paths are overridden."""
    from lightning_fv.cli import main
    from lightning_fv.models import build_model

    folder = write_query_folder(tmp_path / "val", n_classes=2, per_class=2)
    torch.manual_seed(0)
    ckpt = tmp_path / "resnet50.pth"
    torch.save(build_model("torchvision:resnet50").state_dict(), ckpt)
    out = tmp_path / "inv"
    p = "--model.init_args.pipeline."
    main(["predict", "--config", str(CONFIG),
          p + "dit", str(files["dit"]), p + "vae", str(files["vae"]),
          p + "latent_stats", str(files["latent_stats"]),
          p + "model_args", json.dumps(MODEL_ARGS), p + "vae_args", json.dumps(VAE_ARGS),
          p + "sampler.num_steps", "2",
          "--model.init_args.checkpoint_path", str(ckpt),
          "--model.init_args.queries", str(folder), "--model.init_args.classes", "[1]",
          "--model.init_args.queries_per_class", "2", "--model.init_args.image_size", "32",
          "--model.init_args.algorithm.budget", "1", "--model.init_args.samples_per_query", "1",
          "--model.init_args.batch_size", "2", "--model.init_args.progress", "false",
          "--model.init_args.output_dir", str(out), "--trainer.accelerator", "cpu"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {k: metrics["settings"][k] for k in ("tau", "lr", "step_size", "optimizer",
                                                "checkpoint")} == {
        "tau": 0.01, "lr": 10.0, "step_size": 1.0, "optimizer": "sgd", "checkpoint": True}
    saved = load_state_dict(out / "invariant_sets.safetensors", prefixes=())
    assert saved["labels"].tolist() == [1, 1] and saved["index"].tolist() == [0, 1]
    assert saved["query"].shape == (2, 3, 32, 32)
    assert saved["samples"].shape == (2, 1, 3, 32, 32)
    assert (out / "invariant_sets.png").is_file()
