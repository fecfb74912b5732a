"""Attribution maps of images: channel sums, robust per-map scaling, overlay grids and randomisation-stage grids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from lit_attr.viz.common import DIVERGING_CMAP, SEQUENTIAL_CMAP
from lit_attr.viz.stages import FULLY_RANDOMISED, stage_labels

__all__ = [
    "attribution_grid",
    "heatmaps",
    "normalize_heatmaps",
    "randomization_grid",
    "row_scale",
    "to_display_images",
]


def heatmaps(attributions: Tensor) -> Tensor:
    """One 2-D map per sample: ``(N, C, H, W)`` summed over channels, ``(N, H, W)`` as is.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)``.

    Returns:
        ``(N, H, W)`` float tensor on the CPU.

    Raises:
        ValueError: for other shapes.

    Example:
        >>> heatmaps(torch.ones(2, 3, 4, 5)).shape
        torch.Size([2, 4, 5])
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`attributions` must be a tensor, got {type(attributions).__name__}.")
    if attributions.ndim == 4:
        attributions = attributions.sum(dim=1)
    if attributions.ndim != 3:
        raise ValueError(f"`attributions` must be (N, C, H, W) or (N, H, W), got shape {tuple(attributions.shape)}.")
    return attributions.detach().float().cpu()


def normalize_heatmaps(maps: Tensor, signed: bool, percentile: float = 99.5) -> np.ndarray:
    """Scale every map by its own robust maximum into [-1, 1] (signed) or [0, 1] (magnitudes).

    The scale is the ``percentile``-th percentile of ``|map|``, so a few extreme pixels do not wash out the rest;
    values beyond it are clipped. An all-zero map stays zero.

    Args:
        maps: ``(N, H, W)``.
        signed: keep the sign (diverging display) or take magnitudes (sequential display).
        percentile: in (0, 100].

    Returns:
        ``(N, H, W)`` float32 array.

    Example:
        >>> normalize_heatmaps(torch.tensor([[[-2.0, 1.0]]]), signed=True, percentile=100).tolist()
        [[[-1.0, 0.5]]]
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"`percentile` must be in (0, 100], got {percentile!r}.")
    values = maps.detach().float().cpu()
    values = values if signed else values.abs()
    flat = values.abs().flatten(1)
    scale = torch.quantile(flat, percentile / 100, dim=1) if flat.shape[1] else torch.zeros(flat.shape[0])
    scale = torch.where(scale > 0, scale, flat.amax(dim=1) if flat.shape[1] else scale).clamp_min(1e-12)
    scaled = (values / scale.view(-1, 1, 1)).clamp(-1.0 if signed else 0.0, 1.0)
    return scaled.numpy().astype(np.float32)


def to_display_images(x: Tensor) -> np.ndarray:
    """Images ``(N, C, H, W)`` as ``(N, H, W, 3)`` floats in [0, 1] for display.

    Inputs already in [0, 1] are shown as they are; anything else (normalised inputs) is min-max scaled per image.
    One channel becomes grey; other channel counts than 1 and 3 are averaged to grey.

    Example:
        >>> to_display_images(torch.zeros(2, 1, 4, 4)).shape
        (2, 4, 4, 3)
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"`x` must be a tensor of images (N, C, H, W), got {getattr(x, 'shape', type(x))}.")
    images = x.detach().float().cpu()
    if images.shape[1] != 3:
        images = images.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    low = images.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
    high = images.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    outside = ((low < 0) | (high > 1)).view(-1, 1, 1, 1)
    scaled = (images - low) / (high - low).clamp_min(1e-12)
    images = torch.where(outside, scaled, images).clamp(0.0, 1.0)
    return images.permute(0, 2, 3, 1).numpy()


def _gray(images: np.ndarray) -> np.ndarray:
    return images @ np.array([0.299, 0.587, 0.114], dtype=images.dtype)


