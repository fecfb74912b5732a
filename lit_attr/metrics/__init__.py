"""torchmetrics ``Metric`` classes for attribution quality (thin wrappers over :mod:`lit_attr.functional`)."""

from lit_attr.metrics.activation_deviation import ActivationDeviation
from lit_attr.metrics.attribution_quality import QUALITY_METRICS, AttributionQuality
from lit_attr.metrics.eraser import Comprehensiveness, Sufficiency
from lit_attr.metrics.insertion_deletion import InsertionDeletion
from lit_attr.metrics.localization import LOCALIZATION_METRICS, Localization
from lit_attr.metrics.parameter_randomization import SIMILARITIES, ParameterRandomization
from lit_attr.metrics.token_activation_deviation import TokenActivationDeviation
from lit_attr.metrics.token_insertion_deletion import TokenInsertionDeletion
from lit_attr.metrics.token_localization import TokenLocalization

__all__ = [
    "LOCALIZATION_METRICS",
    "QUALITY_METRICS",
    "SIMILARITIES",
    "ActivationDeviation",
    "AttributionQuality",
    "Comprehensiveness",
    "InsertionDeletion",
    "Localization",
    "ParameterRandomization",
    "Sufficiency",
    "TokenActivationDeviation",
    "TokenInsertionDeletion",
    "TokenLocalization",
]
