"""Sufficiency and consistency of Dasgupta et al. (2022): do samples that share an explanation share a prediction?

Both compare the samples of one batch with each other, so a sample's value depends on its batch (the metrics add
every batch's values; evaluate with the batches the data loader gives):

* :func:`sufficiency_dasgupta`: among the other samples whose maps lie within ``threshold`` of a sample's, the share
  predicted as that sample;
* :func:`consistency`: among the other samples with the same discretised explanation (the set of the ``top_k``
  units), the share predicted as that sample.

A sample that no other sample of its batch resembles has no value (NaN; the metrics leave it out of their means).
Maps of token ids ``(N, L)`` come with their ``attention_mask`` / ``special_tokens_mask``: padding and special tokens
are no units (scored 0 in a distance, never in an explanation); units are compared by position, as for any map.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_attr._checks import check_choice, check_number
from lit_attr.functional.unit_games import check_size, sample_sizes
from lit_attr.functional.units import UnitMap, check_map, map_units, valid_units

__all__ = ["DISTANCES", "NORMALIZATIONS", "consistency", "sufficiency_dasgupta"]

#: Distances between two maps: Euclidean, or Euclidean standardised by every unit's variance over the batch.
DISTANCES = ("euclidean", "seuclidean")
#: How maps are scaled before they are compared: to unit L2 norm, by their largest absolute value, or not at all.
NORMALIZATIONS = ("l2", "max", "none")


def _predictions(logits: object, n: int) -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"`logits` must be the model's logits (N, K) = ({n}, K) of the maps' samples, got {shape}.")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("`logits` contains NaN or infinite values; it must be finite.")
    return logits.argmax(dim=1)


def _units(attributions: Tensor, reduce: str, attention_mask: Tensor | None, special: Tensor | None) -> UnitMap:
    """The maps' absolute unit scores, 0 on the units that do not count (padding and special tokens)."""
    units = map_units(attributions, reduce, valid=valid_units(attention_mask, special))
    return units._replace(scores=torch.where(units.valid, units.scores.abs(), 0.0))


def _shared(same_explanation: Tensor, predictions: Tensor) -> Tensor:
    """Per sample, the share of the *other* samples with the same explanation that have its prediction (else NaN)."""
    others = same_explanation & ~torch.eye(predictions.numel(), dtype=torch.bool, device=predictions.device)
    agree = others & (predictions[None, :] == predictions[:, None])
    count = others.sum(dim=1)
    return torch.where(count > 0, agree.sum(dim=1) / count.clamp(min=1), float("nan"))


