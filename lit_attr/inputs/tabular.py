"""Tabular features ``(N, D)`` and any other float batch: attributed as they are, one unit per element.

The games' substrates are the generic ones: zeros, a per-feature constant (e.g. the training mean), seeded noise, or
a callable. Nothing is drawn for them (a table of scores says more than a picture).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lit_attr.inputs.base import ContinuousKind
from lit_attr.inputs.tokens import find_embedding_layer

__all__ = ["Tabular", "Tensors", "looks_like_float_ids"]


class Tabular(ContinuousKind):
    """Float feature batches ``(N, D)``: each feature is a unit.

    Example:
        >>> Tabular.accepts(torch.zeros(4, 6)), Tabular.accepts(torch.zeros(4, 6, dtype=torch.long))
        (True, False)
    """

    name = "tabular"

    @classmethod
    def accepts(cls, x: Tensor) -> bool:
        """Floating-point tensors with two dimensions."""
        return x.is_floating_point() and x.ndim == 2

    def failure_hint(self, method: Any, x: Tensor) -> str | None:
        """Token ids passed as floats (the model failed on whole numbers and has a token embedding layer)."""
        layer = getattr(method.token_options, "embedding_layer", None)
        if not looks_like_float_ids(method.model, x, layer):
            return None
        return (
            f"`input_ids` must be integer token ids (torch.long or torch.int), got dtype {x.dtype}: the model failed "
            f"on this 2-D {x.dtype} tensor of whole numbers, and it has a token embedding layer. Pass "
            "`input_ids.long()`."
        )

    def constant(self, x: Tensor, fill: Tensor) -> Tensor:
        """A scalar, or ``D`` per-feature values (e.g. the training mean)."""
        try:
            return torch.broadcast_to(fill, x.shape)
        except RuntimeError as err:
            raise ValueError(
                f"`substrate_value` must be a scalar, {x.shape[1]} per-feature values or broadcastable to "
                f"{tuple(x.shape[1:])}, got shape {tuple(fill.shape)}."
            ) from err


class Tensors(ContinuousKind):
    """Any other float batch ``(N, ...)`` that no registered kind claims: methods attribute it as it is.

    Nothing is known about its units, so no metric's modalities match it (its only tag is its name): a ``(C, H, W)``
    image without its batch dimension is refused by the games instead of being read as ``C`` samples. Register a
    kind for such inputs (``lit_attr.inputs.register_input_kind``) to score them.
    """

    name = "tensors"

    @property
    def tags(self) -> frozenset[str]:
        """Only its name: the games and metrics do not take inputs whose units nobody declared."""
        return frozenset({self.name})

    @classmethod
    def accepts(cls, x: Tensor) -> bool:
        """Floating-point tensors with a batch dimension."""
        return x.is_floating_point() and x.ndim >= 2


def looks_like_float_ids(model: nn.Module, x: Any, embedding_layer: str | None = None) -> bool:
    """Whether ``x`` is probably token ids cast to float: 2-D whole numbers >= 0, for a model with an embedding.

    Asked only after the model failed on ``x``, so a model that takes such floats (and casts them) still works.

    Example:
        >>> looks_like_float_ids(nn.Embedding(10, 4), torch.tensor([[1.0, 2.0]]))
        True
    """
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.is_floating_point() or x.numel() == 0:
        return False
    if not bool(torch.isfinite(x).all() and (x == x.round()).all() and (x >= 0).all()):
        return False
    try:
        find_embedding_layer(model, embedding_layer)
    except (TypeError, ValueError):
        return False
    return True
