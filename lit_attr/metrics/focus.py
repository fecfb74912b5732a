"""Focus (Arias-Duart et al. 2022) as a torchmetrics ``Metric``: the method explains mosaics built from the batch."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, check_seed
from lit_attr.functional.focus import TILES, focus
from lit_attr.methods.base import AttributionMethod
from lit_attr.metrics._method_scores import MethodScores
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["Focus"]


class Focus(MethodScores):
    """Mean focus of an attribution method on mosaics of the batch; higher is better (0.5 ignores the content).

    Every sample's mosaic (itself, a second image of its target class and two of other classes from its batch) is
    explained for its target; focus is the share of the positive relevance on the target's two tiles (see
    :func:`~lit_attr.functional.focus.focus`). A sample's mosaic depends on its batch, and a batch of one class has
    none (those samples are left out of the mean). Cost: one attribution per sample, of a mosaic.

    Args:
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` instance.
        model: the classifier; required with a name.
        tile: ``"full"`` (the paper's: ``2H x 2W`` mosaics) or ``"half"`` (tiles halved: the model's input size).
        seed: seed of the mosaics' partners and positions.
        method_kwargs: options for :func:`~lit_attr.methods.get_method` (name only).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
        >>> metric = Focus("saliency", net)
        >>> metric.update(torch.rand(4, 3, 8, 8), torch.tensor([0, 0, 1, 2]))
        >>> sorted(metric.compute())
        ['focus']
    """

    higher_is_better = True
    keys = ("focus",)

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        tile: str = "full",
        seed: int = 0,
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(method, model, method_kwargs=method_kwargs, **kwargs)
        self._options = {"tile": check_choice("tile", tile, TILES), "seed": check_seed(seed)}

    def score(self, x: Tensor, target: TargetType = None) -> dict[str, Tensor]:
        """``{"focus": (N,)}`` of a batch (NaN for samples without a mosaic); the states are left as they are.

        Args:
            x: ``(N, C, H, W)`` images on the model's device.
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        """
        return {"focus": focus(self.method, x, target, **self._options)}


register_metric(
    "focus",
    Focus,
    consumes=("method", "x", "target"),
    modalities={"images"},  # mosaics are tiles of images
    presentation=Presentation(scores=(Score("focus", "focus (mosaics)"),), curves=None),
)
