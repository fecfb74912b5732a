"""The monitor's time budget: its accounts during one fit and the rule that decides whether a run fits in them.

:class:`TimeBudget` holds plain seconds of the monitor's clock and does the arithmetic; the monitor measures (its
runs, its calibration, the deliveries of its background worker) and asks :meth:`TimeBudget.allows` at each eligible
epoch. :func:`fit_progress` reads how far the fit is from the trainer.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from lightning.pytorch import Trainer

__all__ = ["TimeBudget", "fit_progress"]


@dataclass
class TimeBudget:
    """The monitor's time accounts during one fit (seconds of its clock), and the decision made from them.

    Attributes:
        started: when the fit's training started.
        spent: the monitor's own time so far: calibration, runs and background deliveries.
        runs: the seconds of every run (with its delivery when that was synchronous).
        deliveries: the seconds of every background delivery counted so far.
        calibrated: a run's cost estimated from one probe sample, before any run (0: not calibrated).
        training_epoch: the epoch being trained (the one to score if the fit ends after it).
        attempted_step: the global step the last run was started at.

    Example:
        >>> budget = TimeBudget(started=0.0, spent=1.0, runs=[2.0])
        >>> budget.estimate(), budget.allows(now=41.0, max_overhead=0.1, progress=None)
        (2.0, True)
    """

    started: float = 0.0
    spent: float = 0.0
    runs: list[float] = field(default_factory=list)
    deliveries: list[float] = field(default_factory=list)  # background ones (synchronous ones are in the runs)
    calibrated: float = 0.0
    training_epoch: int | None = None
    attempted_step: int | None = None

    @property
    def needs_calibration(self) -> bool:
        """Whether nothing is known yet of a run's cost (no run, no calibration)."""
        return not self.runs and not self.calibrated

    def estimate(self) -> float:
        """The expected cost of the next run, with its delivery."""
        run = statistics.mean(self.runs) if self.runs else self.calibrated
        return run + (statistics.mean(self.deliveries) if self.deliveries else 0.0)

    def fit_time(self, now: float) -> float:
        """The fit's own time so far: everything since it started that was not the monitor's."""
        return now - self.started - self.spent

    def overhead_now(self, now: float) -> float:
        """The monitor's time over the fit's own so far."""
        fit_time = self.fit_time(now)
        return self.spent / fit_time if fit_time > 0 else float("inf")

    def allows(self, now: float, max_overhead: float, progress: float | None) -> bool:
        """Whether a run now keeps the cumulative overhead within ``max_overhead``.

        With the fit's ``progress`` known (a fraction, see :func:`fit_progress`), a run must also leave room for
        the run after the last epoch: the fit will last about ``fit_time / progress``.
        """
        fit_time = self.fit_time(now)
        estimate = self.estimate()
        if self.spent + estimate > max_overhead * fit_time:
            return False
        if not progress:  # the fit's length is unknown: only the condition above
            return True
        return self.spent + 2 * estimate <= max_overhead * fit_time / progress

    def calibrate(self, attributing: float, local_samples: int, sampled: int) -> None:
        """Estimate a run from a calibration that spent ``attributing`` seconds on ``sampled`` probe samples.

        Only the attribution scales with the probe count (loading the probe set is a one-time cost): a run over
        this rank's ``local_samples`` is estimated at ``attributing * local_samples / sampled``. One sample costs
        more than its share of a full batch: an estimate on the safe side. (The calibration's whole time is added
        to :attr:`spent` by the caller, also when it fails.)
        """
        self.calibrated = attributing * local_samples / sampled

    def add_run(self, seconds: float) -> None:
        """Account for a run that took ``seconds``."""
        self.spent += seconds
        self.runs.append(seconds)

    def add_deliveries(self, seconds: list[float]) -> None:
        """Account for background deliveries, as if they had held up training (the safe side)."""
        self.spent += sum(seconds)
        self.deliveries += seconds


def fit_progress(trainer: Trainer) -> float | None:
    """The fraction of the fit done, by ``max_epochs`` or ``max_steps``, whichever ends it first (None: unbounded).

    Example:
        >>> import lightning as L
        >>> fit_progress(L.Trainer(max_epochs=-1, logger=False)) is None
        True
    """
    fractions = []
    if trainer.max_epochs not in (None, -1):
        # A validation in the middle of an epoch (val_check_interval < 1) counts the share of it trained; where the
        # epoch's length is unknown (an iterable dataset), only its end counts.
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            within = trainer.fit_loop.epoch_loop.batch_progress.current.ready / batches
        else:
            within = float(trainer.is_last_batch)
        fractions.append((trainer.current_epoch + within) / trainer.max_epochs)
    if trainer.max_steps != -1:
        fractions.append(trainer.global_step / trainer.max_steps)
    return max(fractions) if fractions else None
