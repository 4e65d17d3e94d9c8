"""``lightning-fv ifv``: the Grad-IFV experiment of `inverse-feature-visualization` §3.4 on
one layer of a model, written to metrics, figures and tensors."""

from __future__ import annotations

import json
import logging
import time

import torch

from lightning_fv.models import build_model
from lightning_fv.utils.checkpoint import save_tensors
from lightning_fv.utils.console import StepProgress
from lightning_fv.utils.device import resolve_device
from lightning_fv.utils.files import apply_umask, output_folder
from lightning_fv.utils.preprocess import as_normalize, check_mean_std

log = logging.getLogger(__name__)

DEFAULT_ROOT = "outputs/ifv"


class _LazyBar:
    """A ``(done, total)`` callback that opens a :class:`StepProgress` at its first call."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc, self.enabled = desc, enabled
        self.bar: StepProgress | None = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = StepProgress(total, self.desc, unit="step", enabled=self.enabled)
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    output_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    preset: str = "lucid",
    redirect_relu_steps: int | None = None,
    parameterization: str = "p_rgb",
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
        output_dir: output folder; default a fresh ``outputs/ifv/version_N`` per run. An
            existing non-empty folder is refused unless ``overwrite``.
        overwrite: allow writing into a folder that already holds a result.
        progress: progress over the realizations' optimizer steps (when the experiment
            reports it) and one log line per stage; ``--progress false`` for scripts.
        preset: rendering preset of the Adam phases (realizations and re-optimization):
            ``"lucid"`` (default: 16 steps of redirected-ReLU warm-up) or ``"lucent"`` (none:
            plain Adam as in §3.2 of the paper); see
            :data:`lightning_fv.optvis.render.PRESETS`.
        redirect_relu_steps: the warm-up in steps; overrides the preset's when given.
        parameterization: the image parameterization ``P`` whose raw parameters Grad-IFV
            differentiates: ``"p_rgb"`` (default, §3.2: sigmoid of unbounded RGB pixels),
            ``"p_fft"`` or ``"p_ffte"`` (§3.6), see
            :data:`lightning_fv.optvis.param.IFV_PARAMETERIZATIONS`.

    Returns:
        The written file paths.
    """

    from lightning_fv.analysis.figures import ifv_figure
    from lightning_fv.ifv import critical_space, jacobian_gram, run_ifv
    from lightning_fv.ifv.jacobian import feature_jacobian
    from lightning_fv.optvis.param import ImageParam, ifv_parameterization
    from lightning_fv.optvis.render import preset_settings
    from lightning_fv.utils.images import save_grid

    warmup = (preset_settings(preset)["redirect_relu_steps"] if redirect_relu_steps is None
              else redirect_relu_steps)
    if warmup < 0:
        raise ValueError(f"redirect_relu_steps must be >= 0, got {redirect_relu_steps}")
    param_kw = ifv_parameterization(parameterization)
    dev = resolve_device(device)
    out = output_folder(output_dir, DEFAULT_ROOT, overwrite=overwrite)
    net = build_model(model, checkpoint_path=checkpoint_path).to(dev).eval()
    given = check_mean_std(mean, std)
    norm = as_normalize(given, dev)
    dtypes = {"bfloat16": torch.bfloat16, "float64": torch.float64, "float32": None}
    if jacobian_dtype is not None and jacobian_dtype not in dtypes:
        raise ValueError(f"jacobian_dtype must be one of {sorted(dtypes)}, got {jacobian_dtype!r}")
    jdtype = dtypes[jacobian_dtype] if jacobian_dtype is not None else None
    kwargs = dict(n_canonical=n_canonical, k=k, steps=steps, lbfgs_steps=lbfgs_steps,
                  image_size=image_size, aggregation=aggregation, normalize=norm, seed=seed,
                  chunk_size=chunk_size, jacobian_dtype=jdtype,
                  redirect_relu_steps=warmup, param=param_kw)
    bar = _LazyBar(f"ifv: realize {n_targets + n_canonical} target(s)", progress)
    kwargs["progress"] = bar
    t0 = time.time()
    log.info("ifv: %d target(s) on %s, %d Adam + %d L-BFGS steps each, %d re-optimization "
             "steps, %s, ReLU warm-up %d steps%s", n_targets + n_canonical, layer, steps,
             lbfgs_steps, reopt_steps, parameterization, warmup,
             " (critical space first)" if critical_rho is not None else "")
    critical = None
    if critical_rho is not None:
        probe_bar = _LazyBar("ifv: critical-space probe", progress)
        try:
            probe = run_ifv(net, layer, n_targets, reopt_steps=0,
                            **{**kwargs, "progress": probe_bar})
        finally:
            probe_bar.close()
        param = ImageParam.from_images(probe.images.to(dev), **param_kw)
        _, jac = feature_jacobian(net, layer, param.raw.detach(), param,
                                  aggregation=aggregation, normalize=norm,
                                  chunk_size=chunk_size, compute_dtype=jdtype)
        critical, _ = critical_space(critical_rho, grams=jacobian_gram(jac))
        log.info("critical space of dimension %d", critical.shape[1])
        kwargs["seed"] = seed + 10_000  # fresh targets for the evaluation
    try:
        res = run_ifv(net, layer, n_targets, reopt_steps=reopt_steps, critical=critical,
                      **kwargs)
    finally:
        bar.close()
    log.info("ifv: done in %.0f s", time.time() - t0)
    summary = res.summary()
    if critical is not None:
        summary["critical_dim"] = float(critical.shape[1])
    settings = {"parameterization": parameterization, "redirect_relu_steps": warmup,
                "steps": steps, "lbfgs_steps": lbfgs_steps, "reopt_steps": reopt_steps}
    # the numbers, and the rendering settings they came from
    (out / "metrics.json").write_text(json.dumps({**summary, "settings": settings}, indent=2))
    fig = ifv_figure(res)
    fig.savefig(out / "ifv.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    save_grid(res.images, out / "realizations.png",  # tile i: the realization of target i
              labels=[f"target {i}" for i in range(len(res.images))], tile_size=128)
    tensors = {"targets": res.targets, "images": res.images, "responses": res.responses,
               "alpha": res.alpha, "residual": res.residual}
    tensors.update({f"objective_{k_}": v for k_, v in res.objectives.items()})
    tensors.update({f"angle_{k_}": v for k_, v in res.angles.items()})
    tensors.update({f"ssim_{k_}": v for k_, v in res.ssim.items()})
    save_tensors({k_: v.float().clone() for k_, v in tensors.items()}, out / "ifv.safetensors")
    paths = [out / n for n in ("metrics.json", "ifv.png", "realizations.png",
                               "ifv.safetensors")]
    apply_umask(*paths)
    for p in paths:
        log.info("wrote %s", p)
    return [str(p) for p in paths]
