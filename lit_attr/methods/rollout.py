"""Attention rollout's arithmetic (Abnar & Zuidema, ACL 2020), shared by the vision and the text rollout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["HEAD_FUSIONS", "rollout"]

HEAD_FUSIONS = ("mean", "max", "min")
_FUSE = {"mean": Tensor.mean, "max": Tensor.amax, "min": Tensor.amin}


def rollout(layers: Sequence[Tensor], head_fusion: str = "mean") -> Tensor:
    """Roll attention out through the layers: ``R = A'_L ... A'_1`` with ``A' = rownorm((fuse_heads(A) + I) / 2)``.

    The identity models the residual connection; rows are renormalised to sum to 1 after adding it.

    Args:
        layers: per layer, the attention probabilities ``(N, heads, T, T)`` (rows sum to 1), from the input up.
        head_fusion: ``"mean"`` (the paper's), ``"max"`` or ``"min"`` over the heads.

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
        layer = (_FUSE[head_fusion](weights, dim=1) + eye) / 2
        layer = layer / layer.sum(dim=-1, keepdim=True)
        rolled = layer @ rolled
    return rolled
