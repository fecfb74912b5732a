"""Localisation of per-token attributions against ground-truth rationale masks (ERASER-style), per sample.

Only perturbable tokens (real and not special) are candidates; a rationale ``R`` (``K`` tokens) marks those that
decide the class. With ``P`` the ``K`` highest-scoring candidates (ties in sentence order), i.e. a predicted
rationale of the true rationale's size:

* token F1 = ``2 |P & R| / (|P| + |R|)``, which at equal sizes is ``|P & R| / K``;
* token IoU = ``|P & R| / |P | R|``;
* AUPRC = average precision of the scores as a detector of rationale tokens, over all candidates (each distinct
  score is one threshold: ``sum_n (recall_n - recall_{n-1}) * precision_n``, as scikit-learn computes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_attr.functional.token_perturbation import token_ranks
from lit_attr.inputs.tokens import check_token_batch

__all__ = [
    "TOKEN_LOCALIZATION_METRICS",
    "check_rationales",
    "token_auprc",
    "token_f1",
    "token_iou",
    "token_localization_scores",
]

#: Names of the token localisation scores.
TOKEN_LOCALIZATION_METRICS: tuple[str, ...] = ("token_f1", "token_iou", "auprc")


def check_rationales(
    attributions: Any,
    masks: Any,
    attention_mask: Any = None,
    special_tokens_mask: Any = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Check per-token scores against rationale masks; return ``(scores, rationale, candidates)``, all ``(N, L)``.

    Raises:
        TypeError: for inputs that are not tensors, or integer scores.
        ValueError: for shapes that differ, masks that are not 0/1, non-finite scores on candidates, rationales
            that mark padding or special tokens, or samples without a rationale token.

    Example:
        >>> scores, rationale, candidates = check_rationales(torch.zeros(1, 3), torch.tensor([[0, 1, 0]]))
        >>> rationale.tolist(), candidates.tolist()
        ([[False, True, False]], [[True, True, True]])
    """
    if not isinstance(attributions, Tensor) or not attributions.is_floating_point():
        raise TypeError(
            "`attributions` must be a floating-point tensor (N, L) of per-token scores, got "
            f"{attributions.dtype if isinstance(attributions, Tensor) else type(attributions).__name__}."
        )
    if attributions.ndim != 2 or attributions.shape[0] == 0:
        raise ValueError(f"`attributions` must be per-token scores (N, L), got shape {tuple(attributions.shape)}.")
    if not isinstance(masks, Tensor):
        raise TypeError(f"`masks` must be a tensor (N, L) of 0/1 rationale marks, got {type(masks).__name__}.")
    if masks.shape != attributions.shape:
        raise ValueError(
            f"`masks` (the rationales) must have the shape of attributions (N, L) = {tuple(attributions.shape)}, "
            f"got {tuple(masks.shape)}."
        )
    if masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError("`masks` (the rationales) must be boolean or hold only 0 and 1.")
    # The token checks only need the layout: any integer tensor of the right shape stands in for the ids.
    layout = torch.zeros(attributions.shape, dtype=torch.long, device=attributions.device)
    batch = check_token_batch(layout, attention_mask, special_tokens_mask, name="attributions")
    candidates = batch.perturbable
    rationale = masks.to(device=attributions.device, dtype=torch.bool)
    outside = (rationale & ~candidates).any(dim=1).nonzero().flatten().tolist()
    if outside:
        raise ValueError(f"`masks` marks padding or special tokens as rationale in samples {outside}.")
    empty = (~rationale.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"Every rationale in `masks` needs at least one token; empty for samples {empty}.")
    if not bool(torch.isfinite(attributions[candidates]).all()):
        raise ValueError("`attributions` contains NaN or infinite values on candidate tokens.")
    return attributions, rationale, candidates


