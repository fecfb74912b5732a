"""The results of an evaluation and their output: ``metrics.json``, figures, ``report.html`` and the loggers."""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning import Trainer
from torch import Tensor

import lit_attr.delivery as delivery
import lit_attr.report as report
from lit_attr._resume import work_dir, write_result
from lit_attr.evaluate.checks import EvaluationError
from lit_attr.evaluate.storage import storage_error
from lit_attr.keys import scalar_key
from lit_attr.runner import SampleRecord

__all__ = ["flat_scalars", "model_accuracy", "package_versions", "per_sample_scores", "to_plain", "write_and_log"]


def to_plain(value: Any) -> Any:
    """Tensors and tuples to JSON-ready floats and lists."""
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        return float(value) if value.ndim == 0 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers, for ``metrics.json``.

    Example:
        >>> "torch" in package_versions()
        True
    """
    versions = {"python": platform.python_version()}
    for name in ("lit-attr", "torch", "torchvision", "lightning", "torchmetrics", "captum", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def flat_scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """``{"attr/<method>/<metric>/<name>": value}`` for every finite number of a ``metrics.json`` result.

    Keys of :mod:`lit_attr.keys`; a randomisation check's similarity counts by its final value.

    Example:
        >>> flat_scalars({"methods": {"saliency": {"localization": {"pointing_game": 0.5}}}})
        {'attr/saliency/localization/pointing_game': 0.5}
    """
    out: dict[str, float] = {}
    for method, metrics in result["methods"].items():
        for metric, values in metrics.items():
            for key, value in values.items():
                if isinstance(value, dict):  # randomisation: one entry per similarity
                    if isinstance(value.get("final"), (int, float)):
                        out[scalar_key(method, metric, key)] = float(value["final"])
                elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    out[scalar_key(method, metric, key)] = float(value)
    return out


def model_accuracy(records: Sequence[SampleRecord]) -> dict[str, Any]:
    """How often the model's top-1 class is the label, over the evaluated samples that have one (``metrics.json``).

    Returns:
        ``{"accuracy": correct / labelled (None without labels), "correct": int, "labelled": int}``.

    Example:
        >>> records = [SampleRecord(i, label, 0, prediction, 0.9, 0.9) for i, (label, prediction) in
        ...            enumerate([(0, 0), (1, 0), (None, 1)])]
        >>> model_accuracy(records)
        {'accuracy': 0.5, 'correct': 1, 'labelled': 2}
    """
    labelled = [record for record in records if record.label is not None]
    correct = sum(record.prediction == record.label for record in labelled)
    return {"accuracy": correct / len(labelled) if labelled else None, "correct": correct, "labelled": len(labelled)}


def per_sample_scores(records: Sequence[SampleRecord]) -> list[dict[str, Any]]:
    """Every scored sample by index, for ``metrics.json``: its classes, probability and per-method metric scores.

    The scores are each metric's per-sample headline numbers (``{method: {score: value}}``, NaN where a sample has
    none), the numbers whose means the ``methods`` section holds.

    Example:
        >>> [entry] = per_sample_scores([SampleRecord(3, 1, 1, 1, 0.9, 0.9, scores={"saliency": {"insertion": 0.5}})])
        >>> entry["index"], entry["scores"]
        (3, {'saliency': {'insertion': 0.5}})
    """
    return [
        {"index": record.index, "label": record.label, "target": record.target, "prediction": record.prediction,
         "target_probability": record.target_probability, "scores": record.scores}
        for record in sorted(records, key=lambda record: record.index)
    ]  # fmt: skip


def write_and_log(
    trainer: Trainer,
    output: Path,
    result: Mapping[str, Any],
    scalars: Mapping[str, float],
    records: Sequence[SampleRecord],
    class_names: Sequence[str] | None,
    decode: Callable[[Tensor], list[str]],
) -> None:
    """Global rank 0's output: scalars and figures to the loggers, then the files into ``output``.

    The ``scalars`` (``AttributionRunner.scalars``: the keys the monitor logs) are logged at step 0, with a table
    of them; the figures are those of ``result`` and of the kept samples among ``records``. ``metrics.json``, the
    PNGs and ``report.html`` are written into a work directory renamed to ``output`` only once complete.

    Example::

        write_and_log(trainer, Path("out"), result, scalars, records, ["circle", "square"], viz.token_decoder(None))
    """
    samples = {
        record.index: {
            "x": record.x,
            "target": record.target,
            "label": record.label,
            "maps": record.attributions,
            "kind": record.kind,
            "truth": record.truth,
            "prediction": record.prediction,
            "confidence": record.confidence,
            "target_probability": record.target_probability,
        }
        for record in records
        if record.x is not None
    }
    content = report.report_content(result, samples, class_names, decode)
    figures, html_sections = content.figures, content.html
    _log_to_loggers(trainer, scalars, figures, html_sections)
    try:
        write_result(output, lambda tmp: report.write_outputs(tmp, result, figures, html_sections, content))
    except OSError as error:
        raise EvaluationError(
            f"{storage_error(error, 'write the result', output)}; every sample is scored and saved in "
            f"{str(work_dir(output))!r}: fix that and rerun with --resume true to write it"
        ) from error


def _log_to_loggers(
    trainer: Trainer, scalars: Mapping[str, float], figures: Mapping[str, Any], html_sections: Mapping[str, str]
) -> None:
    if not trainer.loggers:
        return
    delivery.log_metrics(trainer, dict(scalars), step=0)
    for key, figure in figures.items():
        if key in html_sections:
            delivery.log_html(trainer, f"evaluate/{key}", html_sections[key], figure, step=0)
        else:
            delivery.log_figure(trainer, f"evaluate/{key}", figure, step=0)
    delivery.log_table(trainer, "evaluate/scores", ["key", "value"], [[k, v] for k, v in scalars.items()], step=0)
