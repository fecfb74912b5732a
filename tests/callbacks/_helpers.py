"""Tiny training runs and recording tools shared by the callback tests.

Everything a DDP test hands to ``Trainer(strategy="ddp_spawn")`` is pickled into fresh interpreters, so the
classes below live at module level (importable as ``callbacks._helpers`` there, since the children inherit
``sys.path``).
"""

from __future__ import annotations

import csv
import math
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from lit_attr.data import ShapesDataModule
from lit_attr.models import DemoClassifier

SEED = 0
TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
}

# Small budgets keep every attribution pass well under a second on one CPU thread.
METHOD_KWARGS: dict[str, dict[str, Any]] = {
    "mfaba": {"max_steps": 6},
    "integrated_gradients": {"n_steps": 6},
    "ig2": {"steps": 4, "n_references": 2},
}
METRIC_KWARGS: dict[str, dict[str, Any]] = {"insertion_deletion": {"n_steps": 8}}


def datamodule(**kwargs: Any) -> ShapesDataModule:
    options = {"num_train": 128, "num_val": 32, "num_test": 32, "batch_size": 32, "seed": SEED}
    options.update(kwargs)
    return ShapesDataModule(**options)


def model() -> DemoClassifier:
    # fork_rng: the initial weights depend on the seed only, and the caller's random stream is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return DemoClassifier(width=4)


class LossRecorder(L.Callback):
    """The training loss of every step, as the optimiser saw it."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(
    root: Path,
    callbacks: Sequence[L.Callback] = (),
    logger: Any = None,
    max_epochs: int = 2,
    ckpt_path: Path | None = None,
    **kwargs: Any,
) -> tuple[DemoClassifier, L.Trainer, LossRecorder]:
    """Train the tiny demo from the same seed; ``logger=None`` means a CSVLogger under ``root``."""
    net, dm = model(), kwargs.pop("dm", None) or datamodule()
    recorder = LossRecorder()
    options = {**TRAINER_DEFAULTS, **kwargs}
    trainer = L.Trainer(
        default_root_dir=root,
        max_epochs=max_epochs,
        logger=CSVLogger(root) if logger is None else logger,
        callbacks=[recorder, *callbacks],
        **options,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        trainer.fit(net, datamodule=dm, ckpt_path=ckpt_path)
    return net, trainer, recorder


def read_metrics_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class RankDirLogger(CSVLogger):
    """A CSVLogger whose media directory names the process that wrote there (``<root>/rank<r>``)."""

    @property
    def log_dir(self) -> str:
        return str(Path(self.root_dir) / f"rank{rank_zero_only.rank}")


# ------------------------------------------------------------------------------------------ W&B run files
_BLOCK = 32 * 1024
_HEADER = 7  # crc32 (4 bytes), length (2), record type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> Iterator[Any]:
    """Decode a ``run-*.wandb`` file: a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs.

    The file starts with a 7-byte header (``:W&B``, a 2-byte magic, a version byte); then 32 KiB blocks hold
    chunks, each with a 7-byte header; a record larger than what is left of a block is split into FIRST, MIDDLE
    and LAST chunks; a block tail too short for a header is zero padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B", f"{path} is not a W&B run file"
    position, pending = _HEADER, b""
    while position + _HEADER <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _HEADER:
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        chunk = data[position + _HEADER : position + _HEADER + length]
        position += _HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind in (_FULL, _FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wait_for_wandb_exit(path: Path, timeout: float = 60.0) -> Path:
    """Wait until the run file holds its ``exit`` record.

    ``wandb.finish()`` can return while the background service is still writing the run file (seen with wandb
    0.31 offline: a file with only its 7-byte header right after ``finish``).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in read_wandb_records(path)):
                return path
        except Exception:  # noqa: BLE001  (a record half-written at the moment of reading)
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has no exit record after {timeout} s")
        time.sleep(0.2)


def wandb_history(path: Path) -> list[dict[str, Any]]:
    """Every ``history`` record of a run file as ``{key: decoded JSON value}``."""
    import json

    rows = []
    for record in read_wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def state_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ the monitor's budget
class FakeClock:
    """A clock that only moves when told to: training and the monitor's work advance it by set amounts."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RankSkewedClock:
    """Real time on rank 0; frozen on the others, whose own decisions (never within budget) must not count."""

    def __call__(self) -> float:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return time.perf_counter() if rank == 0 else 0.0


class HistoryDump(L.Callback):
    """Writes every rank's monitor history to ``<root>/history_rank<r>.json`` at the end of ``fit``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import json

        from lit_attr.callbacks import AttributionMonitor

        monitor = next(cb for cb in trainer.callbacks if isinstance(cb, AttributionMonitor))
        path = self.root / f"history_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(sorted(monitor.history)))
