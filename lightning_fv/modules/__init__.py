"""LightningModules (the edge where Lightning meets the core)."""

from lightning_fv.modules.classifier import ImageClassifier
from lightning_fv.modules.feature_visualizer import FeatureVisualizer
from lightning_fv.modules.latent_diffusion import LatentDiffusionModule

__all__ = ["FeatureVisualizer", "ImageClassifier", "LatentDiffusionModule"]
