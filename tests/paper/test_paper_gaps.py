"""The pieces that make the paper-scale configs the papers' runs, at a tiny size: the model
of the detector data sees normalized input (App. C.1), natural images come from an
ImageFolder, ``manipulate``/``ifv`` reject bad settings by name, and the IFV
parameterizations and warm-up are the ones asked for (`inverse-feature-visualization` §3.2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_fv.data.trajectories import TrajectoryDataModule, render_trajectories

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


class _Net(nn.Module):
    """conv(3→4) → ReLU → mean pool → fc(4→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def _folder(root: Path, n: int = 2, size: int = 12) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (torch.rand(size, size, 3, generator=g) * 255).byte().numpy()
                Image.fromarray(arr).save(d / f"{i}.png")


def test_trajectory_renders_feed_the_model_exactly_the_normalized_images() -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    seen: list[torch.Tensor] = []
    handle = net.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().clone()))
    try:
        imgs = render_trajectories(net, ["fc:0", "fc:2"], 1, steps=3, n_log_steps=3,
                                   image_size=8, transforms=None, normalize=(MEAN, STD))
    finally:
        handle.remove()
    # (units·steps, 3, 8, 8), unit-major; forward k (step k+1) takes both units' step-k images
    assert imgs.shape == (6, 3, 8, 8)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for step in range(3):
        manual = (imgs[[step, 3 + step]] - m) / s
        torch.testing.assert_close(seen[step], manual, rtol=0, atol=1e-6)
    assert len(seen) == 4  # 3 optimizer steps and the final snapshot
    # the images themselves stay [0, 1] pixels, not the normalized input
    assert 0 <= float(imgs.min()) and float(imgs.max()) <= 1


def test_trajectory_datamodule_reads_naturals_from_an_imagefolder_and_hashes_mean_std(
        tmp_path: Path) -> None:
    from lightning_fv.data.folders import image_folder, load_images

    _folder(tmp_path / "nat", n=3)
    torch.manual_seed(0)
    kw = dict(model=_Net(), units=["fc:0", "fc:1", "fc:2"], natural=str(tmp_path / "nat"),
              image_size=8, trajectories_per_unit=1, steps=2, n_log_steps=2,
              test_fraction=0.34, augment_fraction=0.0, cache_dir=None, device="cpu")
    dm = TrajectoryDataModule(**kw, n_natural_per_class=2, mean=MEAN, std=STD)
    dm.setup()
    # train: the first 2 images per class; val: half of 2 = 1 per class
    assert (len(dm.natural_train), len(dm.natural_test)) == (4, 2)
    ref, _ = load_images(image_folder(tmp_path / "nat", 8, "train", per_class=2))
    got = torch.stack([dm.train_set[i][0] for i in range(4)])
    assert torch.equal(got, ref)
    labels = [int(dm.train_set[i][1]) for i in range(len(dm.train_set))]
    assert labels == [1] * 4 + [0] * len(dm.vis_train)
    plain = TrajectoryDataModule(**kw, n_natural_per_class=None)
    assert (len(plain.natural_images("train")), len(plain.natural_images("val"))) == (6, 6)
    assert dm.normalize == (tuple(MEAN), tuple(STD))
    # normalization changes the renders, so it is part of the cache key
    units = ["fc:0"]
    assert dm.cache_key(dm.settings(dm.model_spec, units)) != \
        plain.cache_key(plain.settings(plain.model_spec, units))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"natural": "imagenet"}, r"unknown natural data set 'imagenet'.*photo_patches"),
    ({"mean": MEAN}, r"give both mean and std .* std=None"),
    ({"n_natural_per_class": None}, r"n_natural_per_class=None .* ImageFolder"),
    ({"n_natural_per_class": 0}, r"n_natural_per_class must be >= 1 .* got 0"),
])
def test_trajectory_datamodule_names_bad_natural_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrajectoryDataModule(**{"natural": "photo_patches", **kwargs})


