"""How a metric's results are shown: its name, its scores and their directions, its sanity verdict, its curves.

A metric owns its presentation: ``register_metric(..., presentation=Presentation(...))`` declares it beside the
metric, and the report, the console table and the monitor's captions and figures read it from
``get_metric_spec(name).presentation``, so no table of metric names lives outside the metrics. Everything reads the
metric's *details* (what ``MetricSpec.details(metric)`` returns: tensors in training, plain numbers once written to
``metrics.json``), per method: ``results = {method: details}``.

A metric registered without a presentation gets the default one: every scalar entry of its details is a score named
by its key, with the direction of the Metric class's ``higher_is_better``, and every 1-D entry is drawn as a curve
(one panel per entry, one line per method). Fields left at :data:`DEFAULT` are filled in the same way at registration.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from lit_attr.metrics._plotting import line_panels

__all__ = ["DEFAULT", "CurveDrawer", "Presentation", "Results", "SanityCheck", "Score", "entry_curves"]

#: ``{method: details}``: one metric's results, per attribution method.
Results = Mapping[str, Mapping[str, Any]]
#: ``curves(results, when) -> {figure stem: figure}``; ``when`` says what the figures are of ("epoch 3", "64 samples").
CurveDrawer = Callable[[Results, str], dict[str, Figure]]


class _Default(enum.Enum):
    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default.DEFAULT
"""A field filled at registration: a direction from the Metric class's ``higher_is_better``, the scores from the
scalar entries of the results, the curves from their 1-D entries."""


def _arrow(higher_is_better: bool | None | _Default) -> str:
    return {True: "↑", False: "↓"}.get(higher_is_better, "")  # type: ignore[arg-type]


def _check_direction(name: str, value: Any) -> None:
    if value is not DEFAULT and value not in (True, False, None):
        raise TypeError(f"`{name}` must be True, False, None or DEFAULT, got {value!r}.")


@dataclass(frozen=True)
class Score:
    """One headline number of a metric's details.

    Attributes:
        key: its key in the details (and in the per-sample scores, for its caption).
        label: its name in the report's table (default: ``key``).
        header: a short header for the 80-column console table, without the arrow; ``None`` keeps it out of it.
        higher_is_better: its direction; :data:`DEFAULT` takes the metric's (for a metric with scores of both
            directions, insertion up and deletion down, each declares its own).
        caption: a format string for the heatmap captions, applied to the sample's score (``"ins {:.2f}"``); ``None``
            keeps it out of them.

    Example:
        >>> score = Score("deletion", "deletion AUC", header="del.", higher_is_better=False, caption="del {:.2f}")
        >>> score.title, score.console_header, score.caption_of(0.314)
        ('deletion AUC ↓', 'del.↓', 'del 0.31')
    """

    key: str
    label: str = ""
    header: str | None = None
    higher_is_better: bool | None | _Default = DEFAULT
    caption: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"`key` must be a non-empty string, got {self.key!r}.")
        if not self.label:
            object.__setattr__(self, "label", self.key)
        _check_direction("higher_is_better", self.higher_is_better)
        if self.caption is not None:
            try:
                self.caption.format(0.0)
            except (IndexError, KeyError, ValueError) as error:
                raise ValueError(
                    f"`caption` must be a format string with one positional field such as 'ins {{:.2f}}', got "
                    f"{self.caption!r} ({error})."
                ) from None

    @property
    def arrow(self) -> str:
        """``"↑"`` (higher is better), ``"↓"`` (lower is better) or ``""`` (no direction)."""
        return _arrow(self.higher_is_better)

    @property
    def title(self) -> str:
        """The label with its arrow, as the report's table heads its column."""
        return f"{self.label} {self.arrow}".rstrip()

    @property
    def console_header(self) -> str | None:
        """The console header with its arrow, or ``None`` for a score not in the console table."""
        return None if self.header is None else f"{self.header}{self.arrow}"

    def caption_of(self, value: Any) -> str | None:
        """The caption text of one sample's value (``None`` for a score without a caption)."""
        return None if self.caption is None else self.caption.format(float(value))


