"""Adversarial robustness: PGD attacks (ℓ2/ℓ∞, random start, restarts, targeted) and the
representation tools of robust models (`robust-representations…` §3–§5, App. A.3–A.6)."""

from lightning_fv.adversarial.attacks import (
    IMAGENET_DIM,
    PRESETS,
    PGDConfig,
    attack_success,
    default_step_size,
    pgd,
    preset,
    robust_accuracy,
)
from lightning_fv.adversarial.representation import (
    accentuate,
    add_feature,
    classifier_weight,
    final_linear,
    interpolate,
    invert,
    invert_scheduled,
    maximize_coordinate,
    noise_seed,
    representation,
    representation_and_logits,
    top_features,
)

__all__ = [
    "IMAGENET_DIM",
    "PRESETS",
    "PGDConfig",
    "accentuate",
    "add_feature",
    "attack_success",
    "classifier_weight",
    "default_step_size",
    "final_linear",
    "interpolate",
    "invert",
    "invert_scheduled",
    "maximize_coordinate",
    "noise_seed",
    "pgd",
    "preset",
    "representation",
    "representation_and_logits",
    "robust_accuracy",
    "top_features",
]
