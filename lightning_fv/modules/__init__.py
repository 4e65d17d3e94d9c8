"""LightningModules (the edge where Lightning meets the core)."""

from lightning_fv.modules.classifier import ImageClassifier
from lightning_fv.modules.detector import VisualizationDetector, load_detector, save_detector
from lightning_fv.modules.feature_visualizer import FeatureVisualizer
from lightning_fv.modules.invariant_sampler import InvariantSetSampler
from lightning_fv.modules.latent_diffusion import LatentDiffusionModule
from lightning_fv.modules.robust_classifier import RobustClassifier
from lightning_fv.utils.preprocess import NormalizedModel

__all__ = [
    "FeatureVisualizer",
    "ImageClassifier",
    "InvariantSetSampler",
    "LatentDiffusionModule",
    "NormalizedModel",
    "RobustClassifier",
    "VisualizationDetector",
    "load_detector",
    "save_detector",
]
