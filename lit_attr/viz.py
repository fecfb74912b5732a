"""Rendering of attribution maps and attribution metrics with matplotlib's object-oriented API.

Every function builds its own :class:`matplotlib.figure.Figure` (never ``pyplot``), so rendering is safe inside a
training loop, in threads and on headless machines, and leaves no global figure state behind.
:func:`figure_to_array` turns a figure into an RGB array for loggers that take images.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "DIVERGING_CMAP",
    "SEQUENTIAL_CMAP",
    "attribution_grid",
    "figure_to_array",
    "heatmaps",
    "insertion_deletion_figure",
    "normalize_heatmaps",
    "randomization_grid",
    "similarity_figure",
    "to_display_images",
    "token_colors",
    "token_highlights_figure",
    "token_highlights_html",
]

DIVERGING_CMAP = "RdBu_r"
"""Colour map of signed maps: red supports the target, blue speaks against it, white is neutral."""
SEQUENTIAL_CMAP = "inferno"
"""Colour map of non-negative maps (magnitudes, masks)."""


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
) -> Figure:
    """A two-row grid: the inputs on top, their attribution maps overlaid on a grey copy below, and a colour bar.

    Maps are channel sums (:func:`heatmaps`), each scaled by its own robust maximum
    (:func:`normalize_heatmaps`): colours compare pixels within a sample, not across samples.

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

    Returns:
        The figure (no pyplot state; render it with :func:`figure_to_array` or ``fig.savefig``).

    Example:
        >>> fig = attribution_grid(torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8), captions=["a", "b"])
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
    signed = bool((maps < 0).any()) if signed is None else bool(signed)
    cmap = cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)
    norm = Normalize(-1.0, 1.0) if signed else Normalize(0.0, 1.0)
    scaled = normalize_heatmaps(maps, signed, percentile)

    # Axes placed by hand (in inches) rather than by constrained layout, which costs more than the drawing itself
    # and would be paid at every validation epoch.
    fig, axes, bar_ax = _image_grid(rows=2, cols=n, cell=1.5, top=0.6 if title else 0.3, bottom=0.5, hgap=0.1, wgap=0.3)
    for i in range(n):
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(display[i], interpolation="nearest")
        bottom.imshow(_gray(display[i]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        bottom.imshow(scaled[i], cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
        if titles is not None:
            top.set_title(titles[i], fontsize=7)
        if captions is not None:
            bottom.set_xlabel(captions[i], fontsize=7)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax)
    bar.set_label("attribution (per-sample scale)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def randomization_grid(
    images: Tensor,
    stage_maps: Mapping[str, Tensor],
    title: str | None = None,
    cmap: str = SEQUENTIAL_CMAP,
    percentile: float = 99.5,
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
    for j, stage in enumerate(["input", *scaled]):
        axes[0, j].set_title(stage, fontsize=7, rotation=30 if len(stage) > 8 else 0)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax)
    bar.set_label("|attribution| (per-map scale)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def class_label(k: int | None, class_names: Sequence[str] | None = None) -> str:
    """The name of class ``k`` for captions: its entry in ``class_names``, else the index; ``"?"`` for None.

    Example:
        >>> class_label(1, ["cat", "dog"]), class_label(7, ["cat", "dog"]), class_label(None)
        ('dog', '7', '?')
    """
    if k is None:
        return "?"
    return str(class_names[k]) if class_names is not None and 0 <= k < len(class_names) else str(k)


def insertion_deletion_figure(
    results: Mapping[str, Mapping[str, Any]],
    title: str | None = None,
    *,
    games: Sequence[str] = ("insertion", "deletion"),
    x_values: Sequence[float] | None = None,
    x_label: str = "fraction of pixels changed",
) -> Figure:
    """Mean curves of perturbation games, one panel per method, with each game's summary value in the legend.

    Args:
        results: method name -> a result of :class:`~lit_attr.metrics.insertion_deletion.InsertionDeletion`'s
            ``compute()`` (keys ``insertion_curve``, ``deletion_curve``, ``insertion``, ``deletion``), or of any
            metric with ``<game>_curve`` and ``<game>`` entries for every game (ROAD: ``morf``, ``lerf``).
        title: the figure's title.
        games: the games to draw (insertion in green and deletion in red; others the first in green, the second in
            red, then blue and orange).
        x_values: the curves' x positions (default: evenly from 0 to 1).
        x_label: the x axis' label.

    Returns:
        The figure.

    Example:
        >>> curve = torch.linspace(1, 0, 5)
        >>> res = {"insertion_curve": curve.flip(0), "deletion_curve": curve, "insertion": 0.5, "deletion": 0.5}
        >>> len(insertion_deletion_figure({"saliency": res}).axes)
        1
    """
    if not results:
        raise ValueError("`results` must hold at least one method.")
    n = len(results)
    fig = Figure(figsize=(3.4 * n + 0.4, 3.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    colors = ("tab:green", "tab:red", "tab:blue", "tab:orange")
    for ax, (method, result) in zip(axes, results.items(), strict=True):
        fixed = {"insertion": colors[0], "deletion": colors[1]}
        for position, game in enumerate(games):
            color = fixed.get(game, colors[position % len(colors)])
            curve = torch.as_tensor(result[f"{game}_curve"]).detach().float().cpu()
            positions = torch.linspace(0.0, 1.0, curve.numel()) if x_values is None else torch.as_tensor(x_values)
            value = float(torch.as_tensor(result[game]))
            summary = "AUC " if game in ("insertion", "deletion") else "mean "
            ax.plot(positions.numpy(), curve.numpy(), color=color, label=f"{game} {summary}{value:.3f}")
            ax.fill_between(positions.numpy(), curve.numpy(), alpha=0.15, color=color)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel(x_label, fontsize=8)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("model score", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def similarity_figure(
    results: Mapping[str, Mapping[str, Any]], threshold: float | None = None, title: str | None = None
) -> Figure:
    """Mean similarity to the original attributions per randomisation stage, one panel per similarity measure.

    Args:
        results: method name -> a result of
            :class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization`'s ``compute()``
            (``{similarity: {"stages": [...], "curve": (S,), ...}, "threshold": t}``).
        threshold: the pass threshold to draw; defaults to the first result's ``"threshold"``.
        title: the figure's title.

    Returns:
        The figure.

    Example:
        >>> res = {"spearman_abs": {"stages": ["original", "fc"], "curve": torch.tensor([1.0, 0.1])}}
        >>> len(similarity_figure({"saliency": res}, threshold=0.5).axes)
        1
    """
    if not results:
        raise ValueError("`results` must hold at least one method.")
    first = next(iter(results.values()))
    measures = [key for key, value in first.items() if isinstance(value, Mapping) and "curve" in value]
    if threshold is None and "threshold" in first:
        threshold = float(first["threshold"])
    fig = Figure(figsize=(4.6 * len(measures) + 0.4, 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    for ax, measure in zip(axes, measures, strict=True):
        stages: list[str] = []
        for method, result in results.items():
            stages = list(result[measure]["stages"])
            curve = torch.as_tensor(result[measure]["curve"]).detach().float().cpu().numpy()
            ax.plot(range(len(curve)), curve, marker="o", markersize=3, label=method)
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xticks(range(len(stages)), stages, rotation=60, ha="right", fontsize=6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(measure, fontsize=9)
        ax.set_xlabel("randomised up to", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        ax.tick_params(axis="y", labelsize=7)
    axes[0].set_ylabel("similarity to original", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _image_grid(
    rows: int, cols: int, cell: float, top: float, bottom: float, hgap: float, wgap: float = 0.15
) -> tuple[Figure, np.ndarray, Any]:
    """A figure of ``rows x cols`` square image axes of ``cell`` inches, plus a colour-bar axis on the right.

    ``top`` and ``bottom`` reserve inches for the titles above the first row and the captions under the last,
    ``hgap`` and ``wgap`` separate the rows and the columns.
    """
    left, bar_space = 0.1, 0.9
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


def figure_to_array(fig: Figure, dpi: float | None = None) -> np.ndarray:
    """Render ``fig`` with the Agg backend into an ``(H, W, 3)`` uint8 RGB array.

    Example:
        >>> figure_to_array(Figure(figsize=(1, 1), dpi=10)).shape
        (10, 10, 3)
    """
    if dpi is not None:
        fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ------------------------------------------------------------------------------------------------------ tokens
def _token_rows(tokens: Sequence[Sequence[str]], scores: Tensor | Sequence[Any]) -> list[tuple[list[str], np.ndarray]]:
    """Pair each sample's tokens with its first ``len(tokens)`` scores, checking that there are enough."""
    if isinstance(tokens, str) or not all(isinstance(row, Sequence) and not isinstance(row, str) for row in tokens):
        raise TypeError("`tokens` must hold one sequence of token strings per sample.")
    if len(scores) != len(tokens):
        raise ValueError(f"`scores` must have one row per sample ({len(tokens)}), got {len(scores)}.")
    rows = []
    for i, (words, values) in enumerate(zip(tokens, scores, strict=True)):
        values = torch.as_tensor(values).detach().float().cpu().reshape(-1).numpy()
        if values.shape[0] < len(words):
            raise ValueError(f"Sample {i} has {len(words)} tokens but only {values.shape[0]} scores.")
        rows.append(([str(w) for w in words], values[: len(words)]))
    return rows


def token_colors(scores: Tensor | Sequence[float], cmap: str = DIVERGING_CMAP) -> list[str]:
    """One background colour per token: the diverging map at ``score / max |score|`` of the sample.

    Red supports the target, blue speaks against it, white is neutral; an all-zero sample is white.

    Example:
        >>> token_colors([2.0, 0.0, -2.0])
        ['#67001f', '#f7f6f6', '#053061']
    """
    values = torch.as_tensor(scores).detach().float().cpu().reshape(-1)
    scale = float(values.abs().max()) if values.numel() else 0.0
    scaled = (values / scale).clamp(-1, 1) if scale > 0 else torch.zeros_like(values)
    colour_map = colormaps[cmap]
    return [to_hex(colour_map((float(v) + 1) / 2)) for v in scaled]


def _ink(background: str) -> str:
    """Black or white text, whichever reads better on ``background``."""
    red, green, blue = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "#ffffff"


def token_highlights_html(
    tokens: Sequence[Sequence[str]],
    scores: Tensor | Sequence[Any],
    captions: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Self-contained HTML (inline styles only) that colours every token by its attribution, with a legend.

    For ``wandb.Html`` and report pages. Each sample is scaled by its own largest ``|score|`` (see
    :func:`token_colors`); hovering a token shows its score. Tokens, captions and the title are HTML-escaped.

    Args:
        tokens: one list of token strings per sample (real tokens only; e.g. the decoded ``input_ids``).
        scores: ``(N, L)`` per-token scores (or one 1-D sequence per sample); each row's first ``len(tokens[i])``
            entries are used, so padded rows are fine.
        captions: one text per sample, shown before its tokens (e.g. label, target and scores).
        title: a heading.

    Returns:
        An HTML fragment (a ``<div>``).

    Example:
        >>> page = token_highlights_html([["the", "<b>", "good"]], torch.tensor([[0.0, -1.0, 2.0]]))
        >>> "&lt;b&gt;" in page and "<b>" not in page
        True
    """
    rows = _token_rows(tokens, scores)
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"`captions` must have one entry per sample ({len(rows)}), got {len(captions)}.")
    parts = ['<div class="lit-attr-tokens" style="font-family:sans-serif;line-height:2.1;font-size:14px">']
    if title:
        parts.append(f'<div style="font-weight:bold;margin-bottom:4px">{html.escape(title)}</div>')
    for i, (words, values) in enumerate(rows):
        spans = []
        for word, value, colour in zip(words, values, token_colors(values), strict=True):
            spans.append(
                f'<span title="{value:+.4g}" style="background-color:{colour};color:{_ink(colour)};'
                f'padding:2px 4px;margin:0 1px;border-radius:3px">{html.escape(word)}</span>'
            )
        caption = ""
        if captions is not None:
            caption = f'<span style="color:#555;margin-right:8px">{html.escape(captions[i])}</span>'
        parts.append(f'<div class="lit-attr-sample">{caption}{"".join(spans)}</div>')
    low, middle, high = token_colors([-1.0, 0.0, 1.0])
    parts.append(
        '<div class="lit-attr-legend" style="font-size:12px;color:#555;margin-top:6px">against the target '
        f'<span style="display:inline-block;width:160px;height:10px;vertical-align:middle;'
        f'background:linear-gradient(to right,{low},{middle},{high})"></span> supports it '
        "(each sentence scaled by its largest |score|)</div>"
    )
    parts.append("</div>")
    return "".join(parts)


def token_highlights_figure(
    tokens: Sequence[Sequence[str]],
    scores: Tensor | Sequence[Any],
    captions: Sequence[str] | None = None,
    title: str | None = None,
    width: float = 8.0,
    fontsize: float = 9.0,
) -> Figure:
    """The token highlighting of :func:`token_highlights_html` as a figure (for image loggers and PNG files).

    Tokens are set in a monospaced font and wrapped at ``width`` inches; a colour bar shows the diverging scale.
    The figure is ``width`` inches wide at 100 dpi; its height grows with the number of lines.

    Args:
        tokens: one list of token strings per sample.
        scores: ``(N, L)`` per-token scores (or one 1-D sequence per sample).
        captions: one text per sample, written above its tokens.
        title: the figure's title.
        width: figure width in inches.
        fontsize: font size in points.

    Returns:
        The figure (no pyplot state; render it with :func:`figure_to_array` or ``fig.savefig``).

    Example:
        >>> fig = token_highlights_figure([["the", "soup", "was", "good"]], torch.tensor([[0.1, 0.2, 0.0, 0.9]]))
        >>> figure_to_array(fig).shape[1]
        800
    """
    rows = _token_rows(tokens, scores)
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"`captions` must have one entry per sample ({len(rows)}), got {len(captions)}.")
    char = 0.6 * fontsize / 72  # advance of a monospaced character, in inches
    line = 2.0 * fontsize / 72
    margin, usable = 0.2, width - 0.4
    # Lay the tokens out first (x in inches, line index), so the height is known before the figure exists.
    layout: list[tuple[float, int, str, float, str | None]] = []
    lines = 0
    for i, (words, values) in enumerate(rows):
        if captions is not None:
            layout.append((margin, lines, captions[i], 0.0, None))
            lines += 1
        x = margin
        for word, value, colour in zip(words, values, token_colors(values), strict=True):
            advance = (len(word) + 1) * char
            if x + advance > margin + usable and x > margin:
                x, lines = margin, lines + 1
            layout.append((x, lines, word, float(value), colour))
            x += advance + char / 2
        lines += 2  # the sample's last line and a blank one
    lines -= 1
    top, bottom = (0.45 if title else 0.15), 0.6
    height = top + lines * line + bottom
    fig = Figure(figsize=(width, height), dpi=100)
    for x, row, text, _, colour in layout:
        y = 1 - (top + (row + 0.5) * line) / height
        if colour is None:
            fig.text(x / width, y, text, fontsize=fontsize * 0.9, color="#555555", va="center")
            continue
        fig.text(
            x / width, y, text, fontsize=fontsize, family="monospace", va="center", color=_ink(colour),
            bbox={"facecolor": colour, "edgecolor": "none", "boxstyle": "round,pad=0.2"},
        )  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=fontsize + 1, y=1 - 0.1 / height, va="top")
    bar = fig.add_axes((0.3, 0.2 / height, 0.4, 0.12 / height))
    scale = ScalarMappable(norm=Normalize(-1.0, 1.0), cmap=DIVERGING_CMAP)
    colorbar = fig.colorbar(scale, cax=bar, orientation="horizontal")
    colorbar.set_ticks([-1, 0, 1], labels=["against", "0", "supports"])
    colorbar.ax.tick_params(labelsize=fontsize * 0.8)
    return fig


def token_decoder(source: Any) -> Callable[[Tensor], list[str]]:
    """A function from token ids to token strings, from whatever knows the vocabulary.

    Args:
        source: a Hugging Face ``transformers`` tokenizer (``convert_ids_to_tokens``); a ``tokenizers`` tokenizer
            (``id_to_token``); an object with ``decode(ids) -> list[str]`` (lit-attr's text data modules); an object
            with such a ``tokenizer`` attribute; a callable ``ids -> tokens``; or None (the ids as text).

    Example:
        >>> token_decoder(None)(torch.tensor([5, 7]))
        ['5', '7']
    """
    if source is None:
        return lambda ids: [str(int(i)) for i in ids]
    # Tokenizers' own decode joins the tokens into one string: their per-token lookups come first.
    if callable(getattr(source, "convert_ids_to_tokens", None)):
        method = source.convert_ids_to_tokens
    elif callable(getattr(source, "id_to_token", None)):
        return lambda ids: [str(source.id_to_token(int(i))) for i in ids]
    elif callable(getattr(source, "decode", None)):
        method = source.decode
    elif getattr(source, "tokenizer", None) is not None:
        return token_decoder(source.tokenizer)
    elif callable(source):
        method = source
    else:
        return token_decoder(None)
    return lambda ids: [str(token) for token in method([int(i) for i in ids])]
