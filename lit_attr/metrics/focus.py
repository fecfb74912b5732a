"""Focus (Arias-Duart et al. 2022) as a torchmetrics ``Metric``: the method explains mosaics built from the batch.

Images tile 2x2 grids, token ids sentence mosaics (four sentences' words between one [CLS] and [SEP]); ``update``
takes a token batch's ``attention_mask``, ``special_tokens_mask`` and ``model_inputs`` as the runner passes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, check_seed
from lit_attr.functional.focus import TILES, focus
from lit_attr.functional.unit_games import batch_fields
from lit_attr.methods.base import AttributionMethod
from lit_attr.metrics._method_scores import MethodScores
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["Focus"]


class Focus(MethodScores):
    """Mean focus of an attribution method on mosaics of the batch; higher is better (0.5 ignores the content).

    Every sample's mosaic (itself, a second sample of its target class and two of other classes from its batch: a
    2x2 grid of images, or four sentences' words one after another) is explained for its target; focus is the share
    of the positive relevance on the target's two tiles (see :func:`~lit_attr.functional.focus.focus`). A sample's
    mosaic depends on its batch; a batch of one class has none, and neither has a sentence mosaic longer than the
    model's positions (a warning names them); those samples are left out of the mean. Cost: one attribution per
    sample, of a mosaic.

    Args:
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` instance.
        model: the classifier; required with a name.
        tile: ``"full"`` (the paper's: ``2H x 2W`` image mosaics; whole sentences) or ``"half"`` (image tiles halved:
            the model's input size).
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

    def score(
        self,
        x: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        model_inputs: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """``{"focus": (N,)}`` of a batch (NaN for samples without a mosaic); the states are left as they are.

        Args:
            x: ``(N, C, H, W)`` images or ``(N, L)`` token ids on the model's device.
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            logits: the model's logits for ``x`` if already computed.
            attention_mask: token ids: ``(N, L)`` 1 on real tokens.
            special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens.
            model_inputs: token ids: the model's other inputs per token (``token_type_ids``), by name.
        """
        fields = batch_fields(attention_mask, special_tokens_mask, model_inputs)
        return {"focus": focus(self.method, x, target, logits=logits, **fields, **self._options)}


register_metric(
    "focus",
    Focus,
    consumes=("method", "x", "target", "logits", "attention_mask", "special_tokens_mask", "model_inputs"),
    modalities={"images", "tokens"},  # the kinds with mosaics: 2x2 grids of images, sentences one after another
    presentation=Presentation(scores=(Score("focus", "focus (mosaics)"),), curves=None),
)
