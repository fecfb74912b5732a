"""Perturbation games on token ids: insertion and deletion curves, and the building blocks of the token metrics.

The attribution scores ``(N, L)`` rank each sample's *perturbable* tokens (real tokens that are not special) by
descending score; ties keep their order in the sentence (stable sort). A game removes the most important tokens
first (deletion) or starts with all of them removed and puts them back in that order (insertion), tracking the
target class's score. Removing a token means, on token ids directly (never decoding and re-tokenising):

* ``replacement="mask"``: its id becomes ``replacement_id`` (the [MASK] or [PAD] id); the length and the attention
  mask stay as they are;
* ``replacement="remove"``: it is dropped, the remaining tokens move left (in order) and the attention mask
  shrinks; the tail is filled with ``pad_token_id``. A sequence left without any token keeps one
  ``replacement_id`` token, since models cannot read an empty sequence.

Padding and special tokens are never removed. The (sample x step) rows of a batch go through the model together, in
chunks of at most ``internal_batch_size`` rows, each chunk cut to its longest row.

The tracked score of a row (``output``, :data:`TOKEN_OUTPUTS`) is the target class's softmax probability
(``"prob"``), its logit (``"logit"``), the probability over the clean sentence's (``"prob_ratio"``), or, for
multi-label heads, ``sigmoid(logit)`` of the target label alone (``"sigmoid"``): each label is its own binary
problem, and a softmax across labels would let the other labels' logits move the explained one's score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, resolve_target
from lit_attr._hygiene import preserved_model_state
from lit_attr._memory import MemoryBackoff
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, auc
from lit_attr.functional.token_perturbation import (  # the toolkit, also importable from here
    DEFAULT_TOKEN_STEPS,
    REPLACEMENTS,
    TOKEN_OUTPUTS,
    TokenGame,
    clean_logits,
    perturb_tokens,
    prepare_token_game,
    score_rows,
    target_scores,
    token_ranks,
    token_schedule,
)

__all__ = [
    "DEFAULT_TOKEN_STEPS",
    "REPLACEMENTS",
    "TOKEN_OUTPUTS",
    "TokenGame",
    "TokenInsertionDeletionResult",
    "clean_logits",
    "perturb_tokens",
    "prepare_token_game",
    "score_rows",
    "target_scores",
    "token_insertion_deletion",
    "token_ranks",
    "token_schedule",
]



class TokenInsertionDeletionResult(NamedTuple):
    """Per-sample output of :func:`token_insertion_deletion`.

    Attributes:
        insertion_curve: ``(N, T + 1)`` scores while inserting tokens, from none (t = 0) to all (t = T).
        deletion_curve: ``(N, T + 1)`` scores while removing tokens, from none removed (t = 0) to all (t = T).
        insertion_auc: ``(N,)`` normalised area under the insertion curve (higher is better).
        deletion_auc: ``(N,)`` normalised area under the deletion curve (lower is better).
        target: ``(N,)`` class whose score was tracked.
    """

    insertion_curve: Tensor
    deletion_curve: Tensor
    insertion_auc: Tensor
    deletion_auc: Tensor
    target: Tensor


def token_insertion_deletion(
    model: nn.Module,
    input_ids: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    special_token_ids: Sequence[int] | None = None,
    n_steps: int | None = None,
    tokens_per_step: int | None = None,
    max_tokens: int | None = None,
    replacement: str = "mask",
    replacement_id: int | None = None,
    pad_token_id: int | None = None,
    output: str = "prob",
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> TokenInsertionDeletionResult:
    """Insertion and deletion curves and AUCs of per-token attributions (the image games on token ids).

    At step t the first ``n_t`` tokens of the ranking (:func:`token_schedule`) are removed (deletion) or are the
    only perturbable tokens present (insertion), and the target score of the result is recorded. The model runs
    in eval mode under ``torch.no_grad()`` as ``model(input_ids, attention_mask=...)`` (or ``model(input_ids)``
    when its forward takes no mask); its modes, flags and buffers are restored afterwards.

    Args:
        model: classifier of token ids returning logits ``(N, K)`` (or a Hugging Face output with ``logits``).
        input_ids: ``(N, L)`` token ids on the model's device.
        attributions: ``(N, L)`` per-token scores.
        target: tracked class (the label explained): ``None`` (clean top-1 prediction, the highest logit), an int,
            or ``N`` ints.
        attention_mask: ``(N, L)`` 1 on real tokens, 0 on padding.
        special_tokens_mask: ``(N, L)`` 1 on special tokens (never removed).
        special_token_ids: ids that are special wherever they occur; default: the model's ``token_options``.
        n_steps: steps per curve (see :func:`token_schedule`); default 20.
        tokens_per_step: tokens per step instead (needs ``max_tokens``).
        max_tokens: the most perturbable tokens of any sample (fixes the steps of ``tokens_per_step``).
        replacement: ``"mask"`` or ``"remove"`` (see the module docstring).
        replacement_id: the id of a removed token; default: the model's mask id, else its pad id.
        pad_token_id: padding id of re-packed rows; default: the model's.
        output: ``"prob"`` (softmax probability), ``"logit"``, ``"prob_ratio"`` (``p(x_t) / p(x)``) or
            ``"sigmoid"`` (``sigmoid(logit)`` of the target label alone, for multi-label heads).
        internal_batch_size: most rows (samples x steps) per forward pass; ``None``: all at once.
        logits: the clean logits ``(N, K)`` of ``input_ids``, if already computed (skips a forward pass).
        model_inputs: the batch's other inputs of the model by name (``token_type_ids`` ``(N, L)`` of sentence pairs,
            ...); each per-token input stays with its token in every perturbed row.

    Returns:
        :class:`TokenInsertionDeletionResult` (float32 at least).

    Example:
        >>> model = nn.Sequential(nn.EmbeddingBag(20, 8), nn.Linear(8, 3))  # mean of the token embeddings
        >>> ids = torch.tensor([[2, 7, 8, 9, 3], [2, 5, 6, 3, 0]])
        >>> result = token_insertion_deletion(model, ids, torch.randn(2, 5), attention_mask=ids.ne(0),
        ...                                   special_token_ids=(2, 3), replacement_id=4, n_steps=4)
        >>> result.insertion_curve.shape, result.deletion_auc.shape
        (torch.Size([2, 5]), torch.Size([2]))
    """
    check_choice("output", output, TOKEN_OUTPUTS)
    game = prepare_token_game(
        model, input_ids, attributions, attention_mask=attention_mask, special_tokens_mask=special_tokens_mask,
        special_token_ids=special_token_ids, replacement=replacement, replacement_id=replacement_id,
        pad_token_id=pad_token_id, internal_batch_size=internal_batch_size, model_inputs=model_inputs,
    )  # fmt: skip
    schedule = token_schedule(game.counts, n_steps, tokens_per_step, max_tokens)
    n, points = schedule.shape
    samples = torch.arange(n, device=schedule.device).repeat_interleave(points)
    backoff = MemoryBackoff("token_insertion_deletion", internal_batch_size)
    with torch.no_grad(), preserved_model_state(model), backoff:
        clean = clean_logits(model, game, logits, backoff)
        target = resolve_target(target, clean)
        curves = {}
        for name, keep_top in (("insertion", True), ("deletion", False)):
            scores = score_rows(model, game, samples, schedule.flatten(), keep_top, target, clean, output, backoff)
            curves[name] = scores.view(n, points)
    return TokenInsertionDeletionResult(
        curves["insertion"], curves["deletion"], auc(curves["insertion"]), auc(curves["deletion"]), target
    )
