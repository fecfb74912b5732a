"""Small helpers shared by the path methods (MFABA, BIG, AGI, IG2, FEI): scores and row norms."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]

#: Target scores computed from logits ``(n, K)`` and targets ``(n,)``.
SCORES: dict[str, ScoreFn] = {
    "prob": lambda logits, c: logits.softmax(dim=1).gather(1, c[:, None])[:, 0],
    "logit": lambda logits, c: logits.gather(1, c[:, None])[:, 0],
    "logprob": lambda logits, c: logits.log_softmax(dim=1).gather(1, c[:, None])[:, 0],
}


def expand_rows(v: Tensor, like: Tensor) -> Tensor:
    """Per-row values ``(n,)`` viewed to broadcast against a batch ``(n, ...)``."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def row_norm(t: Tensor) -> Tensor:
    """L2 norm of every row over all non-batch elements."""
    return t.flatten(1).norm(dim=1)


def unit_rows(t: Tensor) -> Tensor:
    """Every row of ``t`` scaled to unit L2 norm; an all-zero row stays zero (a frozen path row, not NaN).

    Rows are divided by their largest magnitude first: the squares of a tiny gradient (entries around 1e-25 in
    float32) underflow, and dividing by the resulting zero norm would turn a small step into a huge one.
    """
    tiny = torch.finfo(t.dtype).tiny
    scaled = t / expand_rows(t.flatten(1).abs().amax(dim=1), t).clamp_min(tiny)
    return scaled / expand_rows(row_norm(scaled), t).clamp_min(tiny)
