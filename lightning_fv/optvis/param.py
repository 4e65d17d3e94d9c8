"""Image parameterizations (Lucent's ``param``): pixel, Fourier, colour decorrelation.

An :class:`ImageParam` holds the raw tensor that the optimizer updates and maps it to a
batch of images ``(B, C, H, W)``::

    image = output( colour( spatial(raw) ) )

- ``spatial``: identity (pixel) or the inverse real 2-D FFT of a spectrum scaled by
  ``1 / f^decay_power`` (spectrally decorrelated, Olah et al. 2017; the parameterization
  used by Lucent and by `dont-trust-your-eyes…` App. C.2).
- ``colour``: identity or a fixed 3×3 colour-decorrelation matrix (Lucent's ImageNet
  matrix by default, or one computed from a data set with :func:`color_matrix_from_images`).
- ``output``: ``"sigmoid"`` (valid [0, 1] RGB, as `inverse-feature-visualization` §2.4
  P_rgb), ``"clamp"`` (clip to [0, 1]) or ``"none"`` (unbounded, for closed-form tests).

Every parameterization can start from given images: :meth:`ImageParam.from_images`
computes the raw tensor with the exact inverse of each stage (up to the open-interval
clipping ``eps`` of the sigmoid's inverse).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Output = Literal["sigmoid", "clamp", "none"]

# Lucent's colour correlation matrix (square root of the ImageNet RGB covariance).
IMAGENET_COLOR_CORRELATION = (
    (0.26, 0.09, 0.02),
    (0.27, 0.00, -0.05),
    (0.27, -0.09, 0.03),
)


def color_matrix_from_images(images: Tensor) -> Tensor:
    """Square root of the RGB covariance of ``images`` ``(N, 3, H, W)``, as ``(3, 3)``.

    ``U·diag(√s)`` from the SVD ``cov = U·diag(s)·Uᵀ``, the recipe behind Lucent's fixed
    matrix. Pass the result as ``color_matrix=`` to :class:`ImageParam`.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    px = images.permute(0, 2, 3, 1).reshape(-1, 3).double()
    px = px - px.mean(0)
    cov = px.T @ px / max(1, px.shape[0] - 1)
    u, s, _ = torch.linalg.svd(cov)
    return (u * s.clamp_min(0).sqrt()).float()


def _frequencies(h: int, w: int) -> Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


