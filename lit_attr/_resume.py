"""The work directory of ``evaluate``: partial states that let a killed evaluation resume, and the final swap.

``evaluate(output_dir="out")`` works in the hidden sibling ``.out.work/``:

* ``state/rank-<r>-of-<W>.pt``: every ``checkpoint_every`` batches (and after its last one) each rank saves its
  runner state (the metric states and update counts), its per-sample records (for the report's heatmaps and timing)
  and the number of batches of its shard that are done. A file is written to a temporary name, fsync-ed and renamed,
  so it is whole or absent, whenever the process dies.
* ``state/rank-<r>-of-<W>.pt.sha256``: the integrity record of that file (JSON): its schema version and the SHA-256
  of its bytes. It is replaced just before the file and also accepts the file it replaces, so a death between the
  two renames leaves the earlier, whole state usable. A state whose bytes match neither digest, whose schema is
  another, or whose position is impossible for its shard is refused in one line naming the file, and never
  deleted.
* ``result/``: the final files; when they are complete the directory is renamed to ``out/`` and the work directory
  is removed.

A work directory that outlives its run is an unfinished evaluation. ``resume=True`` continues it: every rank
reloads its state and skips its finished batches, after checking that the run has the same number of processes
and the same fingerprint (methods, metrics, their options, the data, the model's weights, ...). ``overwrite=True``
without ``resume`` starts over. A finished ``out/`` is only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lit_attr.runner import SampleRecord

__all__ = [
    "WorkDirectory",
    "agree",
    "check_output_dir",
    "model_digest",
    "pid_alive",
    "recover_interrupted_swap",
    "work_dir",
    "write_result",
]

STATE_VERSION = 2
_STATE_NAME = re.compile(r"^rank-(\d+)-of-(\d+)\.pt$")


def work_dir(output_dir: Path) -> Path:
    """The hidden sibling of ``output_dir`` that an evaluation works in.

    Example:
        >>> work_dir(Path("/tmp/results")).as_posix()
        '/tmp/.results.work'
    """
    return output_dir.parent / f".{output_dir.name}.work"


def check_output_dir(output_dir: Path, overwrite: bool) -> str | None:
    """Why ``output_dir`` must not receive a result (a one-line message), or None if it may.

    A missing or empty directory may; a finished evaluation (it holds ``metrics.json``) only with ``overwrite``;
    anything else never, so that no one's files are replaced by mistake.
    """
    if not output_dir.exists():
        return None
    if not output_dir.is_dir():
        return f"`output_dir` {str(output_dir)!r} exists and is not a directory; choose another `output_dir`"
    if not any(output_dir.iterdir()):
        return None
    if not (output_dir / "metrics.json").is_file():
        return (
            f"`output_dir` {str(output_dir)!r} holds files that are not an evaluation's result (no metrics.json); "
            "choose another `output_dir`"
        )
    if not overwrite:
        return (
            f"`output_dir` {str(output_dir)!r} holds a finished evaluation; pass --overwrite true (overwrite=True "
            "in Python) to replace it, or choose another `output_dir`"
        )
    return None


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes): the weights an evaluation explains.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> model_digest(a) == model_digest(a), model_digest(a) == model_digest(b)
        (True, False)
    """
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if not isinstance(value, Tensor):
            digest.update(f"{name}={value!r}".encode())
            continue
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def agree(message: str | None) -> str | None:
    """The first error any rank reports, on every rank (every rank must call it); this rank's without DDP."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        messages: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(messages, message)
        return next((m for m in messages if m), None)
    return message


class WorkDirectory:
    """The work directory of one evaluation and its per-rank partial states.

    Args:
        output_dir: where the result goes.
        fingerprint: JSON-ready description of everything that decides the numbers; a state saved under another
            fingerprint is not resumed.
    """

    def __init__(self, output_dir: Path, fingerprint: Mapping[str, Any]) -> None:
        self.output_dir = output_dir
        self.path = work_dir(output_dir)
        self.state_dir = self.path / "state"
        # Addresses in reprs (a callable option) differ from run to run without meaning anything.
        self.fingerprint = json.loads(re.sub(r" at 0x[0-9a-fA-F]+", "", json.dumps(fingerprint)))

    def state_path(self, rank: int, world_size: int) -> Path:
        """The partial state of one rank."""
        return self.state_dir / f"rank-{rank}-of-{world_size}.pt"

    def decide(self, resume: bool, overwrite: bool, world_size: int) -> str | None:
        """On global rank 0, before any rank saves: why this run must not start (one line), or None.

        Without ``resume`` an existing work directory is an error, or is removed with ``overwrite``. With
        ``resume`` its states must come from as many processes as this run has.
        """
        if not self.path.exists():
            return None
        if not resume:
            if overwrite:
                shutil.rmtree(self.path)
                return None
            return (
                f"an unfinished evaluation for {str(self.output_dir)!r} is in {str(self.path)!r}; pass --resume true "
                "to continue it, or --overwrite true to start over (resume=True / overwrite=True in Python)"
            )
        sizes = sorted({int(m.group(2)) for p in self._state_files() if (m := _STATE_NAME.match(p.name))})
        other = [size for size in sizes if size != world_size]
        if other:
            return (
                f"cannot resume the evaluation in {str(self.path)!r}: it ran with {other[0]} process(es), this run "
                f"has {world_size}; resume with {other[0]}, or pass --overwrite true without --resume to start over"
            )
        return None

    def load(self, rank: int, world_size: int) -> tuple[dict[str, Any] | None, str | None]:
        """``(state, None)`` for this rank's saved state, ``(None, None)`` if it has none, ``(None, why)`` if unusable.

        The state holds ``batches_done``, ``records`` (:class:`~lit_attr.runner.SampleRecord` objects) and
        ``runner`` (:meth:`~lit_attr.runner.AttributionRunner.state_dict`). It is refused, and left where it is, if
        its bytes do not match its integrity record, if another schema wrote it, if it was saved under another
        fingerprint, or if its position does not fit this rank's shard.
        """
        path = self.state_path(rank, world_size)
        if not path.is_file():
            return None, None
        start_over = "pass --overwrite true without --resume to start over"
        refused = f"cannot resume from {str(path)!r}:"
        try:
            data, record = path.read_bytes(), _read_record(_record_path(path))
        except OSError as error:
            return None, f"{refused} it cannot be read ({error.strerror or error}); {start_over}"
        side = _record_path(path).name
        if record is None:
            return None, f"{refused} its integrity record {side!r} is missing or unreadable; {start_over}"
        if record.get("schema") != STATE_VERSION:
            return None, (
                f"{refused} it has schema {record.get('schema')!r}, this version of lit-attr reads schema "
                f"{STATE_VERSION}; {start_over}"
            )
        if hashlib.sha256(data).hexdigest() not in (record.get("sha256"), record.get("previous_sha256")):
            return None, f"{refused} its SHA-256 does not match {side!r}: the file is damaged; {start_over}"
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            saved = json.loads(state["fingerprint"])
        except Exception as error:  # noqa: BLE001 - any unreadable file is refused the same way
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return None, f"{refused} the file is unreadable ({first}); {start_over}"
        if state.get("version") != STATE_VERSION:
            return None, f"{refused} another version of lit-attr wrote it; {start_over}"
        difference = _first_difference(saved, self.fingerprint)
        if difference is not None:
            key, was, now = difference
            return None, (
                f"cannot resume the evaluation in {str(self.path)!r}: its {key} was {_short(was)}, this run's is "
                f"{_short(now)}; rerun with the same configuration, or {start_over}"
            )
        impossible = self._impossible_position(state, rank, world_size)
        if impossible:
            return None, f"{refused} {impossible}; {start_over}"
        state["records"] = [SampleRecord(**record) for record in state["records"]]
        return state, None

    def _impossible_position(self, state: Mapping[str, Any], rank: int, world_size: int) -> str | None:
        """Why a state's position cannot belong to this rank's shard, or None (a whole, matching file always fits)."""
        shard = range(rank, int(self.fingerprint["num_samples"]), world_size)
        batch_size = int(self.fingerprint["batch_size"])
        total = -(-len(shard) // batch_size)
        done = state.get("batches_done")
        if not isinstance(done, int) or isinstance(done, bool) or not 1 <= done <= total:
            return f"it says {done!r} batches are done, but this process's shard has {total}"
        indices = [record.get("index") for record in state.get("records", [])]
        if indices != list(shard[: done * batch_size]):
            return f"its records are not the first {done} batches of this process's shard"
        return None

    def save(
        self,
        rank: int,
        world_size: int,
        batches_done: int,
        records: Sequence[SampleRecord],
        runner_state: Mapping[str, Any],
    ) -> None:
        """Save one rank's partial state atomically (temporary file, fsync, rename), after its integrity record."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": STATE_VERSION,
            "fingerprint": json.dumps(self.fingerprint),
            "batches_done": int(batches_done),
            "records": [{f.name: getattr(record, f.name) for f in fields(SampleRecord)} for record in records],
            "runner": dict(runner_state),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)  # in memory: a full disk then fails in our write, not inside torch's writer
        data = buffer.getvalue()
        path = self.state_path(rank, world_size)
        previous = _read_record(_record_path(path)) if path.is_file() else None
        record = {
            "schema": STATE_VERSION,
            "file": path.name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            # The file this save replaces stays valid until it is replaced: a death between the renames keeps it.
            "previous_sha256": None if previous is None else previous.get("sha256"),
        }
        _write_atomically(json.dumps(record).encode(), _record_path(path))
        _write_atomically(data, path)

    def discard(self, rank: int, world_size: int) -> None:
        """Remove this rank's state once its part is done (and the directories, if nothing else is left)."""
        self.state_path(rank, world_size).unlink(missing_ok=True)
        _record_path(self.state_path(rank, world_size)).unlink(missing_ok=True)
        for directory in (self.state_dir, self.path):
            with contextlib.suppress(OSError):  # not empty, or already removed by rank 0
                directory.rmdir()

    def _state_files(self) -> list[Path]:
        return sorted(self.state_dir.glob("rank-*-of-*.pt")) if self.state_dir.is_dir() else []


