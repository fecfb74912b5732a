"""Localisation against ground-truth masks as a torchmetrics ``Metric`` (math in ``functional.localization``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_attr._checks import check_names
from lit_attr.functional.localization import (
    localization_auroc,
    mask_planes,
    pointing_game,
    relevance_mass,
    relevance_rank,
    saliency_map,
)
from lit_attr.metrics._plotting import figure_and_axes
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["LOCALIZATION_METRICS", "Localization"]

LOCALIZATION_METRICS: tuple[str, ...] = ("pointing_game", "relevance_mass", "relevance_rank", "auroc")
"""Names accepted by :class:`Localization`'s ``metrics``."""


class Localization(Metric):
    """Mean localisation scores of attribution maps against ground-truth object masks.

    Each :meth:`update` scores every sample with the selected functions of :mod:`lit_attr.functional.localization`
    on the channel sum of the attributions and adds the scores to ``sum``-reduced states, so the result under DDP
    equals the single-process result:

    * ``"pointing_game"``: the maximal pixel lies in the mask (within ``tolerance`` pixels); tied maxima score the
      fraction of them that hit;
    * ``"relevance_mass"``: share of the positive relevance inside the mask;
    * ``"relevance_rank"``: share of the top-K pixels inside the mask, K = mask size;
    * ``"auroc"``: AUROC of the map as a mask-pixel score (undefined for masks covering the whole image).

    All lie in [0, 1]; higher is better. :meth:`compute` returns ``{name: mean over samples}``; :meth:`score`
    returns one batch's ``{name: (N,) scores}`` without changing the states, and ``update(..., scores=...)`` adds
    values computed that way.

    Args:
        metrics: a subset of :data:`LOCALIZATION_METRICS` (a single name is accepted).
        tolerance: pointing-game tolerance in pixels (chessboard distance).
        **kwargs: options of :class:`torchmetrics.Metric`.

    Raises:
        ValueError: for an empty, repeated or unknown metric name, or a negative ``tolerance``.
        TypeError: if ``tolerance`` is not an int.

    Example:
        >>> metric = Localization()
        >>> a = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])
        >>> metric.update(a, torch.tensor([[[False, True], [False, False]]]))
        >>> {name: round(float(value), 3) for name, value in metric.compute().items()}
        {'pointing_game': 1.0, 'relevance_mass': 0.667, 'relevance_rank': 1.0, 'auroc': 1.0}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    score_sum: Tensor
    total: Tensor

    def __init__(
        self,
        metrics: str | Sequence[str] = LOCALIZATION_METRICS,
        tolerance: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        names = check_names("metrics", metrics, LOCALIZATION_METRICS, what="localization metric")
        if not isinstance(tolerance, int) or isinstance(tolerance, bool):
            raise TypeError(f"`tolerance` must be an int (pixels), got {type(tolerance).__name__}.")
        if tolerance < 0:
            raise ValueError(f"`tolerance` must be >= 0 pixels, got {tolerance}.")
        self.metrics = names
        self.tolerance = tolerance
        self.add_state("score_sum", torch.zeros(len(names)), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def score(self, attributions: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """Score a batch and return ``{name: (N,) scores}``; the states are left as they are.

        Args:
            attributions: ``(N, C, H, W)`` (summed over channels) or ``(N, H, W)``.
            masks: ``(N, H, W)`` boolean (or 0/1) masks, none empty; ``(N, 1, H, W)`` or one plane per channel
                ``(N, C, H, W)`` count a pixel where any plane marks it.

        Raises:
            TypeError: if an input is not a tensor.
            ValueError: if the shapes do not match, or a mask is not boolean/0-1, empty, or (with ``"auroc"``)
                covers the whole image.
        """
        masks = mask_planes(masks, attributions)
        heatmap = saliency_map(attributions, masks)  # validates once; the functions below get (N, H, W)
        functions: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
            "pointing_game": lambda a, s: pointing_game(a, s, tolerance=self.tolerance),
            "relevance_mass": relevance_mass,
            "relevance_rank": relevance_rank,
            "auroc": localization_auroc,
        }
        return {name: functions[name](heatmap, masks) for name in self.metrics}

    def update(self, attributions: Tensor, masks: Tensor, *, scores: dict[str, Tensor] | None = None) -> None:
        """Add a batch's scores to the states.

        Args:
            attributions: ``(N, C, H, W)`` (summed over channels) or ``(N, H, W)``.
            masks: ``(N, H, W)`` boolean (or 0/1) masks, none empty.
            scores: this batch's :meth:`score`, if the caller already has it.

        Raises:
            TypeError: if an input is not a tensor.
            ValueError: if the shapes do not match, or a mask is not boolean/0-1, empty, or (with ``"auroc"``)
                covers the whole image.
        """
        if scores is None:
            scores = self.score(attributions, masks)
        values = torch.stack([scores[name].to(self.score_sum) for name in self.metrics])
        self.score_sum += values.sum(dim=1)
        self.total += values.shape[1]

    def compute(self) -> dict[str, Tensor]:
        """Mean of every selected score over all samples seen (on all ranks)."""
        means = self.score_sum / self.total
        return {name: means[index] for index, name in enumerate(self.metrics)}

    def plot(self, val: dict[str, Tensor] | None = None, ax: Any | None = None) -> tuple[Any, Any]:
        """Bar chart of the mean scores, all in [0, 1].

        Uses matplotlib's object-oriented API only (no pyplot state), so it is safe in training loops and threads.

        Args:
            val: a result of :meth:`compute`; ``None`` calls :meth:`compute`.
            ax: axes to draw into; ``None`` creates a new figure.

        Returns:
            ``(figure, axes)``.

        Example:
            >>> metric = Localization(metrics=("pointing_game", "relevance_mass"))
            >>> metric.update(torch.tensor([[[0.0, 2.0], [1.0, 0.0]]]), torch.tensor([[[False, True], [False, False]]]))
            >>> fig, ax = metric.plot()
            >>> [round(float(bar.get_height()), 3) for bar in ax.patches]
            [1.0, 0.667]
        """
        val = self.compute() if val is None else val
        fig, ax = figure_and_axes(ax, (4.5, 3.0))
        bars = ax.bar(list(val), [float(value) for value in val.values()], color="tab:blue")
        ax.bar_label(bars, fmt="%.2f")
        ax.set_ylim(0.0, 1.1)
        ax.set_ylabel("mean over samples")
        ax.set_title("localisation")
        return fig, ax


register_metric(
    "localization",
    Localization,
    consumes=("attributions", "masks"),
    per_sample=True,
    modalities={"images"},  # the masks are (H, W) pixel planes
    presentation=Presentation(
        scores=(
            Score("pointing_game", "pointing game", header="point", caption="point {:.0f}"),
            Score("relevance_mass", "relevance mass", header="mass", caption="mass {:.2f}"),
            Score("relevance_rank", "relevance rank"),
            Score("auroc", "loc. AUROC"),
        ),
        curves=None,
    ),
)
