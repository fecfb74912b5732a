"""Name -> metric registry behind :func:`available_metrics`: how each metric is built and what it consumes.

The runner (:mod:`lit_attr.runner`) builds and feeds every metric through its entry here, so a registered metric
works by name in ``AttributionMonitor(metrics=...)``, ``lit_attr evaluate --metrics`` and
``AttributionQuality(metrics=...)`` without any of them knowing it.

An entry declares what its metric consumes, by the keyword names of its constructor and ``update``:

* built from ``model`` (the classifier) and/or ``method`` (the attribution method being scored);
* fed ``x`` (inputs), ``attributions``, ``target`` (resolved classes), ``masks`` (ground-truth masks or token
  rationales; the metric is skipped for data without them), ``logits`` (the clean logits the runner already
  computed), and for token inputs ``attention_mask``, ``special_tokens_mask`` and ``model_inputs`` (the batch's other
  inputs of the model by name, such as ``token_type_ids``; ``None`` when it has none).

An entry also declares the input kinds its metric accepts, as a set of tags (:data:`MODALITY_TAGS`): every input
kind carries the tag of its name (``"images"``, ``"tabular"``, ``"tokens"``, or a user's kind such as ``"signals"``)
and float kinds also ``"continuous"``; a metric accepts a batch whose kind has any of its tags. Localisation needs
``(H, W)`` masks (``{"images"}``), insertion/deletion plays its games on any float input (``{"continuous"}``), the
token metrics take token ids (``{"tokens"}``).

Metrics that also implement ``score(**inputs) -> {name: per-sample tensor}`` and ``update(**inputs,
scores=...)`` (every built-in one does) give the runner per-sample scores without computing anything twice.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torchmetrics import Metric

from lit_attr._checks import check_names
from lit_attr.metrics.presentation import Presentation

__all__ = [
    "BUILD_INPUTS",
    "CONTINUOUS",
    "MAP_INPUTS",
    "MODALITY_TAGS",
    "UPDATE_INPUTS",
    "MetricSpec",
    "check_metric_names",
    "available_metrics",
    "get_metric_spec",
    "register_metric",
    "unregister_metric",
]

#: What a metric may be built from.
BUILD_INPUTS: tuple[str, ...] = ("model", "method")
#: What a metric may be fed per batch.
UPDATE_INPUTS: tuple[str, ...] = (
    "x",
    "attributions",
    "target",
    "masks",
    "logits",
    "attention_mask",
    "special_tokens_mask",
    "model_inputs",
)

#: What a map carries by itself: the maps and, for token maps, which tokens count. A metric that consumes nothing
#: else needs no model and no data (:attr:`MetricSpec.maps_only`): it scores maps computed anywhere.
MAP_INPUTS: tuple[str, ...] = ("attributions", "attention_mask", "special_tokens_mask")

#: The tag every float input kind carries besides its name (images, tabular, a user's float kind).
CONTINUOUS = "continuous"
#: The built-in tags; a user's input kind adds the tag of its name.
MODALITY_TAGS: tuple[str, ...] = ("images", "tabular", "tokens", CONTINUOUS)

Summary = Callable[[Mapping[str, Any], bool], dict[str, Tensor]]
_REGISTRY: dict[str, MetricSpec] = {}


class _Unset(enum.Enum):
    UNSET = "unset"


_UNSET = _Unset.UNSET


def scalar_entries(values: Mapping[str, Any], per_sample: bool) -> dict[str, Tensor]:
    """The default summary: the entries with one number per sample (per-sample scores) or in all (``compute()``).

    Example:
        >>> import torch
        >>> sorted(scalar_entries({"auc": torch.tensor(0.5), "curve": torch.ones(3)}, per_sample=False))
        ['auc']
    """
    rank = 1 if per_sample else 0
    return {key: value for key, value in values.items() if isinstance(value, Tensor) and value.ndim == rank}


def computed(metric: Metric) -> Mapping[str, Any]:
    """The default details: ``metric.compute()`` (synchronised across processes)."""
    return metric.compute()


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its factory, what it consumes, and how to read its results.

    Attributes:
        name: the registered name (also the key of its results).
        factory: a class or callable building the metric from keyword arguments: the consumed ``model``/``method``
            plus the user's options.
        consumes: names from :data:`BUILD_INPUTS` and :data:`UPDATE_INPUTS`.
        summary: ``summary(values, per_sample)``: the headline numbers, from ``details``'s result
            (``per_sample=False``, 0-d tensors) or from ``score()``'s (``per_sample=True``, ``(N,)`` tensors),
            under the same keys so that per-sample means equal the scalars. Default :func:`scalar_entries`.
        details: everything worth keeping in a report (``metrics.json``), default ``metric.compute()``.
        per_sample: ``score()`` of a sample depends on that sample alone (not on the rest of its batch), so the
            runner may score all methods' maps in one call, one stream of model chunks instead of one per method.
        modalities: the tags of the input kinds it accepts (see :meth:`accepts`); the runner names the metrics
            that fit when a batch does not.
        presentation: how its results are shown (:class:`~lit_attr.metrics.presentation.Presentation`), with its
            defaults filled for this metric: the display name, the direction of the factory's
            ``higher_is_better``, the default curves.
    """

    name: str
    factory: Callable[..., Metric]
    consumes: tuple[str, ...]
    summary: Summary = scalar_entries
    details: Callable[[Metric], Mapping[str, Any]] = computed
    per_sample: bool = False
    modalities: frozenset[str] = frozenset({CONTINUOUS})
    presentation: Presentation = field(default_factory=Presentation)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", _check_tags("modalities", self.modalities))
        if not isinstance(self.presentation, Presentation):
            raise TypeError(
                f"`presentation` must be a lit_attr.metrics.presentation.Presentation, got {self.presentation!r}."
            )
        object.__setattr__(self, "presentation", self.presentation.resolve(self.name, _direction(self.factory)))

    def accepts(self, tags: Collection[str]) -> bool:
        """Whether the metric accepts a batch of an input kind with these tags (any of them declared).

        Example:
            >>> get_metric_spec("localization").accepts({"images", "continuous"})
            True
            >>> get_metric_spec("localization").accepts({"tabular", "continuous"})
            False
        """
        return not self.modalities.isdisjoint(_check_tags("tags", tags))

    @property
    def tokens(self) -> bool | None:
        """The former ``tokens`` flag, read from :attr:`modalities` (prefer :meth:`accepts`).

        ``True`` for a metric of token ids only, ``False`` for one of float inputs only, ``None`` for both.
        """
        tokens, floats = "tokens" in self.modalities, bool(self.modalities - {"tokens"})
        return None if tokens and floats else tokens

    @property
    def needs_masks(self) -> bool:
        """Whether the metric needs ground-truth masks (and is skipped for data without them)."""
        return "masks" in self.consumes

    @property
    def maps_only(self) -> bool:
        """Whether the metric scores the maps alone: it consumes the attributions and nothing beyond :data:`MAP_INPUTS`.

        Such a metric needs no model, method, input or label, so it also scores maps of other networks (the stages of
        a randomisation check).

        Example:
            >>> get_metric_spec("sparseness").maps_only, get_metric_spec("local_lipschitz").maps_only
            (True, False)
        """
        return "attributions" in self.consumes and set(self.consumes) <= set(MAP_INPUTS)

    @property
    def update_inputs(self) -> tuple[str, ...]:
        """The per-batch inputs, in declaration order."""
        return tuple(name for name in self.consumes if name in UPDATE_INPUTS)

    def build(self, options: Mapping[str, Any], **available: Any) -> Metric:
        """Build the metric from the consumed ``model``/``method`` in ``available`` and the user's ``options``."""
        given = {name: available[name] for name in self.consumes if name in BUILD_INPUTS}
        clash = sorted(set(given) & set(options))
        if clash:
            raise ValueError(f"The options of metric {self.name!r} must not set {clash}; the runner passes them.")
        return self.factory(**given, **options)


