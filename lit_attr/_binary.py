"""A binary classifier's single logit as two class logits, so that every method and metric scores it honestly.

A model with one output ``z`` per sample (``model_output="sigmoid"``) says ``p(class 1) = sigmoid(z)``. Methods and
metrics read class scores from logits ``(N, K)`` through a softmax; :class:`BinaryLogits` gives them ``[-z/2, z/2]``,
whose softmax is exactly ``[1 - sigmoid(z), sigmoid(z)]`` and whose two logits move by opposite amounts, so class 0
is explained as the mirror of class 1 (a logit of 0 for class 0 would leave it nothing to attribute).
"""

from __future__ import annotations

import inspect
import types
from typing import Any

from torch import Tensor, nn

from lit_attr._checks import MODEL_OUTPUTS, check_choice, check_scorable

__all__ = ["BinaryLogits", "scoring_model"]


def _forward(self: BinaryLogits, *args: Any, **kwargs: Any) -> Tensor:
    out = self.module(*args, **kwargs)
    if isinstance(out, Tensor) and out.ndim == 1:
        out = out[:, None]
    logits = getattr(out, "logits", out)  # a Hugging Face output
    check_scorable(logits, "sigmoid")
    return (logits * 0.5) * logits.new_tensor([-1.0, 1.0])


class BinaryLogits(nn.Module):
    """``module``'s single logit ``z`` as the class logits ``[-z/2, z/2]`` (see the module docstring).

    Its forward takes the wrapped module's arguments (the token kinds read their names from it), and attributes it
    does not have are the wrapped module's (``config``, ``get_input_embeddings``, ...).

    Example:
        >>> import torch
        >>> net = BinaryLogits(nn.Linear(3, 1))
        >>> x = torch.rand(2, 3)
        >>> torch.allclose(net(x).softmax(dim=1)[:, 1], net.module(x)[:, 0].sigmoid())
        True
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        # A forward per instance that carries the wrapped forward's signature; a bound method, so that a deep copy
        # (the randomisation checks copy the model) calls its own copy of the module.
        forward = types.FunctionType(_forward.__code__, _forward.__globals__, "forward")
        forward.__signature__ = inspect.signature(module.forward)  # type: ignore[attr-defined]
        self.forward = types.MethodType(forward, self)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def scoring_model(model: nn.Module, model_output: str) -> nn.Module:
    """The module that methods and metrics score: ``model`` itself for ``"logits"``, else :class:`BinaryLogits`.

    Example:
        >>> type(scoring_model(nn.Linear(3, 1), "sigmoid")).__name__
        'BinaryLogits'
    """
    check_choice("model_output", model_output, MODEL_OUTPUTS)
    return BinaryLogits(model) if model_output == "sigmoid" else model
