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

from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
from lit_attr.methods import AttributionMethod, available_methods, get_method
from lit_attr.runner import AttributionRunner

__version__ = "0.1.0"

__all__ = [
    "AttributionMethod",
    "AttributionMonitor",
    "AttributionRunner",
    "RandomizationCheck",
    "__version__",
    "available_methods",
    "get_method",
]
