"""Complexity of attribution maps as torchmetrics ``Metric`` classes (math in :mod:`lit_attr.functional.complexity`).

They read the maps alone, so they work on every input kind, token maps included (only the attended, non-special
tokens count), and need no model: ``Sparseness().update(maps)`` scores maps computed anywhere.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_attr._checks import check_choice, check_number
from lit_attr.functional.complexity import complexity, effective_complexity, sparseness
from lit_attr.functional.units import MAP_REDUCTIONS, valid_units
from lit_attr.metrics._scores import MeanScores
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import MAP_INPUTS, register_metric

__all__ = ["Complexity", "EffectiveComplexity", "Sparseness"]


class _MapMetric(MeanScores):
    """A mean of one per-sample score of the maps alone; token maps count their attended, non-special tokens."""

    def __init__(self, *, reduce: str = "abs_sum", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reduce = check_choice("reduce", reduce, MAP_REDUCTIONS)

    def _value(self, attributions: Tensor, valid: Tensor | None) -> Tensor:
        raise NotImplementedError

    def score(
        self,
        attributions: Tensor,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{key: (N,)}`` of a batch of maps; the states are left as they are.

        Args:
            attributions: ``(N, ...)`` maps: images ``(N, C, H, W)`` or ``(N, H, W)``, features ``(N, D)``, per-token
                scores ``(N, L)``.
            attention_mask: for token maps, ``(N, L)`` 1 on real tokens.
            special_tokens_mask: for token maps, ``(N, L)`` 1 on [CLS], [SEP], ...
        """
        return {self.keys[0]: self._value(attributions, valid_units(attention_mask, special_tokens_mask))}


class Sparseness(_MapMetric):
    """Mean Gini index of the absolute unit scores (Chalasani et al. 2020); higher is sparser.

    0 for a constant map, ``1 - 1/d`` for a map with one non-zero unit of ``d``; see
    :func:`~lit_attr.functional.complexity.sparseness`.

    Args:
        reduce: how a map becomes unit scores: ``"abs_sum"`` (default: an image pixel's absolute channel values
            summed), ``"sum"`` or ``"none"`` (every element a unit).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = Sparseness()
        >>> metric.update(torch.tensor([[0.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]]))
        >>> metric.compute()
        {'sparseness': tensor(0.3750)}
    """

    higher_is_better = True
    keys = ("sparseness",)

    def _value(self, attributions: Tensor, valid: Tensor | None) -> Tensor:
        return sparseness(attributions, reduce=self.reduce, valid=valid)


class Complexity(_MapMetric):
    """Mean entropy of the fractional contributions ``|a_i| / sum |a|`` (Bhatt et al. 2020); lower is simpler.

    ``log d`` for a constant map of ``d`` units, 0 for one non-zero unit; see
    :func:`~lit_attr.functional.complexity.complexity`.

    Args:
        reduce: ``"abs_sum"`` (default), ``"sum"`` or ``"none"``.
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = Complexity()
        >>> metric.update(torch.ones(3, 4))
        >>> metric.compute()
        {'complexity': tensor(1.3863)}
    """

    higher_is_better = False
    keys = ("complexity",)

    def _value(self, attributions: Tensor, valid: Tensor | None) -> Tensor:
        return complexity(attributions, reduce=self.reduce, valid=valid)


class EffectiveComplexity(_MapMetric):
    """Mean number of units above ``eps`` times the sample's largest absolute score (Nguyen & Martinez 2020).

    Lower is simpler; see :func:`~lit_attr.functional.complexity.effective_complexity`.

    Args:
        eps: relative threshold in ``[0, 1)`` (Quantus's default 1e-5).
        reduce: ``"abs_sum"`` (default), ``"sum"`` or ``"none"``.
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = EffectiveComplexity(eps=0.1)
        >>> metric.update(torch.tensor([[0.0, 0.05, 0.5, 1.0]]))
        >>> metric.compute()
        {'effective_complexity': tensor(2.)}
    """

    higher_is_better = False
    keys = ("effective_complexity",)

    def __init__(self, *, eps: float = 1e-5, reduce: str = "abs_sum", **kwargs: Any) -> None:
        super().__init__(reduce=reduce, **kwargs)
        self.eps = check_number("eps", eps)
        if not 0 <= self.eps < 1:
            raise ValueError(f"`eps` must be a relative threshold in [0, 1), got {eps!r}.")

    def _value(self, attributions: Tensor, valid: Tensor | None) -> Tensor:
        return effective_complexity(attributions, eps=self.eps, reduce=self.reduce, valid=valid)


for _name, _factory, _label in (
    ("sparseness", Sparseness, "sparseness (Gini)"),
    ("complexity", Complexity, "complexity (entropy)"),
    ("effective_complexity", EffectiveComplexity, "effective complexity"),
):
    register_metric(
        _name,
        _factory,
        consumes=MAP_INPUTS,
        per_sample=True,
        modalities={"continuous", "tokens"},
        presentation=Presentation(scores=(Score(_name, _label),), curves=None),
    )
