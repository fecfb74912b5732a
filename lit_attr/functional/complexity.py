"""Complexity of attribution maps: how few units carry the relevance. No model is needed; maps alone suffice.

* :func:`sparseness`: the Gini index of the absolute unit scores (Chalasani et al. 2020), higher is sparser;
* :func:`complexity`: the entropy of the fractional contributions ``|a_i| / sum |a|`` (Bhatt et al. 2020), lower is
  simpler;
* :func:`effective_complexity`: the number of units whose absolute score exceeds ``eps`` times the largest (Nguyen &
  Martinez 2020), lower is simpler.

Units are the input kind's (:func:`~lit_attr.functional.units.map_units`): an image pixel with its channels' absolute
values summed (``reduce="abs_sum"``, the default), a feature, a token; with ``valid`` (token maps: attended and not
special) only those units count. Quantus flattens whatever map it is given and normalises it first; every score here
is scale-invariant, so normalising changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_attr._checks import check_number
from lit_attr.functional.units import map_units

__all__ = ["complexity", "effective_complexity", "sparseness"]


def _magnitudes(attributions: Tensor, reduce: str, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(|units|, valid, count)`` in float64, invalid units set to 0; ``count`` is ``(N,)`` valid units."""
    units = map_units(attributions, reduce, valid=valid)
    magnitudes = torch.where(units.valid, units.scores.double().abs(), 0.0)
    return magnitudes, units.valid, units.valid.sum(dim=1)


def _finish(values: Tensor, count: Tensor, like: Tensor) -> Tensor:
    """NaN for samples without a unit that counts; the maps' floating dtype (at least float32)."""
    values = torch.where(count > 0, values, float("nan"))
    return values.to(torch.promote_types(like.dtype, torch.float32))


def sparseness(attributions: Tensor, *, reduce: str = "abs_sum", valid: Tensor | None = None) -> Tensor:
    """Gini index of the absolute unit scores per sample (Chalasani et al. 2020, "Concise explanations").

    With the ``d`` absolute scores sorted ascending, ``G = sum_k (2k - d - 1) a_(k) / (d sum_k a_(k))``: 0 for a
    constant map, ``1 - 1/d`` (the largest value) when one unit holds everything. A map of zeros has no concentration
    at all and scores 0. Higher is sparser.

    Args:
        attributions: ``(N, ...)`` maps (images ``(N, C, H, W)``, features ``(N, D)``, per-token scores ``(N, L)``).
        reduce: ``"abs_sum"``, ``"sum"`` or ``"none"`` (see :func:`~lit_attr.functional.units.map_units`).
        valid: ``(N, *units)`` units that count; ``None``: all.

    Returns:
        ``(N,)`` values in ``[0, 1 - 1/d]``; NaN for a sample without a unit that counts.

    Example:
        >>> sparseness(torch.tensor([[0.0, 0.0, 0.0, 5.0], [1.0, 1.0, 1.0, 1.0]]))
        tensor([0.7500, 0.0000])
    """
    magnitudes, valid, count = _magnitudes(attributions, reduce, valid)
    # Units that do not count sort first (-1 < every magnitude), so a valid unit's rank is its position minus them.
    ordered = torch.sort(torch.where(valid, magnitudes, -1.0), dim=1).values.clamp(min=0)
    units = magnitudes.shape[1]
    rank = torch.arange(1, units + 1, device=magnitudes.device, dtype=torch.float64) - (units - count)[:, None]
    d = count.double()[:, None]
    weights = torch.where(rank > 0, 2 * rank - d - 1, 0.0)
    total = ordered.sum(dim=1)
    denominator = count.double().clamp(min=1) * total.clamp(min=torch.finfo(total.dtype).tiny)
    gini = (weights * ordered).sum(dim=1) / denominator
    return _finish(torch.where(total > 0, gini, 0.0), count, attributions)


def complexity(attributions: Tensor, *, reduce: str = "abs_sum", valid: Tensor | None = None) -> Tensor:
    """Entropy of the fractional contributions ``p_i = |a_i| / sum_j |a_j|`` per sample (Bhatt et al. 2020).

    ``H = -sum_i p_i log p_i`` (natural log, ``0 log 0 = 0``): 0 when one unit holds everything, ``log d`` for a
    constant map. A map of zeros says nothing about any unit and scores ``log d`` too. Lower is simpler.

    Args:
        attributions: ``(N, ...)`` maps.
        reduce: ``"abs_sum"``, ``"sum"`` or ``"none"``.
        valid: ``(N, *units)`` units that count; ``None``: all.

    Returns:
        ``(N,)`` entropies in ``[0, log d]``; NaN for a sample without a unit that counts.

    Example:
        >>> complexity(torch.tensor([[0.0, 0.0, 0.0, 5.0], [1.0, 1.0, 1.0, 1.0]]))
        tensor([0.0000, 1.3863])
    """
    magnitudes, valid, count = _magnitudes(attributions, reduce, valid)
    total = magnitudes.sum(dim=1, keepdim=True)
    p = magnitudes / total.clamp(min=torch.finfo(total.dtype).tiny)
    entropy = torch.where(p > 0, -p * p.log(), 0.0).sum(dim=1)
    uniform = count.double().clamp(min=1).log()
    return _finish(torch.where(total[:, 0] > 0, entropy, uniform), count, attributions)


def effective_complexity(
    attributions: Tensor, *, eps: float = 1e-5, reduce: str = "abs_sum", valid: Tensor | None = None
) -> Tensor:
    """Number of units whose absolute score exceeds ``eps`` times the sample's largest (Nguyen & Martinez 2020).

    The paper counts the attributions above a threshold ``eps``; like Quantus (its default ``eps=1e-5`` after
    dividing by the largest absolute score) the threshold is relative, so the count does not depend on the map's
    scale. A map of zeros counts 0. Lower is simpler.

    Args:
        attributions: ``(N, ...)`` maps.
        eps: the relative threshold, ``0 <= eps < 1``.
        reduce: ``"abs_sum"``, ``"sum"`` or ``"none"``.
        valid: ``(N, *units)`` units that count; ``None``: all.

    Returns:
        ``(N,)`` counts (as floats); NaN for a sample without a unit that counts.

    Raises:
        ValueError: for ``eps`` outside ``[0, 1)``.

    Example:
        >>> effective_complexity(torch.tensor([[0.0, 1e-7, 0.5, 5.0]]))
        tensor([2.])
    """
    eps = check_number("eps", eps)
    if not 0 <= eps < 1:
        raise ValueError(f"`eps` must be a relative threshold in [0, 1), got {eps!r}.")
    magnitudes, _, count = _magnitudes(attributions, reduce, valid)
    largest = magnitudes.amax(dim=1, keepdim=True)
    above = (magnitudes > eps * largest) & (largest > 0)
    return _finish(above.sum(dim=1).double(), count, attributions)

