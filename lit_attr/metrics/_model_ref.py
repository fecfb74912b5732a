"""A reference to the evaluated model that keeps it out of a metric's modules and state."""

from __future__ import annotations

from typing import Any

from torch import nn


class ModelRef:
    """Holds the evaluated model without registering it as a submodule.

    A registered model would land in the metric's ``state_dict``, be moved and cast with the metric, and create a
    module cycle when the metric is an attribute of the LightningModule it evaluates. ``deepcopy`` (used by
    ``Metric.clone`` and metric collections) keeps the reference: a clone evaluates the same model.

    Example:
        >>> ref = ModelRef(nn.Linear(2, 2))
        >>> import copy
        >>> copy.deepcopy(ref).module is ref.module
        True
    """

    __slots__ = ("module",)

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelRef:
        return self