@dataclass(frozen=True)
class SanityCheck:
    """A sanity check's headline value and verdict (a value column and a verdict column in the report).

    Attributes:
        label: the value's name in the report (``"MPRT (final spearman |A|)"``).
        short: the check's short name, for its verdict column and the console (``"MPRT"``).
        higher_is_better: the direction of the value.
        headline: ``headline(details) -> (value, passed)``, called with non-empty details; ``passed`` may be
            ``None`` where the details hold no verdict.

    Example:
        >>> check = SanityCheck("eMPRT (entropy rise)", "eMPRT", True, lambda d: (d["emprt"], d["passed"]))
        >>> check.read({"emprt": 0.4, "passed": True}), check.read({}), check.title
        ((0.4, True), (nan, None), 'eMPRT (entropy rise) ↑')
    """

    label: str
    short: str
    higher_is_better: bool | None
    headline: Callable[[Mapping[str, Any]], tuple[Any, Any]]

    def __post_init__(self) -> None:
        _check_direction("higher_is_better", self.higher_is_better)
        if not callable(self.headline):
            raise TypeError(f"`headline` must be a callable details -> (value, passed), got {self.headline!r}.")

    @property
    def title(self) -> str:
        """The label with its arrow."""
        return f"{self.label} {_arrow(self.higher_is_better)}".rstrip()

    def read(self, details: Mapping[str, Any] | None) -> tuple[float, bool | None]:
        """``(value, passed)`` of a method's details; ``(nan, None)`` where the check did not run."""
        if not details:
            return float("nan"), None
        value, passed = self.headline(details)
        return float(value), None if passed is None else bool(passed)


