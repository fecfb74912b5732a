"""Metrics of maps alone, by name, for scoring the maps of every stage of a randomisation check.

A registered metric that consumes the maps and nothing else (:attr:`~lit_attr.metrics.registry.MetricSpec.maps_only`:
``sparseness``, ``complexity``, ``effective_complexity``) needs no model, so it scores the maps of a randomised network
as well as those of the trained one: as a method's maps lose the trained weights, their entropy should rise and their
sparseness fall (the idea behind eMPRT). :class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization`
and :class:`~lit_attr.callbacks.RandomizationCheck` take them by name (``map_metrics=``) through
:func:`map_metrics_of`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from torch import Tensor
from torchmetrics import Metric

from lit_attr._checks import check_names
from lit_attr.metrics.presentation import DEFAULT, Score
from lit_attr.metrics.registry import MAP_INPUTS, available_metrics, get_metric_spec

__all__ = ["MapMetric", "map_metric_names", "map_metrics_of"]


@dataclass(frozen=True)
class MapMetric:
    """One registered metric of maps alone, ready to score the maps of any network.

    Attributes:
        name: its registered name.
        scorer: the metric built with its default options; only its ``score()``, which keeps no state, is used.
        scores: the scores its presentation declares, with their directions, in order.

    Example:
        >>> import torch
        >>> (sparseness,) = map_metrics_of(["sparseness"])
        >>> [score.title for score in sparseness.scores], sparseness(torch.tensor([[0.0, 0.0, 0.0, 2.0]]))
        (['sparseness (Gini) ↑'], [tensor([0.7500])])
    """

    name: str
    scorer: Metric
    scores: tuple[Score, ...]

    def __call__(self, maps: Tensor) -> list[Tensor]:
        """The per-sample values ``(N,)`` of every declared score of ``maps`` ``(N, ...)``, in :attr:`scores` order."""
        values = get_metric_spec(self.name).summary(self.scorer.score(attributions=maps), True)
        return [values[score.key] for score in self.scores]


def map_metric_names() -> list[str]:
    """The registered metrics of maps alone (those that need no model).

    Example:
        >>> {"sparseness", "complexity", "effective_complexity"} <= set(map_metric_names())
        True
    """
    return [name for name in available_metrics() if get_metric_spec(name).maps_only]


def map_metrics_of(
    names: str | Sequence[str], argument: str = "map_metrics", reserved: Collection[str] = ()
) -> tuple[MapMetric, ...]:
    """The registered metrics of maps alone named by ``names`` (none for an empty sequence), built with defaults.

    Args:
        names: one registered name or several (:func:`map_metric_names`).
        argument: the argument's name, for the messages.
        reserved: score keys already taken by the caller (a check's similarity names); a metric may not use them.

    Raises:
        TypeError: for something that is not a name or a sequence of names.
        ValueError: for an unknown name, a metric that needs more than the maps (the model, the inputs, the labels,
            ground-truth masks), one that declares no scores, or score keys that repeat or are ``reserved``.

    Example:
        >>> [metric.name for metric in map_metrics_of(("complexity", "sparseness"))]
        ['complexity', 'sparseness']
        >>> map_metrics_of("top_k_intersection")
        Traceback (most recent call last):
        ...
        ValueError: `map_metrics` takes metrics of the maps alone (complexity, effective_complexity, sparseness); \
'top_k_intersection' also needs ['masks'].
    """
    if not isinstance(names, str) and isinstance(names, Sequence) and not names:
        return ()
    names = check_names(argument, names, what="metric")
    alone = ", ".join(map_metric_names())
    metrics = []
    for name in names:
        if name not in available_metrics():
            raise ValueError(f"`{argument}`: unknown metric {name!r}; the metrics of the maps alone: {alone}.")
        spec = get_metric_spec(name)
        if not spec.maps_only:
            needs = [item for item in spec.consumes if item not in MAP_INPUTS]
            raise ValueError(f"`{argument}` takes metrics of the maps alone ({alone}); {name!r} also needs {needs}.")
        scores = spec.presentation.scores
        if scores is DEFAULT or not scores:
            raise ValueError(
                f"`{argument}`: metric {name!r} declares no scores; register it with "
                "`presentation=Presentation(scores=(Score(key, label), ...))`."
            )
        metrics.append(MapMetric(name, spec.build({}), tuple(scores)))  # type: ignore[arg-type]
    keys = [score.key for metric in metrics for score in metric.scores]
    taken = sorted({key for key in keys if keys.count(key) > 1 or key in reserved})
    if taken:
        raise ValueError(f"`{argument}`: the score keys {taken} repeat or are taken (by {sorted(reserved)}).")
    return tuple(metrics)
