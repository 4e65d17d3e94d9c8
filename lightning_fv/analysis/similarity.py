"""The similarity sanity check for feature visualizations (`dont-trust-your-eyes…` §3,
Fig. 6–11, App. C.3) and its out-of-distribution baseline variant (App. E).

For every chosen layer ``l`` the flattened activations ``f_l(x)`` of three groups of image
pairs are compared with a similarity ``Γ`` (Spearman by default; Pearson, cosine):

- ``upper``: natural vs natural image of the **same** class (the best we can hope for);
- ``lower``: natural vs natural image of **another** class (unrelated input);
- ``fv``: natural image vs feature visualization of the **same** class unit.

Natural images the model misclassifies are excluded (C.3). As in C.3 only every 10th /
100th / 5th comparison of the three groups is computed by default (``strides``); pairs are
enumerated in a fixed order (``i < j`` lexicographically for natural pairs; natural index
then visualization index for the ``fv`` group) and every ``stride``-th one is kept,
starting with the first.

Normalization (C.3): ``(fv − lower) / (upper − lower)`` per layer, so 1 means "as similar
as same-class natural images" and 0 "as similar as other-class natural images". Layers
whose bounds differ by strictly less than ``min_gap = 0.01`` are excluded. The normalized
curve is smoothed with a uniform window of 7 (``scipy.ndimage.convolve``, mode
``"reflect"``) and drawn with a band of ± the per-layer standard deviation of the ``fv``
values smoothed with a uniform window of 5.

App. E: with ``ood_natural``/``ood_labels`` the bounds come from a second natural data set
(same-class / other-class pairs within it) while ``fv`` is still measured against the
first. If feature visualizations failed the check only because they are out of
distribution, the OOD bounds would drop and the normalized ``fv`` similarity would rise.

Summary number (ours, not the paper's): ``score`` = the mean of the normalized ``fv``
similarity over the included layers. ``score < 0.5`` means the visualizations are, on
average over layers, processed more like images of *other* classes than like natural
images of their own class: the visualizations fail the sanity check.

Tensors in, tensors out: this module imports only torch and the package core.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_fv.analysis.rank import METRICS, standardize
from lightning_fv.optvis.hooks import OUTPUT_KEY, preserved_state, record
from lightning_fv.utils.device import model_device

DEFAULT_STRIDES = (10, 100, 5)
GROUPS = ("upper", "lower", "fv")


@dataclass
class SanityCheckResult:
    """Per-layer results of :func:`similarity_sanity_check` (all tensors ``(L,)``, CPU).

    Attributes:
        layers: layer names, in the order given.
        metric: ``"spearman"``, ``"pearson"`` or ``"cosine"``.
        upper, lower, fv: mean raw similarity of the three pair groups.
        upper_std, lower_std, fv_std: standard deviation over the pairs of each group.
        counts: number of pairs with a defined similarity per group, ``(L,)`` int64 each.
        undefined: pairs dropped per group because a vector was constant (NaN).
        normalized: ``(fv − lower) / (upper − lower)``, NaN for excluded layers.
        normalized_std: ``fv_std / (upper − lower)``, NaN for excluded layers.
        included: ``upper − lower ≥ min_gap`` (and all groups defined).
        smoothed: normalized curve smoothed over included layers (window 7), NaN elsewhere.
        band_lower, band_upper: ``smoothed ∓`` the smoothed std (window 5).
        score: mean of ``normalized`` over included layers (NaN if none).
        ood: whether the bounds come from an out-of-distribution set (App. E).
        n_natural, n_excluded, n_visualizations: images used / dropped as misclassified.
    """

    layers: list[str]
    metric: str
    upper: Tensor
    lower: Tensor
    fv: Tensor
    upper_std: Tensor
    lower_std: Tensor
    fv_std: Tensor
    counts: dict[str, Tensor]
    undefined: dict[str, Tensor]
    normalized: Tensor
    normalized_std: Tensor
    included: Tensor
    smoothed: Tensor
    band_lower: Tensor
    band_upper: Tensor
    score: float
    ood: bool = False
    n_natural: int = 0
    n_excluded: int = 0
    n_visualizations: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def passes(self) -> bool:
        """``score >= 0.5`` (see the module docstring); False when undefined."""
        return bool(self.score >= 0.5) if math.isfinite(self.score) else False

    def summary(self, prefix: str = "sanity") -> dict[str, float]:
        """Flat ``name → float`` dict for loggers (normalized and raw per layer, score)."""
        out: dict[str, float] = {f"{prefix}/score": float(self.score)}
        for i, name in enumerate(self.layers):
            out[f"{prefix}/normalized/{name}"] = float(self.normalized[i])
            for g in GROUPS:
                out[f"{prefix}/raw_{g}/{name}"] = float(getattr(self, g)[i])
        return out

    def table(self) -> str:
        """Markdown table: layer, raw upper/lower/fv, normalized."""
        rows = ["| layer | upper (same class) | lower (other class) | fv vs natural | "
                "normalized |", "|---|---|---|---|---|"]
        for i, name in enumerate(self.layers):
            rows.append(f"| {name} | {self.upper[i]:.3f} | {self.lower[i]:.3f} | "
                        f"{self.fv[i]:.3f} | {self.normalized[i]:.3f} |")
        return "\n".join(rows)


# --------------------------------------------------------------------------- activations


def layer_activations(model: nn.Module, images: Tensor, layers: Sequence[str],
                      batch_size: int = 64, with_output: bool = False
                      ) -> dict[str, Tensor]:
    """Flattened activations ``{layer: (N, D) float32}`` of ``images`` ``(N, 3, H, W)``.

    Every entry of the recorded output, in its recorded order, whatever its layout: a
    token layer ``(N, T, C)`` gives ``D = T·C`` with its prefix tokens (CLS, registers)
    included, a channels-last map ``D = H·W·C``. The similarities computed from these
    rows do not depend on the order of the entries, so conv maps, tokens and
    channels-last maps need no conversion; only the prefix tokens add to what a conv
    map would hold.

    The model runs in eval mode (its mode, ``requires_grad`` flags and grads are restored,
    hooks removed). Activations stay on the model's device. With ``with_output`` the
    model output is included under the key ``"__output__"``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    acts = record(model, list(layers), images, batch_size=batch_size,
                  reduce=lambda a: a.flatten(1).float(), keep_output=with_output)
    if with_output:
        acts[OUTPUT_KEY] = acts[OUTPUT_KEY].float()
    return dict(acts)


