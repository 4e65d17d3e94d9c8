"""MACO: magnitude-constrained feature visualization, batched over units.

Fel et al. 2023, "Unlocking Feature Visualization for Deeper Networks with MAgnitude
Constrained Optimization" (MACO), §3: the image is parameterized by the *phase* ``φ`` of
its Fourier spectrum only; the magnitude ``A`` is fixed to the mean magnitude spectrum of
natural images, so every iterate keeps a natural power spectrum::

    x = R(φ) = ρ( C · s( F⁻¹( A ⊙ e^{i·s(φ)} ) ) )

with ``s`` the standardization (zero mean, unit standard deviation, per image), ``C`` the
colour recorrelation (Lucent's ImageNet matrix, as in Horama), ``ρ`` a sigmoid scaled to
``value_range``. Each step the objective is averaged over several random crops of the
canvas, each resized to the model's input size with Gaussian and uniform noise added
(§3, "we optimize ... over random crops"); the transparency (attribution) map is the
accumulated absolute gradient w.r.t. the image, ``α = Σ_t |∂L_t / ∂x_t|`` (§3.2).

Everything is batched: sample ``i`` maximizes unit ``i`` (:func:`units_objective`), and
every random draw of sample ``i`` (initial phase, crops, noise) comes from its own
``torch.Generator`` seeded with ``seed[i]``, so a unit's image does not depend on what else
is in the batch.

:data:`MACO_PRESETS` ``"horama"`` holds Horama 0.3.0's published settings (``maco()``'s
defaults); ``"lightning"`` (the default) the same with images in [0, 1] (followed by the
engine's ``normalize``) and 256 steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fv.optvis.hooks import Unit, capture, parse_units, preserved_state
from lightning_fv.optvis.objectives import INPUT, OUTPUT, Objective, units_objective
from lightning_fv.optvis.param import IMAGENET_COLOR_CORRELATION
from lightning_fv.optvis.render import chunked_sweep
from lightning_fv.optvis.transform import model_input_size as enforced_input_size
from lightning_fv.utils.device import model_device, model_dtype
from lightning_fv.utils.preprocess import NormalizeLike, as_normalize
from lightning_fv.utils.rng import make_generator

ProgressFn = Callable[[int, int], None]

#: Horama 0.3.0 ``maco()``'s canvas side for its 224-pixel model input (1280 / 224).
HORAMA_CANVAS_RATIO = 1280 / 224
#: The noise generator of a sample is seeded with ``seed + NOISE_SEED_OFFSET`` (a stream
#: apart from its phase and crops, which come from ``seed`` on the CPU).
NOISE_SEED_OFFSET = 1_000_003
#: Horama's ``standardize`` epsilon.
STD_EPS = 1e-4


def color_matrix() -> Tensor:
    """The ``(3, 3)`` colour recorrelation ``C`` (``x_rgb = C · x_decorrelated``): Lucent's
    ImageNet matrix divided by its largest column norm, the one
    :class:`~lightning_fv.optvis.param.ImageParam` uses (Horama's
    ``get_color_correlation_svd_sqrt`` is its transpose, applied as ``x @ Cᵀ``)."""
    cm = torch.tensor(IMAGENET_COLOR_CORRELATION, dtype=torch.float32)
    return cm / cm.norm(dim=0).max()


# -- the spectrum ------------------------------------------------------------------------
def _batches(data: object) -> Iterable[Tensor]:
    """Image batches ``(B, 3, H, W)`` of a tensor, an iterable of ``x`` / ``(x, y, …)`` /
    ``{"image": x}`` batches (a DataLoader) or a DataModule (its ``train_dataloader()``)."""
    if isinstance(data, Tensor):
        if data.dim() == 3:
            data = data[None]
        yield data
        return
    if hasattr(data, "train_dataloader"):
        if hasattr(data, "setup"):
            data.setup("fit")  # type: ignore[union-attr]
        data = data.train_dataloader()  # type: ignore[union-attr]
    if not isinstance(data, Iterable):
        raise TypeError(f"spectrum_from_data needs images (N, 3, H, W), a DataLoader or a "
                        f"DataModule, got {type(data).__name__}")
    for batch in data:
        if isinstance(batch, dict):
            batch = batch.get("image", batch.get("x"))
        elif isinstance(batch, (tuple, list)):
            batch = batch[0]
        if not isinstance(batch, Tensor):
            raise TypeError(f"a batch of images must be a tensor, got {type(batch).__name__}")
        yield batch


@torch.no_grad()
def spectrum_from_data(data: object, size: int | tuple[int, int] = 224, *,
                       decorrelate: bool = True, compute_size: int | None = None,
                       max_images: int | None = None) -> Tensor:
    """The mean magnitude spectrum ``E|F(x)|`` of natural images, the fixed magnitude of MACO.

    Each image is resized (bilinear, antialiased) to ``compute_size`` (default ``size``),
    colour-decorrelated (``C⁻¹ x`` per pixel, :func:`color_matrix`; MACO's magnitude lives
    in the decorrelated space, like Horama's ``imagenet_decorrelated.npy``) and its real
    2-D FFT ``rfft2`` (``norm="backward"``) taken; the magnitudes are averaged over images.
    When ``compute_size`` differs from ``size`` the mean magnitude is resized bilinearly
    (antialiased) to ``size``'s spectrum shape, as Horama resizes its template (natural
    spectra are close to scale invariant, so a spectrum measured on small images serves a
    larger canvas).

    Args:
        data: images ``(N, 3, H, W)`` (any range; the magnitude's scale does not matter to
            MACO, which standardizes the image), a DataLoader (``x`` or ``(x, y, …)``
            batches) or a DataModule (its ``train_dataloader()``, after ``setup("fit")``).
        size: canvas side ``S`` or ``(H, W)``.
        decorrelate: apply ``C⁻¹`` first (MACO, Horama); ``False``: plain RGB.
        compute_size: side at which the FFTs are taken (``None``: ``size``).
        max_images: stop after this many images.

    Returns:
        ``(3, H, W // 2 + 1)`` float32 magnitudes on the CPU.
    """
    h, w = (size, size) if isinstance(size, int) else size
    ch, cw = (h, w) if compute_size is None else (compute_size, compute_size)
    inv = torch.linalg.inv(color_matrix().double()).float()
    total, count = None, 0
    for x in _batches(data):
        if max_images is not None and count >= max_images:
            break
        if max_images is not None:
            x = x[: max_images - count]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got {tuple(x.shape)}")
        x = x.detach().float().cpu()
        if tuple(x.shape[-2:]) != (ch, cw):
            x = F.interpolate(x, size=(ch, cw), mode="bilinear", antialias=True,
                              align_corners=False)
        if decorrelate:
            x = torch.einsum("bchw,dc->bdhw", x, inv)
        mag = torch.fft.rfft2(x).abs().sum(0)
        total = mag if total is None else total + mag
        count += x.shape[0]
    if total is None or count == 0:
        raise ValueError("spectrum_from_data got no images")
    mean = total / count
    if (ch, cw) != (h, w):
        mean = F.interpolate(mean[None], size=(h, w // 2 + 1), mode="bilinear",
                             align_corners=False, antialias=True)[0]
    return mean.float()


def power_law_spectrum(size: int | tuple[int, int], alpha: float = 1.0) -> Tensor:
    """``(3, H, W // 2 + 1)`` magnitudes ``1 / max(f, 1/max(H, W))^alpha``: the ``1/f``
    power law of natural-image amplitude spectra (Field 1987), a data-free stand-in for
    :func:`spectrum_from_data`; ``f`` in cycles per pixel."""
    h, w = (size, size) if isinstance(size, int) else size
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    f = torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(h, w))
    return (1.0 / f**alpha).expand(3, -1, -1).contiguous().float()


# -- the parameterization ------------------------------------------------------------------
def _standardize(x: Tensor) -> Tensor:
    """Per sample ``(x − mean) / (std + 1e-4)`` over all but the batch dimension (Horama's
    ``standardize``, unbiased ``std``)."""
    flat = x.flatten(1)
    mean = flat.mean(1).view(-1, *([1] * (x.dim() - 1)))
    std = flat.std(1).view(-1, *([1] * (x.dim() - 1)))
    return (x - mean) / (std + STD_EPS)


class MacoParam(nn.Module):
    """A batch of images ``(B, 3, H, W)`` parameterized by the phase of their spectrum.

    ``raw`` (the only parameter) is the phase ``φ`` ``(B, 3, H, W // 2 + 1)``; the magnitude
    ``A`` ``(3, H, W // 2 + 1)`` is a buffer (never optimized). See the module docstring for
    the map ``φ → x``.

    Args:
        batch: number of images.
        magnitude: ``(3, h, w)`` magnitude template; resized (bilinear, antialiased, as
            Horama) to ``(H, W // 2 + 1)`` when its shape differs.
        size: canvas side ``S`` or ``(H, W)``.
        value_range: ``(lo, hi)`` of the output images.
        generators: one ``torch.Generator`` per sample for the initial phase (standard
            normal, Horama's ``std_deviation=1``), or ``None``.
        device: where the phase and the magnitude live.
    """

    def __init__(self, batch: int, magnitude: Tensor, size: int | tuple[int, int],
                 value_range: tuple[float, float] = (0.0, 1.0),
                 generators: Sequence[torch.Generator] | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else size
        if batch < 1 or h < 2 or w < 2:
            raise ValueError(f"invalid MACO batch/canvas {(batch, h, w)}")
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
        if magnitude.dim() != 3 or magnitude.shape[0] != 3:
            raise ValueError(f"magnitude must be (3, h, w), got {tuple(magnitude.shape)}")
        shape = (h, w // 2 + 1)
        mag = magnitude.detach().float().cpu()
        if tuple(mag.shape[-2:]) != shape:
            mag = F.interpolate(mag[None], size=shape, mode="bilinear", align_corners=False,
                                antialias=True)[0]
        if not torch.isfinite(mag).all() or (mag < 0).any():
            raise ValueError("magnitude must be finite and non-negative")
        self.shape = (batch, 3, h, w)
        self.value_range = (lo, hi)
        self.register_buffer("magnitude", mag.to(device))
        self.register_buffer("color_matrix", color_matrix().to(device))
        if generators is not None:
            if len(generators) != batch:
                raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
            phase = torch.stack([torch.randn(3, *shape, generator=g) for g in generators])
        else:
            phase = torch.randn(batch, 3, *shape)
        self.raw = nn.Parameter(phase.to(device))

    def spectrum(self) -> Tensor:
        """``A ⊙ e^{i·s(φ)}`` ``(B, 3, H, W // 2 + 1)`` complex."""
        phase = _standardize(self.raw)
        return torch.complex(torch.cos(phase) * self.magnitude, torch.sin(phase) * self.magnitude)

    def spatial(self) -> Tensor:
        """The standardized image before colour and range, ``s(F⁻¹(A ⊙ e^{i·s(φ)}))``
        ``(B, 3, H, W)``: its ``|rfft2|`` equals ``A / (std + 1e-4)`` at every frequency
        ``0 < f_x < W/2`` (the DC/Nyquist columns are made Hermitian by ``irfft2``, the DC
        bin is removed by the standardization)."""
        h, w = self.shape[-2:]
        return _standardize(torch.fft.irfft2(self.spectrum(), s=(h, w)))

    def forward(self) -> Tensor:
        """The images ``(B, 3, H, W)`` in ``value_range``."""
        x = torch.einsum("bchw,dc->bdhw", self.spatial(), self.color_matrix)
        lo, hi = self.value_range
        return torch.sigmoid(x) * (hi - lo) + lo


# -- crops -----------------------------------------------------------------------------------
def draw_boxes(generators: Sequence[torch.Generator], steps: int, crops: int,
               crop_scale: tuple[float, float], center_std: float) -> Tensor:
    """Crop boxes ``(steps, B, crops, 3)`` as ``(centre x, centre y, side)`` in canvas
    fractions, one generator per sample: centre ``0.5 + center_std·N(0, 1)``, side uniform
    in ``crop_scale`` (Horama's ``optimization_step``; boxes may leave the canvas, the
    outside reads as 0)."""
    lo, hi = crop_scale
    out = []
    for g in generators:
        c = 0.5 + torch.randn(steps, crops, 2, generator=g) * center_std
        s = lo + torch.rand(steps, crops, 1, generator=g) * (hi - lo)
        out.append(torch.cat([c, s], -1))
    return torch.stack(out, 1)


def crop_resize(images: Tensor, boxes: Tensor, size: int, oversample: int = 2) -> Tensor:
    """Square crops of ``images`` ``(B, C, H, W)`` at ``boxes`` ``(B, K, 3)`` (centre x,
    centre y, side; canvas fractions) resized to ``size``: ``(B·K, C, size, size)``, sample
    ``b``'s crops in rows ``b·K … b·K + K − 1``.

    Each crop is sampled bilinearly (zeros outside the canvas) at ``oversample · size``
    pixel centres, then, for ``oversample > 1``, resized to ``size`` with an antialiased
    bicubic filter (Horama: ``roi_align`` at twice the size, then bicubic). All crops of a
    sample are read from the one canvas (no copy of it per crop)."""
    b, c, _, _ = images.shape
    k = boxes.shape[1]
    s = size * oversample
    t = (torch.arange(s, device=images.device, dtype=images.dtype) + 0.5) / s  # (s,)
    boxes = boxes.to(images.device, images.dtype)
    cx, cy, side = boxes[..., 0:1], boxes[..., 1:2], boxes[..., 2:3]  # (B, K, 1)
    gx = 2 * (cx - side / 2 + side * t) - 1  # (B, K, s) normalized x of output columns
    gy = 2 * (cy - side / 2 + side * t) - 1
    grid = torch.stack([gx[:, :, None, :].expand(b, k, s, s),
                        gy[:, :, :, None].expand(b, k, s, s)], -1).reshape(b, k * s, s, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # (B, C, K·s, s)
    out = out.reshape(b, c, k, s, s).transpose(1, 2).reshape(b * k, c, s, s)
    if oversample > 1:
        out = F.interpolate(out, size=(size, size), mode="bicubic", align_corners=True,
                            antialias=True)
    return out


# -- configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class MacoConfig:
    """Every knob of a MACO render, validated on construction.

    Attributes:
        steps: optimizer steps.
        lr: NAdam learning rate on the phase.
        crops: random crops per image and step.
        crop_scale: ``(lo, hi)`` range of the crop side, fraction of the canvas side.
        center_std: standard deviation of the crop centre around the canvas centre
            (fraction of the canvas).
        noise: Gaussian ``noise·N(0, 1)`` plus uniform ``noise·U(−½, ½)`` added to each
            crop (model-input units).
        value_range: ``(lo, hi)`` of the images: ``(0, 1)`` for RGB followed by the
            engine's ``normalize``; Horama's ``(−2.5, 2.5)`` is already model-input units.
        canvas_ratio: canvas side = ``round(canvas_ratio · input_size)`` unless the call
            gives ``image_size``.
        oversample: crops are read at ``oversample ×`` the input size, then resized down.
    """

    steps: int = 256
    lr: float = 1.0
    crops: int = 6
    crop_scale: tuple[float, float] = (0.25, 0.30)
    center_std: float = 0.15
    noise: float = 0.05
    value_range: tuple[float, float] = (0.0, 1.0)
    canvas_ratio: float = HORAMA_CANVAS_RATIO
    oversample: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not isinstance(self.crops, int) or self.crops < 1:
            raise ValueError(f"crops must be an integer >= 1, got {self.crops!r}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi:
            raise ValueError(f"crop_scale must be (lo, hi) with 0 < lo <= hi, got "
                             f"{self.crop_scale}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.noise < 0 or self.center_std < 0:
            raise ValueError(f"noise and center_std must be >= 0, got {self.noise}, "
                             f"{self.center_std}")
        if not self.value_range[1] > self.value_range[0]:
            raise ValueError(f"value_range must be (lo, hi) with hi > lo, got "
                             f"{self.value_range}")
        if self.canvas_ratio <= 0:
            raise ValueError(f"canvas_ratio must be > 0, got {self.canvas_ratio}")
        if not isinstance(self.oversample, int) or self.oversample < 1:
            raise ValueError(f"oversample must be an integer >= 1, got {self.oversample!r}")


#: Named settings. ``"horama"``: Horama 0.3.0 ``maco()``'s defaults (1000 NAdam steps at lr
#: 1.0, 6 crops, noise 0.05, values in (−2.5, 2.5), a 1280-pixel canvas for a 224-pixel
#: input, crop centres ``0.5 + 0.15·N(0, 1)``, crops read at twice the input size). Horama
#: publishes ``box_size=(0.20, 0.25)`` but its code draws the side as
#: ``rand·(0.25 − 0.20) + 0.25``, i.e. in (0.25, 0.30): ``crop_scale`` stores the range the
#: code draws. ``"lightning"``: the same in [0, 1] RGB (then ``normalize``) with 256 steps.
MACO_PRESETS: dict[str, MacoConfig] = {
    "horama": MacoConfig(steps=1000, value_range=(-2.5, 2.5)),
    "lightning": MacoConfig(),
}
DEFAULT_MACO_PRESET = "lightning"


def maco_config(config: MacoConfig | str = DEFAULT_MACO_PRESET, **overrides: object) -> MacoConfig:
    """A preset (by name) or config with the non-``None`` ``overrides`` applied."""
    if isinstance(config, str):
        if config not in MACO_PRESETS:
            raise ValueError(f"unknown MACO preset {config!r}; valid: {sorted(MACO_PRESETS)}")
        config = MACO_PRESETS[config]
    changes = {k: v for k, v in overrides.items() if v is not None}
    bad = sorted(set(changes) - set(MacoConfig.__dataclass_fields__))
    if bad:
        raise TypeError(f"unknown MACO setting(s) {bad}; valid: "
                        f"{sorted(MacoConfig.__dataclass_fields__)}")
    for key in ("crop_scale", "value_range"):
        if key in changes:
            changes[key] = tuple(float(v) for v in changes[key])  # type: ignore[union-attr]
    return replace(config, **changes)  # type: ignore[arg-type]


def model_input_size(model: nn.Module, default: int = 224) -> int:
    """The input side a model expects: the size it enforces
    (:func:`lightning_fv.optvis.transform.model_input_size`, e.g. a timm ViT's
    ``patch_embed.img_size``, which wins over a config that ``img_size=`` overrode), else
    timm's ``pretrained_cfg["input_size"]`` (or ``default_cfg``) when present, else
    ``default`` (Horama's ``model_input_size``). MACO crops are square: a model that
    enforces a non-square input raises :class:`ValueError` naming it."""
    enforced = enforced_input_size(model)
    if enforced is not None:
        if enforced[0] != enforced[1]:
            raise ValueError(f"MACO feeds square crops; the model enforces a "
                             f"{enforced[0]}x{enforced[1]} input")
        return int(enforced[0])
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and "input_size" in cfg:
            return int(cfg["input_size"][-1])
    return default


# -- rendering -------------------------------------------------------------------------------
@dataclass
class MacoResult:
    """Images ``(B, 3, H, W)`` in the config's ``value_range`` (CPU, float32), the
    transparency maps ``alpha`` ``(B, 3, H, W)`` (``Σ_t |∂L_t/∂x_t|``, unnormalized), the
    objective ``values`` ``(B,)`` of the final images (:func:`crop_values`) and the unit
    names."""

    images: Tensor
    alpha: Tensor
    values: Tensor
    units: list[str] = field(default_factory=list)
    config: MacoConfig | None = None

    @property
    def final(self) -> Tensor:
        """The images (the :class:`~lightning_fv.optvis.render.RenderResult` word)."""
        return self.images

    def images_01(self) -> Tensor:
        """The images mapped from ``value_range`` to [0, 1] (for saving and grids)."""
        lo, hi = self.config.value_range if self.config is not None else (0.0, 1.0)
        return ((self.images - lo) / (hi - lo)).clamp(0, 1)


def transparency(alpha: Tensor, percentile: float = 80.0) -> Tensor:
    """Horama's ``plot_maco`` opacity ``(B, 1, H, W)`` in [0, 1]: the channel mean of
    ``alpha`` ``(B, 3, H, W)`` clipped at its ``percentile`` and divided by its maximum."""
    a = alpha.float().mean(1, keepdim=True)
    cap = torch.quantile(a.flatten(1), percentile / 100.0, dim=1).view(-1, 1, 1, 1)
    a = torch.minimum(a, cap)
    return a / a.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)


def _crops_objective(units: Sequence[Unit], crops: int) -> Objective:
    """Sample ``b``'s ``crops`` rows maximize ``units[b]``; returns the ``(B·crops,)`` values."""
    return units_objective([u for u in units for _ in range(crops)])


def _run(model: nn.Module, obj: Objective, x: Tensor, norm: nn.Module | None,
         acts: dict[str, Tensor]) -> Tensor:
    inp = norm(x) if norm is not None else x
    out = model(inp.to(model_dtype(model)))
    acts[OUTPUT] = out
    acts[INPUT] = x
    return obj(acts).float()


def crop_values(model: nn.Module, units: str | Sequence[str | Unit], images: Tensor, *,
                input_size: int | None = None, normalize: NormalizeLike = None,
                crops: int = 16, crop_scale: tuple[float, float] = (0.25, 0.30),
                center_std: float = 0.15, seed: int = 0, oversample: int = 2,
                batch_size: int = 64) -> Tensor:
    """The objective of ``images`` ``(B, 3, H, W)`` as MACO sees them, without noise:
    sample ``b``'s unit averaged over the same ``crops`` boxes for every image (drawn from
    one generator seeded with ``seed``). Use it to compare images of different renderers
    (Horama's and ours) on one footing. Returns ``(B,)`` on the CPU."""
    parsed = parse_units(units, model)
    if len(parsed) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images for {len(parsed)} units")
    size = input_size or model_input_size(model)
    device = model_device(model)
    norm = as_normalize(normalize, device)
    boxes = draw_boxes([make_generator(seed)], 1, crops, crop_scale, center_std)[0, 0]
    out = []
    with torch.no_grad(), preserved_state(model), \
            capture(model, _crops_objective(parsed, crops).model_layers) as acts:
        for s in range(0, len(parsed), batch_size):
            part = parsed[s:s + batch_size]
            img = images[s:s + batch_size].to(device, torch.float32)
            x = crop_resize(img, boxes.expand(len(part), -1, -1), size, oversample)
            v = _run(model, _crops_objective(part, crops), x, norm, acts)
            out.append(v.view(len(part), crops).mean(1).cpu())
    return torch.cat(out)


def render_maco(
    model: nn.Module,
    units: str | Sequence[str | Unit],
    *,
    config: MacoConfig | str = DEFAULT_MACO_PRESET,
    spectrum: Tensor | None = None,
    steps: int | None = None,
    crops: int | None = None,
    crop_scale: tuple[float, float] | None = None,
    noise: float | None = None,
    lr: float | None = None,
    value_range: tuple[float, float] | None = None,
    image_size: int | None = None,
    input_size: int | None = None,
    normalize: NormalizeLike = None,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    progress: bool | ProgressFn = False,
    eval_crops: int = 16,
) -> MacoResult:
    """Render one MACO image per unit, sample ``i`` maximizing ``units[i]``, as one batch.

    Args:
        model: any ``nn.Module`` taking ``(B, 3, input_size, input_size)``; its mode,
            ``requires_grad`` flags and gradients are restored, hooks removed.
        units: the unit grammar of :func:`~lightning_fv.optvis.hooks.parse_units`.
        config: a :class:`MacoConfig` or a preset name (:data:`MACO_PRESETS`); the keyword
            arguments ``steps`` … ``value_range`` override single settings.
        spectrum: ``(3, h, w)`` magnitude template (:func:`spectrum_from_data`; resized to
            the canvas). ``None``: :func:`power_law_spectrum` (a ``1/f`` stand-in; the CLI,
            :class:`FeatureVisualizer` and the callbacks pass the embedded photos' spectrum).
        image_size: canvas side in pixels (``None``: ``canvas_ratio · input_size``).
        input_size: side of the crops fed to the model (``None``: the model's
            ``pretrained_cfg`` input size, else 224).
        normalize: ``(mean, std)`` or a module applied to each noisy crop; ``None`` when the
            model normalizes itself or ``value_range`` is already in model-input units.
        seed: one seed for all samples or one per sample (phase, crops, noise).
        batch_size: units per batch (``None``: all at once); batching does not change images.
        progress: ``True`` shows a bar; a callable gets ``progress(done, total)`` in
            unit-steps after every step.
        eval_crops: crops of :func:`crop_values` for the returned ``values``.

    Returns:
        :class:`MacoResult`.

    Raises:
        FloatingPointError: a non-finite objective or gradient, naming the unit and step.
    """
    cfg = maco_config(config, steps=steps, crops=crops, crop_scale=crop_scale, noise=noise,
                      lr=lr, value_range=value_range)
    parsed = parse_units(units, model)
    seeds = [int(seed)] * len(parsed) if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != len(parsed):
        raise ValueError(f"got {len(seeds)} seeds for {len(parsed)} units")
    in_size = int(input_size or model_input_size(model))
    canvas = int(image_size or round(cfg.canvas_ratio * in_size))
    if in_size < 1 or canvas < 2:
        raise ValueError(f"need input_size >= 1 and image_size >= 2, got {in_size}, {canvas}")
    mag = power_law_spectrum(canvas) if spectrum is None else spectrum
    parts = [_maco_batch(model, part, part_seeds, cfg, mag, canvas, in_size, normalize,
                         report)
             for part, part_seeds, report in chunked_sweep(parsed, seeds, batch_size,
                                                           cfg.steps, progress, "maco")]
    images = torch.cat([p[0] for p in parts])
    alpha = torch.cat([p[1] for p in parts])
    values = crop_values(model, parsed, images, input_size=in_size, normalize=normalize,
                         crops=eval_crops, crop_scale=cfg.crop_scale,
                         center_std=cfg.center_std, oversample=cfg.oversample)
    return MacoResult(images, alpha, values, [str(u) for u in parsed], cfg)


def _maco_batch(model: nn.Module, units: list[Unit], seeds: list[int], cfg: MacoConfig,
                magnitude: Tensor, canvas: int, in_size: int, normalize: NormalizeLike,
                report: Callable[[int, int], None]) -> tuple[Tensor, Tensor]:
    """One batch: ``(images, alpha)`` on the CPU."""
    device = model_device(model)
    b = len(units)
    names = [str(u) for u in units]
    cpu_gens = [make_generator(s) for s in seeds]
    param = MacoParam(b, magnitude, canvas, cfg.value_range, generators=cpu_gens,
                      device=device)
    boxes = draw_boxes(cpu_gens, cfg.steps, cfg.crops, cfg.crop_scale, cfg.center_std)
    noise_gens = [make_generator((s + NOISE_SEED_OFFSET) % 2**63, device) for s in seeds]
    obj = _crops_objective(units, cfg.crops)
    norm = as_normalize(normalize, device)
    opt = torch.optim.NAdam([param.raw], lr=cfg.lr)
    alpha = torch.zeros(param.shape, device=device)
    s = in_size
    with preserved_state(model), capture(model, obj.model_layers) as acts:
        for step in range(1, cfg.steps + 1):
            opt.zero_grad(set_to_none=True)
            img = param()
            img.retain_grad()
            x = crop_resize(img, boxes[step - 1], s, cfg.oversample)
            if cfg.noise > 0:
                shape = (cfg.crops, 3, s, s)
                gauss = torch.cat([torch.randn(shape, generator=g, device=device)
                                   for g in noise_gens])
                unif = torch.cat([torch.rand(shape, generator=g, device=device)
                                  for g in noise_gens])
                x = x + gauss * cfg.noise + (unif - 0.5) * cfg.noise
            vals = _run(model, obj, x, norm, acts).view(b, cfg.crops).mean(1)
            (-vals.sum()).backward()
            grad = img.grad
            ok = torch.isfinite(vals) & torch.isfinite(grad).flatten(1).all(1)
            if not bool(ok.all()):
                bad = (~ok).nonzero().flatten().tolist()
                raise FloatingPointError(
                    f"non-finite objective or gradient for unit {names[bad[0]]!r} at MACO "
                    f"step {step} ({len(bad)} unit(s) affected: {[names[i] for i in bad[:5]]})")
            alpha += grad.abs()
            opt.step()
            report(step, cfg.steps)
        with torch.no_grad():
            images = param().float().cpu()
    return images, alpha.float().cpu()
