"""A set of results shown as its metrics declare: each metric's presentation, read from the metric registry.

``results`` here are ``{method: {metric: details}}`` (``AttributionRunner.compute()``, or ``metrics.json``'s
``methods``). What a metric's results look like (display name, scores and their directions, sanity verdict, curves,
caption parts) is declared beside the metric (:class:`~lit_attr.metrics.presentation.Presentation`); the report, the
console table and the monitor's delivery read it through the functions here and name no metric themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from lit_attr.metrics.presentation import Presentation
from lit_attr.metrics.registry import available_metrics, get_metric_spec

__all__ = ["caption_parts", "curve_figures", "metrics_in", "of_metric", "presentation_of", "score_headers"]

AllResults = Mapping[str, Mapping[str, Mapping[str, Any]]]


def presentation_of(metric: str) -> Presentation:
    """The registered metric's presentation; the default one for a name no longer registered (an old result).

    Example:
        >>> presentation_of("localization").scores[0].title
        'pointing game ↑'
    """
    if metric in available_metrics():
        return get_metric_spec(metric).presentation
    return Presentation().resolve(metric)


def metrics_in(results: AllResults) -> list[str]:
    """The metrics of ``results``, in the order the methods first report them (the configured order).

    Example:
        >>> metrics_in({"a": {"road": {}}, "b": {"localization": {}, "road": {}}})
        ['road', 'localization']
    """
    return list(dict.fromkeys(metric for metrics in results.values() for metric in metrics))


def of_metric(results: AllResults, metric: str) -> dict[str, Mapping[str, Any]]:
    """``{method: details}`` of one metric, for the methods that have it.

    Example:
        >>> of_metric({"a": {"road": {"road": 0.5}}, "b": {}}, "road")
        {'a': {'road': 0.5}}
    """
    return {method: metrics[metric] for method, metrics in results.items() if metric in metrics}


def curve_figures(results: AllResults, when: str, sanity: bool | None = None) -> dict[str, Figure]:
    """Every metric's curve figures, in metric order: ``{figure stem: figure}``.

    Args:
        results: ``{method: {metric: details}}``.
        when: what the figures are of, for their titles (``"32 samples"``, ``"epoch 3"``).
        sanity: only the sanity checks' curves (True), only the other metrics' (False), or all (None).

    Example:
        >>> curve_figures({"saliency": {"localization": {"pointing_game": 1.0}}}, "epoch 0")
        {}
    """
    figures: dict[str, Figure] = {}
    for metric in metrics_in(results):
        presentation = presentation_of(metric)
        if sanity is None or sanity == (presentation.sanity is not None):
            figures.update(presentation.figures(of_metric(results, metric), when))
    return figures


def caption_parts(metrics: Mapping[str, Any], sample_scores: Mapping[str, Any]) -> list[str]:
    """The caption parts of one sample's scores (``{score: value}``) under the declarations of ``metrics``.

    Example:
        >>> caption_parts({"localization": {}}, {"pointing_game": 1.0, "relevance_mass": 0.25})
        ['point 1', 'mass 0.25']
    """
    return [part for metric in metrics for part in presentation_of(metric).captions(sample_scores)]


def score_headers(results: AllResults, keys: Sequence[str]) -> list[str]:
    """Column headers of per-sample scores: each key with the arrow its metric's presentation gives that score.

    ``deletion ↓``, ``pointing_game ↑``: the key is the ``<score>`` of the logged scalar
    ``attr/<method>/<metric>/<score>`` the column averages to, the arrow its direction (↑ higher is better, ↓ lower
    is better), read from the score the metric shows (:meth:`~lit_attr.metrics.presentation.Presentation.scores_in`).
    A key that is no declared score (a count such as ``local_lipschitz_method_calls``, a sanity check's similarity)
    has no direction and stays as it is. Headers are as unique as the keys.

    Args:
        results: ``{method: {metric: details}}`` of the run the scores come from.
        keys: the per-sample score keys, in column order.

    Example:
        >>> score_headers({"m": {"insertion_deletion": {"insertion": 0.6, "deletion": 0.1}}}, ["deletion", "calls"])
        ['deletion ↓', 'calls']
    """
    arrows: dict[str, str] = {}
    for metric in metrics_in(results):
        for score in presentation_of(metric).scores_in(of_metric(results, metric)):
            arrows.setdefault(score.key, score.arrow)
    return [f"{key} {arrows.get(key, '')}".rstrip() for key in keys]
