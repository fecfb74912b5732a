"""Progress of an evaluation that shows wherever it runs: a rich bar on a terminal, plain lines elsewhere.

A rich live display draws nothing when stdout is not a terminal (CI logs, SLURM, ``nohup``), so there the same facts
(samples done of the total, the method at work, elapsed time, ETA) go to stderr as one line every tenth of the
samples or every ``LIT_ATTR_PROGRESS_SECONDS`` seconds (30 by default), whichever comes first.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["PROGRESS_SECONDS", "PlainProgress", "ProgressBar", "progress_seconds"]

PROGRESS_SECONDS = "LIT_ATTR_PROGRESS_SECONDS"
"""The environment variable that sets the seconds between two plain progress lines (default 30)."""


def progress_seconds() -> float:
    """The seconds between two plain progress lines: ``$LIT_ATTR_PROGRESS_SECONDS``, or 30.

    Raises:
        ValueError: if the variable is set to something other than a positive number.

    Example:
        >>> os.environ[PROGRESS_SECONDS] = "5"
        >>> progress_seconds()
        5.0
        >>> del os.environ[PROGRESS_SECONDS]
    """
    given = os.environ.get(PROGRESS_SECONDS, "30")
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{PROGRESS_SECONDS} must be a positive number of seconds, got {given!r}")
    return seconds


def _clock_time(seconds: float) -> str:
    """``H:MM:SS`` (rich's format for elapsed and remaining time)."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class PlainProgress:
    """One plain line per tenth of the samples, or per ``interval`` seconds without one, on ``stream``.

    ``update`` prints the lines due to samples; a daemon thread prints those due to time, so that a long batch still
    shows the run is alive. The ETA extrapolates the pace since the first method started (restored samples of a
    resumed run and the set-up before it do not count).

    Args:
        total: the samples to attribute.
        stream: where the lines go.
        interval: seconds after which a line is printed even if no tenth of the samples was reached.
        clock: seconds, monotonic (tests inject one).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> ticks = iter([0.0, 0.0, 2.0])
        >>> progress = PlainProgress(10, out, interval=30, clock=lambda: next(ticks))
        >>> progress.start(thread=False)
        >>> progress.update("saliency", 0)
        >>> progress.update("", 5)
        >>> print(out.getvalue(), end="")
        evaluating: 5/10 samples (50%), saliency, elapsed 0:00:02, ETA 0:00:02
    """

    def __init__(
        self, total: int, stream: TextIO, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = total
        self.stream = stream
        self.interval = interval
        self.every = max(1, math.ceil(total / 10))
        self.clock = clock
        self.done = 0
        self.description = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self._last_time = self._last_sample = 0.0
        self._last_done = 0
        self._base: tuple[float, int] | None = None  # (time, samples done) when the first method started

    def start(self, thread: bool = True) -> None:
        """Start the clock (and, with ``thread``, the timed lines)."""
        self._start = self._last_time = self.clock()
        if thread:
            self._thread = threading.Thread(target=self._timed_lines, name="lit_attr-progress", daemon=True)
            self._thread.start()

    def update(self, description: str, samples: int) -> None:
        """Note the method at work (if ``description``) and ``samples`` more done; print a line when one is due."""
        with self._lock:
            if description:
                self.description = description
                if self._base is None:
                    self._base = (self.clock(), self.done)
            if not samples:
                return
            self.done += samples
            self._last_sample = self.clock()
            if self.done - self._last_done >= self.every or self.done >= self.total:
                self._line(self._last_sample)

    def stop(self) -> None:
        """Stop the timed lines."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _timed_lines(self) -> None:
        while not self._stop.wait(max(0.01, self._last_time + self.interval - self.clock())):
            with self._lock:
                now = self.clock()
                if now - self._last_time >= self.interval:
                    self._line(now)

    def _line(self, now: float) -> None:
        """Print the facts (under the lock)."""
        self._last_time, self._last_done = now, self.done
        parts = [f"evaluating: {self.done}/{self.total} samples ({100 * self.done // max(self.total, 1)}%)"]
        if self.description:
            parts.append(self.description)
        parts.append(f"elapsed {_clock_time(now - self._start)}")
        if self._base is not None and self.done > self._base[1]:
            # The pace up to the last finished batch, counted down since: the ETA does not grow while a batch runs.
            pace = (self._last_sample - self._base[0]) / (self.done - self._base[1])
            parts.append(f"ETA {_clock_time(max(0.0, pace * (self.total - self.done) - (now - self._last_sample)))}")
        else:
            parts.append("ETA unknown")
        self.stream.write(", ".join(parts) + "\n")
        self.stream.flush()


class ProgressBar:
    """Progress over attributed samples, or nothing (other ranks, ``progress=False``).

    A rich bar with ETA when stdout is a terminal, :class:`PlainProgress` lines on stderr otherwise.
    """

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self._progress: Any = None
        self._task: Any = None
        self._plain: PlainProgress | None = None

    def __enter__(self) -> ProgressBar:
        if not self.enabled:
            return self
        if not sys.stdout.isatty():
            self._plain = PlainProgress(self.total, sys.stderr, progress_seconds())
            self._plain.start()
            return self
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]evaluating[/bold] {task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} samples"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=self.total)
        return self

    def update(self, description: str, samples: int) -> None:
        """Show ``description`` (the method at work, if any) and advance by ``samples`` attributed samples."""
        if self._plain is not None:
            self._plain.update(description, samples)
        if self._progress is None:
            return
        if description:
            self._progress.update(self._task, description=description)
        if samples:
            self._progress.advance(self._task, samples)

    def __exit__(self, *exc: object) -> None:
        if self._plain is not None:
            self._plain.stop()
        if self._progress is not None:
            self._progress.stop()
