"""The parts of ``report.html`` that say whether its maps can be trusted: the model's accuracy, the shown samples.

A map explains the model, not the data: a model that is often wrong has maps that say little about the methods.
The report therefore states the model's accuracy on the evaluated samples (with a warning under
:data:`ACCURACY_WARNING`), and for every sample in the heatmap rows its label, the predicted class with its
probability, the explained class with its probability, and whether its ground truth is drawn beside the maps.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import lit_attr.viz as viz

__all__ = ["ACCURACY_WARNING", "accuracy_html", "samples_table_html"]

ACCURACY_WARNING = 0.8
"""Below this accuracy on the evaluated samples the report warns that the maps explain a model that barely works."""


def accuracy_html(result: Mapping[str, Any]) -> str:
    """The model's accuracy on the evaluated samples (``metrics.json``'s ``model_accuracy``), warned under 0.8.

    Example:
        >>> page = accuracy_html({"model_accuracy": {"accuracy": 0.41, "correct": 41, "labelled": 100}})
        >>> "<b>0.410</b> (41 of 100" in page, 'class="warning"' in page
        (True, True)
        >>> 'class="warning"' in accuracy_html({"model_accuracy": {"accuracy": 0.9, "correct": 9, "labelled": 10}})
        False
    """
    accuracy = result.get("model_accuracy")
    if not isinstance(accuracy, Mapping):  # a result written before the accuracy was recorded
        return ""
    if accuracy.get("accuracy") is None:
        return '<p id="accuracy">Model accuracy: unknown (the evaluated samples have no labels).</p>'
    value, correct, labelled = float(accuracy["accuracy"]), int(accuracy["correct"]), int(accuracy["labelled"])
    text = (
        f'<p id="accuracy">Model accuracy on the evaluated samples: <b>{value:.3f}</b> ({correct} of {labelled} '
        "predicted as labelled).</p>"
    )
    if value < ACCURACY_WARNING:
        text += (
            f'<p class="warning" id="accuracy-warning">Warning: the model\'s accuracy ({value:.3f}) is below '
            f"{ACCURACY_WARNING}. Its maps explain a model that is often wrong, so they say little about how well "
            "the methods explain a working model: train it further before comparing the methods.</p>"
        )
    return text


def samples_table_html(
    samples: Mapping[int, Mapping[str, Any]], class_names: Sequence[str] | None = None, with_truth: bool = False
) -> str:
    """A table of the samples in the heatmap rows: label, prediction and its probability, target and its probability.

    Args:
        samples: ``{index: {"label", "target", "prediction", "confidence", "target_probability", "truth"}}`` (the
            records of the kept samples, see :func:`lit_attr.report.map_renderings`); samples without a
            prediction (an older caller) leave the table out.
        class_names: names for the classes.
        with_truth: the heatmap rows draw the ground truth (a column says which samples have one).

    Returns:
        The HTML (``<table id="samples">``), or ``""`` when there is nothing to show.

    Example:
        >>> row = {"label": 0, "target": 0, "prediction": 1, "confidence": 0.75, "target_probability": 0.25}
        >>> page = samples_table_html({3: row}, ["circle", "square"])
        >>> "<td>square</td><td>0.750</td>" in page, "<td>#3</td>" in page
        (True, True)
    """
    order = sorted(samples)
    if not order or any(samples[i].get("prediction") is None for i in order):
        return ""
    header = ["sample", "label", "predicted class", "its probability", "explained class", "its probability"]
    if with_truth:
        header.append("ground truth")
    rows = []
    for i in order:
        sample = samples[i]
        label = sample.get("label")
        cells = [
            f"#{i}",
            viz.class_label(label, class_names),
            viz.class_label(sample["prediction"], class_names),
            f"{float(sample['confidence']):.3f}",
            viz.class_label(sample.get("target"), class_names),
            f"{float(sample['target_probability']):.3f}",
        ]
        if with_truth:
            cells.append("drawn" if sample.get("truth") is not None else "none")
        wrong = label is not None and sample["prediction"] != label
        opening = '<tr class="wrong">' if wrong else "<tr>"
        rows.append(opening + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return (
        '<h2>Samples in the heatmap rows</h2><div class="scroll"><table id="samples">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        "<p>Rows in red: the model's prediction is not the label. The maps explain the explained class.</p>"
    )
