"""ERASER's comprehensiveness and sufficiency (DeYoung et al., ACL 2020), as AOPC over top-k% bins, batched.

For a bin of k%, the rationale ``r_k`` is a sample's ``ceil(k / 100 * u)`` highest-scoring perturbable tokens (``u``
of them in the sample; ties in sentence order), and ``m(.)`` the probability of the tracked class (its softmax
probability, or with ``output="sigmoid"`` the sigmoid of its logit alone, for multi-label heads whose labels are
each their own binary problem):

* comprehensiveness: ``m(x) - m(x without r_k)``, how much the prediction loses without the rationale (higher is
  better);
* sufficiency: ``m(x) - m(r_k alone)``, how much it loses with only the rationale (lower is better);

and each score is the mean over the bins (the AOPC of the ERASER benchmark code). Tokens are removed on token ids
as in :mod:`lit_attr.functional.token_games` (``replacement="mask"`` or ``"remove"``); padding and special tokens
always stay. The (sample x bin) rows go through the model together, in chunks of ``internal_batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, resolve_target
from lit_attr._hygiene import preserved_model_state
from lit_attr._memory import MemoryBackoff
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE
from lit_attr.functional.token_perturbation import clean_logits, prepare_token_game, score_rows, target_scores

__all__ = ["DEFAULT_BINS", "ERASER_OUTPUTS", "EraserResult", "check_bins", "comprehensiveness", "sufficiency"]

#: The ERASER benchmark's bins, in percent of a sample's tokens.
DEFAULT_BINS: tuple[float, ...] = (1, 5, 10, 20, 50)
#: What ERASER's ``m(.)`` may be: the softmax probability (ERASER), the logit, or the sigmoid of the logit.
ERASER_OUTPUTS = ("prob", "logit", "sigmoid")


class EraserResult(NamedTuple):
    """Per-sample output of :func:`comprehensiveness` and :func:`sufficiency`.

    Attributes:
        aopc: ``(N,)`` the mean over the bins.
        per_bin: ``(N, B)`` the score at every bin.
        target: ``(N,)`` class whose probability was tracked.
    """

    aopc: Tensor
    per_bin: Tensor
    target: Tensor


def check_bins(bins: Sequence[float]) -> tuple[float, ...]:
    """Return ``bins`` as a tuple if it is a non-empty sequence of percentages in (0, 100].

    Example:
        >>> check_bins([1, 5])
        (1.0, 5.0)
    """
    if isinstance(bins, (str, bytes)) or not isinstance(bins, Sequence) or not bins:
        raise ValueError(f"`bins` must be a non-empty sequence of percentages in (0, 100], got {bins!r}.")
    values = []
    for b in bins:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or not 0 < b <= 100:
            raise ValueError(f"`bins` must hold percentages in (0, 100], got {tuple(bins)!r}.")
        values.append(float(b))
    return tuple(values)


def _eraser(
    model: nn.Module,
    input_ids: Tensor,
    attributions: Tensor,
    target: TargetType,
    keep_top: bool,
    *,
    attention_mask: Tensor | None,
    special_tokens_mask: Tensor | None,
    special_token_ids: Sequence[int] | None,
    bins: Sequence[float],
    replacement: str,
    replacement_id: int | None,
    pad_token_id: int | None,
    output: str,
    internal_batch_size: int | None,
    logits: Tensor | None,
    model_inputs: Mapping[str, Tensor] | None,
) -> EraserResult:
    check_choice("output", output, ERASER_OUTPUTS)
    fractions = check_bins(bins)
    game = prepare_token_game(
        model, input_ids, attributions, attention_mask=attention_mask, special_tokens_mask=special_tokens_mask,
        special_token_ids=special_token_ids, replacement=replacement, replacement_id=replacement_id,
        pad_token_id=pad_token_id, internal_batch_size=internal_batch_size, model_inputs=model_inputs,
    )  # fmt: skip
    n, b = game.counts.numel(), len(fractions)
    # ceil(k% of u) in exact arithmetic: k is given to a hundredth of a percent at most.
    hundredths = torch.tensor([round(k * 100) for k in fractions], device=game.counts.device)
    counts = (game.counts[:, None] * hundredths[None] + 10_000 - 1) // 10_000
    samples = torch.arange(n, device=counts.device).repeat_interleave(b)
    backoff = MemoryBackoff("sufficiency" if keep_top else "comprehensiveness", internal_batch_size)
    with torch.no_grad(), preserved_model_state(model), backoff:
        clean = clean_logits(model, game, logits, backoff)
        target = resolve_target(target, clean)
        perturbed = score_rows(model, game, samples, counts.flatten(), keep_top, target, clean, output, backoff)
        per_bin = target_scores(clean, target, output)[:, None] - perturbed.view(n, b)
    return EraserResult(per_bin.mean(dim=1), per_bin, target)


def comprehensiveness(
    model: nn.Module,
    input_ids: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    special_token_ids: Sequence[int] | None = None,
    bins: Sequence[float] = DEFAULT_BINS,
    replacement: str = "mask",
    replacement_id: int | None = None,
    pad_token_id: int | None = None,
    output: str = "prob",
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> EraserResult:
    """ERASER comprehensiveness: the drop of the tracked class's probability when the top-k% tokens are removed.

    Args:
        model: classifier of token ids returning logits ``(N, K)`` (or a Hugging Face output with ``logits``).
        input_ids: ``(N, L)`` token ids on the model's device.
        attributions: ``(N, L)`` per-token scores.
        target: tracked class (the label explained): ``None`` (clean top-1 prediction, as in ERASER), an int, or
            ``N`` ints.
        attention_mask: ``(N, L)`` 1 on real tokens, 0 on padding.
        special_tokens_mask: ``(N, L)`` 1 on special tokens (never removed).
        special_token_ids: ids that are special wherever they occur; default: the model's ``token_options``.
        bins: percentages of a sample's perturbable tokens (default 1, 5, 10, 20, 50).
        replacement: ``"mask"`` or ``"remove"`` (see :mod:`lit_attr.functional.token_games`).
        replacement_id: the id of a removed token; default: the model's mask id, else its pad id.
        pad_token_id: padding id of re-packed rows; default: the model's.
        output: ``"prob"`` (ERASER's softmax probability), ``"logit"``, or ``"sigmoid"`` (``sigmoid(logit)`` of the
            target label alone, for multi-label heads).
        internal_batch_size: most rows (samples x bins) per forward pass; ``None``: all at once.
        logits: the clean logits ``(N, K)`` of ``input_ids``, if already computed (skips a forward pass).
        model_inputs: the batch's other inputs of the model by name (``token_type_ids`` ``(N, L)`` of sentence pairs,
            ...); each per-token input stays with its token in every perturbed row.

    Returns:
        :class:`EraserResult`: per-sample AOPC ``(N,)`` and per-bin scores ``(N, B)``.

    Example:
        >>> model = nn.Sequential(nn.EmbeddingBag(20, 8), nn.Linear(8, 3))
        >>> ids = torch.tensor([[2, 7, 8, 9, 3]])
        >>> result = comprehensiveness(model, ids, torch.randn(1, 5), special_token_ids=(2, 3), replacement_id=4)
        >>> result.aopc.shape, result.per_bin.shape
        (torch.Size([1]), torch.Size([1, 5]))
    """
    return _eraser(
        model, input_ids, attributions, target, False, attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask, special_token_ids=special_token_ids, bins=bins,
        replacement=replacement, replacement_id=replacement_id, pad_token_id=pad_token_id, output=output,
        internal_batch_size=internal_batch_size, logits=logits, model_inputs=model_inputs,
    )  # fmt: skip


def sufficiency(
    model: nn.Module,
    input_ids: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    special_token_ids: Sequence[int] | None = None,
    bins: Sequence[float] = DEFAULT_BINS,
    replacement: str = "mask",
    replacement_id: int | None = None,
    pad_token_id: int | None = None,
    output: str = "prob",
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> EraserResult:
    """ERASER sufficiency: the drop of the tracked class's probability when only the top-k% tokens are kept.

    The arguments are those of :func:`comprehensiveness`; lower is better.

    Example:
        >>> model = nn.Sequential(nn.EmbeddingBag(20, 8), nn.Linear(8, 3))
        >>> ids = torch.tensor([[2, 7, 8, 9, 3]])
        >>> sufficiency(model, ids, torch.randn(1, 5), special_token_ids=(2, 3), replacement_id=4).per_bin.shape
        torch.Size([1, 5])
    """
    return _eraser(
        model, input_ids, attributions, target, True, attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask, special_token_ids=special_token_ids, bins=bins,
        replacement=replacement, replacement_id=replacement_id, pad_token_id=pad_token_id, output=output,
        internal_batch_size=internal_batch_size, logits=logits, model_inputs=model_inputs,
    )  # fmt: skip
