"""Localisation of maps against ground-truth masks, unit by unit, for every input kind.

* :func:`attribution_localisation` (Kohlbrenner et al. 2020): the share of the positive relevance inside the mask,
  optionally weighted by how small the mask is;
* :func:`top_k_intersection` (Theiner et al. 2021): the share of the ``k`` most relevant units inside the mask.

A mask has one entry per unit of the map (:func:`~lit_attr.functional.units.map_units`): ``(N, H, W)`` for image maps
(channels summed), ``(N, D)`` for features, ``(N, L)`` rationales for token maps, where only the attended,
non-special tokens count (``valid``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_attr._checks import check_choice, check_number
from lit_attr.functional.unit_games import check_size, sample_sizes
from lit_attr.functional.units import UnitMap, map_units

__all__ = ["RELEVANCES", "attribution_localisation", "top_k_intersection"]

#: Which relevance counts: the positive part of the unit scores (the paper's) or their absolute values (Quantus's).
RELEVANCES = ("positive", "abs")


def _with_masks(attributions: Tensor, masks: object, valid: Tensor | None) -> tuple[UnitMap, Tensor]:
    """The maps' unit scores (signed channel sums) and the masks flattened alike, refused unless they line up."""
    units = map_units(attributions, "sum", valid=valid)
    shape = (attributions.shape[0], *units.shape)
    if not isinstance(masks, Tensor):
        raise TypeError(f"`masks` must be a torch.Tensor, got {type(masks).__name__}.")
    if tuple(masks.shape) != shape:
        raise ValueError(
            f"`masks` must have one entry per unit of `attributions`, {shape} (images: (N, H, W)), got "
            f"{tuple(masks.shape)}."
        )
    if masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError("`masks` must be boolean or contain only 0 and 1.")
    inside = masks.reshape(shape[0], -1).bool().to(units.scores.device) & units.valid
    empty = (~inside.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"Every mask in `masks` must hold at least one unit that counts; empty for samples {empty}.")
    return units, inside


def attribution_localisation(
    attributions: Tensor,
    masks: Tensor,
    *,
    weighted: bool = False,
    max_size: float = 1.0,
    relevance: str = "positive",
    valid: Tensor | None = None,
) -> Tensor:
    """Attribution localisation of Kohlbrenner et al. (2020) per sample: higher is better.

    ``mu = R_in / R_tot``, the positive relevance inside the mask over all positive relevance (0 for a map without
    any); ``weighted=True`` multiplies it by ``|units| / |mask|``, the paper's weighting that rewards small objects.
    A sample whose mask covers more than ``max_size`` of its units is not scored (NaN), as Kohlbrenner et al. leave
    out large objects. Quantus counts absolute values (``relevance="abs"``).

    Args:
        attributions: ``(N, ...)`` maps (images ``(N, C, H, W)`` or ``(N, H, W)``; features; token scores).
        masks: one boolean entry per unit of the maps, none empty.
        weighted: apply the size weighting.
        max_size: the largest share of the units a scored mask may cover, in ``(0, 1]``.
        relevance: ``"positive"`` or ``"abs"``.
        valid: ``(N, *units)`` units that count (token maps); ``None``: all.

    Returns:
        ``(N,)`` values (in [0, 1] unweighted), NaN for masks over ``max_size``.

    Example:
        >>> a = torch.tensor([[[1.0, 3.0], [-2.0, 0.0]]])
        >>> mask = torch.tensor([[[False, True], [True, False]]])
        >>> attribution_localisation(a, mask), attribution_localisation(a, mask, weighted=True)
        (tensor([0.7500]), tensor([1.5000]))
    """
    max_size = check_number("max_size", max_size)
    if not 0 < max_size <= 1:
        raise ValueError(f"`max_size` must be a share of the units in (0, 1], got {max_size!r}.")
    check_choice("relevance", relevance, RELEVANCES)
    units, inside = _with_masks(attributions, masks, valid)
    scores = units.scores.double()
    scores = torch.where(units.valid, scores.clamp(min=0) if relevance == "positive" else scores.abs(), 0.0)
    total = scores.sum(dim=1)
    mu = torch.where(total > 0, (scores * inside).sum(dim=1) / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)
    share = inside.sum(dim=1) / units.valid.sum(dim=1)
    if weighted:
        mu = mu / share
    mu = torch.where(share <= max_size, mu, float("nan"))
    return mu.to(torch.promote_types(attributions.dtype, torch.float32))


def top_k_intersection(
    attributions: Tensor,
    masks: Tensor,
    *,
    k: int | float = 1000,
    concept_influence: bool = False,
    valid: Tensor | None = None,
) -> Tensor:
    """Top-k intersection of Theiner et al. (2021) per sample: higher is better.

    The share of the ``k`` units with the largest (signed) scores that lie in the mask, ``|top_k(a) & s| / k``;
    ties are broken in index order (raster order for images). ``concept_influence=True`` multiplies it by
    ``|units| / |mask|`` (Quantus's option). The default ``k=1000`` is Theiner et al.'s and Quantus's, for 224 x 224
    images; a float is a fraction of the units.

    Args:
        attributions: ``(N, ...)`` maps.
        masks: one boolean entry per unit of the maps, none empty.
        k: units taken: an int (at most the units that count in every map) or a float fraction of each map's own.
        concept_influence: weight by the inverse share of the mask.
        valid: ``(N, *units)`` units that count (token maps); ``None``: all.

    Returns:
        ``(N,)`` values (in [0, 1] without the weighting).

    Example:
        >>> a = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
        >>> top_k_intersection(a, torch.tensor([[[True, False], [True, False]]]), k=2)  # top 2 = {4, 3}
        tensor([0.5000])
    """
    check_size("k", k)
    units, inside = _with_masks(attributions, masks, valid)
    counts = units.valid.sum(dim=1)
    fewest = int(counts.min())
    if isinstance(k, float):  # a fraction of each sample's own units: its value does not depend on its batch
        taken = sample_sizes("k", k, counts).to(counts.device)
    elif k > fewest:
        raise ValueError(f"`k` must be at most the {fewest} units that count in every map, got {k}.")
    else:
        taken = torch.full_like(counts, k)
    # Units that do not count rank last; a stable sort keeps ties in index order.
    scores = torch.where(units.valid, units.scores.double(), -torch.inf)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranked = inside.gather(1, order).double().cumsum(dim=1)
    hits = ranked.gather(1, (taken - 1)[:, None]).squeeze(1) / taken
    if concept_influence:
        hits = hits * units.valid.sum(dim=1) / inside.sum(dim=1)
    return hits.to(torch.promote_types(attributions.dtype, torch.float32))
