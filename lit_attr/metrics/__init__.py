"""torchmetrics ``Metric`` classes for attribution quality (thin wrappers over :mod:`lit_attr.functional`)."""

from lit_attr.metrics.activation_deviation import ActivationDeviation
from lit_attr.metrics.attribution_quality import QUALITY_METRICS, AttributionQuality
from lit_attr.metrics.infidelity import Infidelity, Sensitivity
from lit_attr.metrics.insertion_deletion import InsertionDeletion
from lit_attr.metrics.localization import LOCALIZATION_METRICS, Localization
from lit_attr.metrics.mprt import EfficientMPRT, SmoothMPRT
from lit_attr.metrics.parameter_randomization import SIMILARITIES, ParameterRandomization
from lit_attr.metrics.road import ROAD

__all__ = [
    "LOCALIZATION_METRICS",
    "QUALITY_METRICS",
    "ROAD",
    "SIMILARITIES",
    "ActivationDeviation",
    "AttributionQuality",
    "EfficientMPRT",
    "Infidelity",
    "InsertionDeletion",
    "Localization",
    "ParameterRandomization",
    "Sensitivity",
    "SmoothMPRT",
]
