"""Measurements for the manipulation experiments (`dont-trust-your-eyes…` §2.1, §2.2).

Pure tensor functions: similarity of visualizations (Fig. 5 "near-identical"), similarity
of a visualization to an embedded image (Fig. 1), and whether a deceptive unit's
visualization drives the original model's target unit ``D`` hardest (Fig. 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from lightning_fv.optvis.hooks import record
from lightning_fv.optvis.layout import Layout, channels_first


def image_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of paired images ``(N, C, H, W)`` (all pixels): ``(N,)``.
    ``b`` is resized bilinearly to ``a``'s size if needed."""
    if a.shape[-2:] != b.shape[-2:]:
        b = nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear", antialias=True,
                                      align_corners=False)
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-12)).float()


def pairwise_similarity(images: Tensor) -> Tensor:
    """Mean Pearson correlation over all pairs ``i < j`` of ``(N, C, H, W)`` images (a
    scalar; 1 = identical up to brightness/contrast)."""
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 images, got {n}")
    x = images.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = x @ x.T
    iu = torch.triu_indices(n, n, 1)
    return sim[iu[0], iu[1]].mean().float()


@torch.no_grad()
def texture_descriptors(model: nn.Module, images: Tensor,
                        layers: Sequence[str] = ("block1", "block2"),
                        batch_size: int = 128) -> Tensor:
    """Per-image texture statistics ``(N, D)``: the spatial mean and standard deviation of
    every channel of ``layers`` (Gatys-style first and second moments, as in AdaIN), in
    float64. Position-free, so two renders of one texture at different phases match."""
    def moments(a: Tensor, layout: Layout) -> Tensor:
        f = channels_first(a, layout).double().flatten(2)
        return torch.cat([f.mean(2), f.std(2, unbiased=False)], 1)

    acts = record(model, list(layers), images, batch_size=batch_size, reduce=moments,
                  to_cpu=True)
    return torch.cat([acts[name] for name in layers], 1)


def texture_similarity(model: nn.Module, images: Tensor, natural: Tensor,
                       layers: Sequence[str] = ("block1", "block2")) -> Tensor:
    """Mean pairwise similarity of ``(N, 3, H, W)`` images as textures (a scalar in [−1, 1]).

    Feature visualizations of one unit from different seeds show the same pattern at
    different positions, which pixel correlation (:func:`pairwise_similarity`) scores near 0.
    Here each image is described by :func:`texture_descriptors` of a fixed reference model's
    early ``layers``; every statistic is standardized with its mean and standard deviation over
    ``natural`` images, and the score is the mean Pearson correlation of the standardized
    descriptors over all pairs ``i < j``. Random pairs of natural images score ≈ 0; renders
    of one unit from different seeds ≈ 1. Use the *original* model (or any model whose
    ``layers`` the manipulation does not touch) as the reference.
    """
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 images, got {images.shape[0]}")
    ref = texture_descriptors(model, natural, layers)
    d = (texture_descriptors(model, images, layers) - ref.mean(0)) / ref.std(0).clamp_min(1e-8)
    d = d - d.mean(1, keepdim=True)
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = d @ d.T
    iu = torch.triu_indices(len(d), len(d), 1)
    return sim[iu[0], iu[1]].mean().float()


@torch.no_grad()
def layer_response(model: nn.Module, layer: str, images: Tensor, batch_size: int = 128) -> Tensor:
    """Channel-mean activations ``(N, C)`` of ``layer`` (or ``(N, C)`` for a linear layer)."""
    return record(model, [layer], images, batch_size=batch_size, reduce="channel_mean",
                  to_cpu=True)[layer]


def target_hit_rate(response: Tensor, targets: Sequence[int],
                    scale: Tensor | None = None) -> tuple[float, Tensor]:
    """Fraction of visualizations whose (optionally ``scale``-normalized) response
    ``(N, C)`` is maximal at the target unit ``targets[i]``; also the argmax ``(N,)``."""
    r = response if scale is None else response / scale.clamp_min(1e-12)
    arg = r.argmax(1)
    t = torch.as_tensor(list(targets))
    return float((arg == t).float().mean()), arg


@torch.no_grad()
def compare_predictions(original: nn.Module, manipulated: nn.Module,
                        batches: Iterable[tuple[Tensor, Tensor]], topk: Sequence[int] = (1, 5),
                        device: torch.device | str | None = None) -> dict[str, float]:
    """Top-k accuracy of the original and the manipulated model on the same labelled images
    (§2.1: "69.146 % → 68.744 % top-1"; §2.2: top-1 and top-5 unchanged), and how often
    their outputs agree.

    Args:
        original, manipulated: classifiers ``(B, 3, H, W) → (B, K)`` logits (both put in
            eval mode; their modes are restored afterwards).
        batches: ``(images (B, 3, H, W), labels (B,))`` pairs, e.g. a ``DataLoader``; images
            as the models take them.
        topk: the ``k`` of each reported accuracy (each ``k ≤ K``).
        device: where to run (default: ``original``'s parameters' device).

    Returns:
        ``{"n", "original/top{k}", "manipulated/top{k}", "delta_pp/top{k}" (percentage
        points, manipulated − original), "same_top1_fraction", "identical_fraction"
        (outputs bit-identical), "max_abs_logit_change"}``.

    Raises:
        ValueError: no images, a ``k`` larger than the number of outputs, or labels whose
            count differs from the images'.
    """
    modes = (original.training, manipulated.training)
    original.eval()
    manipulated.eval()
    dev = torch.device(device) if device is not None else next(
        (p.device for p in original.parameters()), torch.device("cpu"))
    ks = sorted({int(k) for k in topk})
    hits = {("original", k): 0 for k in ks} | {("manipulated", k): 0 for k in ks}
    n = same = identical = 0
    max_change = 0.0
    try:
        for x, y in batches:
            x, y = x.to(dev), torch.as_tensor(y).to(dev)
            if y.shape != (x.shape[0],):
                raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            a, b = original(x), manipulated(x)
            if ks[-1] > a.shape[1]:
                raise ValueError(f"topk {ks[-1]} exceeds the models' {a.shape[1]} outputs")
            for name, out in (("original", a), ("manipulated", b)):
                top = out.topk(ks[-1], dim=1).indices
                for k in ks:
                    hits[(name, k)] += int((top[:, :k] == y[:, None]).any(1).sum())
            same += int((a.argmax(1) == b.argmax(1)).sum())
            identical += int((a == b).flatten(1).all(1).sum())
            max_change = max(max_change, float((a - b).abs().max()) if a.numel() else 0.0)
            n += x.shape[0]
    finally:
        original.train(modes[0])
        manipulated.train(modes[1])
    if n == 0:
        raise ValueError("compare_predictions got no images")
    out: dict[str, float] = {"n": float(n)}
    for k in ks:
        o, m = hits[("original", k)] / n, hits[("manipulated", k)] / n
        out[f"original/top{k}"] = o
        out[f"manipulated/top{k}"] = m
        out[f"delta_pp/top{k}"] = 100.0 * (m - o)
    out["same_top1_fraction"] = same / n
    out["identical_fraction"] = identical / n
    out["max_abs_logit_change"] = max_change
    return out


__all__ = [
    "compare_predictions",
    "image_correlation",
    "layer_response",
    "pairwise_similarity",
    "target_hit_rate",
    "texture_descriptors",
    "texture_similarity",
]
