"""Similarity of two attribution maps, per sample (specs/metrics.md, "Parameter randomisation").

:func:`spearman` is the rank correlation of Adebayo et al. (2018) with average ranks for ties, vectorised over the
batch; :func:`ssim_maps` is torchmetrics' SSIM on min-max normalised heatmaps. Both compare sample ``i`` of ``a``
with sample ``i`` of ``b`` and return one value per sample.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

# SSIM window of Wang et al. (2004) and of torchmetrics' defaults: an 11x11 gaussian with sigma 1.5.
_SSIM_SIGMA = 1.5
_SSIM_KERNEL = 11
# torchmetrics pads by reflection with half the window; reflection needs more pixels than the pad on each side.
_SSIM_MIN_SIDE = _SSIM_KERNEL // 2 + 1


def _double_ranks(x: Tensor) -> Tensor:
    """Twice the average rank (1-based) of every entry along the last dim of a 2-D tensor, as exact int64.

    Tied values share the mean of the positions they occupy in sorted order (scipy's ``rankdata(method="average")``).
    Twice that mean is ``first + last + 2`` for a tie group spanning 0-based sorted positions ``first..last``, an
    integer, so callers can sum ranks without rounding (the AUROC's Mann-Whitney U) or cast them to floating point.
    """
    values, order = torch.sort(x, dim=-1, stable=True)
    n = x.shape[-1]
    positions = torch.arange(n, device=x.device).expand_as(values)
    differs = values[:, 1:] != values[:, :-1]
    edge = torch.ones_like(values[:, :1], dtype=torch.bool)
    starts = torch.cat([edge, differs], dim=1)  # first element of each tie group
    ends = torch.cat([differs, edge], dim=1)  # last element of each tie group
    # Propagate each group's first position forwards and its last position backwards, without a Python loop.
    first = torch.where(starts, positions, 0).cummax(dim=-1).values
    last = torch.where(ends, positions, n - 1).flip(-1).cummin(dim=-1).values.flip(-1)
    return torch.empty_like(first).scatter_(-1, order, first + last + 2)


def _check_pair(a: Tensor, b: Tensor) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"`a` and `b` must be tensors, got {type(a).__name__} and {type(b).__name__}.")
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"`a` and `b` must be non-empty batches (N, ...) with N >= 1, got shape {tuple(a.shape)}.")
    if not bool(torch.isfinite(a).all()) or not bool(torch.isfinite(b).all()):
        raise ValueError("`a` and `b` must be finite; got NaN or infinite values.")


def _result_dtype(*tensors: Tensor) -> torch.dtype:
    floats = [t.dtype for t in tensors if t.is_floating_point()]
    if not floats:
        return torch.get_default_dtype()
    dtype = floats[0]
    for other in floats[1:]:
        dtype = torch.promote_types(dtype, other)
    return dtype


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between ``a[i]`` and ``b[i]`` over all non-batch elements, per sample.

    Ranks are average ranks (ties share the mean of their positions), so the result equals
    ``scipy.stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic`` including ties. Two deliberate differences:
    a sample in which either map is constant (no ranking at all) gets 0 instead of scipy's NaN, so that one
    degenerate map (e.g. the all-zero gradient of a dead randomised network) cannot turn a dataset mean into NaN;
    and a sample whose two maps rank identically gets exactly 1 (floating-point rounding could otherwise give
    ``1 - 1e-16``).

    Ranking and the correlation run in float64 (integer ranks, exact sums); the result has the floating dtype of
    the inputs (the default dtype for integer inputs).

    Args:
        a: ``(N, ...)`` tensor, finite.
        b: tensor of the same shape.

    Returns:
        ``(N,)`` correlations in [-1, 1].

    Raises:
        TypeError: if ``a`` or ``b`` is not a tensor.
        ValueError: if the shapes differ, the batch is empty or a value is not finite.

    Example:
        >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 3.0]])
        >>> b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0]])
        >>> spearman(a, b)
        tensor([ 1.0000, -0.9487])
    """
    _check_pair(a, b)
    n = a.shape[0]
    ra = _double_ranks(a.reshape(n, -1))
    rb = _double_ranks(b.reshape(n, -1))
    # Twice the average rank sums to L (L + 1) whatever the ties, so its mean is exactly L + 1: centring is exact.
    length = ra.shape[1]
    ca = (ra - (length + 1)).double()
    cb = (rb - (length + 1)).double()
    cov = (ca * cb).sum(dim=1)
    var = (ca * ca).sum(dim=1) * (cb * cb).sum(dim=1)
    rho = torch.where(var > 0, cov / var.clamp(min=1.0).sqrt(), torch.zeros_like(cov)).clamp(-1.0, 1.0)
    identical = (ra == rb).all(dim=1) & (var > 0)
    rho = torch.where(identical, torch.ones_like(rho), rho)
    return rho.to(_result_dtype(a, b))


def _min_max(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    span = flat.amax(dim=1).view(-1, 1, 1, 1) - low
    return torch.where(span > 0, (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def ssim_maps(a: Tensor, b: Tensor) -> Tensor:
    """SSIM between heatmaps ``a[i]`` and ``b[i]``, each min-max normalised to [0, 1] first, per sample.

    Uses torchmetrics' functional SSIM with an 11x11 gaussian window (sigma 1.5), ``data_range=1`` and its default
    constants ``k1=0.01``, ``k2=0.03`` (reflection padding; the SSIM image is averaged over all pixels).

    A constant map carries no spatial structure; it normalises to all zeros (instead of dividing by a zero range).
    Two constant maps therefore have SSIM 1, and a constant map against a structured one scores low.

    Args:
        a: heatmaps ``(N, H, W)`` or ``(N, 1, H, W)`` (reduce channels first), finite, with ``H, W >= 6``.
        b: heatmaps of the same shape.

    Returns:
        ``(N,)`` SSIM values (at most 1) in the floating dtype of the inputs (at least float32).

    Raises:
        TypeError: if ``a`` or ``b`` is not a tensor.
        ValueError: if the shapes differ or are not heatmaps, the maps are too small for the window, or a value is
            not finite.

    Example:
        >>> a = torch.arange(64.0).view(1, 8, 8)
        >>> ssim_maps(a, 3 * a + 1)  # the same map up to an affine change
        tensor([1.])
    """
    _check_pair(a, b)
    if a.ndim not in (3, 4):
        raise ValueError(f"`a` and `b` must be heatmaps (N, H, W) or (N, 1, H, W), got shape {tuple(a.shape)}.")
    if a.ndim == 4 and a.shape[1] != 1:
        raise ValueError(
            f"`a` and `b` must be single-channel heatmaps (N, H, W) or (N, 1, H, W), got shape {tuple(a.shape)}; "
            "reduce channels first (e.g. `a.abs().sum(dim=1)`)."
        )
    if min(a.shape[-2:]) < _SSIM_MIN_SIDE:
        raise ValueError(
            f"SSIM's {_SSIM_KERNEL}x{_SSIM_KERNEL} window needs maps of at least {_SSIM_MIN_SIDE}x{_SSIM_MIN_SIDE} "
            f"pixels, got {tuple(a.shape[-2:])}."
        )
    dtype = torch.promote_types(_result_dtype(a, b), torch.float32)
    a = _min_max(a.reshape(a.shape[0], 1, *a.shape[-2:]).to(dtype))
    b = _min_max(b.reshape(b.shape[0], 1, *b.shape[-2:]).to(dtype))
    return structural_similarity_index_measure(
        a, b, gaussian_kernel=True, sigma=_SSIM_SIGMA, kernel_size=_SSIM_KERNEL, reduction="none", data_range=1.0
    )
