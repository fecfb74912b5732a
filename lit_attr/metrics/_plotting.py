"""Figures of the metrics without pyplot state (safe in training loops).

The axes a ``plot()`` draws into, and the line panels of the default curves of :mod:`lit_attr.metrics.presentation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def figure_and_axes(ax: Any | None, figsize: tuple[float, float], **figure_kwargs: Any) -> tuple[Any, Any]:
    """``(ax.get_figure(), ax)`` for given axes, else a new object-oriented ``Figure`` and its single axes."""
    if ax is not None:
        return ax.get_figure(), ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **figure_kwargs)
    return fig, fig.add_subplot()


def line_panels(panels: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Any:
    """One panel per entry of ``panels`` (``{panel title: {line label: 1-D values}}``), one line per label.

    The x axis runs from 0 to 1 over each line's values, so lines of different lengths share a panel.
    """
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * len(panels) + 0.4, 3.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, lines) in zip(axes, panels.items(), strict=True):
        for label, values in lines.items():
            y = torch.as_tensor(values).detach().float().cpu().numpy()
            ax.plot(np.linspace(0.0, 1.0, len(y)), y, marker="o", markersize=2, label=label)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
