"""Localisation of attributions against ground-truth masks (specs/metrics.md, "Localisation").

Every function reduces ``(N, C, H, W)`` attributions to the channel sum ``a`` (signed; :func:`relevance_mass` keeps
its positive part) and scores it against boolean masks ``(N, H, W)``, one value per sample.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from lit_attr.functional.similarity import _double_ranks


def saliency_map(attributions: Tensor, masks: Tensor) -> Tensor:
    """Channel-sum ``(N, C, H, W)`` attributions to ``(N, H, W)`` after checking them against ``masks``."""
    for name, value in (("attributions", attributions), ("masks", masks)):
        if not isinstance(value, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if not attributions.is_floating_point():
        raise TypeError(f"`attributions` must be a floating-point tensor, got dtype {attributions.dtype}.")
    if attributions.ndim == 4:
        attributions = attributions.sum(dim=1)
    if attributions.ndim != 3 or attributions.shape[0] == 0:
        raise ValueError(
            f"`attributions` must be a non-empty batch (N, C, H, W) or (N, H, W), got {tuple(attributions.shape)}."
        )
    if masks.shape != attributions.shape:
        raise ValueError(
            f"`masks` must have shape (N, H, W) = {tuple(attributions.shape)}, got {tuple(masks.shape)}: the samples "
            "and pixels of `attributions` ((N, 1, H, W), or one plane per channel of `attributions`, also work)."
        )
    if masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError("`masks` must be boolean or contain only 0 and 1.")
    empty = (~masks.flatten(1).bool().any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"Every mask in `masks` must contain at least one pixel; empty for samples {empty}.")
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError("`attributions` contain NaN or infinite values.")
    return attributions


def mask_planes(masks: Tensor, attributions: Tensor) -> Tensor:
    """Masks ``(N, 1, H, W)``, or one plane per channel of ``(N, C, H, W)`` attributions, as ``(N, H, W)``.

    A pixel is ground truth where any plane marks it; other shapes are returned as they are (for
    :func:`saliency_map` to judge).

    Example:
        >>> planes = torch.tensor([[[[True, False]], [[False, False]], [[False, True]]]])  # (1, 3, 1, 2)
        >>> mask_planes(planes, torch.zeros(1, 3, 1, 2))
        tensor([[[True, True]]])
    """
    if not isinstance(masks, Tensor) or not isinstance(attributions, Tensor) or masks.ndim != 4:
        return masks
    channels = attributions.shape[1] if attributions.ndim == 4 else 1
    if masks.shape[1] not in (1, channels):
        return masks
    return masks.any(dim=1) if masks.dtype == torch.bool else masks.amax(dim=1)


def relevance_mass(attributions: Tensor, masks: Tensor) -> Tensor:
    """Fraction of positive relevance that falls inside the mask, per sample (Arras et al. 2022).

    Args:
        attributions: ``(N, C, H, W)`` (summed over channels) or ``(N, H, W)``.
        masks: ``(N, H, W)`` boolean (or 0/1) ground-truth masks, none empty (or ``(N, 1|C, H, W)``, see
            :func:`mask_planes`).

    Returns:
        ``(N,)`` values in [0, 1]; 0 for a map with no positive relevance.

    Example:
        >>> a = torch.tensor([[[1.0, 3.0], [-2.0, 0.0]]])
        >>> relevance_mass(a, torch.tensor([[[False, True], [True, False]]]))
        tensor([0.7500])
    """
    masks = mask_planes(masks, attributions)
    a = saliency_map(attributions, masks).clamp(min=0).flatten(1)
    inside = (a * masks.flatten(1).to(a.dtype)).sum(dim=1)
    total = a.sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(total))


def _result_dtype(a: Tensor) -> torch.dtype:
    return a.dtype if a.is_floating_point() else torch.get_default_dtype()


def pointing_game(attributions: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """Pointing game (Zhang et al. 2018): does the most relevant pixel fall on the object?, per sample, tie-aware.

    The pointed location is the maximum of the channel-summed map. When several pixels share the maximum (exact
    equality; FEI's maps have plateaus), the score is the expected hit of a pointer that picks one of them uniformly
    at random: the fraction of the maximal pixels that hit. A map with a single maximum scores 1.0 or 0.0 as usual;
    a constant map scores the fraction of the image that hits.

    A pixel hits when it lies in the mask or, with ``tolerance`` t > 0, within t pixels of it in chessboard distance,
    i.e. inside the mask dilated by a ``(2t + 1) x (2t + 1)`` square (a max-pool with stride 1). Ties and tolerance
    combine pixel by pixel: each maximal pixel counts as a hit if it is within ``tolerance`` of the mask.

    Args:
        attributions: ``(N, C, H, W)`` (summed over channels) or ``(N, H, W)``.
        masks: ``(N, H, W)`` boolean (or 0/1) ground-truth masks, none empty (or ``(N, 1|C, H, W)``, see
            :func:`mask_planes`).
        tolerance: non-negative int, in pixels.

    Returns:
        ``(N,)`` values in [0, 1] (1.0 or 0.0 without ties), in the floating dtype of ``attributions`` (float32 for
        integer inputs).

    Raises:
        TypeError: if an input is not a tensor or ``tolerance`` is not an int.
        ValueError: if the shapes do not match, a mask is not boolean/0-1 or empty, or ``tolerance`` is negative.

    Example:
        >>> a = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]]])
        >>> mask = torch.tensor([[[True, False, False], [False, False, False], [False, False, False]]])
        >>> pointing_game(a, mask), pointing_game(a, mask, tolerance=1), pointing_game(a, mask, tolerance=2)
        (tensor([0.]), tensor([0.]), tensor([1.]))
        >>> plateau = torch.tensor([[[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 0.0]]])  # 4 maxima, 1 in the mask
        >>> pointing_game(plateau, mask)
        tensor([0.2500])
    """
    if not isinstance(tolerance, int) or isinstance(tolerance, bool):
        raise TypeError(f"`tolerance` must be an int (pixels), got {type(tolerance).__name__}.")
    if tolerance < 0:
        raise ValueError(f"`tolerance` must be >= 0 pixels, got {tolerance}.")
    masks = mask_planes(masks, attributions)
    a = saliency_map(attributions, masks)
    target = masks.bool()
    if tolerance > 0:
        size = 2 * tolerance + 1
        dilated = F.max_pool2d(target.unsqueeze(1).float(), size, stride=1, padding=tolerance)
        target = dilated.squeeze(1) > 0
    flat = a.flatten(1)
    maximal = flat == flat.amax(dim=1, keepdim=True)
    hits = (maximal & target.flatten(1)).sum(dim=1)
    dtype = _result_dtype(a)
    return hits.to(dtype) / maximal.sum(dim=1).to(dtype)


def relevance_rank(attributions: Tensor, masks: Tensor) -> Tensor:
    """Relevance rank accuracy (Arras et al. 2022): share of the K most relevant pixels inside the mask, K = |mask|.

    Pixels are ranked by the signed channel sum, highest first. Ties are broken stably in raster order (the pixel
    that comes first row by row ranks higher), so a map with plateaus, e.g. an all-zero region, has one
    well-defined top K.

    Args:
        attributions: ``(N, C, H, W)`` (summed over channels) or ``(N, H, W)``.
        masks: ``(N, H, W)`` boolean (or 0/1) ground-truth masks, none empty (or ``(N, 1|C, H, W)``, see
            :func:`mask_planes`).

    Returns:
        ``(N,)`` values in [0, 1], in the floating dtype of ``attributions`` (float32 for integer inputs).

    Raises:
        TypeError: if an input is not a tensor.
        ValueError: if the shapes do not match or a mask is not boolean/0-1 or empty.

    Example:
        >>> a = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
        >>> relevance_rank(a, torch.tensor([[[True, False], [True, False]]]))  # top 2 = {4, 3}; 4 is inside
        tensor([0.5000])
    """
    masks = mask_planes(masks, attributions)
    a = saliency_map(attributions, masks).flatten(1)
    inside = masks.flatten(1).bool()
    order = torch.sort(a, dim=1, descending=True, stable=True).indices
    k = inside.sum(dim=1, keepdim=True)
    in_top_k = torch.arange(a.shape[1], device=a.device).unsqueeze(0) < k
    hits = (inside.gather(1, order) & in_top_k).sum(dim=1)
    dtype = _result_dtype(a)
    return hits.to(dtype) / k.squeeze(1).to(dtype)


def localization_auroc(attributions: Tensor, masks: Tensor) -> Tensor:
    """Area under the ROC curve of the channel-summed map as a score for "pixel is in the mask", per sample.

    Equals the probability that a random mask pixel scores higher than a random background pixel, ties counting
    one half: the Mann-Whitney U statistic over ``|mask| * |background|``, computed from average ranks. Rank sums
    are exact integers (twice the average rank), so the result does not depend on the image size's float
    precision. The whole batch is ranked at once.

    Args:
        attributions: ``(N, C, H, W)`` (summed over channels) or ``(N, H, W)``.
        masks: ``(N, H, W)`` boolean (or 0/1) ground-truth masks, each with at least one pixel inside and one
            outside (the AUROC is undefined otherwise).

    Returns:
        ``(N,)`` values in [0, 1] (0.5 = chance), in the floating dtype of ``attributions`` (float32 for integer
        inputs).

    Raises:
        TypeError: if an input is not a tensor.
        ValueError: if the shapes do not match, a mask is not boolean/0-1, empty or covers the whole image.

    Example:
        >>> a = torch.tensor([[[3.0, 1.0], [2.0, 2.0]]])
        >>> localization_auroc(a, torch.tensor([[[True, False], [True, False]]]))  # pairs: 3>1, 3>2, 2>1, 2=2
        tensor([0.8750])
    """
    masks = mask_planes(masks, attributions)
    a = saliency_map(attributions, masks).flatten(1)
    inside = masks.flatten(1).bool()
    n_pos = inside.sum(dim=1)
    n_neg = inside.shape[1] - n_pos
    if not bool((n_neg > 0).all()):
        full = torch.nonzero(n_neg == 0).flatten().tolist()
        raise ValueError(
            f"AUROC needs background pixels, but the masks of samples {full} cover the whole image; "
            "drop 'auroc' or use masks with at least one pixel outside the object."
        )
    rank_sum2 = torch.where(inside, _double_ranks(a), 0).sum(dim=1)
    u2 = rank_sum2 - n_pos * (n_pos + 1)  # twice the Mann-Whitney U of the mask pixels
    auc = u2.double() / (2 * n_pos * n_neg).double()
    return auc.to(_result_dtype(a))