def _is_number(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.ndim == 0 and not value.dtype.is_complex and value.dtype != torch.bool
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_series(value: Any) -> bool:
    """A 1-D run of numbers: a 1-D tensor, or a list of numbers as ``metrics.json`` holds it."""
    if isinstance(value, Tensor):
        return value.ndim == 1 and value.numel() > 1 and value.dtype != torch.bool
    return isinstance(value, (list, tuple)) and len(value) > 1 and all(_is_number(v) for v in value)


def _entries(results: Results, keep: Callable[[Any], bool]) -> list[str]:
    """Keys of the entries that ``keep`` accepts, in first-seen order over the methods."""
    return list(dict.fromkeys(key for details in results.values() for key, value in details.items() if keep(value)))


def entry_curves(results: Results, when: str, *, stem: str, title: str) -> dict[str, Figure]:
    """The default curves: every 1-D entry of the details in a panel of its own, one line per method.

    Args:
        results: ``{method: details}``.
        when: what the figure is of, appended to its title.
        stem: the figure's file stem.
        title: the figure's title (before ``when``).

    Returns:
        ``{stem: figure}``, or ``{}`` where no entry is 1-D.

    Example:
        >>> figures = entry_curves({"saliency": {"curve": [0.0, 0.5, 1.0]}}, "epoch 1", stem="x_curves", title="x")
        >>> [len(ax.get_lines()) for ax in figures["x_curves"].axes]
        [1]
    """
    keys = _entries(results, _is_series)
    if not keys:
        return {}
    panels = {
        key: {method: details[key] for method, details in results.items() if _is_series(details.get(key))}
        for key in keys
    }
    return {stem: line_panels(panels, title=f"{title} ({when})")}


@dataclass(frozen=True)
class Presentation:
    """How a metric is shown; every field left at its default is derived (see the module's docstring).

    Attributes:
        display_name: its name in the report and the figures (default: the registered name).
        scores: its headline numbers in display order; :data:`DEFAULT`: every scalar entry of the details.
        higher_is_better: the direction of scores that do not declare one; :data:`DEFAULT`: the Metric class's.
        sanity: for a sanity check, its headline value and verdict.
        curves: ``curves(results, when) -> {figure stem: figure}``; :data:`DEFAULT` draws every 1-D entry,
            ``None`` draws nothing.

    Example:
        >>> p = Presentation(scores=(Score("auc", "AUC", caption="auc {:.1f}"),)).resolve("my_metric", True)
        >>> [s.title for s in p.scores_in({"saliency": {"auc": 0.5}})], p.captions({"auc": 0.25})
        (['AUC ↑'], ['auc 0.2'])
    """

    display_name: str | None = None
    scores: Sequence[Score] | _Default = DEFAULT
    higher_is_better: bool | None | _Default = DEFAULT
    sanity: SanityCheck | None = None
    curves: CurveDrawer | None | _Default = DEFAULT

    def __post_init__(self) -> None:
        if self.display_name is not None and not isinstance(self.display_name, str):
            raise TypeError(f"`display_name` must be a string or None, got {self.display_name!r}.")
        if self.scores is not DEFAULT:
            scores = self.scores
            if isinstance(scores, (str, Score)) or not isinstance(scores, Sequence):
                raise TypeError(f"`scores` must be a sequence of Score or DEFAULT, got {scores!r}.")
            wrong = [s for s in scores if not isinstance(s, Score)]
            if wrong:
                raise TypeError(f"`scores` must hold Score objects, got {wrong!r}.")
            keys = [s.key for s in scores]
            if len(set(keys)) != len(keys):
                raise ValueError(f"`scores` must not repeat a key, got {keys}.")
            object.__setattr__(self, "scores", tuple(scores))
        _check_direction("higher_is_better", self.higher_is_better)
        if self.sanity is not None and not isinstance(self.sanity, SanityCheck):
            raise TypeError(f"`sanity` must be a SanityCheck or None, got {self.sanity!r}.")
        if self.curves is not DEFAULT and self.curves is not None and not callable(self.curves):
            raise TypeError(f"`curves` must be a callable (results, when) -> figures, None or DEFAULT, got "
                            f"{self.curves!r}.")  # fmt: skip

    def resolve(self, name: str, higher_is_better: bool | None = None) -> Presentation:
        """This presentation with its defaults filled for the metric registered as ``name``.

        Args:
            name: the registered name (the default display name, and the stem of the default curves' figure).
            higher_is_better: the Metric class's direction, for the scores that do not declare their own.
        """
        direction = higher_is_better if self.higher_is_better is DEFAULT else self.higher_is_better
        display = self.display_name or name
        scores = self.scores
        if scores is not DEFAULT:
            scores = tuple(
                dataclasses.replace(s, higher_is_better=direction) if s.higher_is_better is DEFAULT else s
                for s in scores
            )
        curves = self.curves
        if curves is DEFAULT:
            # A partial, not a closure: specs travel to spawned processes, and a partial of a module function pickles.
            curves = functools.partial(entry_curves, stem=f"{name}_curves", title=display)
        return dataclasses.replace(self, display_name=display, scores=scores, higher_is_better=direction, curves=curves)

    def scores_in(self, results: Results) -> tuple[Score, ...]:
        """The scores to show for these results, in display order.

        The declared scores that some method has; by default every scalar entry, named by its key, with the metric's
        direction.
        """
        present = {method: details for method, details in results.items() if details}
        if self.scores is DEFAULT:
            direction = None if self.higher_is_better is DEFAULT else self.higher_is_better
            return tuple(Score(key, higher_is_better=direction) for key in _entries(present, _is_number))
        return tuple(s for s in self.scores if any(s.key in details for details in present.values()))

    def captions(self, sample_scores: Mapping[str, Any]) -> list[str]:
        """The caption parts of one sample's scores (``{score key: value}``), for the declared scores with one.

        NaN values (a game this sample did not play) are left out.
        """
        if self.scores is DEFAULT:
            return []
        parts = []
        for score in self.scores:
            value = sample_scores.get(score.key)
            if score.caption is not None and value is not None and math.isfinite(float(value)):
                parts.append(score.caption_of(value))
        return parts

    def figures(self, results: Results, when: str) -> dict[str, Figure]:
        """The metric's curve figures for ``{method: details}`` (methods without details are left out).

        Args:
            results: ``{method: details}`` of this metric.
            when: what the figures are of, for their titles (``"32 samples"``, ``"epoch 3"``).

        Returns:
            ``{figure stem: figure}``; ``{}`` for a metric without curves or results.
        """
        present = {method: details for method, details in results.items() if details}
        if not present or self.curves is None:
            return {}
        curves = self.resolve(self.display_name or "metric").curves if self.curves is DEFAULT else self.curves
        return dict(curves(present, when))  # type: ignore[operator]
