"""Localisation of attributions against ground-truth masks (specs/metrics.md, "Localisation")."""

from __future__ import annotations

import torch
from torch import Tensor


def _saliency_map(attributions: Tensor, masks: Tensor) -> Tensor:
    """Channel-sum ``(N, C, H, W)`` attributions to ``(N, H, W)`` after checking them against ``masks``."""
    if not isinstance(attributions, Tensor) or not isinstance(masks, Tensor):
        raise TypeError("`attributions` and `masks` must be tensors.")
    if attributions.ndim == 4:
        attributions = attributions.sum(dim=1)
    if attributions.ndim != 3:
        raise ValueError(f"`attributions` must be (N, C, H, W) or (N, H, W), got shape {tuple(attributions.shape)}.")
    if masks.shape != attributions.shape:
        raise ValueError(
            f"`masks` must have shape (N, H, W) = {tuple(attributions.shape)}, got {tuple(masks.shape)}."
        )
    if masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError("`masks` must be boolean or contain only 0 and 1.")
    if not bool(masks.flatten(1).any(dim=1).all()):
        raise ValueError("Every mask must contain at least one pixel; got an empty mask.")
    return attributions


def relevance_mass(attributions: Tensor, masks: Tensor) -> Tensor:
    """Fraction of positive relevance that falls inside the mask, per sample (Arras et al. 2022).

    Args:
        attributions: ``(N, C, H, W)`` (summed over channels) or ``(N, H, W)``.
        masks: ``(N, H, W)`` boolean (or 0/1) ground-truth masks, none empty.

    Returns:
        ``(N,)`` values in [0, 1]; 0 for a map with no positive relevance.

    Example:
        >>> a = torch.tensor([[[1.0, 3.0], [-2.0, 0.0]]])
        >>> relevance_mass(a, torch.tensor([[[False, True], [True, False]]]))
        tensor([0.7500])
    """
    a = _saliency_map(attributions, masks).clamp(min=0).flatten(1)
    inside = (a * masks.flatten(1).to(a.dtype)).sum(dim=1)
    total = a.sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(total))