class ImageParam(nn.Module):
    """A batch of ``batch`` images ``(B, channels, h, w)`` parameterized for optimization.

    Args:
        batch, channels, h, w: image batch shape.
        fft: spectral (Fourier) parameterization instead of pixels.
        decorrelate: apply the colour-decorrelation matrix (3 channels only).
        output: ``"sigmoid"``, ``"clamp"`` or ``"none"``.
        decay_power: spectrum scaling exponent ``1/f^decay_power`` (Lucent: 1).
        color_matrix: ``(3, 3)`` matrix; default Lucent's ImageNet matrix.
        sd: standard deviation of the random initial raw tensor (Lucent: 0.01).
        generators: one ``torch.Generator`` per sample (so a sample's initial noise does not
            depend on its position in the batch), a single generator, or ``None``.
        device, dtype: where the raw tensor lives (float32 by default).
    """

    def __init__(
        self,
        batch: int,
        channels: int = 3,
        h: int = 224,
        w: int | None = None,
        *,
        fft: bool = True,
        decorrelate: bool = True,
        output: Output = "sigmoid",
        decay_power: float = 1.0,
        color_matrix: Tensor | Sequence[Sequence[float]] | None = None,
        sd: float = 0.01,
        generators: Sequence[torch.Generator] | torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        w = h if w is None else w
        if output not in ("sigmoid", "clamp", "none"):
            raise ValueError(f"unknown output {output!r}; valid: 'sigmoid', 'clamp', 'none'")
        if decorrelate and channels != 3:
            raise ValueError(f"colour decorrelation needs 3 channels, got {channels}")
        if batch < 1 or h < 1 or w < 1:
            raise ValueError(f"invalid image batch shape {(batch, channels, h, w)}")
        self.shape = (batch, channels, h, w)
        self.fft, self.decorrelate, self.output = fft, decorrelate, output
        self.decay_power = decay_power
        cm = torch.as_tensor(
            IMAGENET_COLOR_CORRELATION if color_matrix is None else color_matrix,
            dtype=torch.float32,
        )
        if cm.shape != (3, 3):
            raise ValueError(f"color_matrix must be (3, 3), got {tuple(cm.shape)}")
        max_norm = cm.norm(dim=0).max()
        self.register_buffer("color_matrix", (cm / max_norm).to(device=device, dtype=dtype))
        if fft:
            freqs = _frequencies(h, w)
            scale = 1.0 / torch.clamp(freqs, min=1.0 / max(w, h)) ** decay_power
            self.register_buffer("spectrum_scale", scale.to(device=device, dtype=dtype))
            raw_shape = (batch, channels, h, w // 2 + 1, 2)
        else:
            raw_shape = (batch, channels, h, w)
        self.raw = nn.Parameter(self._noise(raw_shape, sd, generators, device, dtype))

    @staticmethod
    def _noise(shape: tuple[int, ...], sd: float, generators: object,
               device: object, dtype: torch.dtype) -> Tensor:
        if isinstance(generators, Sequence):
            if len(generators) != shape[0]:
                raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}")
            noise = torch.stack([torch.randn(shape[1:], generator=g) for g in generators])
        else:
            noise = torch.randn(shape, generator=generators)
        return (noise * sd).to(device=device, dtype=dtype)

    # -- the three stages and their inverses ------------------------------------------
    def _spatial(self, raw: Tensor) -> Tensor:
        if not self.fft:
            return raw
        h, w = self.shape[-2:]
        spectrum = torch.view_as_complex(raw.float().contiguous()) * self.spectrum_scale
        return torch.fft.irfft2(spectrum, s=(h, w), norm="ortho").to(raw.dtype) / 4.0

    def _spatial_inv(self, x: Tensor) -> Tensor:
        if not self.fft:
            return x
        spectrum = torch.fft.rfft2(x.float() * 4.0, norm="ortho") / self.spectrum_scale
        return torch.view_as_real(spectrum).to(x.dtype)

    def _color(self, x: Tensor) -> Tensor:
        if not self.decorrelate:
            return x
        return torch.einsum("bchw,dc->bdhw", x, self.color_matrix)

    def _color_inv(self, x: Tensor) -> Tensor:
        if not self.decorrelate:
            return x
        inv = torch.linalg.inv(self.color_matrix.double()).to(x.dtype)
        return torch.einsum("bchw,dc->bdhw", x, inv)

    def _output(self, x: Tensor) -> Tensor:
        if self.output == "sigmoid":
            return torch.sigmoid(x)
        if self.output == "clamp":
            return x.clamp(0, 1)
        return x

    def _output_inv(self, x: Tensor, eps: float) -> Tensor:
        if self.output == "sigmoid":
            return torch.logit(x.clamp(eps, 1 - eps))
        if self.output == "clamp":
            return x.clamp(0, 1)
        return x

    def forward(self) -> Tensor:
        """The images ``(B, C, H, W)`` (in [0, 1] unless ``output="none"``)."""
        return self._output(self._color(self._spatial(self.raw)))

    @torch.no_grad()
    def set_images(self, images: Tensor, eps: float = 1e-6) -> ImageParam:
        """Set the raw tensor so that ``self()`` returns ``images`` ``(B, C, H, W)``."""
        if tuple(images.shape) != self.shape:
            raise ValueError(f"expected images of shape {self.shape}, got {tuple(images.shape)}")
        x = images.to(device=self.raw.device, dtype=self.raw.dtype)
        self.raw.copy_(self._spatial_inv(self._color_inv(self._output_inv(x, eps))))
        return self

    @classmethod
    def from_images(cls, images: Tensor, **kwargs: object) -> ImageParam:
        """A parameterization of the same kind starting exactly at ``images`` ``(B, C, H, W)``."""
        b, c, h, w = images.shape
        kwargs.setdefault("device", images.device)
        param = cls(b, c, h, w, **kwargs)  # type: ignore[arg-type]
        return param.set_images(images)


#: The image parameterizations of `inverse-feature-visualization`, as :class:`ImageParam`
#: keywords: ``p_rgb`` (§3.2, the default of its experiments: the sigmoid of unbounded RGB
#: pixels ``v ∈ ℝ^{H×W×3}``, image = ``sigmoid(v)`` in (0, 1)), ``p_fft`` (§3.6: the inverse
#: DFT of the raw spectrum, then the sigmoid) and ``p_ffte`` (§3.6: the spectrum scaled by
#: ``1/f`` before the inverse DFT, favouring low frequencies, as Olah et al. 2017). None of
#: them decorrelates colours.
IFV_PARAMETERIZATIONS: dict[str, dict[str, object]] = {
    "p_rgb": {"fft": False, "decorrelate": False, "output": "sigmoid"},
    "p_fft": {"fft": True, "decorrelate": False, "output": "sigmoid", "decay_power": 0.0},
    "p_ffte": {"fft": True, "decorrelate": False, "output": "sigmoid", "decay_power": 1.0},
}


def ifv_parameterization(name: str) -> dict[str, object]:
    """The :class:`ImageParam` keywords of a named parameterization of
    `inverse-feature-visualization` (see :data:`IFV_PARAMETERIZATIONS`); an unknown name
    raises, listing the valid ones."""
    if name not in IFV_PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; valid: "
                         f"{sorted(IFV_PARAMETERIZATIONS)}")
    return dict(IFV_PARAMETERIZATIONS[name])


def image(size: int, batch: int = 1, **kwargs: object) -> ImageParam:
    """Lucent's ``param.image(size, batch)``: Fourier + decorrelated + sigmoid by default."""
    return ImageParam(batch, 3, size, size, **kwargs)  # type: ignore[arg-type]