def _hits(attributions: Tensor, rationale: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """``(|P & R|, K)`` per sample, P = the top-K candidates, K = |R|."""
    k = rationale.sum(dim=1)
    top = token_ranks(attributions, candidates) < k[:, None]
    return (top & rationale).sum(dim=1), k


def _dtype(attributions: Tensor) -> torch.dtype:
    return torch.promote_types(attributions.dtype, torch.float32)


def token_f1(
    attributions: Tensor, masks: Tensor, attention_mask: Tensor | None = None, special_tokens_mask: Tensor | None = None
) -> Tensor:
    """Token F1 of the top-K tokens against the rationale (K = the rationale's size), per sample.

    Args:
        attributions: ``(N, L)`` per-token scores.
        masks: ``(N, L)`` rationale marks (bool or 0/1), none empty, only on real non-special tokens.
        attention_mask: ``(N, L)`` 1 on real tokens; ``None``: no padding.
        special_tokens_mask: ``(N, L)`` 1 on special tokens (never candidates).

    Returns:
        ``(N,)`` values in [0, 1].

    Example:
        >>> token_f1(torch.tensor([[0.1, 0.9, 0.5, 0.0]]), torch.tensor([[0, 1, 0, 1]]))  # top 2 = {1, 2}
        tensor([0.5000])
    """
    scores = token_localization_scores(attributions, masks, attention_mask, special_tokens_mask, ("token_f1",))
    return scores["token_f1"]


def token_iou(
    attributions: Tensor, masks: Tensor, attention_mask: Tensor | None = None, special_tokens_mask: Tensor | None = None
) -> Tensor:
    """Intersection over union of the top-K tokens and the rationale (K = the rationale's size), per sample.

    The arguments are those of :func:`token_f1`.

    Example:
        >>> token_iou(torch.tensor([[0.1, 0.9, 0.5, 0.0]]), torch.tensor([[0, 1, 0, 1]]))  # 1 shared of 3
        tensor([0.3333])
    """
    scores = token_localization_scores(attributions, masks, attention_mask, special_tokens_mask, ("token_iou",))
    return scores["token_iou"]


def token_auprc(
    attributions: Tensor, masks: Tensor, attention_mask: Tensor | None = None, special_tokens_mask: Tensor | None = None
) -> Tensor:
    """Average precision of the scores as detectors of rationale tokens among the candidates, per sample.

    Tied scores form one threshold, so the result does not depend on how ties are ordered. The arguments are
    those of :func:`token_f1`.

    Example:
        >>> token_auprc(torch.tensor([[0.9, 0.5, 0.1]]), torch.tensor([[1, 0, 1]]))  # (1/2) * 1 + (1/2) * 2/3
        tensor([0.8333])
    """
    return _auprc(*check_rationales(attributions, masks, attention_mask, special_tokens_mask))


def token_localization_scores(
    attributions: Tensor,
    masks: Tensor,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    metrics: Sequence[str] = TOKEN_LOCALIZATION_METRICS,
) -> dict[str, Tensor]:
    """Several of :func:`token_f1`, :func:`token_iou` and :func:`token_auprc` from one check and one ranking.

    Example:
        >>> scores = token_localization_scores(torch.tensor([[0.1, 0.9, 0.5, 0.0]]), torch.tensor([[0, 1, 0, 1]]))
        >>> {name: round(float(value), 4) for name, value in scores.items()}
        {'token_f1': 0.5, 'token_iou': 0.3333, 'auprc': 0.75}
    """
    a, rationale, candidates = check_rationales(attributions, masks, attention_mask, special_tokens_mask)
    out: dict[str, Tensor] = {}
    if {"token_f1", "token_iou"} & set(metrics):
        hits, k = _hits(a, rationale, candidates)
        dtype = _dtype(a)
        out["token_f1"] = hits.to(dtype) / k.to(dtype)
        out["token_iou"] = hits.to(dtype) / (2 * k - hits).to(dtype)
    if "auprc" in metrics:
        out["auprc"] = _auprc(a, rationale, candidates)
    return {name: out[name] for name in metrics}


def _auprc(a: Tensor, rationale: Tensor, candidates: Tensor) -> Tensor:
    dtype = _dtype(a)
    scores = torch.where(candidates, a.to(dtype), torch.full_like(a, -torch.inf, dtype=dtype))
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    labels = rationale.gather(1, order).to(dtype)
    width = scores.shape[1]
    index = torch.arange(width, device=a.device).expand_as(scores)
    valid = index < candidates.sum(dim=1, keepdim=True)
    # A position closes its threshold when the next score differs (or it is the last candidate).
    following = torch.cat([scores[:, 1:], torch.full_like(scores[:, :1], -torch.inf)], dim=1)
    closes = valid & ((following != scores) | (index + 1 == candidates.sum(dim=1, keepdim=True)))
    # Every position is scored at the threshold that closes its tie group: the first closing position at or after it.
    closing = torch.where(closes, index, torch.full_like(index, width)).flip(1).cummin(dim=1).values.flip(1)
    precision = labels.cumsum(dim=1) / (index + 1).to(dtype)
    at_threshold = precision.gather(1, closing.clamp(max=width - 1))
    return (labels * at_threshold * valid).sum(dim=1) / labels.sum(dim=1)
