"""Metrics of invariant-set samples (``equidiff-invariant-sets-thesis`` §4.1.2, App. .4).

Pure tensor functions first, ``torchmetrics`` wrappers after (they sync across processes by
summation, so they work under DDP unchanged):

- activation fidelity (§4.1.2): per-sample ``L1 = ‖r − r*‖₁`` and ``L2 = ‖r − r*‖₂`` between
  the responses of the samples and the target responses (:func:`activation_fidelity`);
- probability preservation (§4.1.2): ``KL(p* ‖ p)`` between the query's and the sample's class
  distributions (:func:`probability_kl`);
- spectral sweep (App. .4.2): the squared deviation ``‖L(F_c(x)) − L(x*)‖²`` of the response
  of the ideal low-pass filtered sample from the target for cutoffs ``c = 0.1 … 0.9``
  (:func:`spectral_sweep`, figure :func:`spectral_sweep_figure`); low deviation at low cutoffs
  means the invariance lives in coarse, visible structure (App. .4.3);
- image quality (§4.1.2): FID through ``torchmetrics.image.fid.FrechetInceptionDistance``
  with a custom feature extractor (:func:`fid_metric`): the torch-fidelity Inception network
  when installed with its weights, torchvision's Inception-v3 from a local weights file
  (:class:`InceptionPoolFeatures`, *not* the TF-FID network, so not comparable to published
  FIDs), or any classifier's penultimate features offline (:class:`ClassifierFeatures`);
- diversity: mean pairwise Euclidean distance within a set (:func:`pairwise_diversity`) and
  the distance of each sample to its query (:func:`query_distance`), as RMS per pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_fv.diffusion.lowpass import lowpass

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_CUTOFFS",
    "ActivationFidelity",
    "ClassifierFeatures",
    "InceptionPoolFeatures",
    "SetDiversity",
    "SpectralSweep",
    "activation_fidelity",
    "fid_metric",
    "invariant_metrics",
    "pairwise_diversity",
    "probability_kl",
    "query_distance",
    "spectral_sweep",
    "spectral_sweep_figure",
]

DEFAULT_CUTOFFS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Cutoffs of the sweep in thesis App. .4.2 ("from 0.1 to 0.9")."""


