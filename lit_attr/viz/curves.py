"""Curves of the metrics: perturbation games (insertion/deletion, ROAD), randomisation-stage similarities and values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib.figure import Figure

from lit_attr.viz.stages import label_stage_axis

__all__ = ["insertion_deletion_figure", "similarity_figure", "stage_values_figure"]


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
            (``{similarity: {"stages": [...], "curve": (S,), ...}, "threshold": t, "order": o}``). The stages are
            labelled by :func:`~lit_attr.viz.stages.stage_labels` ("fully randomised", layer names by block).
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
    panels = {measure: {method: result[measure] for method, result in results.items()} for measure in measures}
    fig = stage_values_figure(panels, first.get("order"), title)
    for ax in fig.axes:
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.legend(fontsize=7, loc="best")
    fig.axes[0].set_ylabel("similarity to original", fontsize=8)
    return fig


def stage_values_figure(
    panels: Mapping[str, Mapping[str, Mapping[str, Any]]], order: str | None = None, title: str | None = None
) -> Figure:
    """Mean values per randomisation stage, one panel per quantity (a map metric's score), one line per method.

    Args:
        panels: ``{panel title: {method: {"stages": [...], "curve": (S,)}}}``; the title says what the panel shows
            and its direction (``"complexity (entropy) ↓"``).
        order: the randomisation order, for the stage labels (:func:`~lit_attr.viz.stages.stage_labels`).
        title: the figure's title.

    Returns:
        The figure.

    Example:
        >>> entry = {"stages": ["original", "fc"], "curve": torch.tensor([2.0, 3.5])}
        >>> [ax.get_title() for ax in stage_values_figure({"entropy ↓": {"saliency": entry}}).axes]
        ['entropy ↓']
    """
    if not panels:
        raise ValueError("`panels` must hold at least one quantity.")
    fig = Figure(figsize=(4.6 * len(panels) + 0.4, 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, results) in zip(axes, panels.items(), strict=True):
        stages: list[str] = []
        for method, entry in results.items():
            stages = list(entry["stages"])
            curve = torch.as_tensor(entry["curve"]).detach().float().cpu().numpy()
            ax.plot(range(len(curve)), curve, marker="o", markersize=3, label=method)
        label_stage_axis(ax, stages, order)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("randomised up to", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        ax.tick_params(axis="y", labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