def sufficiency_dasgupta(
    attributions: Tensor,
    logits: Tensor,
    *,
    threshold: float = 0.6,
    distance: str = "euclidean",
    normalize: str = "l2",
    reduce: str = "abs_sum",
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
) -> Tensor:
    """Local sufficiency (Dasgupta et al. 2022) of every sample of a batch: higher is better.

    Dasgupta et al. define the sufficiency of an explanation as the probability that a sample to which it applies
    has the same prediction; an explanation "applies" to the other samples whose maps lie within ``threshold``. The
    maps (the units' absolute values) are scaled to unit L2 norm, so the distance is ``sqrt(2 - 2 cos)`` and the
    default ``threshold=0.6`` means a cosine above 0.82. Quantus scales by the largest value and standardises the
    Euclidean distance by the batch's variances (``normalize="max", distance="seuclidean"``) with the same threshold,
    and scores 0 where no map is that close; here such a sample has no value (NaN).

    Args:
        attributions: ``(N, ...)`` maps of one batch.
        logits: ``(N, K)`` the model's logits of the same samples (the predictions are their argmax).
        threshold: the largest distance at which an explanation applies, ``>= 0``.
        distance: ``"euclidean"`` or ``"seuclidean"``.
        normalize: ``"l2"``, ``"max"`` or ``"none"``.
        reduce: how a map becomes unit scores (``"abs_sum"``, ``"sum"``, ``"none"``).
        attention_mask: token maps: ``(N, L)`` 1 on real tokens (padding scores 0).
        special_tokens_mask: token maps: ``(N, L)`` 1 on special tokens (scored 0).

    Returns:
        ``(N,)`` shares in [0, 1], NaN for a sample without a neighbour.

    Example:
        >>> maps = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> sufficiency_dasgupta(maps, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        tensor([1., 1., nan])
    """
    check_map(attributions)
    threshold = check_number("threshold", threshold)
    if threshold < 0:
        raise ValueError(f"`threshold` must be a distance >= 0, got {threshold!r}.")
    check_choice("distance", distance, DISTANCES)
    check_choice("normalize", normalize, NORMALIZATIONS)
    predictions = _predictions(logits, attributions.shape[0])
    units = _units(attributions, reduce, attention_mask, special_tokens_mask).scores.double()
    if normalize != "none":
        scale = units.norm(dim=1, keepdim=True) if normalize == "l2" else units.amax(dim=1, keepdim=True)
        units = units / scale.clamp(min=torch.finfo(units.dtype).tiny)
    if distance == "seuclidean":
        spread = units.var(dim=0, correction=1, keepdim=True) if units.shape[0] > 1 else torch.ones_like(units[:1])
        # Units that do not vary over the batch tell no two maps apart: they are left out.
        units = torch.where(spread > 0, units / spread.clamp(min=torch.finfo(units.dtype).tiny).sqrt(), 0.0)
    close = torch.cdist(units, units) <= threshold
    return _shared(close, predictions.to(close.device)).to(torch.promote_types(attributions.dtype, torch.float32))


def consistency(
    attributions: Tensor,
    logits: Tensor,
    *,
    top_k: int | float = 5,
    reduce: str = "abs_sum",
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
) -> Tensor:
    """Local consistency (Dasgupta et al. 2022) of every sample of a batch: higher is better.

    Dasgupta et al. discretise the explanations and ask how often two samples with the same explanation share their
    prediction; here a map's explanation is the set of its ``top_k`` units by absolute score (as Quantus's default
    discretisation, the top units with their sign, after taking absolute values). A sample whose explanation no
    other sample of the batch shares has no value (NaN; Quantus scores it 0).

    Args:
        attributions: ``(N, ...)`` maps of one batch.
        logits: ``(N, K)`` the model's logits of the same samples.
        top_k: units in an explanation: an int (at most the units of a map) or a float fraction of them (of a
            sentence's own tokens for token maps; an int beyond them is all of them).
        reduce: how a map becomes unit scores (``"abs_sum"``, ``"sum"``, ``"none"``).
        attention_mask: token maps: ``(N, L)`` 1 on real tokens (padding is never in an explanation).
        special_tokens_mask: token maps: ``(N, L)`` 1 on special tokens (never in an explanation).

    Returns:
        ``(N,)`` shares in [0, 1], NaN for a sample whose explanation is its own.

    Example:
        >>> maps = torch.tensor([[3.0, 2.0, 0.0], [2.0, 3.0, 0.1], [0.0, 2.0, 3.0]])
        >>> consistency(maps, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), top_k=2)
        tensor([0., 0., nan])
    """
    check_map(attributions)
    check_size("top_k", top_k)
    predictions = _predictions(logits, attributions.shape[0])
    units = _units(attributions, reduce, attention_mask, special_tokens_mask)
    sizes = sample_sizes("top_k", top_k, units.valid.sum(dim=1).cpu()).to(units.scores.device)
    # A stable sort: tied units are taken in index order on every device; units that do not count come last.
    scores = torch.where(units.valid, units.scores, -1.0)
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : int(sizes.max())]
    # A sentence with fewer units than top_k explains itself with all of them (-1 fills the rest of its set).
    top = torch.where(torch.arange(top.shape[1], device=top.device)[None] < sizes[:, None], top, -1)
    chosen = torch.sort(top, dim=1).values
    same = (chosen[:, None, :] == chosen[None, :, :]).all(dim=2)
    return _shared(same, predictions.to(same.device)).to(torch.promote_types(attributions.dtype, torch.float32))
