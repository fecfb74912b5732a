"""lit-attr: feature attribution and its faithfulness, inside PyTorch Lightning."""

from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
from lit_attr.methods import AttributionMethod, available_methods, get_method

__version__ = "0.1.0"

__all__ = [
    "AttributionMethod",
    "AttributionMonitor",
    "RandomizationCheck",
    "__version__",
    "available_methods",
    "get_method",
]
