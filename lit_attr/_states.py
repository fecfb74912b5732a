"""Metric states (a tensor, or a list of tensors for ``cat`` states) saved on the CPU and put back on a device.

The runner's ``state_dict`` / ``load_state_dict`` use them, so that a resumed ``evaluate`` restores every metric.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["state_device", "state_to_cpu", "state_to_device"]


def state_to_cpu(value: Any) -> Any:
    """A metric state (a tensor, or a list of tensors for ``cat`` states) detached on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    return [state_to_cpu(item) for item in value]


def state_to_device(value: Any, device: torch.device) -> Any:
    """A metric state (a tensor, or a list of tensors) on ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    return [state_to_device(item, device) for item in value]


def state_device(value: Any) -> torch.device:
    """The device of a metric state (the CPU for an empty list)."""
    if isinstance(value, Tensor):
        return value.device
    return next((item.device for item in value if isinstance(item, Tensor)), torch.device("cpu"))
