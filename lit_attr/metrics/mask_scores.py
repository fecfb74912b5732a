"""Attribution localisation and top-k intersection as torchmetrics ``Metric`` classes, for every input kind.

The math lives in :mod:`lit_attr.functional.mask_scores`: a mask has one entry per unit of the map (an image's
pixels, features, or a token map's rationale, where only the attended, non-special tokens count).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_attr._checks import check_choice, check_flag, check_number
from lit_attr.functional.mask_scores import RELEVANCES, attribution_localisation, top_k_intersection
from lit_attr.functional.unit_games import check_size
from lit_attr.functional.units import valid_units
from lit_attr.metrics._scores import MeanScores
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["AttributionLocalisation", "TopKIntersection"]


class _MaskMetric(MeanScores):
    """A mean of one per-sample score of maps against masks."""

    higher_is_better = True

    def _value(self, attributions: Tensor, masks: Tensor, valid: Tensor | None) -> Tensor:
        raise NotImplementedError

    def score(
        self,
        attributions: Tensor,
        masks: Tensor,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{key: (N,)}`` of a batch; the states are left as they are.

        Args:
            attributions: ``(N, ...)`` maps (images ``(N, C, H, W)`` or ``(N, H, W)``, features, token scores).
            masks: one boolean entry per unit of the maps (images ``(N, H, W)``), none empty.
            attention_mask: for token maps, ``(N, L)`` 1 on real tokens.
            special_tokens_mask: for token maps, ``(N, L)`` 1 on [CLS], [SEP], ...
        """
        return {self.keys[0]: self._value(attributions, masks, valid_units(attention_mask, special_tokens_mask))}


class AttributionLocalisation(_MaskMetric):
    """Mean attribution localisation (Kohlbrenner et al. 2020): the share of positive relevance in the mask.

    See :func:`~lit_attr.functional.mask_scores.attribution_localisation`; samples whose masks cover more than
    ``max_size`` of the units are left out of the mean.

    Args:
        weighted: weight by ``|units| / |mask|`` (the paper's weighted variant).
        max_size: the largest share of the units a scored mask may cover.
        relevance: ``"positive"`` (the paper's) or ``"abs"`` (Quantus's).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = AttributionLocalisation()
        >>> metric.update(torch.tensor([[[1.0, 3.0], [-2.0, 0.0]]]), torch.tensor([[[False, True], [True, False]]]))
        >>> metric.compute()
        {'attribution_localisation': tensor(0.7500)}
    """

    keys = ("attribution_localisation",)

    def __init__(
        self, *, weighted: bool = False, max_size: float = 1.0, relevance: str = "positive", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_flag("weighted", weighted)
        if not 0 < check_number("max_size", max_size) <= 1:
            raise ValueError(f"`max_size` must be a share of the units in (0, 1], got {max_size!r}.")
        check_choice("relevance", relevance, RELEVANCES)
        self._options = {"weighted": weighted, "max_size": max_size, "relevance": relevance}

    def _value(self, attributions: Tensor, masks: Tensor, valid: Tensor | None) -> Tensor:
        return attribution_localisation(attributions, masks, valid=valid, **self._options)


class TopKIntersection(_MaskMetric):
    """Mean top-k intersection (Theiner et al. 2021): the share of the ``k`` most relevant units in the mask.

    See :func:`~lit_attr.functional.mask_scores.top_k_intersection`.

    Args:
        k: units taken (default 1000, for 224 x 224 images; a float is a fraction of the units).
        concept_influence: weight by the inverse share of the mask (Quantus's option).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = TopKIntersection(k=2)
        >>> metric.update(torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]), torch.tensor([[[True, False], [True, False]]]))
        >>> metric.compute()
        {'top_k_intersection': tensor(0.5000)}
    """

    keys = ("top_k_intersection",)

    def __init__(self, *, k: int | float = 1000, concept_influence: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_size("k", k)
        self._options = {"k": k, "concept_influence": check_flag("concept_influence", concept_influence)}

    def _value(self, attributions: Tensor, masks: Tensor, valid: Tensor | None) -> Tensor:
        return top_k_intersection(attributions, masks, valid=valid, **self._options)


for _name, _factory, _label in (
    ("attribution_localisation", AttributionLocalisation, "attribution localisation"),
    ("top_k_intersection", TopKIntersection, "top-k intersection"),
):
    register_metric(
        _name,
        _factory,
        consumes=("attributions", "masks", "attention_mask", "special_tokens_mask"),
        per_sample=True,
        modalities={"continuous", "tokens"},
        presentation=Presentation(scores=(Score(_name, _label),), curves=None),
    )