def attribution_grid(
    images: Tensor,
    attributions: Tensor,
    captions: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    title: str | None = None,
    signed: bool | None = None,
    cmap: str | None = None,
    alpha: float = 0.6,
    percentile: float = 99.5,
    masks: Tensor | None = None,
    scale: Literal["sample", "row"] = "sample",
) -> Figure:
    """A grid: the inputs on top, their ground truth below (if given), then their maps over a grey copy, a colour bar.

    Maps are channel sums (:func:`heatmaps`). With ``scale="sample"`` each is scaled by its own robust maximum
    (:func:`normalize_heatmaps`): colours compare pixels within a sample, not across samples. With ``scale="row"``
    the row shares one scale (the ``percentile``-th percentile of ``|A|`` over all its maps), and the colour bar is
    in attribution units: colours then compare samples too.

    Args:
        images: ``(N, C, H, W)`` inputs.
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` attributions of those inputs.
        captions: one text per sample, written under its overlay (e.g. class, target and scores).
        titles: one text per sample, written above its input.
        title: the figure's title.
        signed: diverging display of signed maps; ``None`` chooses it when any value is negative.
        cmap: a matplotlib colour map name; defaults to :data:`DIVERGING_CMAP` or :data:`SEQUENTIAL_CMAP`.
        alpha: opacity of the heatmap over the grey image.
        percentile: see :func:`normalize_heatmaps`.
        masks: ``(N, H, W)`` ground truth (a mask per sample, values in [0, 1]), drawn in a row of its own between
            the inputs and the maps: the object over a dimmed input.
        scale: ``"sample"`` (each map its own scale) or ``"row"`` (one scale for all the maps).

    Returns:
        The figure (no pyplot state; render it with :func:`~lit_attr.viz.common.figure_to_array` or ``fig.savefig``).

    Example:
        >>> fig = attribution_grid(torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8), captions=["a", "b"])
        >>> from lit_attr.viz.common import figure_to_array
        >>> figure_to_array(fig).shape[-1]
        3
    """
    display = to_display_images(images)
    maps = heatmaps(attributions)
    n = display.shape[0]
    if maps.shape[0] != n or tuple(maps.shape[1:]) != display.shape[1:3]:
        raise ValueError(
            f"`attributions` must give one (H, W) = {display.shape[1:3]} map per image, got {tuple(maps.shape)}."
        )
    for name, texts in (("captions", captions), ("titles", titles)):
        if texts is not None and len(texts) != n:
            raise ValueError(f"`{name}` must have one entry per image ({n}), got {len(texts)}.")
    if scale not in ("sample", "row"):
        raise ValueError(f"`scale` must be 'sample' or 'row', got {scale!r}.")
    if masks is not None:
        masks = torch.as_tensor(masks).detach().float().cpu()
        if tuple(masks.shape) != (n, *display.shape[1:3]):
            raise ValueError(f"`masks` must be (N, H, W) = {(n, *display.shape[1:3])}, got {tuple(masks.shape)}.")
    signed = bool((maps < 0).any()) if signed is None else bool(signed)
    cmap = cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)
    if scale == "row":
        bound = row_scale(maps, percentile)
        norm = Normalize(-bound, bound) if signed else Normalize(0.0, bound)
        scaled = (maps if signed else maps.abs()).numpy()
        bar_label = "attribution (one scale for the row)"
    else:
        norm = Normalize(-1.0, 1.0) if signed else Normalize(0.0, 1.0)
        scaled = normalize_heatmaps(maps, signed, percentile)
        bar_label = "attribution (per-sample scale)"

    # Axes placed by hand (in inches) rather than by constrained layout, which costs more than the drawing itself
    # and would be paid at every validation epoch.
    rows = 2 if masks is None else 3
    fig, axes, bar_ax = _image_grid(
        rows=rows, cols=n, cell=1.5, top=0.6 if title else 0.3, bottom=0.5, hgap=0.1, wgap=0.3, left=0.3
    )
    for row, name in enumerate(["input", *(["ground truth"] if masks is not None else []), "attribution"]):
        axes[row, 0].set_ylabel(name, fontsize=7)
    for i in range(n):
        top, bottom = axes[0, i], axes[rows - 1, i]
        top.imshow(display[i], interpolation="nearest")
        bottom.imshow(_gray(display[i]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        bottom.imshow(scaled[i], cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
        if masks is not None:
            truth = masks[i].clamp(0.0, 1.0).numpy()
            axes[1, i].imshow(display[i] * (0.25 + 0.75 * truth[..., None]), interpolation="nearest")
            axes[1, i].contour(truth, levels=[0.5], colors="lime", linewidths=0.8)
        if titles is not None:
            top.set_title(titles[i], fontsize=7)
        if captions is not None:
            bottom.set_xlabel(captions[i], fontsize=7)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax)
    bar.set_label(bar_label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def row_scale(maps: Tensor, percentile: float = 99.5) -> float:
    """The scale that a row of maps shares: the ``percentile``-th percentile of ``|A|`` over all of them.

    Like :func:`normalize_heatmaps`, a few extreme pixels do not wash out the rest; an all-zero row has scale
    ``1e-12`` (its maps stay neutral).

    Args:
        maps: ``(N, H, W)`` (or any shape: every value counts).
        percentile: in (0, 100].

    Example:
        >>> row_scale(torch.tensor([[[-2.0, 1.0]], [[0.5, 0.0]]]), percentile=100)
        2.0
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"`percentile` must be in (0, 100], got {percentile!r}.")
    values = maps.detach().float().cpu().abs().flatten()
    if not values.numel():
        return 1e-12
    bound = float(np.percentile(values.numpy(), percentile))  # numpy: torch.quantile refuses over 2**24 values
    return max(bound if bound > 0 else float(values.max()), 1e-12)


def randomization_grid(
    images: Tensor,
    stage_maps: Mapping[str, Tensor],
    title: str | None = None,
    cmap: str = SEQUENTIAL_CMAP,
    percentile: float = 99.5,
    order: str | None = None,
) -> Figure:
    """Rows of samples, columns of randomisation stages: the input, then ``|A|`` at every stage.

    Magnitudes are shown because the check's default similarity compares ``|A|``; each map has its own scale.

    Args:
        images: ``(N, C, H, W)`` inputs.
        stage_maps: stage name -> ``(N, C, H, W)`` or ``(N, H, W)`` attributions, in stage order
            (``"original"`` first).
        title: the figure's title.
        cmap: colour map of the magnitudes.
        percentile: see :func:`normalize_heatmaps`.
        order: the check's order, which tells the fully randomised stage (:func:`lit_attr.viz.stage_labels`).

    Returns:
        The figure.

    Example:
        >>> maps = {"original": torch.rand(2, 8, 8), "fc": torch.rand(2, 8, 8)}
        >>> randomization_grid(torch.rand(2, 3, 8, 8), maps).axes[0].get_title()
        'input'
    """
    if not stage_maps:
        raise ValueError("`stage_maps` must hold at least one stage.")
    display = to_display_images(images)
    n = display.shape[0]
    scaled = {stage: normalize_heatmaps(heatmaps(maps), False, percentile) for stage, maps in stage_maps.items()}
    for stage, maps in scaled.items():
        if maps.shape[0] != n:
            raise ValueError(f"Stage {stage!r} has {maps.shape[0]} maps for {n} images.")
    columns = 1 + len(scaled)
    fig, axes, bar_ax = _image_grid(rows=n, cols=columns, cell=1.1, top=0.85 if title else 0.6, bottom=0.1, hgap=0.08)
    norm = Normalize(0.0, 1.0)
    for i in range(n):
        axes[i, 0].imshow(display[i], interpolation="nearest")
        for j, maps in enumerate(scaled.values(), start=1):
            axes[i, j].imshow(maps[i], cmap=cmap, norm=norm, interpolation="nearest")
    names = [str(stage) for stage in scaled]  # full names: a grid column has room for them
    if stage_labels(names, order).ticks[-1] == FULLY_RANDOMISED:
        names[-1] = FULLY_RANDOMISED
    for j, stage in enumerate(["input", *names]):
        axes[0, j].set_title(stage, fontsize=7, rotation=30 if len(stage) > 8 else 0)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax)
    bar.set_label("|attribution| (per-map scale)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _image_grid(
    rows: int, cols: int, cell: float, top: float, bottom: float, hgap: float, wgap: float = 0.15, left: float = 0.1
) -> tuple[Figure, np.ndarray, Any]:
    """A figure of ``rows x cols`` square image axes of ``cell`` inches, plus a colour-bar axis on the right.

    ``top`` and ``bottom`` reserve inches for the titles above the first row and the captions under the last,
    ``left`` for the rows' labels, ``hgap`` and ``wgap`` separate the rows and the columns.
    """
    bar_space = 0.9
    width = left + cols * cell + (cols - 1) * wgap + bar_space
    height = top + rows * cell + (rows - 1) * hgap + bottom
    fig = Figure(figsize=(width, height), dpi=100)
    axes = np.empty((rows, cols), dtype=object)
    for i in range(rows):
        for j in range(cols):
            x0 = left + j * (cell + wgap)
            y0 = height - top - (i + 1) * cell - i * hgap
            ax = fig.add_axes((x0 / width, y0 / height, cell / width, cell / height))
            ax.set_xticks([])
            ax.set_yticks([])
            axes[i, j] = ax
    bar_height = min(rows * cell, 2.0)
    bar_ax = fig.add_axes(((width - bar_space + 0.15) / width, bottom / height, 0.12 / width, bar_height / height))
    return fig, axes, bar_ax