def _check_tags(name: str, tags: Any) -> frozenset[str]:
    """A set of modality tags: one tag or a collection of them, non-empty strings, at least one."""
    if isinstance(tags, str):
        tags = (tags,)
    if not isinstance(tags, Collection) or not tags or not all(isinstance(t, str) and t for t in tags):
        raise TypeError(
            f"`{name}` must be a non-empty set of input-kind tags (strings such as {MODALITY_TAGS} or a kind's own "
            f"name), got {tags!r}."
        )
    return frozenset(tags)


def _modalities_of(tokens: bool | None) -> frozenset[str]:
    """The tags the deprecated ``tokens=`` flag meant."""
    return {True: frozenset({"tokens"}), False: frozenset({CONTINUOUS})}.get(tokens, frozenset({"tokens", CONTINUOUS}))


def _direction(factory: Any) -> bool | None:
    """The ``higher_is_better`` of a Metric class (or of the class a ``functools.partial`` builds); else None."""
    direction = getattr(getattr(factory, "func", factory), "higher_is_better", None)
    return direction if direction in (True, False) else None


def register_metric(
    name: str,
    factory: Callable[..., Metric],
    *,
    consumes: Sequence[str],
    summary: Summary | None = None,
    details: Callable[[Metric], Mapping[str, Any]] | None = None,
    per_sample: bool = False,
    modalities: Collection[str] | None = None,
    presentation: Presentation | None = None,
    tokens: bool | None | _Unset = _UNSET,
) -> MetricSpec:
    """Register a metric under ``name``; it then works by name in the monitor, ``evaluate`` and ``AttributionQuality``.

    Args:
        name: the name users pass (letters, digits and ``_``).
        factory: the Metric class (or a callable) called as ``factory(model=..., method=..., **options)`` with
            only the build inputs listed in ``consumes``.
        consumes: build inputs (:data:`BUILD_INPUTS`) and per-batch inputs (:data:`UPDATE_INPUTS`), named as the
            factory's and ``update``'s keyword arguments.
        summary: see :class:`MetricSpec` (default: the 0-d entries of ``compute()``).
        details: see :class:`MetricSpec` (default: ``compute()``).
        per_sample: see :class:`MetricSpec`; leave it False unless every sample's score is independent of its batch.
        modalities: the tags of the input kinds it accepts (default ``{"continuous"}``: every float input), e.g.
            ``{"images"}`` or ``{"tokens"}``; see :meth:`MetricSpec.accepts`.
        presentation: how its results are shown in the report, the console and the monitor (default: every scalar
            entry a score, with the direction of ``factory.higher_is_better``, every 1-D entry a curve).
        tokens: deprecated, use ``modalities``: ``True`` is ``{"tokens"}``, ``False`` ``{"continuous"}``, ``None``
            both.

    Returns:
        The registered :class:`MetricSpec`.

    Raises:
        ValueError: for a name already registered or not an identifier, or an unknown or missing input.

    Example:
        >>> from lit_attr.metrics import Localization
        >>> spec = register_metric("my_localization", Localization, consumes=("attributions", "masks"))
        >>> "my_localization" in available_metrics(), spec.needs_masks
        (True, True)
        >>> unregister_metric("my_localization")
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"A metric name must be an identifier (letters, digits, '_'), got {name!r}.")
    if name in _REGISTRY:
        raise ValueError(f"A metric named {name!r} is already registered.")
    if not callable(factory):
        raise TypeError(f"`factory` must be a Metric class or a callable, got {type(factory).__name__}.")
    consumes = tuple(consumes)
    unknown = [item for item in consumes if item not in BUILD_INPUTS + UPDATE_INPUTS]
    if unknown or not any(item in UPDATE_INPUTS for item in consumes):
        raise ValueError(
            f"`consumes` must name per-batch inputs from {UPDATE_INPUTS} (and optionally {BUILD_INPUTS}), got "
            f"{list(consumes)}."
        )
    if tokens is not _UNSET:
        if modalities is not None:
            raise ValueError("Pass `modalities` only; `tokens` is its deprecated form.")
        if tokens not in (True, False, None):
            raise TypeError(f"`tokens` must be True, False or None, got {tokens!r}.")
        warnings.warn(
            "register_metric(tokens=...) is deprecated; declare the accepted input kinds with `modalities=` "
            '({"tokens"} for True, {"continuous"} for False, both for None).',
            DeprecationWarning,
            stacklevel=2,
        )
        modalities = _modalities_of(tokens)  # type: ignore[arg-type]
    if per_sample and "method" in consumes:
        raise ValueError(f"Metric {name!r} consumes the method, so the methods' maps cannot share one `score()` call.")
    spec = MetricSpec(
        name,
        factory,
        consumes,
        summary or scalar_entries,
        details or computed,
        bool(per_sample),
        _check_tags("modalities", {CONTINUOUS} if modalities is None else modalities),
        Presentation() if presentation is None else presentation,
    )
    _REGISTRY[name] = spec
    return spec


def check_metric_names(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """Metric names as a tuple: one name or several, non-empty, without repeats, all registered.

    Raises:
        TypeError: for something that is not a name or a sequence of names.
        ValueError: for an empty or repeating sequence, or an unregistered name (the message lists the registered).

    Example:
        >>> check_metric_names("localization")
        ('localization',)
    """
    names = check_names("metrics", metrics, what="metric")
    unknown = [name for name in names if name not in _REGISTRY]
    if unknown:
        raise ValueError(f"`metrics`: unknown metric(s) {unknown}; available: {', '.join(available_metrics())}.")
    return names


def unregister_metric(name: str) -> None:
    """Remove a registered metric (for tests and plugins that register temporarily)."""
    if name not in _REGISTRY:
        raise ValueError(f"No metric named {name!r} is registered; registered: {available_metrics()}.")
    del _REGISTRY[name]


def available_metrics() -> list[str]:
    """Sorted names accepted wherever lit-attr takes metric names.

    Example:
        >>> {"insertion_deletion", "localization", "randomization"} <= set(available_metrics())
        True
    """
    return sorted(_REGISTRY)


def get_metric_spec(name: str) -> MetricSpec:
    """The registry entry of ``name``.

    Raises:
        ValueError: for a name that is not registered (the message lists the registered ones).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(available_metrics())}.")
    return _REGISTRY[name]
