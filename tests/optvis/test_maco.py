"""MACO (Fel et al. 2023): fixed magnitude, phase-only optimization, batch independence,
the transparency map, the spectrum helper, presets, and the wiring through
FeatureVisualizer and the callback."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.optvis.maco import (
    MACO_PRESETS,
    MacoConfig,
    MacoParam,
    color_matrix,
    crop_resize,
    maco_config,
    power_law_spectrum,
    render_maco,
    spectrum_from_data,
    transparency,
)


def _interior_ratio(param: MacoParam) -> torch.Tensor:
    """``|rfft2(spatial)| / A`` over the columns ``0 < f_x < W/2``: ``(B, 3, H, W/2 − 1)``."""
    spec = torch.fft.rfft2(param.spatial().double()).abs()
    return (spec / param.magnitude.double())[..., 1:-1]


def test_spectrum_magnitude_of_the_image_is_the_fixed_one_up_to_the_standardization():
    torch.manual_seed(0)
    mag = torch.rand(3, 16, 9) + 0.5
    p = MacoParam(2, mag, 16, generators=[torch.Generator().manual_seed(s) for s in (1, 2)])
    with torch.no_grad():
        ratio = _interior_ratio(p)
        std = torch.fft.irfft2(p.spectrum(), s=(16, 16)).double().flatten(1).std(1)
    # exact: |F(s(F⁻¹(A e^{iφ})))| = A / (std + 1e-4) at every interior frequency
    expected = (1 / (std + 1e-4)).view(2, 1, 1, 1).expand_as(ratio)
    assert torch.allclose(ratio, expected, rtol=1e-4)


def test_only_the_phase_is_optimized_and_the_magnitude_stays_fixed():
    torch.manual_seed(0)
    mag = torch.rand(3, 12, 7) + 0.5
    p = MacoParam(1, mag, 12)
    assert [n for n, q in p.named_parameters()] == ["raw"]
    assert p.raw.shape == (1, 3, 12, 7) and not p.magnitude.requires_grad
    before = p.magnitude.clone()
    raw0 = p.raw.detach().clone()
    opt = torch.optim.NAdam(p.parameters(), lr=1.0)
    target = torch.rand(1, 3, 12, 12)
    for _ in range(5):
        opt.zero_grad()
        loss = (p() - target).pow(2).sum()
        loss.backward()
        assert torch.isfinite(p.raw.grad).all() and p.raw.grad.abs().sum() > 0
        opt.step()
    assert torch.equal(p.magnitude, before)
    assert (p.raw - raw0).abs().max() > 0.1
    with torch.no_grad():  # the property still holds after optimization
        r = _interior_ratio(p)
    assert (r.max() - r.min()) / r.mean() < 1e-4


def test_images_lie_in_the_value_range():
    p = MacoParam(2, power_law_spectrum(10), 10, value_range=(-2.5, 2.5))
    x = p()
    assert x.shape == (2, 3, 10, 10) and x.min() > -2.5 and x.max() < 2.5


def test_spectrum_helper_matches_torch_fft_on_a_known_image():
    h = w = 16
    yy = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    img = torch.cos(2 * math.pi * 3 * yy / h).expand(3, h, w).float()  # 3 cycles vertically
    x = torch.stack([img, 0.5 * img])
    spec = spectrum_from_data(x, 16, decorrelate=False)
    assert spec.shape == (3, 16, 9)
    assert torch.allclose(spec, torch.fft.rfft2(x).abs().mean(0), atol=1e-5)
    # a cosine of amplitude a puts a·H·W/2 at (±3, 0): mean over the two images (a = 1, ½)
    assert spec[0, 3, 0].item() == pytest.approx(0.75 * h * w / 2, rel=1e-5)
    assert spec[0, 4, 1].item() == pytest.approx(0.0, abs=1e-3)
    # decorrelated: the FFT of C⁻¹x per pixel
    inv = torch.linalg.inv(color_matrix().double()).float()
    dec = torch.einsum("bchw,dc->bdhw", x, inv)
    assert torch.allclose(spectrum_from_data(x, 16), torch.fft.rfft2(dec).abs().mean(0),
                          rtol=1e-4, atol=1e-3)


def test_spectrum_helper_takes_tensors_dataloaders_and_datamodules_alike():
    torch.manual_seed(0)
    x = torch.rand(10, 3, 12, 12)
    ref = spectrum_from_data(x, 12)
    loader = DataLoader(TensorDataset(x, torch.zeros(10)), batch_size=3)

    class DM:
        def setup(self, stage: str) -> None:
            self.stage = stage

        def train_dataloader(self) -> DataLoader:
            return loader

    assert torch.allclose(spectrum_from_data(loader, 12), ref, atol=1e-5)
    assert torch.allclose(spectrum_from_data(DM(), 12), ref, atol=1e-5)
    assert torch.allclose(spectrum_from_data(loader, 12, max_images=4),
                          spectrum_from_data(x[:4], 12), atol=1e-5)
    # computed small and resized to the canvas's spectrum shape
    assert spectrum_from_data(x, 24, compute_size=12).shape == (3, 24, 13)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        spectrum_from_data(torch.rand(2, 1, 8, 8), 8)


def test_full_centred_crop_without_oversampling_is_the_identity():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    boxes = torch.tensor([0.5, 0.5, 1.0]).expand(2, 3, 3)
    out = crop_resize(x, boxes, 8, oversample=1)
    assert out.shape == (6, 3, 8, 8)
    assert torch.allclose(out, x.repeat_interleave(3, 0), atol=1e-6)
    # the central half: output pixel j reads canvas fraction 0.25 + (j + ½)/8, i.e. pixel
    # centre 2 + j exactly; the left half likewise reads pixels 0…3
    mid = crop_resize(x, torch.tensor([[[0.5, 0.5, 0.5]]]).expand(2, 1, 3), 4, oversample=1)
    assert torch.allclose(mid, x[:, :, 2:6, 2:6], atol=1e-6)
    left = crop_resize(x, torch.tensor([[[0.25, 0.5, 0.5]]]).expand(2, 1, 3), 4, oversample=1)
    assert torch.allclose(left, x[:, :, 2:6, 0:4], atol=1e-6)


class _Head(nn.Module):
    """f(x) = Σ w·x as a ``(B, 1)`` output of the submodule ``head``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.head = _Dot(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class _Dot(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1, keepdim=True)


def test_transparency_map_is_the_accumulated_absolute_image_gradient_hand_checked():
    # crops = the whole canvas (no jitter, no noise, no resampling): each crop's value is
    # Σ w·x, the step's objective their mean, so ∂L/∂x = w every step and α = steps·|w|
    torch.manual_seed(0)
    w = torch.randn(1, 3, 8, 8)
    res = render_maco(_Head(w), ["head:0", "head:0"], steps=7, crops=3, crop_scale=(1.0, 1.0),
                      noise=0.0, image_size=8, input_size=8,
                      config=MacoConfig(center_std=0.0, oversample=1), seed=[0, 1],
                      eval_crops=2)
    assert torch.allclose(res.alpha, 7 * w.abs().expand(2, -1, -1, -1), rtol=1e-5)
    # and the values are Σ w·x of the final images
    assert torch.allclose(res.values, (res.images * w).flatten(1).sum(1), rtol=1e-4)
    op = transparency(res.alpha, percentile=100)
    assert op.shape == (2, 1, 8, 8) and op.max() == pytest.approx(1.0)


def test_a_unit_rendered_alone_equals_the_same_unit_in_a_batch(tiny_net):
    units = ["conv2:1", "fc:3", "conv1:2"]
    kw = dict(steps=4, crops=2, image_size=24, input_size=12)
    batch = render_maco(tiny_net, units, seed=[5, 6, 7], **kw)
    for i, u in enumerate(units):
        alone = render_maco(tiny_net, [u], seed=[5 + i], **kw)
        assert (alone.images[0] - batch.images[i]).abs().max() < 1e-4
        assert torch.allclose(alone.alpha[0], batch.alpha[i], rtol=1e-3, atol=1e-6)
    chunked = render_maco(tiny_net, units, seed=[5, 6, 7], batch_size=2, **kw)
    assert (chunked.images - batch.images).abs().max() < 1e-4
    assert batch.units == units


def test_same_seed_same_image_other_seed_other_image(tiny_net):
    kw = dict(steps=3, crops=2, image_size=16, input_size=8)
    a = render_maco(tiny_net, ["conv2:1"], seed=3, **kw)
    b = render_maco(tiny_net, ["conv2:1"], seed=3, **kw)
    c = render_maco(tiny_net, ["conv2:1"], seed=4, **kw)
    assert torch.equal(a.images, b.images)
    assert (a.images - c.images).abs().max() > 0.05


def test_maco_increases_the_objective_of_the_bundled_cnn():
    from lightning_fv.models import bundled_model

    net = bundled_model("photo_patches")
    kw = dict(crops=2, image_size=96, input_size=32, seed=0)
    first = render_maco(net, ["fc:0", "block3:5"], steps=1, **kw)
    later = render_maco(net, ["fc:0", "block3:5"], steps=20, **kw)
    # measured: fc:0 4.83 → 13.32, block3:5 0.76 → 1.30
    assert (later.values > first.values + 0.4).all(), (first.values, later.values)


def test_model_state_and_progress(tiny_net):
    tiny_net.train()
    calls = []
    render_maco(tiny_net, ["fc:0", "fc:1"], steps=3, crops=1, image_size=12, input_size=8,
                progress=lambda done, total: calls.append((done, total)))
    assert tiny_net.training and all(p.requires_grad for p in tiny_net.parameters())
    assert calls == [(2, 6), (4, 6), (6, 6)]


def test_horama_preset_holds_horama_030_defaults():
    h = MACO_PRESETS["horama"]
    # horama 0.3.0 maco(): total_steps=1000, learning_rate=1.0, image_size=1280,
    # model_input_size=224, noise=0.05, values_range=(-2.5, 2.5), crops_per_iteration=6,
    # box_size=(0.20, 0.25) drawn as rand·0.05 + 0.25; centres 0.5 + 0.15·N(0, 1)
    assert (h.steps, h.lr, h.crops, h.noise, h.value_range) == (1000, 1.0, 6, 0.05, (-2.5, 2.5))
    assert h.crop_scale == (0.25, 0.30) and h.center_std == 0.15 and h.oversample == 2
    assert round(h.canvas_ratio * 224) == 1280


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="crops must be an integer >= 1, got 0"):
        maco_config(crops=0)
    with pytest.raises(ValueError, match="unknown MACO preset 'nope'"):
        maco_config("nope")
    with pytest.raises(ValueError, match=r"crop_scale .* got \(0.5, 0.2\)"):
        MacoConfig(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="value_range"):
        MacoParam(1, power_law_spectrum(8), 8, value_range=(1.0, 0.0))


