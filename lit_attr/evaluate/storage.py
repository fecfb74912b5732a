"""Where an evaluation writes: checks before the work starts, one run per ``output_dir``, storage errors in one line.

* :func:`check_storage` refuses, before any sample is attributed, an ``output_dir`` that cannot receive a result: a
  path component that is a file, a mount point (the result is moved into place by a rename, which a mount point
  refuses), files in the way of the work directory, a parent directory that cannot be written (a write probe) or
  that lacks the space the evaluation is expected to need (:func:`expected_bytes`).
* :class:`OutputLock` (``.<name>.lock`` next to ``output_dir``) lets one evaluation at a time work on an
  ``output_dir``; a second is refused with the holder's PID, and a lock left by a process that died is taken over
  with a warning.
* :func:`storage_error` turns an ``OSError`` met while saving or writing into one line naming the path and the cause.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from lit_attr._resume import pid_alive, work_dir
from lit_attr.evaluate.checks import EvaluationError

__all__ = ["OutputLock", "check_storage", "expected_bytes", "storage_error"]

_CAUSES = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "it is a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EBUSY: "device or resource busy (a mount point?)",
    errno.ENOENT: "no such file or directory",
}


def storage_error(error: OSError, doing: str, path: Path | str | None = None) -> str:
    """``"cannot <doing> '<path>': <cause>"`` for an ``OSError`` (``path``, else the path the error names).

    Example:
        >>> storage_error(OSError(errno.ENOSPC, "No space left on device", "/data/out"), "write the result")
        "cannot write the result '/data/out': no space left on the device"
    """
    where = path if path is not None else error.filename
    cause = _CAUSES.get(error.errno or -1, error.strerror or str(error))
    return f"cannot {doing} {str(where)!r}: {cause}" if where is not None else f"cannot {doing}: {cause}"


def expected_bytes(sample_numel: int, num_samples: int, kept_samples: int, num_methods: int) -> int:
    """About how much an evaluation writes next to ``output_dir`` at most: its partial states and its result.

    A state holds every sample's record (a few KiB) and the kept samples' inputs and maps (float32); it exists twice
    while it is replaced. The result holds about a MiB of figures per method, and the report embeds them again.

    Example:
        >>> expected_bytes(3 * 32 * 32, 64, 8, 2) // 2**20  # MiB
        7
    """
    kept = kept_samples * sample_numel * 4 * (1 + num_methods)
    state = kept + 4096 * num_samples
    return 2 * state + 2 * 2**20 * (num_methods + 1)


def check_storage(output_dir: Path, needed: int) -> None:
    """Refuse, in one line, an ``output_dir`` whose result could not be written (see the module docstring).

    Creates the missing parent directories of ``output_dir`` (the result would create them too).

    Raises:
        EvaluationError: naming the path and the cause.
    """
    for ancestor in reversed(output_dir.parents):
        if ancestor.exists() and not ancestor.is_dir():
            message = f"cannot write under {str(output_dir)!r}: {str(ancestor)!r} is a file, not a directory"
            raise EvaluationError(message)
    if output_dir.is_dir() and os.path.ismount(output_dir):
        raise EvaluationError(
            f"`output_dir` {str(output_dir)!r} is a mount point: the result is moved into place by renaming a "
            f"directory onto it, which a mount point refuses (busy); choose a directory inside it, e.g. "
            f"{str(output_dir / 'evaluation')!r}"
        )
    work = work_dir(output_dir)
    for path in (work, work / "state", work / "result"):
        if path.exists() and not path.is_dir():
            raise EvaluationError(
                f"{str(path)!r} is in the way of the evaluation's work directory: it is a file, not a directory; "
                "move it away or choose another `output_dir`"
            )
    parent = output_dir.parent
    probe = parent / f".{output_dir.name}.probe-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, b"\0")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise EvaluationError(f"{storage_error(error, 'write in', parent)}; choose another `output_dir`") from error
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise EvaluationError(
            f"not enough space in {str(parent)!r} for the evaluation: {_size(free)} free, about {_size(needed)} "
            "needed (its partial states and report); free some space or choose another `output_dir`"
        )


def _size(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} bytes"


class OutputLock:
    """An exclusive lock on one ``output_dir`` (``.<name>.lock`` in its parent), held by one evaluation at a time.

    The lock is an ``flock`` on that file, which the system releases when its holder dies; the file holds the
    holder's PID, for the messages.

    Example::

        lock = OutputLock(Path("results"))
        warning = lock.acquire()  # raises EvaluationError if another evaluation holds it
        ...
        lock.release()
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.path = output_dir.parent / f".{output_dir.name}.lock"
        self._descriptor: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; return a warning if it was taken over from a process that died, else None.

        Raises:
            EvaluationError: if another running evaluation holds it (named by its PID).
        """
        import fcntl

        while True:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise EvaluationError(storage_error(error, "create the lock file", self.path)) from error
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(descriptor)
                os.close(descriptor)
                raise EvaluationError(
                    f"another evaluation (PID {holder if holder is not None else 'unknown'}) is working on "
                    f"`output_dir` {str(self.output_dir)!r} (lock {str(self.path)!r}); wait for it to finish or "
                    "choose another `output_dir`"
                ) from None
            try:  # the last holder may have removed the file between our open and our flock: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(descriptor)
        previous = _read_pid(descriptor)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor
        if previous is not None and previous != os.getpid() and not pid_alive(previous):
            return (
                f"lit_attr evaluate: took over the lock {str(self.path)!r} left by PID {previous}, which is no longer "
                "running"
            )
        return None

    def release(self) -> None:
        """Give the lock back and remove its file (a no-op when not held)."""
        if self._descriptor is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still holding it: a waiting process then locks a fresh file
        os.close(self._descriptor)
        self._descriptor = None


def _read_pid(descriptor: int) -> int | None:
    try:
        return int(os.pread(descriptor, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
