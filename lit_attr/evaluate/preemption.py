"""Pre-emption: SIGTERM, SIGINT and SLURM's requeue signal stop an evaluation in order, with its work saved.

SLURM, Kubernetes and spot instances send SIGTERM some seconds before they kill a job. While :class:`Preemption` is
active, the first of its signals abandons the batch in flight at once (:class:`Stop` is raised in the main thread);
``evaluate`` then saves the state after the last finished batch (also when no save was due yet), and reports one
line, ``interrupted by SIGTERM after N of M samples; resume with --resume true``, as an
:class:`EvaluationInterruptedError` whose ``exit_code`` is ``128 + signal`` (143 for SIGTERM, 130 for SIGINT). Later
signals are ignored until the state is saved. Global rank 0 passes the signal on to the processes Lightning started
for the other ranks, and under SLURM with ``auto_requeue`` it requeues the job, as Lightning does for training.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from lit_attr.evaluate.checks import EvaluationError

__all__ = ["EvaluationInterruptedError", "Preemption", "Stop", "preemption_signals", "requeue_slurm_job", "signal_name"]


class Stop(BaseException):
    """Raised in the main thread by a pre-emption signal (a BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


class EvaluationInterruptedError(EvaluationError):
    """An evaluation stopped by a signal, its state saved; ``exit_code`` is ``128 + signal``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for ``signal.SIGTERM``.

    Example:
        >>> signal_name(signal.SIGINT)
        'SIGINT'
    """
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def preemption_signals(trainer: Any) -> tuple[list[int], Any]:
    """SIGTERM, SIGINT and, under SLURM, the cluster environment's requeue signal; and that environment (or None)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None:  # single-device strategies keep it in the connector only
        environment = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    signums = [signal.SIGTERM, signal.SIGINT]
    if isinstance(environment, SLURMEnvironment):
        requeue = getattr(environment, "requeue_signal", None)
        if requeue is not None and requeue not in signums:
            signums.append(requeue)
        return signums, environment
    return signums, None


class Preemption:
    """While active (a context manager), the first of ``signums`` raises :class:`Stop` in the main thread.

    Outside the main thread (where Python cannot handle signals) it does nothing. :meth:`install` puts the handler
    back after someone replaced it (Lightning registers its own SIGTERM handler when a trainer starts).

    Example:
        >>> with Preemption([signal.SIGUSR2]) as preemption:
        ...     try:
        ...         os.kill(os.getpid(), signal.SIGUSR2)
        ...     except Stop as stop:
        ...         print(stop, preemption.received == signal.SIGUSR2)
        SIGUSR2 True
    """

    def __init__(self, signums: Sequence[int]) -> None:
        self.signums = tuple(signums)
        self.received: int | None = None
        #: Called with the signal before :class:`Stop` is raised (rank 0 passes it on to the other ranks).
        self.forward: Callable[[int], None] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.getsignal(signum) for signum in self.signums}
            self.install()
        return self

    def install(self) -> None:
        """Handle the signals here (again); a no-op outside the ``with`` block or the main thread."""
        for signum in self._previous:
            signal.signal(signum, self._handle)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return  # stopping already: let the state be saved
        self.received = signum
        if self.forward is not None:
            with contextlib.suppress(Exception):
                self.forward(signum)
        raise Stop(signum)


def requeue_slurm_job() -> str:
    """Requeue this SLURM job (``scontrol requeue``) as Lightning's auto-requeue does; what happened, in words."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID", "")
    if not job:
        return "no SLURM job id to requeue"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"requeueing SLURM job {job} failed ({error})"
    return f"requeued SLURM job {job}" if done.returncode == 0 else f"requeueing SLURM job {job} failed"
