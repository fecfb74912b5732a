"""Sufficiency and consistency of Dasgupta et al. (2022) as torchmetrics ``Metric`` classes.

Both compare the samples of a batch with each other (:mod:`lit_attr.functional.dasgupta`): a sample's value depends
on the batch it came in, so they are registered as batch metrics, and their means add the values of every batch
(DDP-exact for the same batches on every process). They read the maps and the clean logits only: no forward pass.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lit_attr._checks import check_choice, check_number
from lit_attr.functional.dasgupta import DISTANCES, NORMALIZATIONS, consistency, sufficiency_dasgupta
from lit_attr.functional.unit_games import check_size
from lit_attr.functional.units import MAP_REDUCTIONS
from lit_attr.metrics._scores import MeanScores
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["Consistency", "SufficiencyDasgupta"]


class SufficiencyDasgupta(MeanScores):
    """Mean local sufficiency (Dasgupta et al. 2022) over the samples that have neighbours; higher is better.

    The share of the other samples of a batch whose maps lie within ``threshold`` that have the sample's prediction;
    see :func:`~lit_attr.functional.dasgupta.sufficiency_dasgupta` (and for how it differs from Quantus's). Named
    apart from the ERASER ``sufficiency`` of token games.

    Args:
        threshold: the largest distance at which an explanation applies.
        distance: ``"euclidean"`` (default) or ``"seuclidean"`` (Quantus's).
        normalize: ``"l2"`` (default), ``"max"`` (Quantus's) or ``"none"``.
        reduce: how a map becomes unit scores (``"abs_sum"`` default).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = SufficiencyDasgupta()
        >>> maps = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> metric.update(maps, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
        >>> metric.compute()
        {'sufficiency_dasgupta': tensor(0.5000)}
    """

    higher_is_better = True
    keys = ("sufficiency_dasgupta",)

    def __init__(
        self,
        *,
        threshold: float = 0.6,
        distance: str = "euclidean",
        normalize: str = "l2",
        reduce: str = "abs_sum",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if check_number("threshold", threshold) < 0:
            raise ValueError(f"`threshold` must be a distance >= 0, got {threshold!r}.")
        check_choice("distance", distance, DISTANCES)
        check_choice("normalize", normalize, NORMALIZATIONS)
        check_choice("reduce", reduce, MAP_REDUCTIONS)
        self._options = {"threshold": threshold, "distance": distance, "normalize": normalize, "reduce": reduce}

    def score(
        self,
        attributions: Tensor,
        logits: Tensor,
        *,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{"sufficiency_dasgupta": (N,)}`` of one batch (NaN for samples without neighbours).

        Args:
            attributions: ``(N, ...)`` maps.
            logits: ``(N, K)`` the model's logits of the same samples.
            attention_mask: token maps: ``(N, L)`` 1 on real tokens.
            special_tokens_mask: token maps: ``(N, L)`` 1 on special tokens.
        """
        masks = {"attention_mask": attention_mask, "special_tokens_mask": special_tokens_mask}
        return {"sufficiency_dasgupta": sufficiency_dasgupta(attributions, logits, **self._options, **masks)}


class Consistency(MeanScores):
    """Mean local consistency (Dasgupta et al. 2022) where another sample shares the explanation; higher is better.

    The share of the other samples of a batch with the same top-``top_k`` units that have the sample's prediction;
    see :func:`~lit_attr.functional.dasgupta.consistency`.

    Args:
        top_k: units in an explanation (an int, or a float fraction of a map's units).
        reduce: how a map becomes unit scores (``"abs_sum"`` default).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = Consistency(top_k=1)
        >>> maps = torch.tensor([[3.0, 1.0], [2.0, 1.0], [1.0, 2.0]])
        >>> metric.update(maps, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        >>> metric.compute()
        {'consistency': tensor(1.)}
    """

    higher_is_better = True
    keys = ("consistency",)

    def __init__(self, *, top_k: int | float = 5, reduce: str = "abs_sum", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_size("top_k", top_k)
        self._options = {"top_k": top_k, "reduce": check_choice("reduce", reduce, MAP_REDUCTIONS)}

    def score(
        self,
        attributions: Tensor,
        logits: Tensor,
        *,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``{"consistency": (N,)}`` of one batch (NaN for samples whose explanation is their own).

        Args:
            attributions: ``(N, ...)`` maps.
            logits: ``(N, K)`` the model's logits of the same samples.
            attention_mask: token maps: ``(N, L)`` 1 on real tokens.
            special_tokens_mask: token maps: ``(N, L)`` 1 on special tokens.
        """
        masks = {"attention_mask": attention_mask, "special_tokens_mask": special_tokens_mask}
        return {"consistency": consistency(attributions, logits, **self._options, **masks)}


for _name, _factory, _label in (
    ("sufficiency_dasgupta", SufficiencyDasgupta, "sufficiency (Dasgupta)"),
    ("consistency", Consistency, "consistency (Dasgupta)"),
):
    register_metric(
        _name,
        _factory,
        consumes=("attributions", "logits", "attention_mask", "special_tokens_mask"),
        # Maps alone: token maps too, their padding and special tokens no units (compared by position).
        modalities={"continuous", "tokens"},
        presentation=Presentation(scores=(Score(_name, _label),), curves=None),
    )
