"""What the token-level Metrics share: their constructor checks, their token conventions and the score protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr._checks import TargetType
from lit_attr.functional.token_perturbation import resolve_game_conventions
from lit_attr.metrics._model_ref import ModelRef

#: What the token games' metrics consume (their registry entries).
TOKEN_GAME_INPUTS = (
    "model", "x", "attributions", "target", "logits", "attention_mask", "special_tokens_mask", "model_inputs",
)  # fmt: skip


class TokenGameMetric(Metric):
    """Base of the Metrics that play games on token ids with a model (held by reference, not a submodule).

    Token conventions left as ``None`` come from the model (its ``token_options``, Hugging Face config or the
    embedding's ``padding_idx``) when the metric is built, so a missing replacement id is reported at once.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        model: nn.Module,
        *,
        replacement: str = "mask",
        replacement_id: int | None = None,
        pad_token_id: int | None = None,
        special_token_ids: Sequence[int] | None = None,
        internal_batch_size: int | None = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        options, _, _, _ = resolve_game_conventions(
            model, replacement, replacement_id, pad_token_id, special_token_ids, internal_batch_size
        )
        self._model_ref = ModelRef(model)
        self._game_options: dict[str, Any] = {
            "special_token_ids": options.special_token_ids,
            "replacement": replacement,
            "replacement_id": options.replacement_id,
            "pad_token_id": options.pad_token_id,
            "internal_batch_size": internal_batch_size,
        }

    #: The keys of :meth:`score`'s result (precomputed ``scores`` must hold them all).
    score_keys: tuple[str, ...] = ()

    @property
    def model(self) -> nn.Module:
        """The evaluated model (held by reference, not a submodule)."""
        return self._model_ref.module

    def score(
        self,
        x: Tensor,
        attributions: Tensor,
        target: TargetType = None,
        *,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        logits: Tensor | None = None,
        model_inputs: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample scores of a batch (samples first), keyed as :meth:`compute`; the states are left as they are.

        Args:
            x: ``(N, L)`` token ids on the model's device.
            attributions: ``(N, L)`` per-token scores.
            target: tracked class: ``None`` (the clean prediction), an int, or ``N`` class indices.
            attention_mask: ``(N, L)`` 1 on real tokens, 0 on padding.
            special_tokens_mask: ``(N, L)`` 1 on special tokens (never removed).
            logits: the clean logits ``(N, K)`` of ``x`` if already computed (skips a forward pass).
            model_inputs: the batch's other inputs of the model by name (``token_type_ids`` ``(N, L)``, ...).
        """
        return self._score(
            x, attributions, target, attention_mask=attention_mask, special_tokens_mask=special_tokens_mask,
            logits=logits, model_inputs=model_inputs,
        )  # fmt: skip

    def update(
        self,
        x: Tensor,
        attributions: Tensor,
        target: TargetType = None,
        *,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        logits: Tensor | None = None,
        model_inputs: Mapping[str, Tensor] | None = None,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Add a batch's scores (``scores`` from :meth:`score`, or computed here) to the states."""
        if scores is None:
            scores = self.score(
                x, attributions, target, attention_mask=attention_mask, special_tokens_mask=special_tokens_mask,
                logits=logits, model_inputs=model_inputs,
            )  # fmt: skip
        self._add(checked_scores(scores, self.score_keys, type(self).__name__))

    def _score(self, x: Tensor, attributions: Tensor, target: TargetType, **tokens: Any) -> dict[str, Tensor]:
        """The game's per-sample scores (the functional with the metric's options)."""
        raise NotImplementedError

    def _add(self, scores: Mapping[str, Tensor]) -> None:
        """Add checked per-sample scores to the sum states."""
        raise NotImplementedError


def checked_scores(scores: Any, keys: Sequence[str], name: str) -> Mapping[str, Tensor]:
    """Refuse precomputed ``scores`` that lack one of ``keys`` or disagree on the number of samples."""
    if not isinstance(scores, Mapping) or any(key not in scores for key in keys):
        got = sorted(scores) if isinstance(scores, Mapping) else type(scores).__name__
        raise ValueError(f"`scores` for {name} must be a dict with the keys {list(keys)} (from score()), got {got}.")
    sizes = {int(scores[key].shape[0]) for key in keys}
    if len(sizes) != 1:
        raise ValueError(f"`scores` for {name} must hold one row per sample in every entry, got sizes {sorted(sizes)}.")
    return scores


def add_rows(state: Tensor, values: Tensor) -> None:
    """Add the per-sample ``values`` (samples first) to a sum state, in the state's dtype and device."""
    state += values.sum(dim=0).to(dtype=state.dtype, device=state.device)
