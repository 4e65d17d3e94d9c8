"""Analysis: the similarity sanity check (§3, C.3, App. E) and path linearity (§5, C.4) of
`dont-trust-your-eyes…`, with batched exact rank correlation. Tensors in, tensors out.

Figures (:mod:`lightning_fv.analysis.figures`) and ``torchmetrics`` wrappers
(:mod:`lightning_fv.analysis.metrics`) are separate modules, imported on demand.
"""

from lightning_fv.analysis.path_linearity import (
    PathLinearityResult,
    aga,
    agpa,
    ald,
    aldp,
    gradient_angles,
    line_distances,
    path_linearity,
    path_metrics,
    top_activating,
    unit_activations,
)
from lightning_fv.analysis.rank import (
    METRICS,
    cosine_matrix,
    paired_similarity,
    pearson_matrix,
    rankdata,
    similarity_matrix,
    spearman_matrix,
    standardize,
)
from lightning_fv.analysis.similarity import (
    DEFAULT_STRIDES,
    SanityCheckResult,
    correctly_classified,
    layer_activations,
    natural_pairs,
    normalize_between_bounds,
    sanity_check_groups,
    similarity_groups,
    similarity_sanity_check,
    smooth_uniform,
    smoothed_band,
    summarize_groups,
    visualization_pairs,
)

__all__ = [
    "sanity_check_groups",
    "DEFAULT_STRIDES",
    "METRICS",
    "PathLinearityResult",
    "SanityCheckResult",
    "aga",
    "agpa",
    "ald",
    "aldp",
    "correctly_classified",
    "cosine_matrix",
    "gradient_angles",
    "layer_activations",
    "line_distances",
    "natural_pairs",
    "normalize_between_bounds",
    "paired_similarity",
    "path_linearity",
    "path_metrics",
    "pearson_matrix",
    "rankdata",
    "similarity_groups",
    "similarity_matrix",
    "similarity_sanity_check",
    "smooth_uniform",
    "smoothed_band",
    "spearman_matrix",
    "standardize",
    "summarize_groups",
    "top_activating",
    "unit_activations",
    "visualization_pairs",
]
