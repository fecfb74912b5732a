"""Out-of-memory back-off: the one place where a chunked loop halves its chunk and retries.

Attribution methods (through :meth:`~lit_attr.methods.AttributionMethod.attribute`, on float inputs and on token
ids) and the perturbation games (insertion/deletion, activation deviation, ROAD, infidelity, the unit games of
:mod:`lit_attr.functional.unit_games`, relative stability's forwards, and the token games: insertion/deletion,
comprehensiveness, sufficiency, activation deviation) run their rows in chunks bounded by
``internal_batch_size``. When a chunk raises ``torch.OutOfMemoryError``, :class:`MemoryBackoff` halves it (the rows
it had, at most the bound) and runs it again, down to one row; the rest of the loop keeps the smaller bound, so
the results equal those of a run started with it. The random state is rewound before every retry, so a chunk that
draws random numbers draws the same ones. One warning names the bound that worked.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType

import torch

__all__ = ["MemoryBackoff", "OutOfMemoryWarning", "shared_backoff"]


class OutOfMemoryWarning(UserWarning):
    """A chunked loop ran out of memory and finished with a smaller chunk (the message names its size)."""


class MemoryBackoff:
    """Run chunked loops with a shared row bound that halves whenever a chunk runs out of memory.

    Use it as a context manager around one call's loops: leaving the block without an exception emits one
    :class:`OutOfMemoryWarning` if the bound had to shrink.

    Args:
        who: what ran out of memory, for the warning (a method or metric name).
        size: the initial bound on the rows of one chunk; ``None``: no bound (everything at once).
        option: the user's option that sets the bound, for the warning.

    Example:
        >>> seen = []
        >>> def body(start, stop):
        ...     if stop - start > 2:
        ...         raise torch.OutOfMemoryError("simulated")
        ...     seen.append((start, stop))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     with MemoryBackoff("demo", 8) as backoff:
        ...         backoff.chunks(5, body)
        >>> seen, backoff.size
        ([(0, 2), (2, 4), (4, 5)], 2)
        >>> str(caught[0].message).split(";")[0]
        'demo: out of memory with internal_batch_size=8'
    """

    def __init__(self, who: str, size: int | None, option: str = "internal_batch_size") -> None:
        self.who = who
        self.option = option
        self.first = size
        self.size = size

    def run(self, total: int, step: Callable[[int, int | None], int], *, unbounded: int | None = None) -> None:
        """Call ``start = step(start, size)`` from 0 until ``total``, halving ``size`` when a step runs out of memory.

        Args:
            total: where the loop ends (rows, samples: whatever ``step`` counts).
            step: runs one chunk that starts at ``start`` and is bounded by ``size`` rows; returns the next start.
            unbounded: the most rows this loop can put in one chunk (what ``None`` stands for); a larger size
                is cut to it before it is halved.

        Raises:
            torch.OutOfMemoryError: when a chunk fails with a bound of one row (or with no bound to halve).
        """
        start = 0
        while start < total:
            rng = _rng_state()
            failed = False
            try:
                start = step(start, self.size)
            except torch.OutOfMemoryError:
                current = self.size if self.size is not None else unbounded
                if current is not None and unbounded is not None:
                    current = min(current, unbounded)
                if current is None or current <= 1:
                    raise
                self.size = max(1, current // 2)
                failed = True
            if failed:  # outside the handler: the failed attempt's tensors are released with its traceback
                _set_rng_state(rng)
                if torch.cuda.is_initialized():
                    torch.cuda.empty_cache()

    def chunks(self, total: int, body: Callable[[int, int], None]) -> None:
        """Call ``body(start, stop)`` over ``[0, total)`` in consecutive chunks of at most ``size`` rows."""

        def step(start: int, size: int | None) -> int:
            stop = total if size is None else min(start + size, total)
            body(start, stop)
            return stop

        self.run(total, step, unbounded=total)

    def finish(self) -> int | None:
        """Warn once if the bound shrank; return the bound that worked."""
        if self.size != self.first:
            first = "None (all rows at once)" if self.first is None else str(self.first)
            warnings.warn(
                f"{self.who}: out of memory with {self.option}={first}; halved it to {self.option}={self.size}, "
                f"which worked. Pass {self.option}={self.size} to skip the failed attempts.",
                OutOfMemoryWarning,
                stacklevel=3,
            )
            self.first = self.size
        return self.size

    def __enter__(self) -> MemoryBackoff:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.finish()


def shared_backoff(backoff: MemoryBackoff | None, who: str, size: int | None) -> AbstractContextManager[MemoryBackoff]:
    """The caller's back-off (shared by the passes of one game, which warns once at the caller's end), or a new one.

    A shared bound keeps what an earlier pass learned: the next pass does not fail at the first size again.

    Example:
        >>> with MemoryBackoff("game", 8) as outer, shared_backoff(outer, "pass", 8) as inner:
        ...     inner is outer
        True
    """
    return contextlib.nullcontext(backoff) if backoff is not None else MemoryBackoff(who, size)


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
