"""Token insertion / deletion as a torchmetrics ``Metric`` (math in ``lit_attr.functional.token_games``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, check_optional_int
from lit_attr.functional.token_games import DEFAULT_TOKEN_STEPS, TOKEN_OUTPUTS, token_insertion_deletion
from lit_attr.metrics._plotting import figure_and_axes
from lit_attr.metrics._token_metric import TOKEN_GAME_INPUTS, TokenGameMetric, add_rows
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["TokenInsertionDeletion"]

_KEYS = ("insertion", "deletion", "difference", "insertion_curve", "deletion_curve")


class TokenInsertionDeletion(TokenGameMetric):
    """Mean token insertion and deletion AUCs and curves over a dataset (the image games on token ids).

    Every batch runs :func:`~lit_attr.functional.token_games.token_insertion_deletion`: the highest-scoring
    perturbable tokens are removed first (deletion, lower AUC is better) or put back first into a sentence without
    them (insertion, higher is better). :meth:`compute` returns the mean AUCs ``"insertion"``, ``"deletion"``,
    ``"difference"`` (higher is better) and the mean curves ``"insertion_curve"``, ``"deletion_curve"`` of T + 1
    points. The number of steps is fixed when the metric is built: ``n_steps`` (every sample's curve spans its own
    tokens in T = ``n_steps`` steps), or ``tokens_per_step`` with ``max_tokens``.

    States are fixed-size sums, so the result under DDP equals the single-process result. The model is held by
    reference (not in ``state_dict()``); its modes and buffers are restored after every update.

    Args:
        model: classifier of token ids returning logits (or a Hugging Face output with ``logits``).
        n_steps: steps per curve (default 20).
        tokens_per_step: tokens per step instead (requires ``max_tokens``).
        max_tokens: the most perturbable tokens of any sample.
        replacement: ``"mask"`` (replace by ``replacement_id``) or ``"remove"`` (drop and re-pack).
        replacement_id: id of a removed token; default: the model's mask id, else its pad id.
        pad_token_id: padding id of re-packed rows; default: the model's.
        special_token_ids: ids never removed; default: the model's ``token_options``.
        output: ``"prob"``, ``"logit"``, ``"prob_ratio"`` or ``"sigmoid"`` (``sigmoid(logit)`` of the target label
            alone, for multi-label heads).
        internal_batch_size: most rows (samples x steps) per forward pass (default 128); ``None``: all at once.
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> model = nn.Sequential(nn.EmbeddingBag(20, 8), nn.Linear(8, 3))
        >>> metric = TokenInsertionDeletion(model, n_steps=4, replacement_id=4, special_token_ids=(2, 3))
        >>> metric.update(torch.tensor([[2, 7, 8, 9, 3]]), torch.randn(1, 5))
        >>> metric.compute()["insertion_curve"].shape
        torch.Size([5])
    """

    higher_is_better = True
    plot_lower_bound = None
    plot_upper_bound = None

    insertion_auc_sum: Tensor
    deletion_auc_sum: Tensor
    insertion_curve_sum: Tensor
    deletion_curve_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        n_steps: int | None = None,
        tokens_per_step: int | None = None,
        max_tokens: int | None = None,
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
        check_choice("output", output, TOKEN_OUTPUTS)
        for name, value in (("n_steps", n_steps), ("tokens_per_step", tokens_per_step), ("max_tokens", max_tokens)):
            check_optional_int(name, value)
        if n_steps is not None and tokens_per_step is not None:
            raise ValueError(
                f"Give at most one of `n_steps` and `tokens_per_step`, got n_steps={n_steps} and "
                f"tokens_per_step={tokens_per_step}."
            )
        if tokens_per_step is not None and max_tokens is None:
            raise ValueError("`max_tokens` must be given with `tokens_per_step`: it fixes the number of steps.")
        steps = -(-max_tokens // tokens_per_step) if tokens_per_step is not None else n_steps or DEFAULT_TOKEN_STEPS
        self.output = output
        self._options = {
            **self._game_options, "n_steps": n_steps, "tokens_per_step": tokens_per_step, "max_tokens": max_tokens,
            "output": output,
        }  # fmt: skip
        self.add_state("insertion_auc_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("deletion_auc_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("insertion_curve_sum", torch.zeros(steps + 1), dist_reduce_fx="sum")
        self.add_state("deletion_curve_sum", torch.zeros(steps + 1), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    score_keys = _KEYS

    def _score(self, x: Tensor, attributions: Tensor, target: TargetType, **tokens: Any) -> dict[str, Tensor]:
        result = token_insertion_deletion(self.model, x, attributions, target, **tokens, **self._options)
        return {
            "insertion": result.insertion_auc,
            "deletion": result.deletion_auc,
            "difference": result.insertion_auc - result.deletion_auc,
            "insertion_curve": result.insertion_curve,
            "deletion_curve": result.deletion_curve,
        }

    def _add(self, scores: Mapping[str, Tensor]) -> None:
        points = self.insertion_curve_sum.numel()
        if scores["insertion_curve"].shape[1:] != (points,):
            raise ValueError(
                f"`scores` curves must have {points} points (the metric's steps + 1), got "
                f"{tuple(scores['insertion_curve'].shape)}."
            )
        add_rows(self.insertion_auc_sum, scores["insertion"])
        add_rows(self.deletion_auc_sum, scores["deletion"])
        add_rows(self.insertion_curve_sum, scores["insertion_curve"])
        add_rows(self.deletion_curve_sum, scores["deletion_curve"])
        self.count += scores["insertion"].shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Mean AUCs, their difference and the mean curves over every sample seen; NaN before any update."""
        count = self.count.to(self.insertion_auc_sum.dtype)
        insertion, deletion = self.insertion_auc_sum / count, self.deletion_auc_sum / count
        return {
            "insertion": insertion,
            "deletion": deletion,
            "difference": insertion - deletion,
            "insertion_curve": self.insertion_curve_sum / count,
            "deletion_curve": self.deletion_curve_sum / count,
        }

    def plot(self, val: dict[str, Tensor] | None = None, ax: Any | None = None) -> tuple[Any, Any]:
        """The mean insertion and deletion curves with their AUCs (object-oriented matplotlib, no pyplot state).

        Args:
            val: a result of :meth:`compute`; ``None`` calls :meth:`compute`.
            ax: axes to draw into; ``None`` creates a new figure.

        Returns:
            ``(figure, axes)``.
        """
        val = self.compute() if val is None else val
        fig, ax = figure_and_axes(ax, (5.0, 3.5))
        for game, color in (("insertion", "tab:green"), ("deletion", "tab:red")):
            curve = val[f"{game}_curve"].detach().float().cpu()
            fraction = torch.linspace(0.0, 1.0, curve.numel())
            ax.plot(fraction, curve, color=color, label=f"{game} (AUC {float(val[game]):.3f})")
            ax.fill_between(fraction, curve, alpha=0.15, color=color)
        ax.set_xlabel("fraction of tokens removed / inserted")
        labels = {"prob": "probability", "logit": "logit", "prob_ratio": "p(x_t) / p(x)", "sigmoid": "sigmoid(logit)"}
        ax.set_ylabel(labels[self.output])
        ax.set_title(f"{type(self).__name__} (difference {float(val['difference']):.3f})")
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        return fig, ax


register_metric(
    "token_insertion_deletion",
    TokenInsertionDeletion,
    consumes=TOKEN_GAME_INPUTS,
    per_sample=True,
    modalities={"tokens"},
    presentation=Presentation(
        display_name="token insertion / deletion",
        scores=(
            Score("insertion", "token insertion AUC"),
            Score("deletion", "token deletion AUC", higher_is_better=False),
        ),
        curves=None,
    ),
)
