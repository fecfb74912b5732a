"""What the monitor delivers after a run, rendered from plain data: maps per method, curves, a per-sample table.

The maps are drawn by the samples' input kind (:meth:`lit_attr.inputs.InputKind.render`), the curves and captions
by each metric's presentation (:mod:`lit_attr.presenting`): nothing here names a modality or a metric.

:func:`deliver_run` is the job the monitor hands its :class:`~lit_attr.delivery.DeliveryWorker` (or runs at once):
a plain function of a :class:`RunMedia` (copies of the run's results and records, and what the captions need) and a
:class:`~lit_attr.delivery.Destination` snapshot of the trainer, so nothing it reads belongs to the callback or can
change under it while it runs on the worker thread.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

import lit_attr.delivery as delivery
import lit_attr.presenting as presenting
import lit_attr.viz as viz
from lit_attr.inputs import InputKind, get_input_kind, input_kind
from lit_attr.runner import SampleRecord

__all__ = ["RunMedia", "deliver_run"]

Label = Callable[[int | None], str]


@dataclass(frozen=True)
class RunMedia:
    """One monitor run, as the delivery needs it.

    Attributes:
        results: ``{method: {metric: details}}`` of ``AttributionRunner.compute()`` (CPU copies).
        records: every probe sample's record, sorted by probe position (kept samples carry inputs and maps).
        methods: the method names, in order.
        dataset_indices: the dataset index of every probe position.
        epoch: the training epoch, or None outside ``fit``.
        class_names: names for the captions (None: class indices).
        decode: token ids -> token strings, for the highlighting of token inputs.
    """

    results: Mapping[str, Mapping[str, Mapping[str, Any]]]
    records: Sequence[SampleRecord]
    methods: Sequence[str]
    dataset_indices: Sequence[int]
    epoch: int | None
    class_names: Sequence[str] | None
    decode: Callable[[Tensor], list[str]]


def deliver_run(target: delivery.Destination, run: RunMedia) -> None:
    """Render ``run`` and deliver it to the loggers of ``target``: maps, curves and the ``attr/samples`` table.

    Example::

        deliver_run(delivery.destination(trainer), RunMedia(results, records, ["saliency"], indices, 0, None, str))
    """
    when = f"epoch {run.epoch}" if run.epoch is not None else str(target.state.fn.value)
    label = functools.partial(viz.class_label, class_names=run.class_names)
    shown = [record for record in run.records if record.x is not None]
    cells = _deliver_maps(target, run, shown, label, when)
    for key, figure in presenting.curve_figures(run.results, when).items():  # each metric draws its own
        delivery.log_figure(target, f"attr/{key}", figure)
    if run.records:
        _deliver_table(target, run, label, cells)


Cells = dict[tuple[int, str], delivery.HtmlCell]


def _deliver_maps(
    target: delivery.Destination, run: RunMedia, shown: list[SampleRecord], label: Label, when: str
) -> tuple[str, Cells] | None:
    """Each method's maps of the kept samples, drawn by their input kind (``attr/<method>/<media name>``).

    Returns the table column and cells of a kind that also draws one sample in a table cell (token highlighting),
    else None.
    """
    if not shown:
        return None
    kind = kind_of(shown[0])
    samples = [record.x for record in shown]
    titles = [f"#{run.dataset_indices[record.index]} {label(record.label)}" for record in shown]
    cells: Cells = {}
    for method in run.methods:
        maps = [record.attributions[method] for record in shown]
        captions = [caption(record, method, label, run.results.get(method, {})) for record in shown]
        title = f"{method}, {when}"
        rendering = kind.render(samples, maps, captions=captions, titles=titles, title=title, decode=run.decode)
        if rendering is None:
            continue
        key = f"attr/{method}/{kind.media_name}"
        if rendering.html is not None:
            delivery.log_html(target, key, rendering.html, rendering.figure)
        else:
            delivery.log_image(target, key, rendering.figure, caption=title)
        for record, sample, attributions in zip(shown, samples, maps, strict=True):
            cell = kind.render_cell(sample, attributions, decode=run.decode)
            if cell is not None:
                cells[record.index, method] = delivery.HtmlCell(cell, _text(cell))
    return (kind.media_name, cells) if cells else None


def kind_of(record: SampleRecord) -> InputKind:
    """The input kind of a record (its ``kind``; for a record without one, the kind of its kept input).

    Example:
        >>> import torch
        >>> kind_of(SampleRecord(0, None, 0, 0, 1.0, 1.0, x=torch.rand(3, 8, 8))).media_name
        'heatmaps'
    """
    return get_input_kind(record.kind) if record.kind else input_kind(record.x[None])


def _text(html_text: str) -> str:
    """The plain text of an HTML cell, for loggers that show text (CSV files, TensorBoard)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", html_text)).split())


def _deliver_table(target: delivery.Destination, run: RunMedia, label: Label, cells: tuple[str, Cells] | None) -> None:
    """The ``attr/samples`` table: one row per probe sample and method, with every per-sample score.

    Score columns are headed by their key and direction (``deletion ↓``, :func:`~lit_attr.presenting.score_headers`).
    """
    records = run.records
    score_names = list(dict.fromkeys(key for r in records for s in r.scores.values() for key in s))
    columns = ["epoch", "dataset_index", "label", "prediction", "confidence", "method", "target", "p_target"]
    if cells is not None:
        columns.append(cells[0])
    rows = [
        [
            -1 if run.epoch is None else run.epoch,
            run.dataset_indices[record.index],
            label(record.label),
            label(record.prediction),
            round(record.confidence, 4),
            method,
            label(record.target),
            round(record.target_probability, 4),
            *([cells[1].get((record.index, method))] if cells is not None else []),
            *(record.scores.get(method, {}).get(key, float("nan")) for key in score_names),
        ]
        for record in records
        for method in run.methods
    ]
    delivery.log_table(target, "attr/samples", columns + presenting.score_headers(run.results, score_names), rows)


def caption(record: SampleRecord, method: str, label: Label, metrics: Mapping[str, Any]) -> str:
    """A kept sample's caption under its map: target, prediction and confidence, then its scores.

    The scores are the caption parts its ``metrics`` declare (:meth:`~lit_attr.metrics.presentation.Presentation.
    captions`), in metric order.

    Example:
        >>> record = SampleRecord(0, 1, 1, 1, 0.9, 0.9, scores={"m": {"pointing_game": 1.0}})
        >>> caption(record, "m", str, {"localization": {}}).splitlines()
        ['target 1, pred 1 0.90', 'point 1']
    """
    head = f"target {label(record.target)}, pred {label(record.prediction)} {record.confidence:.2f}"
    parts = presenting.caption_parts(metrics, record.scores.get(method, {}))
    return "\n".join([head, " ".join(parts)]) if parts else head
