"""The figure and axes a Metric's ``plot()`` draws into, without pyplot state (safe in training loops)."""

from __future__ import annotations

from typing import Any


def figure_and_axes(ax: Any | None, figsize: tuple[float, float], **figure_kwargs: Any) -> tuple[Any, Any]:
    """``(ax.get_figure(), ax)`` for given axes, else a new object-oriented ``Figure`` and its single axes."""
    if ax is not None:
        return ax.get_figure(), ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **figure_kwargs)
    return fig, fig.add_subplot()
