"""Feature-visualization engine, in Lucent's vocabulary: ``param``, ``transform``,
``objectives``, ``render``; plus layer hooks and norm-constrained maximization."""

from lightning_fv.optvis import accentuation, layout, maco, objectives, param, transform
from lightning_fv.optvis.accentuation import AccentuationResult, accentuate
from lightning_fv.optvis.constrained import maximize_in_ball, model_objective_fn, render_in_ball
from lightning_fv.optvis.hooks import (
    Unit,
    capture,
    get_layer,
    layer_names,
    list_layers,
    parse_unit,
    parse_units,
    preserved_state,
    record,
)
from lightning_fv.optvis.layout import Layout, channels_first, detect_layout
from lightning_fv.optvis.maco import (
    MACO_PRESETS,
    MacoConfig,
    MacoParam,
    MacoResult,
    render_maco,
    spectrum_from_data,
    transparency,
)
from lightning_fv.optvis.objectives import Objective
from lightning_fv.optvis.param import ImageParam, color_matrix_from_images
from lightning_fv.optvis.projected import normalized_step, project, projected_step, random_start
from lightning_fv.optvis.render import (
    PRESETS,
    RenderResult,
    Trajectory,
    log_spaced_steps,
    render,
    render_units,
)
from lightning_fv.optvis.transform import model_input_size, standard_transforms

__all__ = [
    "MACO_PRESETS",
    "PRESETS",
    "AccentuationResult",
    "MacoConfig",
    "MacoParam",
    "MacoResult",
    "accentuate",
    "accentuation",
    "maco",
    "parse_units",
    "record",
    "render_maco",
    "spectrum_from_data",
    "transparency",
    "ImageParam",
    "Layout",
    "Objective",
    "RenderResult",
    "Trajectory",
    "Unit",
    "capture",
    "channels_first",
    "color_matrix_from_images",
    "detect_layout",
    "get_layer",
    "layer_names",
    "layout",
    "list_layers",
    "log_spaced_steps",
    "maximize_in_ball",
    "model_input_size",
    "model_objective_fn",
    "normalized_step",
    "objectives",
    "param",
    "parse_unit",
    "preserved_state",
    "project",
    "projected_step",
    "random_start",
    "render",
    "render_in_ball",
    "render_units",
    "standard_transforms",
    "transform",
]
