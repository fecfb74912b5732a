"""A warning for maps that say nothing: the target logit does not depend on the input.

A classification head initialised to zero (torchvision's ``VisionTransformer`` built without weights) gives every
input the same logits: every gradient method then returns all-zero maps, perturbation methods too, and FEI's masks
follow their area term alone. :func:`check_input_dependence` (and :func:`warn_if_zero_gradient`, for
methods that compute the gradient anyway) names the cause once per method and model instead of letting the maps pass
silently.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["InputIndependenceWarning", "check_input_dependence", "warn_if_zero_gradient"]

# model -> the methods already warned about it (weak: a model's entry goes with the model).
_WARNED: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()


class InputIndependenceWarning(UserWarning):
    """The target logit of the explained model does not depend on the input: the maps carry no information."""


def check_input_dependence(method: Any, target: Tensor, maps: Tensor | None = None) -> None:
    """Warn (once per method and model) when the target logits of the chunk being attributed ignore the input.

    Called inside ``_attribute``'s space (``method.space``). With ``maps``, the check runs only when they are all
    zero, the symptom, so that methods returning informative maps pay nothing; without, it always runs (one forward
    and one backward).

    Args:
        method: the :class:`~lit_attr.methods.base.AttributionMethod` attributing the chunk.
        target: the chunk's classes ``(n,)``.
        maps: the chunk's attributions, or ``None``.
    """
    if _warned(method) or (maps is not None and bool(maps.ne(0).any())):
        return
    z = method.space.z.detach().requires_grad_(True)
    with torch.enable_grad():
        score = method.logits(z).gather(1, target[:, None].to(z.device)).sum()
        (grad,) = torch.autograd.grad(score, z, allow_unused=True)
    warn_if_zero_gradient(method, grad, all_zero=maps is not None)


def warn_if_zero_gradient(method: Any, grad: Tensor | None, all_zero: bool = False) -> None:
    """Warn (once per method and model) when ``grad``, the target logits' gradient at the inputs, is exactly zero.

    Args:
        method: the attribution method.
        grad: the gradient of the chunk's summed target logits with respect to its points (``None``: unused).
        all_zero: the method's maps came out all zero (said in the message).
    """
    if _warned(method) or (grad is not None and bool(grad.ne(0).any())):
        return
    name = method.name or type(method).__name__
    model = method.model
    _WARNED.setdefault(model, set()).add(name)
    warnings.warn(
        f"{name}: the target logit of {type(model).__name__} does not depend on the input (its gradient with "
        "respect to the input is exactly zero), so the attributions carry no information"
        f"{' (all zero)' if all_zero else ''}. A classification head initialised to zero does this "
        "(torchvision's VisionTransformer built without weights): load trained weights or re-initialise the head.",
        InputIndependenceWarning,
        stacklevel=3,
    )


def _warned(method: Any) -> bool:
    return (method.name or type(method).__name__) in _WARNED.get(method.model, ())
