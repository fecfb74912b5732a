"""torchmetrics ``Metric`` classes for attribution quality (thin wrappers over :mod:`lit_attr.functional`).

Every metric is registered (:func:`register_metric`, :func:`available_metrics`) with what it consumes, so it works
by name in ``AttributionMonitor(metrics=...)``, ``lit_attr evaluate --metrics`` and
:class:`~lit_attr.attribution_quality.AttributionQuality`, with the input kinds it accepts (``modalities``) and how its
results are shown (:class:`Presentation`). ``lit_attr.metrics.AttributionQuality`` still works, with a
``DeprecationWarning``.
"""

from typing import Any

from lit_attr.metrics.activation_deviation import ActivationDeviation
from lit_attr.metrics.attribution_quality import moved as _moved
from lit_attr.metrics.axioms import Completeness, InputInvariance, NonSensitivity, RandomLogit
from lit_attr.metrics.complexity import Complexity, EffectiveComplexity, Sparseness
from lit_attr.metrics.dasgupta import Consistency, SufficiencyDasgupta
from lit_attr.metrics.eraser import Comprehensiveness, Sufficiency
from lit_attr.metrics.faithfulness import (
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    Monotonicity,
    MonotonicityCorrelation,
    SensitivityN,
)
from lit_attr.metrics.focus import Focus
from lit_attr.metrics.infidelity import Infidelity, Sensitivity
from lit_attr.metrics.insertion_deletion import InsertionDeletion
from lit_attr.metrics.localization import LOCALIZATION_METRICS, Localization
from lit_attr.metrics.mask_scores import AttributionLocalisation, TopKIntersection
from lit_attr.metrics.mprt import EfficientMPRT, SmoothMPRT
from lit_attr.metrics.parameter_randomization import SIMILARITIES, ParameterRandomization
from lit_attr.metrics.presentation import Presentation, SanityCheck, Score
from lit_attr.metrics.regions import IROF, RegionPerturbation, Selectivity
from lit_attr.metrics.registry import (
    MetricSpec,
    available_metrics,
    get_metric_spec,
    register_metric,
    unregister_metric,
)
from lit_attr.metrics.road import ROAD
from lit_attr.metrics.robustness import AvgSensitivity, Continuity, LocalLipschitz, RelativeStability
from lit_attr.metrics.token_activation_deviation import TokenActivationDeviation
from lit_attr.metrics.token_insertion_deletion import TokenInsertionDeletion
from lit_attr.metrics.token_localization import TokenLocalization

__all__ = [
    "LOCALIZATION_METRICS",
    "ROAD",
    "SIMILARITIES",
    "ActivationDeviation",
    "AttributionLocalisation",
    "AvgSensitivity",
    "Completeness",
    "Complexity",
    "Comprehensiveness",
    "Consistency",
    "Continuity",
    "EffectiveComplexity",
    "EfficientMPRT",
    "FaithfulnessCorrelation",
    "FaithfulnessEstimate",
    "Focus",
    "IROF",
    "Infidelity",
    "InputInvariance",
    "InsertionDeletion",
    "LocalLipschitz",
    "Localization",
    "MetricSpec",
    "Monotonicity",
    "MonotonicityCorrelation",
    "NonSensitivity",
    "ParameterRandomization",
    "Presentation",
    "RandomLogit",
    "RegionPerturbation",
    "RelativeStability",
    "SanityCheck",
    "Score",
    "Selectivity",
    "SensitivityN",
    "Sensitivity",
    "SmoothMPRT",
    "Sparseness",
    "Sufficiency",
    "SufficiencyDasgupta",
    "TokenActivationDeviation",
    "TokenInsertionDeletion",
    "TokenLocalization",
    "TopKIntersection",
    "available_metrics",
    "get_metric_spec",
    "register_metric",
    "unregister_metric",
]


def __getattr__(name: str) -> Any:
    # AttributionQuality runs the runner, a layer above the metrics: it moved to lit_attr.attribution_quality.
    return _moved(__name__, name)
