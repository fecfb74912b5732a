"""Activation deviation of transformer text classifiers as a torchmetrics ``Metric``.

The math is in :mod:`lit_attr.functional.token_activation_deviation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_optional_int
from lit_attr.functional.token_activation_deviation import encoder_layers, token_activation_deviation
from lit_attr.metrics._token_metric import TOKEN_GAME_INPUTS, TokenGameMetric, add_rows
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["TokenActivationDeviation"]


class TokenActivationDeviation(TokenGameMetric):
    """Mean hidden-state deviation of the encoder layers along the token insertion and deletion games.

    :meth:`compute` returns ``"insertion_mse"`` and ``"deletion_mse"`` ``(L,)`` (per encoder layer, lower is
    better), ``"mean_mse"`` (their mean over layers and both games) and ``"layers"`` (the probed layer names). The
    layers are resolved when the metric is built (default: every block of the model's encoder), which fixes the
    size of the states; they are sums, so the result under DDP equals the single-process result.

    Args:
        model: a transformer classifier of token ids.
        layers: probed module names, or ``None`` for the encoder blocks.
        n_steps: steps per game (default 20).
        tokens_per_step: tokens per step instead (requires ``max_tokens``).
        max_tokens: the most perturbable tokens of any sample.
        replacement_id: id of a masked token; default: the model's mask id, else its pad id.
        special_token_ids: ids never masked; default: the model's ``token_options``.
        internal_batch_size: most rows (samples x steps) per forward pass (default 128).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed, self.encoder = nn.Embedding(20, 8), nn.TransformerEncoder(block, 2)
        ...         self.head = nn.Linear(8, 3)
        ...     def forward(self, input_ids):
        ...         return self.head(self.encoder(self.embed(input_ids)).mean(dim=1))
        >>> metric = TokenActivationDeviation(Net().eval(), n_steps=4, replacement_id=4)
        >>> metric.update(torch.tensor([[2, 7, 8, 9, 3]]), torch.randn(1, 5))
        >>> metric.compute()["layers"]
        ('encoder.layers.0', 'encoder.layers.1')
    """

    higher_is_better = False

    insertion_mse_sum: Tensor
    deletion_mse_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: str | Sequence[str] | None = None,
        n_steps: int | None = None,
        tokens_per_step: int | None = None,
        max_tokens: int | None = None,
        replacement_id: int | None = None,
        special_token_ids: Sequence[int] | None = None,
        internal_batch_size: int | None = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model, replacement_id=replacement_id, special_token_ids=special_token_ids,
            internal_batch_size=internal_batch_size, **kwargs,
        )  # fmt: skip
        self.layers = encoder_layers(model, layers)
        for name, value in (("n_steps", n_steps), ("tokens_per_step", tokens_per_step), ("max_tokens", max_tokens)):
            check_optional_int(name, value)
        options = self._game_options
        self._options = {
            "layers": self.layers, "n_steps": n_steps, "tokens_per_step": tokens_per_step, "max_tokens": max_tokens,
            "replacement_id": options["replacement_id"], "special_token_ids": options["special_token_ids"],
            "internal_batch_size": internal_batch_size,
        }  # fmt: skip
        self.add_state("insertion_mse_sum", torch.zeros(len(self.layers)), dist_reduce_fx="sum")
        self.add_state("deletion_mse_sum", torch.zeros(len(self.layers)), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    score_keys = ("insertion_mse", "deletion_mse")

    def _score(self, x: Tensor, attributions: Tensor, target: TargetType, **tokens: Any) -> dict[str, Tensor]:
        # The attributions only rank the tokens; the target is checked against the logits, the result ignores it.
        result = token_activation_deviation(self.model, x, attributions, target, **tokens, **self._options)
        return {"insertion_mse": result.insertion_mse, "deletion_mse": result.deletion_mse}

    def _add(self, scores: Mapping[str, Tensor]) -> None:
        add_rows(self.insertion_mse_sum, scores["insertion_mse"])
        add_rows(self.deletion_mse_sum, scores["deletion_mse"])
        self.count += scores["insertion_mse"].shape[0]

    def compute(self) -> dict[str, Any]:
        """Per-layer means over every sample seen, their mean over layers and games, and the layer names."""
        count = self.count.to(self.insertion_mse_sum.dtype)
        insertion, deletion = self.insertion_mse_sum / count, self.deletion_mse_sum / count
        return {
            "insertion_mse": insertion,
            "deletion_mse": deletion,
            "mean_mse": torch.cat([insertion, deletion]).mean(),
            "layers": self.layers,
        }


def _summary(values: dict[str, Any], per_sample: bool) -> dict[str, Tensor]:
    # The headline is the mean over layers and both games, per sample or over the dataset.
    if per_sample:
        return {"mean_mse": torch.cat([values["insertion_mse"], values["deletion_mse"]], dim=-1).mean(dim=-1)}
    return {"mean_mse": values["mean_mse"]}


register_metric(
    "token_activation_deviation",
    TokenActivationDeviation,
    consumes=TOKEN_GAME_INPUTS,
    summary=_summary,
    per_sample=True,
    modalities={"tokens"},
    presentation=Presentation(
        display_name="token activation deviation",
        scores=(Score("mean_mse", "hidden-state dev. MSE"),),
        curves=None,
    ),
)