def write_result(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(directory)`` in the work directory and swap the result in as ``output_dir`` once it succeeded.

    A failed ``write`` leaves ``output_dir`` as it was and removes what it wrote (partial states stay, so the
    evaluation can still be resumed); a success removes the work directory.
    """
    output_dir = output_dir.resolve()
    work = work_dir(output_dir)
    result = work / "result"
    old = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(result, ignore_errors=True)
    result.mkdir()
    try:
        write(result)
    except BaseException:
        shutil.rmtree(result, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.rmdir()
        raise
    if output_dir.exists():
        output_dir.rename(old)
    try:
        result.rename(output_dir)
    except BaseException:
        if old.exists():
            old.rename(output_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def recover_interrupted_swap(output_dir: Path) -> str | None:
    """Finish what a run that died while swapping its result in (``--overwrite``) left; say what was done, or None.

    :func:`write_result` renames the old result to ``.<name>.old-<pid>`` before renaming the new one into place. If
    process ``<pid>`` is dead, a death between the renames left no ``output_dir``: the old result is put back; a
    death after them left both: the old one is removed. A running process's swap is left alone.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / ".out.old-999999999").mkdir()  # no such process
        >>> "restored the previous result" in recover_interrupted_swap(root / "out"), (root / "out").is_dir()
        (True, True)
    """
    olds = []
    for old in output_dir.parent.glob(f".{output_dir.name}.old-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            olds.append(old)
    if not olds:
        return None
    olds.sort(key=lambda path: path.stat().st_mtime)
    newest, out = olds[-1], repr(str(output_dir))
    try:  # another run may be recovering the same directories: whoever renames first wins
        if not output_dir.exists():
            newest.rename(output_dir)
            olds.pop()
            note = f"restored the previous result in {out}: an --overwrite that replaced it died before its new one"
        else:
            note = f"removed the previous result of {out} that an interrupted --overwrite left in {str(newest)!r}"
        for old in olds:
            shutil.rmtree(old)
    except OSError:
        return None
    return f"lit_attr evaluate: {note}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs (another user's counts; a number no process can have does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # a number no process has
        return False
    return True


def _record_path(state: Path) -> Path:
    return state.with_name(f"{state.name}.sha256")


def _read_record(path: Path) -> dict[str, Any] | None:
    """A state's integrity record, or None if it is missing or not one."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_atomically(data: bytes, path: Path) -> None:
    """Write ``data`` to a temporary file, fsync it, rename it to ``path`` and fsync the directory (POSIX)."""
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        descriptor = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _first_difference(old: Any, new: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """``(`dotted.key`, old value, new value)`` of the first place where two JSON values differ, or None.

    Keys are visited in the order of ``new``, so the most telling difference (``methods`` before their options)
    is the one reported.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        for name in [*new, *(key for key in old if key not in new)]:
            if old.get(name) != new.get(name):
                return _first_difference(old.get(name), new.get(name), f"{key}.{name}" if key else str(name))
        return None
    return None if old == new else (f"`{key}`" if key else "configuration", old, new)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
