"""Figures, ``metrics.json`` and a self-contained ``report.html`` for an evaluation (see :mod:`lit_attr.evaluate`).

What each metric's results look like (its scores, their directions, its sanity verdict, its curves) comes from the
metric's own presentation (:mod:`lit_attr.presenting`); the maps are drawn by the samples' input kind
(:meth:`lit_attr.inputs.InputKind.render`: matplotlib's object-oriented API, no pyplot state, and HTML where the
kind has it). The HTML report embeds every image as a base64 ``data:`` URI, so the single file can be mailed or
attached to an issue; the same images are also written as PNG files next to it.
"""

from __future__ import annotations

import base64
import html
import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.figure import Figure
from torch import Tensor

import lit_attr.presenting as presenting
import lit_attr.report_trust as trust
import lit_attr.viz as viz
from lit_attr.inputs import Rendering, get_input_kind, input_kind
from lit_attr.metrics.presentation import DEFAULT, Score

__all__ = [
    "ReportContent",
    "build_figures",
    "curve_figures",
    "map_renderings",
    "render_html",
    "report_content",
    "report_figures",
    "summary_table",
    "token_highlights",
    "write_outputs",
]

def map_renderings(
    samples: Mapping[int, Mapping[str, Any]],
    decode: Callable[[Tensor], list[str]] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Rendering]:
    """Each method's maps of the kept samples, drawn by their input kind: ``{"<media name>_<method>": rendering}``.

    Every sample's caption gives its label, the explained class, and the model's prediction with its probability;
    the samples' ground truth (``"truth"``: an image's mask, a text's rationale) is drawn beside the maps where
    every sample has one and the kind draws it.

    Args:
        samples: ``{index: {"x": kept input, "target": int, "label": int | None, "maps": {method: map}, "kind":
            input kind name, "truth": ground truth or None, "prediction": int, "confidence": float}}`` (without
            ``"kind"``, the kind of the kept input, see ``lit_attr.inputs.input_kind``; ``"truth"``,
            ``"prediction"`` and ``"confidence"`` may be left out).
        decode: token ids -> token strings, for kinds that show words (:func:`lit_attr.viz.token_decoder`).
        class_names: names for the captions.

    Returns:
        :class:`~lit_attr.inputs.Rendering` per method (``heatmaps_<method>`` for images, ``tokens_<method>`` for
        token ids, with their HTML); empty for kinds that draw nothing.

    Example:
        >>> import torch
        >>> maps = {"saliency": torch.tensor([0.5, -1.0])}
        >>> sample = {"x": torch.tensor([1, 2]), "target": 0, "label": 0, "maps": maps, "kind": "tokens"}
        >>> sorted(map_renderings({0: sample}, lambda ids: ["good", "film"]))
        ['tokens_saliency']
    """
    order = sorted(samples)
    if not order:
        return {}
    kind = _kind_of(samples[order[0]])
    inputs = [samples[i]["x"] for i in order]
    captions = [_caption(i, samples[i], class_names) for i in order]
    extra = {"truths": [samples[i]["truth"] for i in order]} if _draws_truths(kind, samples) else {}
    renderings = {}
    for method in dict.fromkeys(method for i in order for method in samples[i].get("maps", {})):
        if not all(method in samples[i].get("maps", {}) for i in order):
            continue
        maps = [samples[i]["maps"][method] for i in order]
        title = f"{method}: attributions of the target class"
        rendering = kind.render(inputs, maps, captions=captions, title=title, decode=decode, **extra)
        if rendering is not None:
            renderings[f"{kind.media_name}_{method}"] = rendering
    return renderings


def _kind_of(sample: Mapping[str, Any]) -> Any:
    return get_input_kind(sample["kind"]) if sample.get("kind") else input_kind(sample["x"][None])


def _draws_truths(kind: Any, samples: Mapping[int, Mapping[str, Any]]) -> bool:
    """Every sample has a ground truth and the kind draws it (kinds written before ``truths`` existed get none)."""
    has_all = all(sample.get("truth") is not None for sample in samples.values())
    return has_all and "truths" in inspect.signature(kind.render).parameters


def _caption(index: int, sample: Mapping[str, Any], class_names: Sequence[str] | None) -> str:
    """``#i label L, target T`` and, where known, the prediction with its probability on a second line."""
    text = (
        f"#{index} label {viz.class_label(sample['label'], class_names)}, "
        f"target {viz.class_label(sample['target'], class_names)}"
    )
    if sample.get("prediction") is not None and sample.get("confidence") is not None:
        text += f"\npred {viz.class_label(sample['prediction'], class_names)} ({float(sample['confidence']):.2f})"
    return text


