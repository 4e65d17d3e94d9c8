"""Inverse feature visualization (`inverse-feature-visualization`, Reinbold & Westermann).

Given a visualization optimized for a cosine-power objective ``S_x`` on a layer, recover
the target objective ``x`` from the Jacobian of the feature response (Grad-IFV, §2.1, S1),
approximate the critical space that removes trivial solutions (Algorithm 1, §3.5), sample
sparse targets (Hoyer sparseness, S2) and evaluate (angular distance, α_j, SSIM after
re-optimization, §3.4–3.5). Tensors in, tensors out; no Lightning here.
"""

from lightning_fv.ifv.critical import (
    CriticalSpace,
    approximate_cokernel,
    critical_space,
    critical_spaces,
    left_singular,
    merge_subspaces,
    orthogonal_complement,
    principal_angles,
    slerp,
    small_singular_subspaces,
)
from lightning_fv.ifv.evaluation import (
    SSIM_THRESHOLD,
    alpha_coefficients,
    angular_distance,
    critical_fraction,
    polynomial_angle,
    projected_target,
    random_unit_like,
    reoptimization_ssim,
    reoptimize,
    singular_coefficients,
    ssim,
)
from lightning_fv.ifv.experiment import IFVResult, polish_lbfgs, run_ifv, visualize_targets
from lightning_fv.ifv.gradifv import (
    fix_sign,
    grad_ifv,
    gradient_residual,
    substitution_basis,
    z_matrix,
    z_matrix_inverse,
)
from lightning_fv.ifv.hoyer import hoyer, sample_targets, sparse_unit_vectors
from lightning_fv.ifv.jacobian import (
    affine_batchnorm,
    feature_jacobian,
    feature_jacobian_loop,
    jacobian_gram,
    param_function,
    response_function,
)

__all__ = [
    "SSIM_THRESHOLD",
    "CriticalSpace",
    "IFVResult",
    "affine_batchnorm",
    "alpha_coefficients",
    "angular_distance",
    "approximate_cokernel",
    "critical_fraction",
    "critical_space",
    "critical_spaces",
    "feature_jacobian",
    "feature_jacobian_loop",
    "fix_sign",
    "grad_ifv",
    "gradient_residual",
    "hoyer",
    "jacobian_gram",
    "left_singular",
    "merge_subspaces",
    "orthogonal_complement",
    "param_function",
    "polish_lbfgs",
    "polynomial_angle",
    "principal_angles",
    "projected_target",
    "random_unit_like",
    "reoptimization_ssim",
    "reoptimize",
    "response_function",
    "run_ifv",
    "sample_targets",
    "singular_coefficients",
    "slerp",
    "small_singular_subspaces",
    "sparse_unit_vectors",
    "ssim",
    "substitution_basis",
    "visualize_targets",
    "z_matrix",
    "z_matrix_inverse",
]
