"""lit-attr: feature attribution and its faithfulness, inside PyTorch Lightning.

Data flow (each step in one place)::

    batch                       lit_attr.batch      Batch, adapt_batch
      -> AttributionRunner.run  lit_attr.runner     one clean forward: predictions and targets
      -> method.attribute       lit_attr.methods    every method (the registry: get_method, available_methods)
      -> registered metrics     lit_attr.metrics    score() + update(scores=...); math in lit_attr.functional
      -> SampleRecord, compute()                    per-sample scores; DDP-synced sums
      -> delivery               lit_attr.delivery   loggers (W&B, TensorBoard, files); lit_attr.report: report.html

The callbacks (``AttributionMonitor``, ``RandomizationCheck``), ``lit_attr evaluate`` and ``AttributionQuality`` are
thin users of :class:`~lit_attr.runner.AttributionRunner`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
    from lit_attr.methods import AttributionMethod, available_methods, get_method
    from lit_attr.runner import AttributionRunner

__version__ = "0.1.0"

# Imported on first use (PEP 562): `import lit_attr` must not import torch, so that the console script answers
# `lit_attr evaluate --help` at once.
_EXPORTS = {
    "AttributionMethod": "lit_attr.methods",
    "AttributionMonitor": "lit_attr.callbacks",
    "AttributionRunner": "lit_attr.runner",
    "RandomizationCheck": "lit_attr.callbacks",
    "available_methods": "lit_attr.methods",
    "get_method": "lit_attr.methods",
}


def __getattr__(name: str) -> Any:
    """The public names above, and the subpackages (``lit_attr.metrics`` after ``import lit_attr``), on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":  # the module exists but one of its imports is missing
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

__all__ = [
    "AttributionMethod",
    "AttributionMonitor",
    "AttributionRunner",
    "RandomizationCheck",
    "__version__",
    "available_methods",
    "get_method",
]
