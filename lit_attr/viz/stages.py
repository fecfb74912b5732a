"""Readable labels of randomisation stages: "fully randomised" for the whole network, layer names grouped by block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["CASCADES", "StageLabels", "label_stage_axis", "stage_labels"]

CASCADES = ("top_down", "bottom_up")
"""The orders whose last stage randomises every layer (``"independent"`` randomises one layer at a time)."""
FULLY_RANDOMISED = "fully randomised"


class StageLabels(NamedTuple):
    """The labels of a randomisation axis.

    Attributes:
        ticks: one label per stage: ``"original"``, ``"fully randomised"``, else the layer's name within its block.
        blocks: ``(block, first, last)`` positions of consecutive stages whose layers share a block (the layer
            name up to its last dot: ``layer4.1`` for ``layer4.1.conv2``).
    """

    ticks: list[str]
    blocks: list[tuple[str, int, int]]


def stage_labels(stages: Sequence[str], order: str | None = None) -> StageLabels:
    """Readable labels for randomisation stages named as the check names them (``"original"``, then layer names).

    A stage is named after the layer randomised last, so the fully randomised network of a top-down cascade is
    named after the first layer (``stem.0``): it is labelled ``"fully randomised"`` instead, as is the only
    randomised stage of a check with one (``stages="last"``). The other stages keep their layer's name, with the
    block it belongs to said once per run of stages in that block.

    Args:
        stages: the stage names, ``"original"`` first.
        order: the check's order (``"top_down"``, ``"bottom_up"``, ``"independent"``); ``None`` (unknown) names the
            last stage "fully randomised" only when it is the only randomised one.

    Returns:
        :class:`StageLabels`.

    Example:
        >>> stage_labels(["original", "fc", "layer1.conv2", "layer1.conv1", "stem.0"], "top_down")
        StageLabels(ticks=['original', 'fc', 'conv2', 'conv1', 'fully randomised'], blocks=[('layer1', 2, 3)])
        >>> stage_labels(["original", "stem.0"]).ticks
        ['original', 'fully randomised']
    """
    stages = [str(stage) for stage in stages]
    full = len(stages) == 2 or (order in CASCADES and len(stages) > 1)
    ticks: list[str] = []
    blocks: list[tuple[str, int, int]] = []
    for position, stage in enumerate(stages):
        if position == 0 and stage == "original":
            ticks.append(stage)
            continue
        if full and position == len(stages) - 1:
            ticks.append(FULLY_RANDOMISED)
            continue
        block, _, leaf = stage.rpartition(".")
        ticks.append(leaf if block else stage)
        if not block:
            continue
        if blocks and blocks[-1][0] == block and blocks[-1][2] == position - 1:
            blocks[-1] = (block, blocks[-1][1], position)
        else:
            blocks.append((block, position, position))
    return StageLabels(ticks, blocks)


def label_stage_axis(ax: Any, stages: Sequence[str], order: str | None = None, fontsize: float = 6) -> None:
    """Label the x axis of ``ax`` (one position per stage) with :func:`stage_labels`: blocks named along the top.

    Example:
        >>> from matplotlib.figure import Figure
        >>> ax = Figure().subplots()
        >>> label_stage_axis(ax, ["original", "stem.1", "stem.0"], "top_down")
        >>> [label.get_text() for label in ax.get_xticklabels()]
        ['original', '1', 'fully randomised']
    """
    labels = stage_labels(stages, order)
    ax.set_xticks(range(len(stages)), labels.ticks, rotation=60, ha="right", fontsize=fontsize)
    if not labels.blocks:
        return
    top = ax.secondary_xaxis("top")
    top.set_xticks([(first + last) / 2 for _, first, last in labels.blocks], [name for name, *_ in labels.blocks])
    top.tick_params(labelsize=fontsize, length=0)
    for label in top.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("left")
    for _, first, _ in labels.blocks[1:]:
        ax.axvline(first - 0.5, color="grey", linewidth=0.4, alpha=0.5)
