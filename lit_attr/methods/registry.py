"""Name -> factory registry behind :func:`get_method` and :func:`available_methods`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lit_attr.methods.base import AttributionMethod

MethodFactory = Callable[..., AttributionMethod]
_REGISTRY: dict[str, MethodFactory] = {}
_APPLIES_TO: dict[str, Callable[[nn.Module], bool]] = {}


def register_method(
    name: str, *, applies_to: Callable[[nn.Module], bool] | None = None
) -> Callable[[MethodFactory], MethodFactory]:
    """Register ``factory(model, **kwargs) -> AttributionMethod`` under ``name``.

    Args:
        name: the registry name.
        applies_to: for methods that only run on some models (attention maps need a vision transformer with global
            attention, radii in input units need raw inputs), a predicate telling from the model's structure,
            without running it, whether the method built with its defaults runs on the model
            (:mod:`lit_attr.methods.structure` has the shared ones); :func:`available_methods` uses it.

    Example:
        >>> @register_method("my_saliency")
        ... def my_saliency(model, **kwargs):
        ...     return get_method("saliency", model, **kwargs)
        >>> "my_saliency" in available_methods()
        True
        >>> _ = _REGISTRY.pop("my_saliency")
    """

    def decorator(factory: MethodFactory) -> MethodFactory:
        if name in _REGISTRY:
            raise ValueError(f"An attribution method named {name!r} is already registered.")
        _REGISTRY[name] = factory
        if applies_to is not None:
            _APPLIES_TO[name] = applies_to
        return factory

    return decorator


def available_methods(model: nn.Module | None = None) -> list[str]:
    """Sorted names accepted by :func:`get_method`; given a ``model``, only the methods that run on it.

    A method is listed for ``model`` when its ``applies_to`` predicate (see :func:`register_method`) accepts the
    model: built with its defaults, on the inputs the model takes (token ids for a text encoder, raw inputs
    otherwise), it would run. The predicates read the model's structure only; no forward pass is made.

    Example:
        >>> "attention_rollout" in available_methods(), "attention_rollout" in available_methods(nn.Linear(2, 2))
        (True, False)
    """
    if model is None:
        return sorted(_REGISTRY)
    return sorted(name for name in _REGISTRY if name not in _APPLIES_TO or _APPLIES_TO[name](model))


def get_method(name: str, model: nn.Module, **kwargs: Any) -> AttributionMethod:
    """Build the attribution method registered as ``name`` for ``model``.

    Args:
        name: one of :func:`available_methods`.
        model: the classifier returning logits.
        **kwargs: options of that method (and of :class:`~lit_attr.methods.base.AttributionMethod`).

    Example:
        >>> import torch
        >>> m = get_method("integrated_gradients", nn.Linear(3, 2), n_steps=8)
        >>> m.attribute(torch.ones(1, 3), target=0).shape
        torch.Size([1, 3])
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got {type(name).__name__}.")
    if name not in _REGISTRY:
        raise ValueError(f"Unknown attribution method {name!r}; available: {', '.join(available_methods())}.")
    method = _REGISTRY[name](model, **kwargs)
    method.name = name
    return method
