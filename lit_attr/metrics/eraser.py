"""ERASER's comprehensiveness and sufficiency as torchmetrics ``Metric`` classes (math in ``functional.eraser``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice
from lit_attr.functional.eraser import (
    DEFAULT_BINS,
    ERASER_OUTPUTS,
    EraserResult,
    check_bins,
    comprehensiveness,
    sufficiency,
)
from lit_attr.metrics._plotting import figure_and_axes
from lit_attr.metrics._token_metric import TOKEN_GAME_INPUTS, TokenGameMetric, add_rows
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["Comprehensiveness", "Sufficiency"]


class _Eraser(TokenGameMetric):
    """Mean AOPC and per-bin scores of one ERASER game over a dataset; see the subclasses."""

    #: The score's name (the key of :meth:`compute`) and the functional that computes it.
    key: str = ""
    function: Callable[..., EraserResult]

    aopc_sum: Tensor
    bin_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        bins: Sequence[float] = DEFAULT_BINS,
        replacement: str = "mask",
        replacement_id: int | None = None,
        pad_token_id: int | None = None,
        special_token_ids: Sequence[int] | None = None,
        output: str = "prob",
        internal_batch_size: int | None = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model, replacement=replacement, replacement_id=replacement_id, pad_token_id=pad_token_id,
            special_token_ids=special_token_ids, internal_batch_size=internal_batch_size, **kwargs,
        )  # fmt: skip
        self.bins = check_bins(bins)
        self.output = check_choice("output", output, ERASER_OUTPUTS)
        self._options = {**self._game_options, "bins": self.bins, "output": output}
        self.add_state("aopc_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("bin_sum", torch.zeros(len(self.bins)), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    @property
    def score_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        """The AOPC and the per-bin scores."""
        return self.key, f"{self.key}_curve"

    def _score(self, x: Tensor, attributions: Tensor, target: TargetType, **tokens: Any) -> dict[str, Tensor]:
        result = self.function(self.model, x, attributions, target, **tokens, **self._options)
        return {self.key: result.aopc, f"{self.key}_curve": result.per_bin}

    def _add(self, scores: Mapping[str, Tensor]) -> None:
        add_rows(self.aopc_sum, scores[self.key])
        add_rows(self.bin_sum, scores[f"{self.key}_curve"])
        self.count += scores[self.key].shape[0]

    def compute(self) -> dict[str, Tensor]:
        """The mean AOPC and the mean score at each bin (``(B,)``) over every sample seen; NaN before any update."""
        count = self.count.to(self.aopc_sum.dtype)
        return {self.key: self.aopc_sum / count, f"{self.key}_curve": self.bin_sum / count}

    def plot(self, val: dict[str, Tensor] | None = None, ax: Any | None = None) -> tuple[Any, Any]:
        """The mean score at each bin, with the AOPC in the title (object-oriented matplotlib, no pyplot state).

        Args:
            val: a result of :meth:`compute`; ``None`` calls :meth:`compute`.
            ax: axes to draw into; ``None`` creates a new figure.

        Returns:
            ``(figure, axes)``.
        """
        val = self.compute() if val is None else val
        fig, ax = figure_and_axes(ax, (4.5, 3.0))
        ax.plot(list(self.bins), val[f"{self.key}_curve"].detach().float().cpu(), marker="o")
        ax.set_xscale("log")
        ax.set_xticks(list(self.bins), [f"{b:g}%" for b in self.bins])
        ax.set_xlabel("top tokens (share of the sentence)")
        ax.set_ylabel("logit drop" if self.output == "logit" else "probability drop")
        ax.set_title(f"{self.key} (AOPC {float(val[self.key]):.3f})")
        ax.grid(alpha=0.3)
        return fig, ax


class Comprehensiveness(_Eraser):
    """ERASER comprehensiveness (DeYoung et al. 2020): how much the prediction loses without its top tokens.

    For each bin of k% (default 1, 5, 10, 20, 50), a sample's ``ceil(k% of u)`` highest-scoring perturbable tokens
    are removed (see :func:`~lit_attr.functional.eraser.comprehensiveness`) and the drop of the tracked class's
    probability is recorded; the score is the mean over the bins (AOPC). Higher is better. :meth:`compute` returns
    ``{"comprehensiveness": mean AOPC, "comprehensiveness_curve": (B,) mean drop per bin}``.

    States are fixed-size sums, so the result under DDP equals the single-process result. The model is held by
    reference (not in ``state_dict()``); its modes and buffers are restored after every update.

    Args:
        model: classifier of token ids returning logits (or a Hugging Face output with ``logits``).
        bins: percentages of each sample's perturbable tokens.
        replacement: ``"mask"`` (replace by ``replacement_id``) or ``"remove"`` (drop and re-pack).
        replacement_id: id of a removed token; default: the model's mask id, else its pad id.
        pad_token_id: padding id of re-packed rows; default: the model's.
        special_token_ids: ids never removed; default: the model's ``token_options``.
        output: ``"prob"`` (ERASER's softmax probability), ``"logit"``, or ``"sigmoid"`` (``sigmoid(logit)`` of the
            target label alone, for multi-label heads).
        internal_batch_size: most rows (samples x bins) per forward pass (default 128); ``None``: all at once.
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> model = nn.Sequential(nn.EmbeddingBag(20, 8), nn.Linear(8, 3))
        >>> metric = Comprehensiveness(model, replacement_id=4, special_token_ids=(2, 3))
        >>> metric.update(torch.tensor([[2, 7, 8, 9, 3]]), torch.randn(1, 5))
        >>> sorted(metric.compute())
        ['comprehensiveness', 'comprehensiveness_curve']
    """

    key = "comprehensiveness"
    function = staticmethod(comprehensiveness)
    higher_is_better = True


class Sufficiency(_Eraser):
    """ERASER sufficiency (DeYoung et al. 2020): how much the prediction loses with only its top tokens.

    As :class:`Comprehensiveness`, but each bin keeps only the top tokens (and the special tokens) and removes the
    other perturbable tokens. Lower is better. :meth:`compute` returns ``{"sufficiency", "sufficiency_curve"}``.

    Example:
        >>> model = nn.Sequential(nn.EmbeddingBag(20, 8), nn.Linear(8, 3))
        >>> metric = Sufficiency(model, replacement_id=4, special_token_ids=(2, 3), bins=(10, 50))
        >>> metric.update(torch.tensor([[2, 7, 8, 9, 3]]), torch.randn(1, 5))
        >>> metric.compute()["sufficiency_curve"].shape
        torch.Size([2])
    """

    key = "sufficiency"
    function = staticmethod(sufficiency)
    higher_is_better = False


register_metric(
    "comprehensiveness",
    Comprehensiveness,
    consumes=TOKEN_GAME_INPUTS,
    per_sample=True,
    modalities={"tokens"},
    presentation=Presentation(scores=(Score("comprehensiveness", header="comp."),), curves=None),
)
register_metric(
    "sufficiency",
    Sufficiency,
    consumes=TOKEN_GAME_INPUTS,
    per_sample=True,
    modalities={"tokens"},
    presentation=Presentation(scores=(Score("sufficiency", header="suff."),), curves=None),
)
