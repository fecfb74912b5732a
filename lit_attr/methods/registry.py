"""Name -> factory registry behind :func:`get_method` and :func:`available_methods`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lit_attr.methods.base import AttributionMethod

MethodFactory = Callable[..., AttributionMethod]
_REGISTRY: dict[str, MethodFactory] = {}


def register_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Register ``factory(model, **kwargs) -> AttributionMethod`` under ``name``.

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
        return factory

    return decorator


def available_methods() -> list[str]:
    """Sorted names accepted by :func:`get_method`."""
    return sorted(_REGISTRY)


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