class ReportContent(NamedTuple):
    """Everything a report shows besides ``metrics.json``'s numbers.

    Attributes:
        figures: ``{file stem: figure}`` in display order.
        html: ``{file stem: HTML}`` shown instead of that figure (per-token highlighting).
        legends: ``{file stem: sentence}``: how the colours of a map row read (its scale).
        titles: ``{file stem: method}`` of the map rows, for their headings.
        samples: the HTML table of the samples in the map rows (prediction and probabilities), or ``""``.
    """

    figures: dict[str, Figure]
    html: dict[str, str]
    legends: dict[str, str]
    titles: dict[str, str]
    samples: str


def report_content(
    result: Mapping[str, Any],
    samples: Mapping[int, Mapping[str, Any]],
    class_names: Sequence[str] | None = None,
    decode: Callable[[Tensor], list[str]] | None = None,
) -> ReportContent:
    """The figures of a report in display order, with the HTML, legends and samples table that go with them.

    The metrics' curves come first, then each method's maps (:func:`map_renderings`), then the sanity checks'
    curves, titled with the number of samples those checks saw (``metrics.json``'s ``randomization_samples``).

    Example:
        >>> report_content({"methods": {"saliency": {}}}, {})
        ReportContent(figures={}, html={}, legends={}, titles={}, samples='')
    """
    methods = result["methods"]
    figures = presenting.curve_figures(methods, f"{result.get('num_samples', '?')} samples", sanity=False)
    renderings = map_renderings(samples, decode, class_names)
    figures.update({stem: rendering.figure for stem, rendering in renderings.items()})
    checked = result.get("randomization_samples", result.get("num_samples", "?"))
    figures.update(presenting.curve_figures(methods, f"{checked} samples", sanity=True))
    kind = _kind_of(next(iter(samples.values()))) if samples else None
    drawn = kind is not None and _draws_truths(kind, samples)
    media = kind.media_name if kind is not None else ""
    beside = ", beside the ground truth" if drawn else ""
    return ReportContent(
        figures,
        {stem: rendering.html for stem, rendering in renderings.items() if rendering.html is not None},
        {stem: rendering.legend for stem, rendering in renderings.items() if rendering.legend},
        {stem: f"{stem.removeprefix(media + '_')} ({media}{beside})" for stem in renderings},
        trust.samples_table_html(samples, class_names, with_truth=drawn),
    )


def report_figures(
    result: Mapping[str, Any],
    samples: Mapping[int, Mapping[str, Any]],
    class_names: Sequence[str] | None = None,
    decode: Callable[[Tensor], list[str]] | None = None,
) -> tuple[dict[str, Figure], dict[str, str]]:
    """The figures of a report in display order, and the HTML shown instead of some (per-token highlighting).

    The metrics' curves come first, then each method's maps (:func:`map_renderings`), then the sanity checks'
    curves; each metric draws its own curves (its presentation).

    Returns:
        ``({file stem: figure}, {file stem: HTML})``.

    Example:
        >>> report_figures({"methods": {"saliency": {}}}, {})
        ({}, {})
    """
    content = report_content(result, samples, class_names, decode)
    return content.figures, content.html


def build_figures(
    result: Mapping[str, Any], samples: Mapping[int, Mapping[str, Any]], class_names: Sequence[str] | None = None
) -> dict[str, Figure]:
    """The figures of a report: the metrics' curves, the maps of every method, the sanity checks' curves.

    Args:
        result: the content of ``metrics.json`` (see :func:`lit_attr.evaluate.evaluate`).
        samples: see :func:`map_renderings`.
        class_names: names for the captions.

    Returns:
        ``{file stem: figure}``, in display order (:func:`report_figures` also gives the HTML of token inputs).

    Example:
        >>> res = {"methods": {"saliency": {}}}
        >>> build_figures(res, {})
        {}
    """
    return report_figures(result, samples, class_names)[0]


def curve_figures(methods: Mapping[str, Mapping[str, Mapping[str, Any]]], when: str) -> dict[str, Figure]:
    """The curve figures of a set of results: every metric's own (its presentation's ``curves``), in metric order.

    Args:
        methods: ``{method: {metric: details}}``, as in ``metrics.json`` or ``AttributionRunner.compute()``.
        when: what the figures are of, for their titles (``"32 samples"``, ``"epoch 3"``).

    Returns:
        ``{name: figure}`` for the metrics present that draw curves (``insertion_deletion_curves``,
        ``road_curves``, ``randomization_curves``, ...).

    Example:
        >>> curve_figures({"saliency": {}}, "epoch 0")
        {}
    """
    return presenting.curve_figures(methods, when)


