"""Checkpoint selection and early stopping on explanation quality, at the epochs the monitor scored.

``AttributionMonitor`` may skip epochs (``every_n_epochs``, ``max_overhead``). Lightning keeps the last logged value
of a key in ``trainer.callback_metrics``, so at a skipped epoch a plain ``ModelCheckpoint(monitor="attr/...")``
would weigh the weights of that epoch by a score measured on earlier weights, and before the monitor's first run it
finds no key at all and raises. The two callbacks here are Lightning's own, except that for an ``attr/`` key they
consider only the epochs the monitor ran: a checkpoint is saved (and patience counted) only where the score
belongs to the weights. A key of the monitor's former scheme (``attr/<method>/<score>``) gets its current form
``attr/<method>/<metric>/<score>`` (:mod:`lit_attr.keys`) with a DeprecationWarning: when the fit starts if the
monitors' metrics declare that score (so a checkpoint's state is saved and restored under the current key), else at
the first epoch the monitor scores, from the keys it logged; it is refused if it matches none or several of them.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from typing_extensions import override

from lit_attr._checks import check_int, check_number
from lit_attr.keys import VERDICT, former_key_matches, is_former_key, scalar_key
from lit_attr.metrics.presentation import DEFAULT
from lit_attr.metrics.registry import available_metrics
from lit_attr.presenting import presentation_of

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
    if key is None or not key.startswith("attr/"):
        return True
    monitors = _monitors(trainer)
    # attr/<method>/... belongs to the monitor of that method; attr/overhead (or an unknown method) to all.
    parts = key.split("/")
    owners = [monitor for monitor in monitors if len(parts) > 2 and parts[1] in monitor.method_names] or monitors
    return any(monitor.last_epoch == trainer.current_epoch for monitor in owners)


def _monitors(trainer: Trainer) -> list[Any]:
    from lit_attr.callbacks.attribution_monitor import AttributionMonitor

    return [callback for callback in trainer.callbacks if isinstance(callback, AttributionMonitor)]


def _declared_keys(trainer: Trainer) -> list[str]:
    """The keys the trainer's monitors will log, as far as their metrics' presentations declare their scores."""
    keys = []
    for monitor in _monitors(trainer):
        for metric in monitor.metric_names:
            presentation = presentation_of(metric)
            scores = [] if presentation.scores is DEFAULT else [score.key for score in presentation.scores]
            scores += [VERDICT] if presentation.sanity is not None else []
            keys += [scalar_key(method, metric, score) for method in monitor.method_names for score in scores]
    return keys


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


def _upgrade_former_key(
    callback: ModelCheckpoint | EarlyStopping, current: list[str] | None = None, strict: bool = True
) -> None:
    """Replace a ``monitor`` key of the former scheme by its current form, with a DeprecationWarning naming it.

    ``attr/<method>/<metric>_passed`` of a registered metric is mapped at once; ``attr/<method>/<score>`` when the
    ``current`` keys are known, to the one ``attr/<method>/<metric>/<score>`` among them. With the logged keys
    (``strict``), none or several are refused; with the declared ones (at ``setup``, before a checkpoint's callback
    states are restored under the key) they leave the decision to the logged keys.
    """
    key = callback.monitor
    if not isinstance(key, str) or not is_former_key(key):
        return
    name = type(callback).__name__
    _, method, score = key.split("/")
    metric = score.removesuffix(f"_{VERDICT}")
    if current is None:
        if metric == score or metric not in available_metrics():
            return  # the logged keys decide, at the first epoch the monitor scores
        matches = [scalar_key(method, metric, VERDICT)]
    else:
        matches = former_key_matches(key, current)
    if len(matches) != 1 and not strict:
        return
    if len(matches) != 1:
        logged = sorted(k for k in current or () if k.startswith(f"attr/{method}/"))
        raise ValueError(
            f"{name}: `monitor={key!r}` has the former form attr/<method>/<score>, which "
            f"{'several' if matches else 'none'} of the monitor's keys match ({', '.join(matches or logged) or 'none'})"
            "; pass one in the form attr/<method>/<metric>/<score>."
        )
    warnings.warn(
        f"{name}: `monitor={key!r}` has the former form attr/<method>/<score>; the monitor logs it as "
        f"{matches[0]!r} (attr/<method>/<metric>/<score>): pass that.",
        DeprecationWarning,
        stacklevel=3,
    )
    callback.monitor = matches[0]


def _scored(callback: ModelCheckpoint | EarlyStopping, trainer: Trainer) -> bool:
    """Whether ``callback.monitor`` is current at this epoch; a former-form key gets its current form here."""
    if not scored_this_epoch(trainer, callback.monitor):
        return False
    _upgrade_former_key(callback, list(trainer.callback_metrics))
    return True


class AttributionCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that, for an ``attr/...`` monitor, saves only at epochs the ``AttributionMonitor`` ran.

    Every argument is ``ModelCheckpoint``'s. ``save_last`` checkpoints follow the same epochs: for a checkpoint
    of every epoch (to resume from), add a plain ``ModelCheckpoint(save_last=True)``.

    Example:
        >>> checkpoint = AttributionCheckpoint(monitor="attr/mfaba/insertion_deletion/insertion", mode="max")
        >>> checkpoint.monitor
        'attr/mfaba/insertion_deletion/insertion'
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _init_lightning(ModelCheckpoint.__init__, self, args, kwargs)
        _upgrade_former_key(self)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A former-form ``monitor`` key gets its current form here if the monitors' metrics declare it."""
        _upgrade_former_key(self, _declared_keys(trainer), strict=False)
        super().setup(trainer, pl_module, stage)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save as ``ModelCheckpoint`` does, at the epochs where the monitored score is current."""
        if _scored(self, trainer):
            super().on_validation_end(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save as ``ModelCheckpoint`` does (``save_on_train_epoch_end``), where the score is current."""
        if _scored(self, trainer):
            super().on_train_epoch_end(trainer, pl_module)


class AttributionEarlyStopping(EarlyStopping):
    """``EarlyStopping`` that, for an ``attr/...`` monitor, checks only at epochs the ``AttributionMonitor`` ran.

    ``patience`` then counts monitor runs without improvement, not epochs. Every argument is ``EarlyStopping``'s.

    Example:
        >>> key = "attr/mfaba/insertion_deletion/insertion"
        >>> stopping = AttributionEarlyStopping(monitor=key, mode="max", patience=2)
        >>> stopping.patience
        2
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = _init_lightning(EarlyStopping.__init__, self, args, kwargs)
        if not isinstance(self.monitor, str):
            raise TypeError(f"`monitor` must be a logged key (str), got {type(self.monitor).__name__}.")
        check_int("patience", self.patience, 0)
        check_number("min_delta", bound.get("min_delta", 0.0))
        _upgrade_former_key(self)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A former-form ``monitor`` key gets its current form here if the monitors' metrics declare it."""
        _upgrade_former_key(self, _declared_keys(trainer), strict=False)
        super().setup(trainer, pl_module, stage)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check as ``EarlyStopping`` does, at the epochs where the monitored score is current."""
        if _scored(self, trainer):
            super().on_validation_end(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check as ``EarlyStopping`` does (``check_on_train_epoch_end``), where the score is current."""
        if _scored(self, trainer):
            super().on_train_epoch_end(trainer, pl_module)
