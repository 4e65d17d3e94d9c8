"""``lightning-fv ifv``: the Grad-IFV experiment of `inverse-feature-visualization` §3.4 on
one layer of a model, written to metrics, figures and tensors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lightning_fv.models import build_model
from lightning_fv.models.normalize import Normalize

log = logging.getLogger(__name__)


def ifv(
    model: str = "bundled",
    layer: str = "block2.bn",
    checkpoint_path: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    n_targets: int = 32,
    n_canonical: int = 0,
    k: float = 2.0,
    steps: int = 256,
    lbfgs_steps: int = 100,
    reopt_steps: int = 100,
    image_size: int = 64,
    aggregation: str = "maxpool_mean",
    critical_rho: float | None = None,
    seed: int = 0,
    chunk_size: int = 64,
    jacobian_dtype: str | None = None,
    device: str = "auto",
    output_dir: str = "outputs/ifv",
) -> list[str]:
    """Sample Hoyer-sparse targets on ``layer``, visualize them, recover them with Grad-IFV
    and evaluate (angles, α_j, SSIM after re-optimization); write ``metrics.json``,
    ``ifv.png`` (Fig. 2-style), ``realizations.png`` and ``ifv.safetensors`` to
    ``output_dir``.

    Args:
        model: ``"bundled"`` / ``"bundled:digits"``, ``"small_cnn"``, a torchvision or timm name.
        layer: the module whose channels are the features (e.g. ``"block2.bn"``).
        checkpoint_path: local weights for ``model``.
        mean, std: input normalization for models that do not normalize themselves.
        n_targets, n_canonical: sampled (S2) and canonical targets.
        k: cosine power (2 in the paper; 0 drops the cosine term).
        steps, lbfgs_steps: Adam and L-BFGS steps of the visualizations (§3.2).
        reopt_steps: Adam steps of the re-optimization (0 skips SSIM).
        image_size: image side in pixels.
        aggregation: ``maxpool_mean`` (§2.3), ``mean``, ``center`` or ``identity``.
        critical_rho: if set, first estimate a critical space with Algorithm 1 at this ρ
            from the realizations' Jacobians, then predict within it (§3.5).
        seed: seed of targets and visualizations.
        chunk_size: features per vectorized backward batch.
        jacobian_dtype: ``"bfloat16"`` or ``"float64"``: differentiate a copy of the model in
            that dtype, with the float32 ReLU/max-pool decisions pinned (default float32).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…
        output_dir: output folder.

    Returns:
        The written file paths.
    """
    from safetensors.torch import save_file

    from lightning_fv.callbacks.inverse_fv import ifv_figure
    from lightning_fv.ifv import critical_space, jacobian_gram, run_ifv
    from lightning_fv.ifv.jacobian import feature_jacobian
    from lightning_fv.optvis.param import ImageParam
    from lightning_fv.utils.images import save_grid

    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else ("cpu" if device == "auto" else device))
    net = build_model(model, checkpoint_path=checkpoint_path).to(dev).eval()
    norm = None if mean is None else Normalize(mean, std).to(dev)
    dtypes = {"bfloat16": torch.bfloat16, "float64": torch.float64, "float32": None}
    if jacobian_dtype is not None and jacobian_dtype not in dtypes:
        raise ValueError(f"jacobian_dtype must be one of {sorted(dtypes)}, got {jacobian_dtype!r}")
    jdtype = dtypes[jacobian_dtype] if jacobian_dtype is not None else None
    kwargs = dict(n_canonical=n_canonical, k=k, steps=steps, lbfgs_steps=lbfgs_steps,
                  image_size=image_size, aggregation=aggregation, normalize=norm, seed=seed,
                  chunk_size=chunk_size, jacobian_dtype=jdtype)
    critical = None
    if critical_rho is not None:
        probe = run_ifv(net, layer, n_targets, reopt_steps=0, **kwargs)
        param = ImageParam.from_images(probe.images.to(dev), fft=False, decorrelate=False)
        _, jac = feature_jacobian(net, layer, param.raw.detach(), param,
                                  aggregation=aggregation, normalize=norm,
                                  chunk_size=chunk_size, compute_dtype=jdtype)
        critical, _ = critical_space(critical_rho, grams=jacobian_gram(jac))
        log.info("critical space of dimension %d", critical.shape[1])
        kwargs["seed"] = seed + 10_000  # fresh targets for the evaluation
    res = run_ifv(net, layer, n_targets, reopt_steps=reopt_steps, critical=critical, **kwargs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = res.summary()
    if critical is not None:
        summary["critical_dim"] = float(critical.shape[1])
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    fig = ifv_figure(res)
    fig.savefig(out / "ifv.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    save_grid(res.images, out / "realizations.png")
    tensors = {"targets": res.targets, "images": res.images, "responses": res.responses,
               "alpha": res.alpha, "residual": res.residual}
    tensors.update({f"objective_{k_}": v for k_, v in res.objectives.items()})
    tensors.update({f"angle_{k_}": v for k_, v in res.angles.items()})
    tensors.update({f"ssim_{k_}": v for k_, v in res.ssim.items()})
    save_file({k_: v.float().clone().contiguous() for k_, v in tensors.items()},
              str(out / "ifv.safetensors"))
    paths = [out / n for n in ("metrics.json", "ifv.png", "realizations.png",
                               "ifv.safetensors")]
    for p in paths:
        log.info("wrote %s", p)
    return [str(p) for p in paths]
