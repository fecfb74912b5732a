"""The base of the breadth metrics that run the attribution method again (on mosaics, shifted or perturbed inputs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.registry import get_method
from lit_attr.metrics._model_ref import ModelRef
from lit_attr.metrics._scores import MeanScores

if TYPE_CHECKING:
    from lit_attr.batch import Batch

__all__ = ["METHOD_INPUTS", "MethodScores", "check_method_arguments", "resolve_method"]

#: What the metrics that re-run the method on a batch consume (their registry entries): any input kind's.
METHOD_INPUTS = (
    "method", "x", "attributions", "target", "logits", "attention_mask", "special_tokens_mask", "model_inputs",
)  # fmt: skip


class MissingModelError(ValueError, TypeError):
    """A method name without a model: a missing value of the wrong type (both, as callers have caught either)."""


def check_method_arguments(
    method: str | AttributionMethod, model: nn.Module | None, method_kwargs: dict[str, Any] | None
) -> None:
    """Refuse a metric's ``method`` / ``model`` / ``method_kwargs`` that do not go together.

    Raises:
        MissingModelError: (a ValueError and a TypeError) for a name without a model.
        ValueError: for options with an instance, or an instance of another model.
        TypeError: for a model that is not a module, options that are not a dict, or a method of another type.
    """
    if isinstance(method, str):
        if model is None:
            raise MissingModelError(f"`model` is required when `method` is a name ({method!r}).")
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        if method_kwargs is not None and not isinstance(method_kwargs, dict):
            raise TypeError(f"`method_kwargs` must be a dict or None, got {type(method_kwargs).__name__}.")
    elif isinstance(method, AttributionMethod):
        if method_kwargs:
            raise ValueError("`method_kwargs` only apply when `method` is a name; configure the instance instead.")
        if model is not None and model is not method.model:
            raise ValueError("`model` must be omitted or be `method.model` when `method` is an instance.")
    else:
        raise TypeError(
            f"`method` must be a registered method name or an AttributionMethod, got {type(method).__name__}."
        )


def resolve_method(
    method: str | AttributionMethod, model: nn.Module | None, method_kwargs: dict[str, Any] | None
) -> AttributionMethod:
    """The method a metric runs: built from a registered name and ``model``, or the instance given (of ``model``).

    Raises:
        ValueError, TypeError: as :func:`check_method_arguments`.
    """
    check_method_arguments(method, model, method_kwargs)
    if isinstance(method, str):
        assert model is not None  # checked
        return get_method(method, model, **(method_kwargs or {}))
    return method


class MethodScores(MeanScores):
    """Means of per-sample scores of an attribution method that the metric runs itself.

    Args:
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` instance.
        model: the classifier; required with a name, optional (must be ``method.model``) with an instance.
        method_kwargs: options for :func:`~lit_attr.methods.get_method` (name only).
        kwargs: options of :class:`MeanScores` and :class:`torchmetrics.Metric`.
    """

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        method = resolve_method(method, model, method_kwargs)
        # By reference, as the model of the other metrics: the method holds the user's model, which stays out of this
        # metric's modules and state, and a clone explains with the same method.
        self._method_ref = ModelRef(method)

    @property
    def method(self) -> AttributionMethod:
        """The attribution method this metric runs (held by reference)."""
        return self._method_ref.module

    @property
    def model(self) -> nn.Module:
        """The method's model."""
        return self.method.model

    def prepare(self, data: Batch) -> None:
        """Pass data beyond the batch on to the method (see ``AttributionMethod.prepare``)."""
        self.method.prepare(data)
