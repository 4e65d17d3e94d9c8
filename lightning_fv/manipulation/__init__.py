"""Manipulating feature visualizations (`dont-trust-your-eyes…` §2): the fooling circuit
(§2.1) gated by the visualization detector (App. C.1), and silent units (§2.2)."""

from lightning_fv.manipulation.detector_net import (
    DetectorCNN,
    detector_feature_sizes,
    detector_flatten_size,
)
from lightning_fv.manipulation.evaluation import (
    compare_predictions,
    image_correlation,
    layer_response,
    pairwise_similarity,
    target_hit_rate,
    texture_descriptors,
    texture_similarity,
)
from lightning_fv.manipulation.fooling import (
    FoolingLayer,
    InputGate,
    KReport,
    KTooSmallError,
    check_k,
    embed_images,
    fooling_circuit,
    install_fooling_circuit,
    lemma1,
    permute_layer,
    set_gate_override,
    shifted_permutation,
)
from lightning_fv.manipulation.io import load_manipulated, save_manipulated
from lightning_fv.manipulation.silent import (
    SilentUnits,
    natural_change,
    orthogonal_perturbation,
    pattern_from_image,
    pattern_from_unit,
    random_pattern,
    silence_block,
)

__all__ = [
    "DetectorCNN",
    "FoolingLayer",
    "InputGate",
    "KReport",
    "KTooSmallError",
    "SilentUnits",
    "check_k",
    "compare_predictions",
    "detector_feature_sizes",
    "detector_flatten_size",
    "embed_images",
    "fooling_circuit",
    "image_correlation",
    "install_fooling_circuit",
    "layer_response",
    "lemma1",
    "load_manipulated",
    "natural_change",
    "orthogonal_perturbation",
    "pairwise_similarity",
    "pattern_from_image",
    "pattern_from_unit",
    "permute_layer",
    "random_pattern",
    "save_manipulated",
    "set_gate_override",
    "shifted_permutation",
    "silence_block",
    "target_hit_rate",
    "texture_descriptors",
    "texture_similarity",
]
