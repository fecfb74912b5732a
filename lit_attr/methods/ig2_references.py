"""IG2's references: the pools they are drawn from, the two samplers, and their checks.

Each sample draws its own references from a generator seeded by ``seed`` and the sample's own values, so its
references do not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_attr._hygiene import row_seed

__all__ = ["SAMPLERS", "check_pool", "check_references", "draw_reference_indices"]

SAMPLERS = ("random_other_class", "confusers")


def draw_reference_indices(
    sampler: str,
    rows: Sequence[Tensor],
    target: Tensor,
    pool_y: Tensor,
    n_references: int,
    seed: int,
    *,
    logits: Tensor | None = None,
    source: str = "`reference_pool`",
) -> Tensor:
    """``(N, B)`` indices into the pool of each sample's ``B = n_references`` references.

    Args:
        sampler: ``"random_other_class"`` (pool samples of another class than the target) or ``"confusers"``
            (pool samples whose label is among the ``B`` highest-scoring classes other than the target).
        rows: one tensor per sample that seeds its draws (the sample itself), so draws do not depend on the batch.
        target: ``(N,)`` explained classes.
        pool_y: ``(M,)`` labels of the pool.
        n_references: references per sample.
        seed: the sampler's seed.
        logits: ``(N, K)`` the model's logits of the samples; needed by ``"confusers"``.
        source: how errors name the pool.

    Example:
        >>> pool_y = torch.tensor([0, 1, 1])
        >>> draw_reference_indices("random_other_class", [torch.ones(2)], torch.tensor([0]), pool_y, 2, seed=0).shape
        torch.Size([1, 2])
    """
    if sampler == "confusers":
        if logits is None:
            raise ValueError("The 'confusers' sampler needs the logits of the explained samples.")
        ranked = logits.argsort(dim=1, descending=True)
        # The target's own class is no counterfactual, even when the target is not the prediction.
        ranked = torch.stack([row[row != c][: n_references] for row, c in zip(ranked, target, strict=True)])
    chosen = []
    for i, (row, c) in enumerate(zip(rows, target.tolist(), strict=True)):
        if sampler == "random_other_class":
            candidates = (pool_y != c).nonzero()[:, 0]
            what = f"a class other than {c}"
        else:
            candidates = torch.isin(pool_y, ranked[i]).nonzero()[:, 0]
            what = f"the confuser classes {ranked[i].tolist()}"
        if candidates.numel() == 0:
            raise ValueError(
                f"{source} has no sample of {what} (sample {i}): IG2 needs references of other classes; pass "
                "reference_pool=(inputs, labels) holding several classes."
            )
        generator = torch.Generator().manual_seed(row_seed(seed, row))
        draw = torch.randint(candidates.numel(), (n_references,), generator=generator)
        if candidates.numel() >= n_references:  # distinct references when the pool allows
            draw = torch.randperm(candidates.numel(), generator=generator)[: n_references]
        chosen.append(candidates[draw.to(candidates.device)])
    return torch.stack(chosen)


def check_references(references: Any, x: Any) -> None:
    """Refuse per-call references of raw inputs that are not ``(N, B, *x.shape[1:])`` with ``B >= 1``."""
    if not isinstance(x, Tensor):
        return  # AttributionMethod.attribute names the problem with x
    if not isinstance(references, Tensor):
        raise TypeError(f"`references` must be a tensor (N, B, ...) or None, got {type(references).__name__}.")
    n, sample = x.shape[0], tuple(x.shape[1:])
    if references.ndim != x.ndim + 1 or references.shape[0] != n or tuple(references.shape[2:]) != sample:
        expected = ", ".join(map(str, (n, "B", *sample)))
        raise ValueError(f"`references` must be a tensor ({expected}), got {tuple(references.shape)}.")
    if references.shape[1] == 0:
        raise ValueError(f"`references` must hold B >= 1 references per sample, got {tuple(references.shape)}.")


def check_pool(pool: Any) -> tuple[Tensor, Tensor] | None:
    """A pool ``(inputs (M, ...), labels (M,))`` detached with long labels; ``None`` stays ``None``."""
    if pool is None:
        return None
    if (
        not isinstance(pool, (tuple, list))
        or len(pool) != 2
        or not all(isinstance(t, Tensor) for t in pool)
        or pool[0].shape[0] != pool[1].shape[0]
        or pool[1].ndim != 1
    ):
        raise ValueError("`reference_pool` must be a pair (inputs (M, ...), labels (M,)) of tensors.")
    return pool[0].detach(), pool[1].detach().long()


