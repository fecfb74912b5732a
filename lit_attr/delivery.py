"""Deliver scalars, images, figures and tables to whichever Lightning loggers a trainer has.

* :class:`~lightning.pytorch.loggers.WandbLogger`: ``log_image`` / ``log_table`` (a ``wandb.Table``);
* :class:`~lightning.pytorch.loggers.TensorBoardLogger`: ``add_image`` / ``add_figure`` / ``add_text``;
* any other logger (CSVLogger, MLFlow, ...): PNG and CSV files ``<logger dir>/media/<key>/step_<step>.png``, the
  logger's ``log_dir`` (or ``save_dir``), else ``trainer.default_root_dir``; files written during or after
  ``trainer.validate``/``test`` (by ``trainer.state.fn``) end in ``_validate``/``_test``, so they never overwrite
  those of ``fit``;
* no logger: nothing (scalars logged through ``LightningModule.log`` still reach ``trainer.callback_metrics``).

Media go out from global rank 0 only; every function is a no-op on other ranks, so callbacks may call them on all
ranks. Steps are ``trainer.global_step`` unless given.

:class:`DeliveryWorker` takes rendering and delivery off the training path: jobs run one at a time on a background
thread, against a :func:`destination` snapshot of the trainer (loggers, step, stage) taken when they were submitted,
so the media and their steps are those a synchronous delivery would have written.
"""

from __future__ import annotations

import csv
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure

from lit_attr.viz import figure_to_array

__all__ = [
    "DeliveryWorker",
    "Destination",
    "HtmlCell",
    "destination",
    "log_figure",
    "log_html",
    "log_image",
    "log_metrics",
    "log_table",
    "media_dir",
]

log = logging.getLogger(__name__)

ImageType = np.ndarray | Figure