def test_non_finite_objective_names_the_unit(tiny_net):
    class Nan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Conv2d(3, 2, 1)
            nn.init.constant_(self.lin.weight, float("nan"))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    with pytest.raises(FloatingPointError, match="'lin:1'"):
        render_maco(Nan(), ["lin:1"], steps=2, crops=1, image_size=8, input_size=4)


# -- wiring ----------------------------------------------------------------------------------
def test_feature_visualizer_method_maco_renders_and_saves_canvas_images(tmp_path):
    import lightning as L

    from lightning_fv.modules.feature_visualizer import FeatureVisualizer, load_sweep

    fv = FeatureVisualizer("bundled", units=["fc:0", "fc:1"], image_size=32, thresholds=[3],
                           method="maco", canvas_size=48, output_dir=str(tmp_path / "o"),
                           progress=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.predict(fv, return_predictions=False)
    out = load_sweep(str(tmp_path / "o"))
    assert out["units"] == ["fc:0", "fc:1"]
    assert out["images"].shape == (2, 3, 48, 48)
    assert out["images"].min() >= 0 and out["images"].max() <= 1
    # the same images as the core function with the photos' spectrum
    from lightning_fv.modules.feature_visualizer import photo_spectrum

    ref = render_maco(fv.net, ["fc:0", "fc:1"], steps=3, image_size=48, input_size=32,
                      spectrum=photo_spectrum(48), seed=0)
    assert (ref.images - out["images"]).abs().max() < 1e-4


def test_feature_visualizer_rejects_an_unknown_method():
    from lightning_fv.modules.feature_visualizer import FeatureVisualizer

    with pytest.raises(ValueError, match="method must be one of .* got 'dream'"):
        FeatureVisualizer("bundled", units=["fc:0"], image_size=32, method="dream")


def test_render_command_passes_method_through(tmp_path):
    from lightning_fv.commands.render import render as render_cmd
    from lightning_fv.modules.feature_visualizer import load_sweep

    out = tmp_path / "r"
    render_cmd("bundled", units=["fc:2"], image_size=32, steps=2, method="maco",
               canvas_size=40, output_dir=str(out), device="cpu", progress=False)
    assert load_sweep(str(out))["images"].shape == (1, 3, 40, 40)