def _pairs(responses: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    r = responses.reshape(responses.shape[0], -1).float()
    t = target.reshape(target.shape[0], -1).float()
    if t.shape[0] == 1 and r.shape[0] > 1:
        t = t.expand_as(r)
    if r.shape != t.shape:
        raise ValueError(f"responses {tuple(responses.shape)} and target "
                         f"{tuple(target.shape)} do not match")
    return r, t


def activation_fidelity(responses: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Per-sample ``{"l1": ‖r − r*‖₁, "l2": ‖r − r*‖₂}`` ``(B,)`` for responses ``(B, m)``
    and targets ``(B, m)`` or ``(1, m)`` (thesis §4.1.2 "activation fidelity")."""
    r, t = _pairs(responses, target)
    d = r - t
    return {"l1": d.abs().sum(1), "l2": d.pow(2).sum(1).sqrt()}


def probability_kl(target_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(softmax(target) ‖ softmax(logits))`` per sample ``(B,)`` in nats (thesis §4.1.2
    "probability preservation"); ``target_logits`` ``(B, K)`` or ``(1, K)``."""
    lt, lp = _pairs(target_logits, logits)
    log_p_star, log_p = F.log_softmax(lt, 1), F.log_softmax(lp, 1)
    return (log_p_star.exp() * (log_p_star - log_p)).sum(1)


@torch.no_grad()
def spectral_sweep(objective: Callable[[Tensor], Tensor], images: Tensor, target: Tensor,
                   cutoffs: Sequence[float] = DEFAULT_CUTOFFS,
                   distance: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Deviation from the target under low-pass filtering, thesis App. .4.2.

    Args:
        objective: ``L``: images ``(B, 3, H, W)`` → responses ``(B, m)``.
        images: samples ``(B, 3, H, W)`` in [0, 1].
        target: ``L(x*)`` ``(B, m)`` or ``(1, m)``.
        cutoffs: relative cutoffs of the ideal low-pass filter (App. .4.1, Eq. 3).
        distance: ``d(r, r*) → (B,)``; default the squared Euclidean distance (an
            :class:`~lightning_fv.diffusion.invariant.InvariantObjective`'s ``compare`` is used
            when ``objective`` has one, e.g. KL for probabilities).

    Returns:
        ``(len(cutoffs), B)`` deviations.
    """
    if distance is None:
        distance = getattr(objective, "compare", None) or (
            lambda r, t: (r - t).pow(2).flatten(1).sum(1))
    out = []
    for c in cutoffs:
        resp = objective(lowpass(images, float(c)))
        resp = resp[:, None] if resp.dim() == 1 else resp
        tgt = target.expand_as(resp) if target.shape[0] == 1 else target
        out.append(distance(resp.float(), tgt.float()))
    return torch.stack(out)


def spectral_sweep_figure(cutoffs: Sequence[float], sweeps: dict[str, Tensor],
                          title: str | None = None, log_scale: bool = True) -> Figure:
    """Median and interquartile band of each sweep ``(len(cutoffs), B)`` against the cutoff
    (App. .4.2 step 4, thesis Fig. 4.5). ``sweeps`` maps a label (e.g. "dual loss",
    "query") to deviations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    c = [float(v) for v in cutoffs]
    for label, dev in sweeps.items():
        d = dev.detach().double().cpu()
        d = d[:, None] if d.dim() == 1 else d
        med = d.median(1).values.numpy()
        lo, hi = d.quantile(0.25, 1).numpy(), d.quantile(0.75, 1).numpy()
        ax.plot(c, med, marker="o", label=label)
        ax.fill_between(c, lo, hi, alpha=0.2)
    if log_scale:
        ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("relative low-pass cutoff")
    ax.set_ylabel("deviation from target ‖L(F(x)) − L(x*)‖²")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def pairwise_diversity(images: Tensor) -> Tensor:
    """Mean pairwise distance of a set ``(N, ...)`` (N ≥ 2), as RMS per element
    (``‖a − b‖₂ / sqrt(numel)``); a scalar tensor."""
    if images.shape[0] < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {images.shape[0]}")
    x = images.reshape(images.shape[0], -1).double()
    d = torch.cdist(x, x)
    n = x.shape[0]
    return (d.sum() / (n * (n - 1)) / x.shape[1] ** 0.5).float()


def query_distance(images: Tensor, query: Tensor) -> Tensor:
    """RMS per-pixel distance ``(B,)`` of each sample to its query ``(B, ...)``/``(1, ...)``."""
    x, q = _pairs(images, query)
    return (x - q).pow(2).mean(1).sqrt()


@torch.no_grad()
def invariant_metrics(objective: Any, result: Any, query: Tensor, samples_per_query: int,
                      cutoffs: Sequence[float] = DEFAULT_CUTOFFS) -> dict[str, Tensor]:
    """Per-sample and per-set metrics of an invariant-set result for ``Q`` queries.

    Args:
        objective: the objective ``L`` (its ``distance == "kl"`` adds ``kl``).
        result: an :class:`~lightning_fv.diffusion.invariant.InvariantSetResult` with
            ``B = Q · samples_per_query`` samples (``images``, ``responses``, ``target``,
            ``query_index``).
        query: the query images ``(Q, 3, H, W)`` in [0, 1].
        samples_per_query: ``n``, consecutive samples per query.
        cutoffs: cutoffs of the spectral sweep (App. .4.2).

    Returns:
        ``l1``, ``l2`` ``(B,)``, ``kl`` ``(B,)`` for probability objectives, ``sweep``
        ``(C, B)``, ``pixel_distance`` ``(B,)`` to the query (RMS per pixel) and
        ``diversity`` ``(Q,)`` (NaN when ``n == 1``).
    """
    n = samples_per_query
    out: dict[str, Tensor] = {}
    fid = activation_fidelity(result.responses, result.target)
    out["l1"], out["l2"] = fid["l1"], fid["l2"]
    if getattr(objective, "distance", "l2") == "kl":
        out["kl"] = probability_kl(result.target, result.responses)
    out["sweep"] = spectral_sweep(objective, result.images, result.target, tuple(cutoffs))
    q = query.to(result.images.device)[result.query_index]
    out["pixel_distance"] = query_distance(result.images, q)
    imgs = result.images.reshape(-1, n, *result.images.shape[1:])
    out["diversity"] = (torch.stack([pairwise_diversity(s) for s in imgs]) if n > 1
                        else torch.full((imgs.shape[0],), float("nan")))
    return out


class ClassifierFeatures(nn.Module):
    """A classifier's penultimate (or any layer's pooled) features as an FID extractor.

    ``forward(images [0, 1]) → (B, num_features)``: ``model.features(x)`` when the model has
    it (the bundled :class:`~lightning_fv.models.SmallCNN`), else the spatial mean of the
    output of ``layer``.
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.layer = layer
        with torch.no_grad():
            p = next(iter(model.parameters()))
            self.num_features = int(self.forward(torch.zeros(1, 3, 32, 32, device=p.device,
                                                             dtype=p.dtype)).shape[1])

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.layer is None and hasattr(self.model, "features"):
            f = self.model.features(x)
        else:
            from lightning_fv.optvis.hooks import capture

            if self.layer is None:
                raise ValueError("give layer= for a model without a `features` method")
            with capture(self.model, [self.layer], detach=True) as acts:
                self.model(x)
                f = acts[self.layer]
        return f.flatten(2).mean(2) if f.dim() > 2 else f


class InceptionPoolFeatures(nn.Module):
    """torchvision Inception-v3 pool features ``(B, 2048)`` from a *local* weights file
    (``inception_v3_google-0cc3c7bd.pth``); images in [0, 1] are resized to 299 and
    ImageNet-normalized. Not the TF-FID network: values differ from published FIDs."""

    num_features = 2048

    def __init__(self, weights_path: str) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        from lightning_fv.utils.checkpoint import load_state_dict

        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        net.load_state_dict(load_state_dict(weights_path, prefixes=()))
        net.fc = nn.Identity()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        out = self.net((x - self.mean) / self.std)
        return out[0] if isinstance(out, tuple) else out


def fid_metric(feature: nn.Module | str = "inception", **kwargs: object) -> Metric:
    """A ``FrechetInceptionDistance`` metric (``update(images [0, 1], real=bool)``,
    ``compute()``) with ``normalize=True``.

    ``feature`` is ``"inception"`` (torchmetrics' default 2048-d torch-fidelity Inception;
    needs ``torch-fidelity`` and its cached weights), or an ``nn.Module`` with
    ``num_features`` (:class:`ClassifierFeatures`, :class:`InceptionPoolFeatures`).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if isinstance(feature, str):
        if feature != "inception":
            raise ValueError(f"feature must be 'inception' or an nn.Module, got {feature!r}")
        try:
            return FrechetInceptionDistance(feature=2048, normalize=True, **kwargs)
        except (ModuleNotFoundError, RuntimeError, OSError) as err:
            raise RuntimeError(
                "the default Inception FID needs torch-fidelity and its weights (no download "
                "here); pass feature=ClassifierFeatures(model) or "
                f"InceptionPoolFeatures('/path/to/weights.pth') instead ({err})") from err
    return FrechetInceptionDistance(feature=feature, normalize=True, **kwargs)


class ActivationFidelity(Metric):
    """Streaming mean L1 / L2 fidelity (and optional KL) over samples (thesis §4.1.2).

    ``update(responses (B, m), target (B, m))``; with ``with_kl=True`` both are read as
    logits and the mean ``KL(p* ‖ p)`` is added. ``compute()`` → ``{"l1", "l2"[, "kl"]}``.
    """

    full_state_update = False

    def __init__(self, with_kl: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.with_kl = with_kl
        for name in ("l1_sum", "l2_sum", "kl_sum", "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, responses: Tensor, target: Tensor) -> None:
        fid = activation_fidelity(responses, target)
        self.l1_sum += fid["l1"].double().sum()
        self.l2_sum += fid["l2"].double().sum()
        if self.with_kl:
            self.kl_sum += probability_kl(target, responses).double().sum()
        self.count += fid["l1"].numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp_min(1)
        out = {"l1": self.l1_sum / n, "l2": self.l2_sum / n}
        if self.with_kl:
            out["kl"] = self.kl_sum / n
        return out


class SpectralSweep(Metric):
    """Streaming mean deviation per cutoff (App. .4.2): ``update(deviations (C, B))`` from
    :func:`spectral_sweep`; ``compute()`` → ``(C,)`` means over all samples."""

    full_state_update = False

    def __init__(self, cutoffs: Sequence[float] = DEFAULT_CUTOFFS, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.cutoffs = tuple(float(c) for c in cutoffs)
        self.add_state("dev_sum", torch.zeros(len(self.cutoffs), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, deviations: Tensor) -> None:
        if deviations.dim() != 2 or deviations.shape[0] != len(self.cutoffs):
            raise ValueError(f"expected deviations ({len(self.cutoffs)}, B), got "
                             f"{tuple(deviations.shape)}")
        self.dev_sum += deviations.double().sum(1)
        self.count += deviations.shape[1]

    def compute(self) -> Tensor:
        return self.dev_sum / self.count.clamp_min(1)


class SetDiversity(Metric):
    """Mean over sets of :func:`pairwise_diversity`: ``update(images (N, ...))`` with one
    invariant set (N ≥ 2 samples of one query) per call; ``compute()`` → scalar."""

    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("div_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sets", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, images: Tensor) -> None:
        self.div_sum += pairwise_diversity(images).double()
        self.sets += 1

    def compute(self) -> Tensor:
        return self.div_sum / self.sets.clamp_min(1)
