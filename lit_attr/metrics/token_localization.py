"""Token localisation against rationale masks as a torchmetrics ``Metric`` (math: ``functional.token_localization``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_attr.functional.token_localization import TOKEN_LOCALIZATION_METRICS, token_localization_scores
from lit_attr.metrics._token_metric import add_rows, checked_scores
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["TokenLocalization"]

class TokenLocalization(Metric):
    """Mean localisation of per-token attributions against ground-truth rationales (ERASER-style).

    * ``"token_f1"``: F1 of the top-K tokens against the rationale, K = the rationale's size;
    * ``"token_iou"``: their intersection over union;
    * ``"auprc"``: average precision of the scores as detectors of rationale tokens.

    Only real, non-special tokens are candidates (see :mod:`lit_attr.functional.token_localization`). All lie in
    [0, 1]; higher is better. :meth:`compute` returns ``{name: mean over samples}``; states are fixed-size sums, so
    the result under DDP equals the single-process result.

    Args:
        metrics: a subset of :data:`~lit_attr.functional.token_localization.TOKEN_LOCALIZATION_METRICS`.
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> metric = TokenLocalization()
        >>> metric.update(torch.tensor([[0.1, 0.9, 0.5, 0.0]]), torch.tensor([[0, 1, 0, 1]]))
        >>> {name: round(float(value), 3) for name, value in metric.compute().items()}
        {'token_f1': 0.5, 'token_iou': 0.333, 'auprc': 0.75}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    score_sum: Tensor
    count: Tensor

    def __init__(self, metrics: str | Sequence[str] = TOKEN_LOCALIZATION_METRICS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [name for name in names if name not in TOKEN_LOCALIZATION_METRICS]
        if not names or unknown or len(set(names)) != len(names):
            raise ValueError(f"`metrics` must be distinct names from {TOKEN_LOCALIZATION_METRICS}, got {list(names)}.")
        self.metrics = names
        self.add_state("score_sum", torch.zeros(len(names)), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def score(
        self,
        attributions: Tensor,
        masks: Tensor,
        *,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample scores ``(N,)`` of a batch, keyed by metric name.

        Args:
            attributions: ``(N, L)`` per-token scores.
            masks: ``(N, L)`` rationale marks (bool or 0/1), none empty, only on real non-special tokens.
            attention_mask: ``(N, L)`` 1 on real tokens, 0 on padding.
            special_tokens_mask: ``(N, L)`` 1 on special tokens (never candidates).
        """
        return token_localization_scores(attributions, masks, attention_mask, special_tokens_mask, self.metrics)

    def update(
        self,
        attributions: Tensor,
        masks: Tensor,
        *,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Add a batch's scores (``scores`` from :meth:`score`, or computed here) to the states."""
        if scores is None:
            scores = self.score(
                attributions, masks, attention_mask=attention_mask, special_tokens_mask=special_tokens_mask
            )
        scores = checked_scores(scores, self.metrics, type(self).__name__)
        add_rows(self.score_sum, torch.stack([scores[name] for name in self.metrics], dim=1))
        self.count += scores[self.metrics[0]].shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Mean of every selected score over all samples seen (on all processes)."""
        means = self.score_sum / self.count
        return {name: means[i] for i, name in enumerate(self.metrics)}


register_metric(
    "token_localization",
    TokenLocalization,
    consumes=("attributions", "masks", "attention_mask", "special_tokens_mask"),
    per_sample=True,
    modalities={"tokens"},
    presentation=Presentation(
        display_name="token localization",
        scores=(
            Score("token_f1", "rationale F1", header="F1"),
            Score("token_iou", "rationale IoU"),
            Score("auprc", "rationale AUPRC"),
        ),
        curves=None,
    ),
)