def token_highlights(
    samples: Mapping[int, Mapping[str, Any]],
    decode: Callable[[Tensor], list[str]],
    class_names: Sequence[str] | None = None,
) -> dict[str, tuple[str, Figure]]:
    """The maps of the kept samples whose input kind also draws HTML (per-token highlighting), per method.

    Args:
        samples: see :func:`map_renderings`.
        decode: token ids -> token strings (:func:`lit_attr.viz.token_decoder`).
        class_names: names for the captions.

    Returns:
        ``{"<media name>_<method>": (html, figure)}`` (``tokens_<method>``); empty for image samples.

    Example:
        >>> import torch
        >>> maps = {"saliency": torch.tensor([0.5, -1.0])}
        >>> sample = {"x": torch.tensor([1, 2]), "target": 0, "label": 0, "maps": maps}
        >>> sorted(token_highlights({0: sample}, lambda ids: ["good", "film"]))
        ['tokens_saliency']
    """
    renderings = map_renderings(samples, decode, class_names)
    return {stem: (r.html, r.figure) for stem, r in renderings.items() if r.html is not None}


def _png(figure: Figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return html.escape(str(value))


def _score_columns(methods: Mapping[str, Mapping[str, Any]]) -> tuple[list[tuple[str, Score, str]], list]:
    """The score columns ``(metric, score, title)`` and the sanity checks ``(metric, check)`` of the results."""
    columns, checks = [], []
    for metric in presenting.metrics_in(methods):
        presentation = presenting.presentation_of(metric)
        if presentation.sanity is not None:
            checks.append((metric, presentation.sanity))
            continue
        for score in presentation.scores_in(presenting.of_metric(methods, metric)):
            # Scores the metric does not declare are named by their keys: the metric's name tells them apart.
            title = score.title if presentation.scores is not DEFAULT else f"{presentation.display_name}: {score.title}"
            columns.append((metric, score, title))
    return columns, checks


def score_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the score table: one row per method, one column per score its metrics declare.

    Each column is headed by the score's label and direction (↑ higher is better, ↓ lower is better); every sanity
    check gets a value column and a verdict column, after the scores.

    Example:
        >>> score_rows({"methods": {"m": {"localization": {"pointing_game": 1.0}}}})
        (['method', 'pointing game ↑'], [['m', 1.0]])
    """
    methods = result["methods"]
    columns, checks = _score_columns(methods)
    header = ["method"] + [title for *_, title in columns]
    for _, check in checks:
        header += [check.title, f"{check.short} check"]
    timing = result.get("timing", {})
    if timing:
        header.append("ms / sample")
    rows = []
    for method, scores in methods.items():
        row: list[Any] = [method]
        row += [scores.get(metric, {}).get(score.key, float("nan")) for metric, score, _ in columns]
        for metric, check in checks:
            value, passed = check.read(scores.get(metric))
            row += [value, "" if passed is None else "passed" if passed else "FAILED"]
        if timing:
            row.append(1000 * timing.get(method, {}).get("seconds_per_sample", float("nan")))
        rows.append(row)
    return header, rows


def render_html(
    result: Mapping[str, Any],
    images: Mapping[str, bytes],
    html_sections: Mapping[str, str] | None = None,
    *,
    legends: Mapping[str, str] | None = None,
    titles: Mapping[str, str] | None = None,
    samples_table: str = "",
) -> str:
    """A self-contained HTML page: the model's accuracy, the score table, then every image embedded as a base64 PNG.

    Args:
        result: the content of ``metrics.json``.
        images: ``{file stem: PNG bytes}`` in display order.
        html_sections: ``{file stem: HTML}`` shown instead of the image of that stem (per-token highlighting).
        legends: ``{file stem: sentence}`` shown under a map row: how its colours read.
        titles: ``{file stem: heading}`` (the method of a map row); other stems are headed by their words.
        samples_table: the HTML of the samples in the map rows (:func:`lit_attr.report_trust.samples_table_html`),
            shown before the first map row.

    Returns:
        The HTML text.

    Example:
        >>> "<table" in render_html({"methods": {"m": {}}}, {})
        True
    """
    header, rows = score_rows(result)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    sections = []
    html_sections, legends, titles = html_sections or {}, legends or {}, titles or {}
    for stem, data in images.items():
        if stem in legends and samples_table:
            sections.append(samples_table)
            samples_table = ""  # once, before the first map row
        title = html.escape(titles.get(stem, stem.replace("_", " ")))
        legend = f'<p class="legend">{html.escape(legends[stem])}</p>' if stem in legends else ""
        if stem in html_sections:
            sections.append(f'<section class="tokens"><h2>{title}</h2>{html_sections[stem]}{legend}</section>')
            continue
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        css = ' class="maps"' if stem in legends else ""
        sections.append(f'<section{css}><h2>{title}</h2><img alt="{title}" src="{uri}">{legend}</section>')
    meta = {k: result.get(k) for k in ("split", "num_samples", "world_size")}
    checked = result.get("randomization_samples", result.get("num_samples", "?"))
    rerun = f" The sanity checks score the first {checked} samples." if _score_columns(result["methods"])[1] else ""
    scales = (
        "<p>Each map row has one colour scale for its samples, said in its legend; the rows' scales differ, so "
        "compare colours within a row, not between methods.</p>"
        if legends
        else ""
    )
    versions = ", ".join(f"{k} {v}" for k, v in (result.get("versions") or {}).items())
    config = json.dumps(result.get("config"), indent=2, default=str)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lit-attr evaluation report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child {{ text-align: left; font-weight: bold; }}
img {{ max-width: 100%; }} .scroll {{ overflow-x: auto; }}
pre {{ background: #f7f7f7; padding: 1em; overflow-x: auto; }}
.warning {{ background: #fff3cd; border-left: 4px solid #d97706; padding: 0.5em 1em; }}
tr.wrong td {{ color: #b91c1c; }} .legend {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>lit-attr evaluation report</h1>
<p>{html.escape(", ".join(f"{k}: {v}" for k, v in meta.items()))}</p>
{trust.accuracy_html(result)}
<h2>Scores</h2>
<div class="scroll"><table id="scores"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
<p>↑ higher is better, ↓ lower is better. Localisation needs ground-truth masks. The sanity checks pass when the
maps of a randomised model are dissimilar to the trained model's: MPRT and sMPRT (noise-averaged maps, bottom-up)
when the final Spearman similarity is below their threshold, eMPRT when the maps' entropy rises by more than its
threshold.{html.escape(rerun)}</p>
{scales}
{"".join(sections)}
<h2>Configuration</h2><pre>{html.escape(config)}</pre>
<p><small>{html.escape(versions)}</small></p>
</body></html>
"""


def write_outputs(
    directory: str | Path,
    result: Mapping[str, Any],
    figures: Mapping[str, Figure],
    html_sections: Mapping[str, str] | None = None,
    content: ReportContent | None = None,
) -> None:
    """Write ``metrics.json``, one PNG per figure and ``report.html`` into ``directory``.

    ``html_sections`` (``{figure stem: HTML}``) are shown in the report in place of their figures' images; the PNGs
    are written all the same. ``content`` (:func:`report_content`) adds the map rows' legends and headings and the
    table of their samples.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> write_outputs(out, {"methods": {}}, {"blank": Figure(figsize=(1, 1))})
        >>> sorted(path.name for path in out.iterdir())
        ['blank.png', 'metrics.json', 'report.html']
        >>> json.loads((out / "metrics.json").read_text())
        {'methods': {}}
        >>> (out / "blank.png").read_bytes()[1:4], (out / "report.html").read_text().count("data:image/png;base64,")
        (b'PNG', 1)
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images = {stem: _png(figure) for stem, figure in figures.items()}
    for stem, data in images.items():
        (directory / f"{stem}.png").write_bytes(data)
    (directory / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    extra = {"legends": content.legends, "titles": content.titles, "samples_table": content.samples} if content else {}
    (directory / "report.html").write_text(render_html(result, images, html_sections, **extra), encoding="utf-8")


def summary_table(result: Mapping[str, Any], title: str) -> Any:
    """A rich table of an evaluation's headline numbers per method, narrow enough for an 80-column terminal.

    Example:
        >>> res = {"methods": {"m": {"localization": {"pointing_game": 1.0}}},
        ...        "timing": {"m": {"seconds_per_sample": 0.01}}}
        >>> summary_table(res, "demo").row_count
        1
    """
    from rich.table import Table

    methods = result["methods"]
    scored, checks = _score_columns(methods)
    # The headline numbers only (the scores with a console header), so the table fits an 80-column terminal.
    columns = [(metric, score) for metric, score, _ in scored if score.console_header is not None]
    table = Table(title=title)
    # Method names in full, however narrow the terminal: the numbers' columns wrap instead.
    table.add_column("method", no_wrap=True, min_width=max((len(method) for method in methods), default=6))
    for _, score in columns:
        table.add_column(score.console_header, justify="right")
    if checks:
        table.add_column("sanity", justify="right")
    table.add_column("ms/img", justify="right")
    for method, scores in methods.items():
        row = [method] + [f"{scores.get(metric, {}).get(score.key, float('nan')):.3f}" for metric, score in columns]
        if checks:
            verdicts = {check.short: check.read(scores.get(metric))[1] for metric, check in checks}
            failed = [name for name, passed in verdicts.items() if passed is False]
            ran = any(passed is not None for passed in verdicts.values())
            row.append("FAIL " + ",".join(failed) if failed else "pass" if ran else "")
        row.append(f"{1000 * result['timing'][method]['seconds_per_sample']:.0f}")
        table.add_row(*row)
    return table
