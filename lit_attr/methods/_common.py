"""Small helpers shared by the path methods (MFABA, BIG, AGI, IG2, FEI): scores, validation, per-row seeds."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

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


def row_seed(seed: int, row: Tensor) -> int:
    """A seed derived from ``seed`` and a sample's values, so a sample's random draws do not depend on its batch."""
    return seed + zlib.crc32(row.detach().cpu().contiguous().numpy().tobytes())


def check_choice(name: str, value: Any, options: Any) -> Any:
    """Return ``value`` if it is one of ``options``, else raise a ValueError naming the argument."""
    if value not in options:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, options))}, got {value!r}.")
    return value


def check_positive(name: str, value: Any, kind: type = float) -> Any:
    """Return ``value`` as ``kind`` if it is a finite positive number (an integer when ``kind`` is int)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    if kind is int and value != int(value):
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return kind(value)


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it is an int (bools excluded), else raise a TypeError naming the argument."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}.")
    return seed
