"""Callbacks: one per file, configured entirely by plain constructor arguments."""

from lightning_fv.callbacks.audit_report import AuditReportCallback
from lightning_fv.callbacks.feature_visualization import FeatureVisualizationCallback
from lightning_fv.callbacks.invariant_set import InvariantSetCallback
from lightning_fv.callbacks.inverse_fv import InverseFeatureVisualizationCallback
from lightning_fv.callbacks.path_linearity import PathLinearityCallback
from lightning_fv.callbacks.sanity_check import SanityCheckCallback

__all__ = [
    "AuditReportCallback",
    "FeatureVisualizationCallback",
    "InvariantSetCallback",
    "InverseFeatureVisualizationCallback",
    "PathLinearityCallback",
    "SanityCheckCallback",
]
