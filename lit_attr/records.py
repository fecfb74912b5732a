"""What the runner is asked for and what it gives back: the methods by name, and one record per sample.

:func:`normalize_methods` names every method as the results and logged keys name it; :class:`SampleRecord` is what
:class:`~lit_attr.runner.AttributionRunner` learnt about one sample; :func:`gather_records` collects every rank's.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from torch import Tensor

from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.registry import available_methods

if TYPE_CHECKING:
    from lit_attr.batch import Batch
    from lit_attr.inputs import InputKind

__all__ = ["MethodSpec", "MethodsArg", "SampleRecord", "gather_records", "keep_truths", "normalize_methods"]

MethodSpec = str | Callable[..., AttributionMethod] | AttributionMethod
# The containers first: jsonargparse (LightningCLI) can then write a parsed list or dict back into a config.
MethodsArg = Sequence[MethodSpec] | Mapping[str, MethodSpec] | MethodSpec
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class SampleRecord:
    """What the runner learnt about one sample.

    Attributes:
        index: the caller's identifier of the sample (a dataset index or a probe position).
        label: its label, if the batch had labels.
        target: the class explained and scored.
        prediction: the model's top-1 class on the clean input.
        confidence: the top-1 probability.
        target_probability: the probability of ``target``.
        scores: ``{method: {score name: value}}``: each metric's per-sample headline numbers (the ``<score>`` of
            the keys of :meth:`AttributionRunner.scalars`, whose values are their means).
        seconds: ``{method: seconds}``: the method's time on the sample's batch, divided by the batch size.
        x: the input for samples the runner was asked to keep (as its input kind keeps it: float32 on the CPU, or
            the real token ids), else None.
        attributions: ``{method: map}`` (CPU, float32, aligned with ``x``) for kept samples, else empty.
        kind: the name of the sample's input kind (:func:`lit_attr.inputs.get_input_kind` renders its ``x`` and maps).
        truth: the ground truth of kept samples whose batch has one (an image's mask, a text's rationale), aligned
            with ``x`` as their maps are (the report draws it beside them), else None.
    """

    index: int
    label: int | None
    target: int
    prediction: int
    confidence: float
    target_probability: float
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    x: Tensor | None = None
    attributions: dict[str, Tensor] = field(default_factory=dict)
    kind: str = ""
    truth: Tensor | None = None


def normalize_methods(methods: MethodsArg) -> dict[str, MethodSpec]:
    """Map every method to the name used in results and logged keys (``attr/<name>/...``).

    Registered names stand for themselves; an :class:`~lit_attr.methods.AttributionMethod` instance is named by its
    ``name`` (or class name); a factory by its mapping key, or else by its (or its ``partial``'s) ``__name__``.

    Raises:
        TypeError: for something that is not a name, factory, instance, or a sequence/dict of them.
        ValueError: for an empty set, a repeated name, or a name unusable in logged keys.

    Example:
        >>> list(normalize_methods(["saliency", "mfaba"]))
        ['saliency', 'mfaba']
    """
    if isinstance(methods, (str, AttributionMethod)) or callable(methods) and not isinstance(methods, Mapping):
        methods = [methods]
    if isinstance(methods, Mapping):
        items = list(methods.items())
    elif isinstance(methods, Sequence):
        items = [(_spec_name(spec), spec) for spec in methods]
    else:
        raise TypeError(
            f"`methods` must be a method name, a factory, an AttributionMethod, a list of them or a dict name -> "
            f"method, got {type(methods).__name__}."
        )
    if not items:
        raise ValueError("`methods` must name at least one attribution method.")
    result: dict[str, MethodSpec] = {}
    for name, spec in items:
        if not isinstance(spec, (str, AttributionMethod)) and not callable(spec):
            raise TypeError(
                f"Every method must be a registered name or a factory (or an AttributionMethod instance), got "
                f"{type(spec).__name__}."
            )
        if isinstance(spec, str) and spec not in available_methods():
            raise ValueError(
                f"method {spec!r} in `methods`: Unknown attribution method {spec!r}; available: "
                f"{', '.join(available_methods())}."
            )
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"Method name {name!r} cannot be used in logged keys; give the method a name with a dict, e.g. "
                "`methods={'my_method': factory}` (letters, digits, '_', '.', '-')."
            )
        if name in result:
            raise ValueError(f"`methods` lists {name!r} twice; give distinct names with a dict.")
        result[name] = spec
    return result


def _spec_name(spec: Any) -> Any:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, AttributionMethod):
        return spec.name or type(spec).__name__.lower()
    if isinstance(spec, functools.partial):
        spec = spec.func
    return getattr(spec, "__name__", repr(spec)).lower()


def gather_records(records: list[SampleRecord]) -> list[SampleRecord]:
    """Every rank's records, sorted by index (all of them on every rank; the given list in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, records)
        records = [record for part in parts for record in part]
    return sorted(records, key=lambda record: record.index)


def keep_truths(kind: InputKind, batch: Batch, records: Sequence[SampleRecord]) -> None:
    """Set the ground truth (masks, rationales) of the kept samples among ``records``, aligned with their ``x``.

    Nothing is kept without masks, or for masks that the kind cannot read (the metrics that need masks refuse those
    with the reason; the report's figures do without).

    Example:
        >>> import torch
        >>> from lit_attr.batch import Batch
        >>> from lit_attr.inputs import get_input_kind
        >>> x, mask = torch.rand(1, 3, 2, 2), torch.tensor([[[True, False], [False, False]]])
        >>> kept = SampleRecord(0, 0, 0, 0, 1.0, 1.0, x=x[0])
        >>> keep_truths(get_input_kind("images"), Batch(x=x, mask=mask), [kept])
        >>> kept.truth.tolist()
        [[1.0, 0.0], [0.0, 0.0]]
    """
    if batch.mask is None or all(record.x is None for record in records):
        return
    try:
        truths = kind.ground_truth(batch.mask, batch.x)
    except ValueError:
        return
    for row, record in enumerate(records):
        if record.x is not None:
            fields = {key: value[row] for key, value in batch.fields().items()}
            record.truth = kind.kept_map(truths[row].float(), fields)
