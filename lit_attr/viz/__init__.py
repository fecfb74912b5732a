"""Rendering of attribution maps and attribution metrics with matplotlib's object-oriented API.

Every function builds its own :class:`matplotlib.figure.Figure` (never ``pyplot``), so rendering is safe inside a
training loop, in threads and on headless machines, and leaves no global figure state behind.
:func:`figure_to_array` turns a figure into an RGB array for loggers that take images. One kind of figure a module:
:mod:`~lit_attr.viz.images` (heatmap overlays), :mod:`~lit_attr.viz.tokens` (token highlighting),
:mod:`~lit_attr.viz.curves` (the metrics' curves), :mod:`~lit_attr.viz.stages` (randomisation-stage labels),
:mod:`~lit_attr.viz.common` (colour maps, labels, rendering).
"""

from lit_attr.viz.common import DIVERGING_CMAP, SEQUENTIAL_CMAP, class_label, figure_to_array
from lit_attr.viz.curves import insertion_deletion_figure, similarity_figure, stage_values_figure
from lit_attr.viz.images import (
    attribution_grid,
    heatmaps,
    normalize_heatmaps,
    randomization_grid,
    row_scale,
    to_display_images,
)
from lit_attr.viz.stages import label_stage_axis, stage_labels
from lit_attr.viz.tokens import token_colors, token_decoder, token_highlights_figure, token_highlights_html

__all__ = [
    "DIVERGING_CMAP",
    "SEQUENTIAL_CMAP",
    "attribution_grid",
    "class_label",
    "figure_to_array",
    "heatmaps",
    "insertion_deletion_figure",
    "label_stage_axis",
    "normalize_heatmaps",
    "randomization_grid",
    "row_scale",
    "similarity_figure",
    "stage_labels",
    "stage_values_figure",
    "to_display_images",
    "token_colors",
    "token_decoder",
    "token_highlights_figure",
    "token_highlights_html",
]
