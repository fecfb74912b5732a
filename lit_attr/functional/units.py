"""Attribution maps as rows of unit scores, and the row statistics the breadth metrics share.

A metric that reads a map alone (sparseness, complexity) or compares it with a mask needs one score per *unit*: a
pixel of an image (its channels reduced), a feature, a token. The unit is the input kind's (:mod:`lit_attr.inputs`):
:func:`map_units` asks the kind of the inputs, or of the map itself when the metric sees no inputs (a 4-D map is an
image map whose channels are reduced, any other map has one unit per element), so no metric names a modality.
Token maps come with the positions that count (:func:`valid_units`: attended and not special).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lit_attr._checks import check_choice
from lit_attr.inputs import InputKind, input_kind

__all__ = ["MAP_REDUCTIONS", "UnitMap", "map_units", "pearson_rows", "valid_units"]

#: How a map becomes unit scores: channel sum of absolute values, absolute channel sum, or every element a unit.
MAP_REDUCTIONS = ("abs_sum", "sum", "none")


class UnitMap(NamedTuple):
    """A batch of maps as unit scores.

    Attributes:
        scores: ``(N, U)`` float unit scores (signed for ``reduce="sum"``/``"none"``; the caller takes ``abs``).
        valid: ``(N, U)`` bool: the units that count (all of them unless the caller gave ``valid``).
        shape: the unit shape of one sample (``(H, W)`` for images), to view ``(N, U)`` back.
    """

    scores: Tensor
    valid: Tensor
    shape: tuple[int, ...]


def check_map(attributions: object, name: str = "attributions") -> Tensor:
    """Refuse anything but a non-empty finite floating-point batch of maps ``(N, ...)``.

    Example:
        >>> check_map(torch.zeros(2, 5)).shape
        torch.Size([2, 5])
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(attributions).__name__}.")
    if not attributions.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {attributions.dtype}.")
    if attributions.ndim < 2 or 0 in attributions.shape:
        raise ValueError(f"`{name}` must be a non-empty batch of maps (N, ...), got shape {tuple(attributions.shape)}.")
    if attributions.device.type != "meta" and not bool(torch.isfinite(attributions).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values; it must be finite.")
    return attributions


def valid_units(attention_mask: Tensor | None, special_tokens_mask: Tensor | None) -> Tensor | None:
    """The token positions that count: attended and not special; ``None`` when neither mask is given (all count).

    Example:
        >>> valid_units(torch.tensor([[1, 1, 1, 0]]), torch.tensor([[1, 0, 0, 0]]))
        tensor([[False,  True,  True, False]])
    """
    valid = None if attention_mask is None else attention_mask.bool()
    if special_tokens_mask is not None:
        plain = ~special_tokens_mask.bool()
        valid = plain if valid is None else valid & plain.to(valid.device)
    return valid


def map_units(
    attributions: Tensor,
    reduce: str = "abs_sum",
    *,
    kind: InputKind | None = None,
    valid: Tensor | None = None,
) -> UnitMap:
    """Unit scores of a batch of maps, flattened to ``(N, U)``, with the units that count.

    Args:
        attributions: ``(N, ...)`` finite float maps.
        reduce: ``"abs_sum"`` (sum of absolute values over a unit's elements: an image pixel's channels),
            ``"sum"`` (their signed sum) or ``"none"`` (every element is a unit).
        kind: the input kind of the inputs the maps explain; ``None``: the kind of the map itself (a 4-D map is an
            image map, any other has one unit per element).
        valid: ``(N, *units)`` bool (or 0/1) units that count (token maps: :func:`valid_units`); ``None``: all.

    Returns:
        :class:`UnitMap`.

    Raises:
        TypeError: for a map that is not a float tensor.
        ValueError: for an empty or non-finite map, an unknown ``reduce`` or a ``valid`` mask of another shape.

    Example:
        >>> units = map_units(torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]]))  # one image, 2 channels, 1 x 2 pixels
        >>> units.scores, units.shape
        (tensor([[4., 2.]]), (1, 2))
    """
    check_map(attributions)
    check_choice("reduce", reduce, MAP_REDUCTIONS)
    kind = kind or input_kind(attributions)
    if reduce == "none":
        scores = attributions
    else:
        scores = kind.unit_scores(attributions, "abs_sum" if reduce == "abs_sum" else "sum")
    shape = tuple(scores.shape[1:])
    flat = scores.reshape(scores.shape[0], -1)
    if valid is None:
        return UnitMap(flat, torch.ones_like(flat, dtype=torch.bool), shape)
    if not isinstance(valid, Tensor) or tuple(valid.shape) != tuple(scores.shape):
        given = tuple(valid.shape) if isinstance(valid, Tensor) else type(valid).__name__
        raise ValueError(
            f"`attention_mask` / `special_tokens_mask` must have one entry per unit of the maps, "
            f"{tuple(scores.shape)}, got {given}."
        )
    return UnitMap(flat, valid.reshape(flat.shape).to(device=flat.device, dtype=torch.bool), shape)


def pearson_rows(a: Tensor, b: Tensor, valid: Tensor | None = None) -> Tensor:
    """Pearson correlation of ``a[i]`` and ``b[i]`` per row, in float64; 0 for a row where either is constant.

    ``valid`` ``(N, S)`` bool restricts every row to its own entries (a sentence's groups of tokens); ``None``: all.

    The 0 (instead of NaN) follows :func:`~lit_attr.functional.similarity.spearman`: a constant map (no ranking at
    all) is not correlated with anything, and one such sample cannot turn a dataset mean into NaN.

    Args:
        a: ``(N, S)`` values.
        b: ``(N, S)`` values.
        valid: ``(N, S)`` bool entries that count, or ``None``.

    Returns:
        ``(N,)`` float64 correlations in [-1, 1].

    Example:
        >>> a, b = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]), torch.tensor([[2.0, 4.0, 7.0], [1.0, 2.0, 3.0]])
        >>> pearson_rows(a, b)
        tensor([0.9934, 0.0000], dtype=torch.float64)
    """
    if valid is None:
        a = a.double() - a.double().mean(dim=1, keepdim=True)
        b = b.double() - b.double().mean(dim=1, keepdim=True)
    else:
        size = valid.sum(dim=1, keepdim=True).clamp(min=1)
        a, b = (torch.where(valid, t.double(), 0.0) for t in (a, b))
        a, b = (torch.where(valid, t - t.sum(dim=1, keepdim=True) / size, 0.0) for t in (a, b))
    var = (a * a).sum(dim=1) * (b * b).sum(dim=1)
    cov = (a * b).sum(dim=1)
    rho = torch.where(var > 0, cov / var.clamp(min=torch.finfo(torch.float64).tiny).sqrt(), torch.zeros_like(cov))
    return rho.clamp(-1.0, 1.0)