def test_manipulate_names_a_bad_natural_set_and_split(tmp_path: Path) -> None:
    from lightning_fv.commands.manipulation import manipulate, natural_images

    with pytest.raises(ValueError, match=r"natural_split must be 'train' or 'val', got 'test'"):
        natural_images("photo_patches", "test")
    with pytest.raises(ValueError, match=r"unknown natural data set '/no/such'.*digits"):
        manipulate(model="small_cnn", method="silent", layer="block1", natural="/no/such",
                   output=str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match=r"give both mean and std"):
        manipulate(model="small_cnn", method="silent", layer="block1", std=STD,
                   output=str(tmp_path / "m.safetensors"))
    _folder(tmp_path / "nat", n=3)
    x = natural_images(str(tmp_path / "nat"), "val", 2, 8)
    assert x.shape == (4, 3, 8, 8)


def test_ifv_command_warms_up_16_steps_by_default_and_not_with_the_lucent_preset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import json

    render_mod = importlib.import_module("lightning_fv.optvis.render")
    from lightning_fv.commands.ifv import ifv

    calls: list[bool] = []
    real = render_mod.redirect_relus

    def spy(model: nn.Module, enabled: bool = True) -> object:
        calls.append(bool(enabled))
        return real(model, enabled=enabled)

    monkeypatch.setattr(render_mod, "redirect_relus", spy)
    kw = dict(model="small_cnn", layer="block1.bn", n_targets=1, steps=18, lbfgs_steps=0,
              reopt_steps=2, image_size=12, device="cpu", progress=False)
    torch.manual_seed(0)
    ifv(**kw, output_dir=str(tmp_path / "lucid"))
    # realizations: 16 of 18 Adam steps redirected; re-optimization: both of its 2 steps
    assert calls == [True] * 16 + [False] * 2 + [True] * 2
    calls.clear()
    ifv(**kw, preset="lucent", output_dir=str(tmp_path / "lucent"))
    assert calls == [False] * 20
    calls.clear()
    ifv(**kw, preset="lucent", redirect_relu_steps=1, output_dir=str(tmp_path / "one"))
    assert calls == [True] + [False] * 17 + [True] + [False]
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["settings"] == {"parameterization": "p_rgb", "redirect_relu_steps": 1,
                                   "steps": 18, "lbfgs_steps": 0, "reopt_steps": 2}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"parameterization": "rgb"}, r"unknown parameterization 'rgb'; valid: \['p_fft', "
                                  r"'p_ffte', 'p_rgb'\]"),
    ({"preset": "lucidd"}, r"unknown preset 'lucidd'; valid: \['lucent', 'lucid'\]"),
    ({"redirect_relu_steps": -1}, r"redirect_relu_steps must be >= 0, got -1"),
])
def test_ifv_command_names_bad_render_settings(tmp_path: Path, kwargs: dict,
                                               message: str) -> None:
    from lightning_fv.commands.ifv import ifv

    with pytest.raises(ValueError, match=message):
        ifv(model="small_cnn", layer="block1.bn", output_dir=str(tmp_path / "x"), **kwargs)


def test_ifv_parameterizations_are_sigmoids_of_pixels_or_of_an_inverse_dft() -> None:
    from lightning_fv.optvis.param import ImageParam, ifv_parameterization

    g = torch.Generator().manual_seed(0)
    rgb = ImageParam(2, 3, 6, 6, generators=g, sd=1.0, **ifv_parameterization("p_rgb"))
    assert rgb.raw.shape == (2, 3, 6, 6)
    assert torch.equal(rgb(), torch.sigmoid(rgb.raw))  # §3.2: P_rgb(v) = sigmoid(v)
    fft = ImageParam(2, 3, 6, 6, generators=g, sd=1.0, **ifv_parameterization("p_fft"))
    spectrum = torch.view_as_complex(fft.raw.detach().contiguous())
    want = torch.sigmoid(torch.fft.irfft2(spectrum, s=(6, 6), norm="ortho") / 4.0)
    torch.testing.assert_close(fft().detach(), want)  # §3.6: iDFT, then the sigmoid
    ffte = ifv_parameterization("p_ffte")
    assert (ffte["fft"], ffte["decay_power"], ffte["decorrelate"]) == (True, 1.0, False)
    ffte["fft"] = False  # a copy: the registry is not changed through it
    assert ifv_parameterization("p_ffte")["fft"] is True
