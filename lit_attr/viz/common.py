"""What every figure of :mod:`lit_attr.viz` shares: the colour maps, class labels, and rendering to an array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DIVERGING_CMAP", "SEQUENTIAL_CMAP", "class_label", "figure_to_array"]

DIVERGING_CMAP = "RdBu_r"
"""Colour map of signed maps: red supports the target, blue speaks against it, white is neutral."""
SEQUENTIAL_CMAP = "inferno"
"""Colour map of non-negative maps (magnitudes, masks)."""


def class_label(k: int | None, class_names: Sequence[str] | None = None) -> str:
    """The name of class ``k`` for captions: its entry in ``class_names``, else the index; ``"?"`` for None.

    Example:
        >>> class_label(1, ["cat", "dog"]), class_label(7, ["cat", "dog"]), class_label(None)
        ('dog', '7', '?')
    """
    if k is None:
        return "?"
    return str(class_names[k]) if class_names is not None and 0 <= k < len(class_names) else str(k)


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
