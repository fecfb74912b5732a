"""Attention rollout's arithmetic (Abnar & Zuidema, ACL 2020), shared by the vision and the text rollout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["HEAD_FUSIONS", "check_discard_ratio", "rollout"]

HEAD_FUSIONS = ("mean", "max", "min")
_FUSE = {"mean": Tensor.mean, "max": Tensor.amax, "min": Tensor.amin}


def rollout(layers: Sequence[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Roll attention out through the layers: ``R = A'_L ... A'_1`` with ``A' = rownorm((fuse_heads(A) + I) / 2)``.

    The identity models the residual connection; rows are renormalised to sum to 1 after adding it.

    ``discard_ratio`` is Gildenblat's option (github.com/jacobgil/vit-explain, ``vit_rollout.py``; 0.9 there): in each
    layer, after fusing the heads, the ``int(discard_ratio * T * T)`` smallest entries of each sample's matrix are set
    to 0, except the first token's attention to itself. Two differences from that code, both fixes: every sample of
    the batch is treated (it zeroes entries of the first sample only), and rows are renormalised (it divides each
    column by a row's sum, ``a / a.sum(dim=-1)``).

    Args:
        layers: per layer, the attention probabilities ``(N, heads, T, T)`` (rows sum to 1), from the input up.
        head_fusion: ``"mean"`` (the paper's), ``"max"`` or ``"min"`` over the heads.
        discard_ratio: fraction in [0, 1) of each fused matrix's entries to discard (0: none, the paper's rollout).

    Returns:
        ``(N, T, T)``: row ``i`` says how much token ``i`` of the last layer draws on each input token.

    Example:
        >>> uniform = torch.full((1, 2, 3, 3), 1 / 3)
        >>> rollout([uniform])[0, 0]
        tensor([0.6667, 0.1667, 0.1667])
    """
    first = layers[0]
    tokens = first.shape[-1]
    eye = torch.eye(tokens, dtype=first.dtype, device=first.device)
    rolled = eye.expand(first.shape[0], tokens, tokens)
    for weights in layers:
        fused = _FUSE[head_fusion](weights, dim=1)
        if discard_ratio > 0:
            fused = _discard_smallest(fused, discard_ratio)
        layer = (fused + eye) / 2
        layer = layer / layer.sum(dim=-1, keepdim=True)
        rolled = layer @ rolled
    return rolled


def check_discard_ratio(discard_ratio: float) -> float:
    """``discard_ratio`` as a float in [0, 1), else a ValueError naming it.

    Example:
        >>> check_discard_ratio(0.9)
        0.9
    """
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
        raise ValueError(f"`discard_ratio` must be a number in [0, 1), got {discard_ratio!r}.")
    return float(discard_ratio)


def _discard_smallest(fused: Tensor, ratio: float) -> Tensor:
    """Zero the ``int(ratio * T * T)`` smallest entries of each ``(T, T)`` matrix, except entry ``(0, 0)``."""
    flat = fused.flatten(1)
    count = int(flat.shape[1] * ratio)
    if count == 0:
        return fused
    drop = torch.zeros_like(flat, dtype=torch.bool)
    drop.scatter_(1, flat.topk(count, dim=1, largest=False).indices, True)
    drop[:, 0] = False  # the first (class) token's attention to itself is kept
    return flat.masked_fill(drop, 0).view_as(fused)