def log_metrics(trainer: Trainer | Destination, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Send scalars straight to every logger (for hooks where ``LightningModule.log`` is not allowed).

    Args:
        trainer: the trainer whose loggers receive the values.
        metrics: key -> number.
        step: defaults to ``trainer.global_step``.

    Example:
        >>> import lightning as L, tempfile
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> log_metrics(L.Trainer(logger=False), {"a": 1.0})  # no logger: nothing happens
        >>> logger = CSVLogger(tempfile.mkdtemp())
        >>> log_metrics(L.Trainer(logger=logger), {"attr/score": 0.5}, step=3)
        >>> logger.save()
        >>> print(Path(logger.experiment.metrics_file_path).read_text().strip())
        attr/score,step
        0.5,3
    """
    if not trainer.is_global_zero or not trainer.loggers or not metrics:
        return
    step = trainer.global_step if step is None else step
    values = {key: float(value) for key, value in metrics.items()}
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)


def log_image(
    trainer: Trainer | Destination, key: str, image: ImageType, step: int | None = None, caption: str | None = None
) -> list[Path]:
    """Log one image (an ``(H, W, 3)`` uint8/float array or a figure) under ``key``.

    Args:
        trainer: the trainer whose loggers receive the image.
        key: e.g. ``"attr/mfaba/heatmaps"``; ``/`` separates sections (W&B panels, TensorBoard tags, folders).
        image: the image; figures are rendered with the Agg backend.
        step: defaults to ``trainer.global_step``.
        caption: shown under the image by W&B; written next to the PNG as ``.txt`` for file-based loggers.

    Returns:
        The files written for file-based loggers (empty otherwise).

    Example:
        >>> import lightning as L
        >>> log_image(L.Trainer(logger=False), "x", np.zeros((4, 4, 3), dtype=np.uint8))
        []
    """
    if not trainer.is_global_zero or not trainer.loggers:
        return []
    step = trainer.global_step if step is None else step
    array = _as_uint8(figure_to_array(image) if isinstance(image, Figure) else image)
    written: list[Path] = []
    for logger in _unique_file_loggers(trainer):
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[array], step=step, **({"caption": [caption]} if caption else {}))
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, array, global_step=step, dataformats="HWC")
        else:
            path = media_dir(trainer, logger, key) / _file_name(trainer, step, "png")
            _save_png(path, array)
            if caption:
                path.with_suffix(".txt").write_text(caption + "\n")
            written.append(path)
    return written


def log_figure(trainer: Trainer | Destination, key: str, figure: Figure, step: int | None = None) -> list[Path]:
    """Log a matplotlib figure: ``add_figure`` for TensorBoard, an image everywhere else.

    Args:
        trainer: the trainer whose loggers receive the figure.
        key: see :func:`log_image`.
        figure: a figure built with the object-oriented API (e.g. by :mod:`lit_attr.viz`).
        step: defaults to ``trainer.global_step``.

    Returns:
        The files written for file-based loggers.
    """
    if not trainer.is_global_zero or not trainer.loggers:
        return []
    step = trainer.global_step if step is None else step
    array: np.ndarray | None = None
    written: list[Path] = []
    for logger in _unique_file_loggers(trainer):
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, figure, global_step=step, close=False)
            continue
        array = figure_to_array(figure) if array is None else array
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[array], step=step)
        else:
            path = media_dir(trainer, logger, key) / _file_name(trainer, step, "png")
            _save_png(path, array)
            written.append(path)
    return written


def log_html(
    trainer: Trainer | Destination, key: str, html: str, figure: Figure, step: int | None = None
) -> list[Path]:
    """Log HTML (per-token highlighting, say): a ``wandb.Html`` for W&B, its rendering ``figure`` everywhere else.

    Args:
        trainer: the trainer whose loggers receive it.
        key: see :func:`log_image`.
        html: self-contained HTML (inline styles).
        figure: the same content as a figure, for TensorBoard and file-based loggers (an ``.html`` file is written
            next to the PNG too).
        step: defaults to ``trainer.global_step``.

    Returns:
        The files written for file-based loggers.
    """
    if not trainer.is_global_zero or not trainer.loggers:
        return []
    step = trainer.global_step if step is None else step
    written: list[Path] = []
    array: np.ndarray | None = None
    for logger in _unique_file_loggers(trainer):
        if isinstance(logger, WandbLogger):
            import wandb

            logger.log_metrics({key: wandb.Html(html, inject=False)}, step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, figure, global_step=step, close=False)
        else:
            path = media_dir(trainer, logger, key) / _file_name(trainer, step, "png")
            array = figure_to_array(figure) if array is None else array
            _save_png(path, array)
            path.with_suffix(".html").write_text(html, encoding="utf-8")
            written.append(path)
    return written


@dataclass(frozen=True)
class HtmlCell:
    """A table cell shown as HTML where the logger can (a ``wandb.Html`` in W&B tables) and as ``text`` elsewhere."""

    html: str
    text: str


def log_table(
    trainer: Trainer | Destination,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    step: int | None = None,
) -> list[Path]:
    """Log a table: a ``wandb.Table`` for W&B, a Markdown text for TensorBoard, a UTF-8 CSV file otherwise.

    Args:
        trainer: the trainer whose loggers receive the table.
        key: see :func:`log_image`.
        columns: column names.
        rows: rows of plain values (str, int, float, bool), one entry per column.
        step: defaults to ``trainer.global_step``.

    Returns:
        The files written for file-based loggers.

    Raises:
        ValueError: if a row does not have one value per column.
    """
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"Every row of table {key!r} needs {len(columns)} values, got {len(row)}: {row!r}.")
    if not trainer.is_global_zero or not trainer.loggers:
        return []
    step = trainer.global_step if step is None else step
    data = [[_plain(value) for value in row] for row in rows]
    written: list[Path] = []
    for logger in _unique_file_loggers(trainer):
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, columns=list(columns), data=_cells(data, html=True), step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, _markdown(columns, _cells(data, html=False)), global_step=step)
        else:
            path = media_dir(trainer, logger, key) / _file_name(trainer, step, "csv")
            # UTF-8 whatever the locale: headers carry arrows (``deletion ↓``), cells may hold any token text.
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows(_cells(data, html=False))
            written.append(path)
    return written


def media_dir(trainer: Trainer | Destination, logger: Logger | None, key: str) -> Path:
    """``<logger dir>/media/<key>`` (created) for file-based delivery; see the module docstring for the dir.

    Example:
        >>> import lightning as L, tempfile
        >>> root = tempfile.mkdtemp()
        >>> media_dir(L.Trainer(logger=False, default_root_dir=root), None, "attr/m x/grid").name
        'grid'
    """
    parts = [_safe_part(part) for part in key.split("/") if part.strip("./ ")]
    path = _base_dir(trainer, logger).joinpath("media", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_name(trainer: Trainer | Destination, step: int, extension: str) -> str:
    # validate/test after fit log at fit's last global step: a stage suffix keeps them from overwriting its files.
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    stage = "fit" if fn is None else fn.value
    return f"step_{step:07d}{'' if stage == 'fit' else '_' + stage}.{extension}"


def _base_dir(trainer: Trainer | Destination, logger: Logger | None) -> Path:
    base = None
    if logger is not None:
        base = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return Path(base or trainer.default_root_dir)


def _unique_file_loggers(trainer: Trainer | Destination) -> list[Logger]:
    """The trainer's loggers, minus file-based ones that would write the same directory twice."""
    seen: set[str] = set()
    result = []
    for logger in trainer.loggers:
        if not isinstance(logger, (WandbLogger, TensorBoardLogger)):
            where = str(_base_dir(trainer, logger).resolve())
            if where in seen:
                continue
            seen.add(where)
        result.append(logger)
    return result


def _safe_part(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", part)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"An image must be (H, W, 3) or (H, W, 4), got shape {array.shape}.")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    return array[..., :3]


def _save_png(path: Path, array: np.ndarray) -> None:
    from matplotlib.image import imsave

    imsave(path, array)
    log.debug("wrote %s", path)


def _cells(rows: list[list[Any]], html: bool) -> list[list[Any]]:
    """Rows with every :class:`HtmlCell` as a ``wandb.Html`` (``html=True``) or as its text."""
    if not any(isinstance(value, HtmlCell) for row in rows for value in row):
        return rows
    if html:
        import wandb

        return [[wandb.Html(v.html, inject=False) if isinstance(v, HtmlCell) else v for v in row] for row in rows]
    return [[v.text if isinstance(v, HtmlCell) else v for v in row] for row in rows]


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Destination:
    """What delivery reads from a trainer, frozen at one moment (see :func:`destination`).

    The functions of this module accept it wherever they take a trainer.
    """

    loggers: tuple[Logger, ...]
    global_step: int
    is_global_zero: bool
    default_root_dir: str
    state: Any


def destination(trainer: Trainer) -> Destination:
    """A snapshot of the trainer's loggers, step, rank, root directory and stage, for delivery done later.

    Example:
        >>> import lightning as L
        >>> destination(L.Trainer(logger=False)).global_step
        0
    """
    return Destination(
        loggers=tuple(trainer.loggers),
        global_step=trainer.global_step,
        is_global_zero=trainer.is_global_zero,
        default_root_dir=trainer.default_root_dir,
        state=SimpleNamespace(fn=trainer.state.fn),
    )


class DeliveryWorker:
    """Runs delivery jobs one at a time on a background thread, with a bounded queue.

    :meth:`submit` waits while ``max_pending`` jobs are queued (so rendering never piles up unbounded work or
    memory); a job that raises does not stop the worker: its exception is kept and handed back by :meth:`errors`
    (and by :meth:`flush`). :meth:`flush` waits until every submitted job has run, at most ``timeout`` seconds, so
    the end of a fit never hangs on a stuck job. The thread is a daemon: it never keeps the process alive. Each
    job is timed with ``clock``; :meth:`busy_seconds` hands the times of the finished jobs to whoever keeps a budget.

    Args:
        max_pending: jobs that may wait in the queue.
        name: the thread's name.
        clock: the clock the jobs are timed with (seconds; default ``time.perf_counter``).

    Example:
        >>> worker = DeliveryWorker()
        >>> done = []
        >>> worker.submit(lambda: done.append(1))
        >>> worker.flush(), done, len(worker.busy_seconds())
        ([], [1], 1)
    """

    def __init__(
        self, max_pending: int = 2, name: str = "lit_attr-delivery", clock: Callable[[], float] = time.perf_counter
    ) -> None:
        # (job, whether it is timed): flush's marker is not a job of the owner's.
        self._queue: queue.Queue[tuple[Callable[[], None], bool]] = queue.Queue(maxsize=max_pending)
        self._errors: list[BaseException] = []
        self._seconds: list[float] = []
        self._clock = clock
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (waits while the queue is full)."""
        self._queue.put((job, True))

    def errors(self) -> list[BaseException]:
        """The exceptions raised by jobs since the last call (each is reported once)."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def busy_seconds(self) -> list[float]:
        """How long each job that finished since the last call took (each is reported once)."""
        with self._lock:
            seconds, self._seconds = self._seconds, []
        return seconds

    def flush(self, timeout: float = 600.0) -> list[BaseException]:
        """Wait until every submitted job has run (at most ``timeout`` seconds); return :meth:`errors`.

        Raises:
            TimeoutError: if the jobs did not finish within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        done = threading.Event()
        try:
            # Behind a stuck job a full queue would block the marker's put itself: it gets the same deadline.
            self._queue.put((done.set, False), timeout=timeout)
        except queue.Full:
            pass
        else:
            if done.wait(max(0.0, deadline - time.monotonic())):
                return self.errors()
        raise TimeoutError(f"Delivery did not finish within {timeout:g} s; its remaining jobs are abandoned.")

    def _work(self) -> None:
        while True:
            job, timed = self._queue.get()
            start = self._clock()
            try:
                job()
            except Exception as error:  # noqa: BLE001  (reported to the owner through errors())
                with self._lock:
                    self._errors.append(error)
            if timed:
                seconds = self._clock() - start
                with self._lock:
                    self._seconds.append(seconds)