@torch.no_grad()
def correctly_classified(model: nn.Module, images: Tensor, labels: Tensor,
                         batch_size: int = 64) -> Tensor:
    """``(N,)`` bool: the model's top-1 class equals ``labels`` (C.3 excludes the others)."""
    device = model_device(model)
    preds = []
    with preserved_state(model):
        for s in range(0, images.shape[0], batch_size):
            preds.append(model(images[s:s + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(preds) == labels.cpu()


# --------------------------------------------------------------------------- pairs


def natural_pairs(labels: Tensor, stride_same: int = 10, stride_other: int = 100
                  ) -> tuple[Tensor, Tensor]:
    """Index pairs ``(P, 2)`` of same-class and of other-class natural images (C.3).

    All pairs ``i < j`` in lexicographic order; every ``stride``-th pair of each group is
    kept, starting with the first.
    """
    _check_stride(stride_same, "stride_same")
    _check_stride(stride_other, "stride_other")
    labels = labels.cpu()
    i, j = torch.triu_indices(labels.numel(), labels.numel(), offset=1)
    same = labels[i] == labels[j]
    ps = torch.stack([i[same], j[same]], 1)[::stride_same]
    po = torch.stack([i[~same], j[~same]], 1)[::stride_other]
    return ps, po


def visualization_pairs(labels: Tensor, vis_labels: Tensor, stride: int = 5) -> Tensor:
    """``(P, 2)`` pairs (natural index, visualization index) of the same class, every
    ``stride``-th in (natural, visualization) lexicographic order (C.3)."""
    _check_stride(stride, "stride_fv")
    match = labels.cpu().unsqueeze(1) == vis_labels.cpu().unsqueeze(0)
    return match.nonzero()[::stride]


def _check_stride(stride: int, name: str) -> None:
    if int(stride) < 1:
        raise ValueError(f"{name} must be a positive integer (every n-th pair), got {stride}")


def _pair_values(za: Tensor, zb: Tensor, pairs: Tensor, chunk: int = 1024) -> Tensor:
    """Dot products of the unit vectors of chosen pairs; one matrix product when the
    pairs cover a good part of all ``N × K`` combinations, else chunked row gathers."""
    pairs = pairs.to(za.device)
    if pairs.shape[0] == 0:
        return torch.empty(0, dtype=za.dtype, device=za.device)
    if 8 * pairs.shape[0] >= za.shape[0] * zb.shape[0]:
        from lightning_fv.analysis.rank import _dot_blocks

        full = torch.cat([_dot_blocks(za[s:s + 256], zb) for s in range(0, za.shape[0], 256)])
        return full[pairs[:, 0], pairs[:, 1]].clamp(-1, 1)
    out = torch.empty(pairs.shape[0], dtype=za.dtype, device=za.device)
    for s in range(0, pairs.shape[0], chunk):
        p = pairs[s:s + chunk]
        out[s:s + chunk] = (za[p[:, 0]] * zb[p[:, 1]]).sum(1)
    return out.clamp(-1, 1)


def similarity_groups(natural: Tensor, labels: Tensor, visualizations: Tensor,
                      vis_labels: Tensor, metric: str = "spearman",
                      strides: Sequence[int] = DEFAULT_STRIDES,
                      bound_natural: Tensor | None = None, bound_labels: Tensor | None = None,
                      dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Similarity values of the three pair groups for one layer.

    Args:
        natural: ``(N, D)`` flattened activations of (correctly classified) natural images.
        labels: ``(N,)`` their classes.
        visualizations: ``(F, D)`` activations of feature visualizations.
        vis_labels: ``(F,)`` the class unit each visualization maximizes.
        metric: ``"spearman"``, ``"pearson"`` or ``"cosine"``.
        strides: keep every n-th pair of (same class, other class, natural-vs-FV).
        bound_natural, bound_labels: ``(N', D')`` activations and labels of a second data
            set for the ``upper``/``lower`` bounds (App. E); default ``natural``.
        dtype: computation dtype.

    Returns:
        ``{"upper": (P1,), "lower": (P2,), "fv": (P3,)}`` (NaN where a vector is constant).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {list(METRICS)}")
    if len(strides) != 3:
        raise ValueError(f"strides must be (same, other, fv), got {list(strides)}")
    if visualizations.shape[1:] != natural.shape[1:]:
        raise ValueError(f"natural and visualization activations differ in size: "
                         f"{tuple(natural.shape)} vs {tuple(visualizations.shape)}; render the "
                         "visualizations at the natural images' resolution")
    zn = standardize(natural, metric, dtype, "nan", "natural")
    zf = standardize(visualizations, metric, dtype, "nan", "visualizations")
    if bound_natural is None:
        zb, bl = zn, labels
    else:
        if bound_labels is None:
            raise ValueError("bound_natural needs bound_labels")
        zb, bl = standardize(bound_natural, metric, dtype, "nan", "ood natural"), bound_labels
    ps, po = natural_pairs(bl, strides[0], strides[1])
    pf = visualization_pairs(labels, vis_labels, strides[2])
    return {"upper": _pair_values(zb, zb, ps), "lower": _pair_values(zb, zb, po),
            "fv": _pair_values(zn, zf, pf)}


# --------------------------------------------------------------------------- curve


def smooth_uniform(x: Tensor, window: int) -> Tensor:
    """Uniform moving average, ``scipy.ndimage.convolve(x, np.ones(w) / w)`` with its
    default ``mode="reflect"`` (``d c b a | a b c d | d c b a``), as C.3 smooths the curve.

    Args:
        x: ``(L,)`` values (finite).
        window: window size ``w >= 1``.

    Returns:
        ``(L,)`` smoothed values, same dtype.
    """
    if x.dim() != 1:
        raise ValueError(f"smooth_uniform expects (L,), got {tuple(x.shape)}")
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = x.numel()
    if n == 0:
        return x.clone()
    # scipy's convolve flips the kernel: for an even window the extra neighbour is on the
    # right (offsets -(w-1)//2 … w//2), for an odd one the window is centred
    left = (window - 1) // 2
    offsets = torch.arange(window) - left
    idx = torch.arange(n).unsqueeze(1) + offsets.unsqueeze(0)  # (L, w)
    m = torch.remainder(idx, 2 * n)
    m = torch.where(m >= n, 2 * n - 1 - m, m)
    return x[m.to(x.device)].mean(1)


def normalize_between_bounds(values: Tensor, lower: Tensor, upper: Tensor,
                             min_gap: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(values − lower) / (upper − lower)`` per layer (C.3).

    Returns ``(normalized, included)``; layers with ``upper − lower < min_gap`` (or
    undefined bounds) are excluded: ``normalized`` is NaN there and ``included`` False.
    """
    gap = upper - lower
    included = torch.isfinite(gap) & (gap >= min_gap) & torch.isfinite(values)
    norm = (values - lower) / torch.where(included, gap, torch.ones_like(gap))
    return torch.where(included, norm, torch.full_like(norm, float("nan"))), included


def smoothed_band(normalized: Tensor, normalized_std: Tensor, included: Tensor,
                  window: int = 7, std_window: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    """C.3's smoothed curve and ±1 std band over the included layers.

    Returns ``(smoothed, band_lower, band_upper)``, each ``(L,)`` with NaN at excluded
    layers; the band is ``smoothed ∓ smooth_uniform(std, std_window)``.
    """
    smoothed = torch.full_like(normalized, float("nan"))
    lo, hi = smoothed.clone(), smoothed.clone()
    if included.any():
        s = smooth_uniform(normalized[included], window)
        sd = smooth_uniform(normalized_std[included], std_window)
        smoothed[included], lo[included], hi[included] = s, s - sd, s + sd
    return smoothed, lo, hi


# --------------------------------------------------------------------------- the check


def summarize_groups(layers: Sequence[str], groups: Sequence[dict[str, Tensor]],
                     metric: str = "spearman", min_gap: float = 0.01, window: int = 7,
                     std_window: int = 5, ood: bool = False) -> SanityCheckResult:
    """Turn per-layer pair values (from :func:`similarity_groups`) into a
    :class:`SanityCheckResult`: means, stds, normalization, smoothing and the score."""
    stats: dict[str, list[Tensor]] = {f"{g}{s}": [] for g in GROUPS for s in ("", "_std")}
    counts: dict[str, list[int]] = {g: [] for g in GROUPS}
    undefined: dict[str, list[int]] = {g: [] for g in GROUPS}
    for values in groups:
        for g in GROUPS:
            v = values[g].double().cpu()
            ok = v[torch.isfinite(v)]
            counts[g].append(ok.numel())
            undefined[g].append(v.numel() - ok.numel())
            stats[g].append(ok.mean() if ok.numel() else torch.tensor(float("nan")))
            stats[f"{g}_std"].append(ok.std(unbiased=False) if ok.numel()
                                     else torch.tensor(float("nan")))
    t = {k: torch.stack(v) if v else torch.empty(0, dtype=torch.float64)
         for k, v in stats.items()}
    normalized, included = normalize_between_bounds(t["fv"], t["lower"], t["upper"], min_gap)
    gap = t["upper"] - t["lower"]
    nstd = torch.where(included, t["fv_std"] / torch.where(included, gap, 1.0),
                       torch.full_like(gap, float("nan")))
    smoothed, lo, hi = smoothed_band(normalized, nstd, included, window, std_window)
    score = float(normalized[included].mean()) if included.any() else float("nan")
    return SanityCheckResult(
        layers=list(layers), metric=metric, upper=t["upper"], lower=t["lower"], fv=t["fv"],
        upper_std=t["upper_std"], lower_std=t["lower_std"], fv_std=t["fv_std"],
        counts={g: torch.tensor(c) for g, c in counts.items()},
        undefined={g: torch.tensor(c) for g, c in undefined.items()},
        normalized=normalized, normalized_std=nstd, included=included, smoothed=smoothed,
        band_lower=lo, band_upper=hi, score=score, ood=ood)


def sanity_check_groups(
    model: nn.Module,
    layers: Sequence[str],
    natural: Tensor,
    labels: Tensor,
    visualizations: Tensor,
    vis_labels: Tensor,
    metric: str = "spearman",
    strides: Sequence[int] = DEFAULT_STRIDES,
    exclude_misclassified: bool = True,
    ood_natural: Tensor | None = None,
    ood_labels: Tensor | None = None,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float64,
    max_activation_bytes: int | None = 2 * 1024**3,
) -> tuple[dict[str, dict[str, Tensor]], Tensor]:
    """The per-layer part of the sanity check (§3, C.3): the pair values of
    :func:`similarity_groups` for each of ``layers``, and which natural images were kept.

    Layers are independent, so a run can be sharded by layer (each process passes its
    share, possibly none) and the gathered groups summarized with :func:`summarize_groups`.
    Arguments as in :func:`similarity_sanity_check`; ``max_activation_bytes`` bounds the
    float32 activations held at once (natural, visualization and OOD images together): the
    layers are recorded in consecutive groups that fit it (a layer larger than the bound
    alone), one pass over the images per group, instead of all layers in one pass (at
    ImageNet scale, 500 natural images and 1000 visualizations of ResNet-50's
    ``conv1``…``fc`` are about 14 GB). ``None``: one pass. The result does not depend on it.

    Returns:
        ``({layer: {"upper", "lower", "fv"}}`` on the CPU, ``keep`` ``(N,)`` bool: the
        natural images used (correctly classified ones with ``exclude_misclassified``)).
    """
    labels = labels.cpu().long()
    vis_labels = vis_labels.cpu().long()
    rows = natural.shape[0] + visualizations.shape[0] + (
        0 if ood_natural is None else ood_natural.shape[0])
    keep: Tensor | None = None
    groups = {}
    for chunk in layer_groups(model, natural, list(layers), rows, max_activation_bytes):
        acts = layer_activations(model, natural, chunk, batch_size, with_output=keep is None)
        if keep is None:
            out = acts.pop(OUTPUT_KEY)
            keep = (out.argmax(1).cpu() == labels if exclude_misclassified
                    else torch.ones_like(labels, dtype=torch.bool))
            if keep.sum() < 2:
                raise ValueError(f"only {int(keep.sum())} of {labels.numel()} natural images "
                                 "are correctly classified; the check needs at least 2")
        vacts = layer_activations(model, visualizations, chunk, batch_size)
        oacts = (layer_activations(model, ood_natural, chunk, batch_size)
                 if ood_natural is not None else None)
        for name in chunk:
            k = keep.to(acts[name].device)
            g = similarity_groups(
                acts[name][k], labels[keep], vacts[name], vis_labels, metric, strides,
                bound_natural=None if oacts is None else oacts[name],
                bound_labels=None if ood_labels is None else ood_labels.cpu().long(),
                dtype=dtype)
            groups[name] = {key: v.cpu() for key, v in g.items()}
        del acts, vacts, oacts
    assert keep is not None
    return groups, keep


def layer_groups(model: nn.Module, images: Tensor, layers: list[str], rows: int,
                 max_bytes: int | None) -> list[list[str]]:
    """``layers`` split, in order, into consecutive groups whose float32 activations for
    ``rows`` images total at most ``max_bytes`` (sizes read from one forward pass of
    ``images[:1]``); a layer larger than ``max_bytes`` is a group of its own. ``None``
    (or one layer): a single group."""
    if max_bytes is None or len(layers) <= 1:
        return [list(layers)]
    if max_bytes < 1:
        raise ValueError(f"max_activation_bytes must be positive or None, got {max_bytes}")
    probe = layer_activations(model, images[:1], layers, 1)
    out: list[list[str]] = []
    size = 0
    for name in layers:
        need = 4 * probe[name].shape[1] * rows
        if out and out[-1] and size + need <= max_bytes:
            out[-1].append(name)
            size += need
        else:
            out.append([name])
            size = need
    return out


def similarity_sanity_check(
    model: nn.Module,
    layers: Sequence[str],
    natural: Tensor,
    labels: Tensor,
    visualizations: Tensor,
    vis_labels: Tensor,
    metric: str = "spearman",
    strides: Sequence[int] = DEFAULT_STRIDES,
    exclude_misclassified: bool = True,
    ood_natural: Tensor | None = None,
    ood_labels: Tensor | None = None,
    min_gap: float = 0.01,
    window: int = 7,
    std_window: int = 5,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float64,
) -> SanityCheckResult:
    """Run the similarity sanity check (§3, C.3; App. E with ``ood_natural``).

    Args:
        model: a classifier whose output index ``c`` is class ``c``.
        layers: layer names to compare (e.g. ``["block1", "block2", "block3", "fc"]``).
        natural: ``(N, 3, H, W)`` natural images in the model's input range.
        labels: ``(N,)`` int classes.
        visualizations: ``(F, 3, H, W)`` feature visualizations of class units (same size
            as ``natural``).
        vis_labels: ``(F,)`` the class each visualization maximizes.
        metric: ``"spearman"`` (default), ``"pearson"`` or ``"cosine"``.
        strides: keep every n-th (same class, other class, natural-vs-FV) pair (C.3:
            ``(10, 100, 5)``; the paper used ``(1, 1, 1)`` for cosine).
        exclude_misclassified: drop natural images the model misclassifies (C.3).
        ood_natural, ood_labels: a second natural set for the bounds (App. E); its classes
            need not be the model's, so misclassification is not checked there.
        min_gap: exclude layers whose bounds differ by less than this (C.3: 0.01).
        window, std_window: smoothing windows of the curve and of the std band (C.3: 7, 5).
        batch_size: images per forward pass.
        dtype: similarity computation dtype.

    Returns:
        :class:`SanityCheckResult` (raw and normalized results).
    """
    if labels.shape[0] != natural.shape[0] or vis_labels.shape[0] != visualizations.shape[0]:
        raise ValueError(f"got {natural.shape[0]} natural images with {labels.shape[0]} labels "
                         f"and {visualizations.shape[0]} visualizations with "
                         f"{vis_labels.shape[0]} labels")
    if (ood_natural is None) != (ood_labels is None):
        raise ValueError("pass both ood_natural and ood_labels, or neither")
    per_layer, keep = sanity_check_groups(
        model, layers, natural, labels, visualizations, vis_labels, metric, strides,
        exclude_misclassified, ood_natural, ood_labels, batch_size, dtype)
    res = summarize_groups(layers, [per_layer[name] for name in layers], metric, min_gap,
                           window, std_window,
                           ood=ood_natural is not None)
    res.n_natural = int(keep.sum())
    res.n_excluded = int((~keep).sum())
    res.n_visualizations = int(visualizations.shape[0])
    return res
