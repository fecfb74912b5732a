"""Checkpoint selection and early stopping on explanation quality, at the epochs the monitor scored.

``AttributionMonitor`` may skip epochs (``every_n_epochs``, ``max_overhead``). Lightning keeps the last logged value
of a key in ``trainer.callback_metrics``, so at a skipped epoch a plain ``ModelCheckpoint(monitor="attr/...")``
would weigh the weights of that epoch by a score measured on earlier weights, and before the monitor's first run it
finds no key at all and raises. The two callbacks here are Lightning's own, except that for an ``attr/`` key they
consider only the epochs the monitor ran: a checkpoint is saved (and patience counted) only where the score
belongs to the weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from typing_extensions import override

from lit_attr._checks import check_int, check_number

__all__ = ["AttributionCheckpoint", "AttributionEarlyStopping", "scored_this_epoch"]


def scored_this_epoch(trainer: Trainer, key: str | None) -> bool:
    """Whether ``key`` holds a value measured on this epoch's weights.

    Keys outside ``attr/`` are always current; an ``attr/`` key is current when an ``AttributionMonitor`` of the
    trainer that logs it ran at this epoch: with several monitors, ``attr/<method>/...`` belongs to the monitor of
    that method (``attr/overhead``, or a method no monitor has, to any of them).

    Example:
        >>> import lightning as L
        >>> scored_this_epoch(L.Trainer(logger=False), "val_loss")
        True
    """
    from lit_attr.callbacks.attribution_monitor import AttributionMonitor

    if key is None or not key.startswith("attr/"):
        return True
    monitors = [callback for callback in trainer.callbacks if isinstance(callback, AttributionMonitor)]
    # attr/<method>/<score> belongs to the monitor of that method; attr/overhead (or an unknown method) to all.
    parts = key.split("/")
    owners = [monitor for monitor in monitors if len(parts) > 2 and parts[1] in monitor.method_names] or monitors
    return any(monitor.last_epoch == trainer.current_epoch for monitor in owners)


def _init_lightning(init: Callable[..., None], callback: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check ``monitor``, run Lightning's ``__init__`` with its errors as ValueErrors; return the bound arguments."""
    bound = inspect.signature(init).bind(callback, *args, **kwargs).arguments
    monitor = bound.get("monitor")
    if monitor is not None and not isinstance(monitor, str):
        raise TypeError(f"`monitor` must be a logged key (str) or None, got {type(monitor).__name__} {monitor!r}.")
    try:
        init(callback, *args, **kwargs)
    except MisconfigurationException as error:  # an Exception, not a ValueError: bad values are ValueErrors here
        raise ValueError(str(error)) from error
    return bound


class AttributionCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that, for an ``attr/...`` monitor, saves only at epochs the ``AttributionMonitor`` ran.

    Every argument is ``ModelCheckpoint``'s. ``save_last`` checkpoints follow the same epochs: for a checkpoint
    of every epoch (to resume from), add a plain ``ModelCheckpoint(save_last=True)``.

    Example:
        >>> checkpoint = AttributionCheckpoint(monitor="attr/mfaba/insertion", mode="max")
        >>> checkpoint.monitor
        'attr/mfaba/insertion'
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _init_lightning(ModelCheckpoint.__init__, self, args, kwargs)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save as ``ModelCheckpoint`` does, at the epochs where the monitored score is current."""
        if scored_this_epoch(trainer, self.monitor):
            super().on_validation_end(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save as ``ModelCheckpoint`` does (``save_on_train_epoch_end``), where the score is current."""
        if scored_this_epoch(trainer, self.monitor):
            super().on_train_epoch_end(trainer, pl_module)


class AttributionEarlyStopping(EarlyStopping):
    """``EarlyStopping`` that, for an ``attr/...`` monitor, checks only at epochs the ``AttributionMonitor`` ran.

    ``patience`` then counts monitor runs without improvement, not epochs. Every argument is ``EarlyStopping``'s.

    Example:
        >>> stopping = AttributionEarlyStopping(monitor="attr/mfaba/insertion", mode="max", patience=2)
        >>> stopping.patience
        2
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = _init_lightning(EarlyStopping.__init__, self, args, kwargs)
        if not isinstance(self.monitor, str):
            raise TypeError(f"`monitor` must be a logged key (str), got {type(self.monitor).__name__}.")
        check_int("patience", self.patience, 0)
        check_number("min_delta", bound.get("min_delta", 0.0))

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check as ``EarlyStopping`` does, at the epochs where the monitored score is current."""
        if scored_this_epoch(trainer, self.monitor):
            super().on_validation_end(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check as ``EarlyStopping`` does (``check_on_train_epoch_end``), where the score is current."""
        if scored_this_epoch(trainer, self.monitor):
            super().on_train_epoch_end(trainer, pl_module)
