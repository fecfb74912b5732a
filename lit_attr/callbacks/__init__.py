"""Lightning callbacks that track attribution quality during training."""

from lit_attr.callbacks.attribution_monitor import AttributionMonitor
from lit_attr.callbacks.randomization_check import RandomizationCheck
from lit_attr.callbacks.selection import AttributionCheckpoint, AttributionEarlyStopping

__all__ = ["AttributionCheckpoint", "AttributionEarlyStopping", "AttributionMonitor", "RandomizationCheck"]
