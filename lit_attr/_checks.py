"""The one home of lit-attr's argument checks and of target resolution.

Every public entry point (methods, functional metrics, Metrics, callbacks, ``evaluate``) validates its arguments
with these helpers, so the same bad input gets the same error everywhere: a ``TypeError`` for a value of the wrong
type, a ``ValueError`` for one of the right type but out of range, both naming the argument, the expected form
and what was given.

Targets
-------
Wherever lit-attr takes a ``target`` (the class to explain or to track), it accepts exactly these forms:

* ``None``: the model's top-1 prediction on the clean input;
* an ``int`` (or a 0-d integer tensor): the same class for every sample;
* ``N`` integer class indices: a sequence, or an integer tensor of shape ``(N,)`` or ``(N, 1)``.

Floats, booleans and other shapes are refused, and every index must lie in ``[0, K - 1]`` for a model with ``K``
classes. :func:`resolve_target` implements this once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

TargetType = int | Sequence[int] | Tensor | None

#: How a model's outputs are scored: ``"logits"``, K >= 2 class logits under a softmax; ``"sigmoid"``, the one logit
#: ``z`` of a binary classifier, class 1 scoring ``sigmoid(z)`` and class 0 ``1 - sigmoid(z)``.
MODEL_OUTPUTS = ("logits", "sigmoid")

__all__ = [
    "MODEL_OUTPUTS",
    "TargetType",
    "check_batch",
    "check_bounds",
    "check_bounds_fit",
    "check_callable",
    "check_choice",
    "check_device",
    "check_finite",
    "check_flag",
    "check_int",
    "check_labels",
    "check_names",
    "check_number",
    "check_option_dicts",
    "check_optional_int",
    "check_positive",
    "check_sample_limits",
    "check_scorable",
    "check_seed",
    "resolve_target",
]


def check_int(name: str, value: Any, minimum: int = 0) -> int:
    """Return ``value`` if it is an int >= ``minimum``.

    Raises:
        TypeError: for another type (bools included).
        ValueError: below ``minimum``.

    Example:
        >>> check_int("num_samples", 8, 1)
        8
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return value


def check_optional_int(name: str, value: Any, minimum: int = 1) -> int | None:
    """Return ``value`` if it is None or an int >= ``minimum`` (a ValueError names the argument otherwise).

    Example:
        >>> check_optional_int("internal_batch_size", None) is None
        True
    """
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"`{name}` must be {kind} or None, got {value!r}.")
    return value


def check_positive(name: str, value: Any, kind: type = float) -> Any:
    """Return ``value`` as ``kind`` if it is a finite positive number (an integer when ``kind`` is int).

    Example:
        >>> check_positive("eta", 2, float)
        2.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    if kind is int and value != int(value):
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return kind(value)


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it is an int (bools excluded), else raise a TypeError naming the argument.

    Example:
        >>> check_seed(3)
        3
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}.")
    return seed


def check_flag(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise a TypeError naming the argument.

    Example:
        >>> check_flag("resume", True)
        True
    """
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {type(value).__name__} {value!r}.")
    return value


def check_number(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite real number (bools excluded).

    Raises:
        TypeError: for anything but an int or a float.
        ValueError: for NaN or an infinity.

    Example:
        >>> check_number("threshold", 1)
        1.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    return float(value)


def check_bounds(name: str, bounds: Any) -> tuple[float | Tensor, float | Tensor] | None:
    """``None``, or a pair ``(low, high)`` of numbers or tensors with ``low < high`` everywhere and no NaN.

    Returns:
        None, or the pair with floats for numbers and detached tensors.

    Raises:
        ValueError: for anything else.

    Example:
        >>> check_bounds("input_bounds", (0, 1))
        (0.0, 1.0)
    """
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2 or isinstance(bounds[0], (str, bytes)):
        raise ValueError(f"`{name}` must be None or a pair (low, high), got {bounds!r}.")
    try:
        low, high = (b.detach() if isinstance(b, Tensor) else float(b) for b in bounds)
    except (TypeError, ValueError) as error:
        message = f"`{name}` must be None or a pair (low, high) of numbers or tensors, got {bounds!r}."
        raise ValueError(message) from error
    if bool(torch.as_tensor(low).isnan().any()) or bool(torch.as_tensor(high).isnan().any()):
        raise ValueError(f"`{name}` must not contain NaN, got {bounds!r}.")
    if bool(torch.as_tensor(low >= high).any()):
        raise ValueError(f"`{name}` must satisfy low < high everywhere, got {bounds!r}.")
    return low, high


def check_bounds_fit(name: str, bounds: Any, x: Tensor) -> None:
    """Refuse per-sample ``bounds`` (tensors) that do not broadcast to one sample of the batch ``x``.

    Scalar bounds, ``None`` and inputs that are not floating-point (token ids: their bounds live in the embedding
    space) always fit.

    Raises:
        ValueError: naming the argument, the sample shape and the shape given.

    Example:
        >>> check_bounds_fit("input_bounds", (torch.zeros(3, 1, 1), torch.ones(3, 1, 1)), torch.rand(2, 3, 4, 4))
    """
    if bounds is None or not x.is_floating_point():
        return
    sample = tuple(x.shape[1:])
    for bound in bounds:
        if not isinstance(bound, Tensor):
            continue
        try:
            fits = torch.broadcast_shapes(bound.shape, sample) == sample
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"`{name}` must be scalars or tensors broadcastable to one sample {sample} (per channel: "
                f"({sample[0]}, 1, 1) for images), got a bound of shape {tuple(bound.shape)}."
            )


def check_scorable(logits: Tensor, model_output: str = "logits") -> int:
    """Refuse model outputs that no score can be honest about; return the number of classes they score.

    ``model_output="logits"`` takes K >= 2 class logits (a softmax over them gives the class probabilities): one
    output per sample would give every class the probability 1 whatever the input, and outputs that already are
    probabilities (in [0, 1], rows summing to 1) would be squashed by a second softmax. ``model_output="sigmoid"``
    takes the single logit ``z`` of a binary classifier (2 classes: ``sigmoid(z)`` and ``1 - sigmoid(z)``).

    Args:
        logits: the model's output on a batch, ``(N, K)``.
        model_output: one of :data:`MODEL_OUTPUTS`.

    Raises:
        ValueError: naming what the model returned and what to pass instead.

    Example:
        >>> check_scorable(torch.tensor([[2.0, -1.0]])), check_scorable(torch.tensor([[0.3]]), "sigmoid")
        (2, 2)
    """
    check_choice("model_output", model_output, MODEL_OUTPUTS)
    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"The model must return floating-point logits (N, K), got {shape}.")
    shape, k = tuple(logits.shape), logits.shape[1]
    if model_output == "sigmoid":
        if k != 1:
            raise ValueError(
                f"`model_output='sigmoid'` is for a binary classifier with one logit per sample, but the model "
                f"returns {k} per sample (shape {shape}); pass model_output='logits' for class logits."
            )
        return 2
    if k == 1:
        raise ValueError(
            f"The model returns one output per sample (shape {shape}): a softmax over one logit is 1 for every "
            "input, so every score would be 1.0. If it is a binary classifier's logit, pass model_output='sigmoid' "
            "(--model_output sigmoid): class 1 then scores sigmoid(z) and class 0 scores 1 - sigmoid(z)."
        )
    values = logits.detach().float()
    in_unit = bool(((values >= 0) & (values <= 1)).all())
    if values.shape[0] and in_unit and bool((values.sum(dim=1) - 1).abs().max() <= 1e-4):  # no rows: nothing to judge
        raise ValueError(
            f"The model's outputs look like probabilities (shape {shape}, in [0, 1], rows sum to 1): a softmax over "
            "them would flatten every score; return the logits (remove the final softmax)."
        )
    return k


def check_labels(name: str, labels: Tensor) -> Tensor:
    """Labels as an ``(N,)`` long tensor of class indices; float labels must hold whole numbers.

    Raises:
        ValueError: for floating-point labels with a fraction (or NaN): truncating them would explain other classes.

    Example:
        >>> check_labels("y", torch.tensor([[1.0], [0.0]]))
        tensor([1, 0])
    """
    if labels.is_floating_point():
        bad = labels != labels.trunc()
        if bool(bad.any()):
            example = float(labels[bad].flatten()[0])
            raise ValueError(
                f"`{name}` must be integer class indices, got floating-point labels with a fraction (e.g. "
                f"{example:.6g}); pass `batch_adapter=` returning class indices (soft or multi-label targets have no "
                "single class to explain)."
            )
    return labels.detach().long().reshape(-1)


def check_device(name: str, value: Tensor, model: nn.Module) -> None:
    """Raise a ValueError naming the argument if ``value`` is not on the device of ``model``'s first tensor.

    Example:
        >>> check_device("x", torch.zeros(2, 3), nn.Linear(3, 2))
    """
    device = next((t.device for t in itertools.chain(model.parameters(), model.buffers())), None)
    if device is not None and device != value.device:
        raise ValueError(
            f"`{name}` is on {value.device} but the model is on {device}; move them to the same device, e.g. "
            f"`{name}.to({str(device)!r})`."
        )


def check_finite(name: str, value: Tensor) -> None:
    """Raise a ValueError naming the argument if ``value`` holds NaN or infinite values.

    Example:
        >>> check_finite("attributions", torch.ones(2))
    """
    if value.device.type != "meta" and not bool(torch.isfinite(value).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values; it must be finite.")


def check_batch(name: str, value: Any, model: nn.Module | None = None, *, finite: bool = True) -> Tensor:
    """Return ``value`` if it is a non-empty floating-point batch ``(N, ...)``, on ``model``'s device, finite.

    Args:
        name: the argument's name, for the messages.
        value: what the user passed.
        model: the module the batch is for (its device is checked first: a tensor on another device cannot even
            be inspected there).
        finite: also refuse NaN and infinite values.

    Raises:
        TypeError: for a non-tensor or a tensor that is not floating-point.
        ValueError: for fewer than 2 dimensions, no samples, another device than the model's, or NaN/inf.

    Example:
        >>> check_batch("x", torch.zeros(2, 3), nn.Linear(3, 2)).shape
        torch.Size([2, 3])
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {value.dtype}; convert it with .float().")
    if value.ndim < 2 or value.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty batch (N, ...) with N >= 1, got shape {tuple(value.shape)}.")
    if model is not None:
        check_device(name, value, model)
    if finite:
        check_finite(name, value)
    return value


def check_choice(name: str, value: Any, options: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``options``, else raise a ValueError naming the argument.

    Example:
        >>> check_choice("order", "top_down", ("top_down", "bottom_up"))
        'top_down'
    """
    options = tuple(options)
    if not isinstance(value, type(options[0])) or value not in options:
        raise ValueError(f"`{name}` must be one of {options}, got {value!r}.")
    return value


def check_callable(name: str, value: Any) -> Any:
    """Return ``value`` if it is None or callable, else raise a TypeError naming the argument.

    Example:
        >>> check_callable("batch_adapter", None) is None
        True
    """
    if value is not None and not callable(value):
        raise TypeError(f"`{name}` must be callable or None, got {type(value).__name__}.")
    return value


def check_names(name: str, values: Any, known: Iterable[str] | None = None, *, what: str = "name") -> tuple[str, ...]:
    """Names as a tuple: a single string or a sequence of strings, non-empty, without repeats, all ``known``.

    Args:
        name: the argument's name, for the messages.
        values: what the user passed.
        known: the accepted names (None: any string).
        what: what a name stands for, for the messages (``"metric"``, ``"similarity"``...).

    Raises:
        TypeError: for something that is not a string or a sequence of strings.
        ValueError: for an empty sequence, a repeated name or an unknown one (the message lists the known names).

    Example:
        >>> check_names("metrics", "localization", ("insertion_deletion", "localization"))
        ('localization',)
    """
    names = (values,) if isinstance(values, str) else values
    if not isinstance(names, Sequence) or not all(isinstance(v, str) for v in names):
        raise TypeError(f"`{name}` must be a {what} or a sequence of {what}s, got {values!r}.")
    names = tuple(names)
    if not names:
        raise ValueError(f"`{name}` must name at least one {what}.")
    if len(set(names)) != len(names):
        raise ValueError(f"`{name}` must not repeat a {what}, got {list(names)}.")
    if known is not None:
        known = tuple(known)
        unknown = [v for v in names if v not in known]
        if unknown:
            raise ValueError(f"`{name}` must be drawn from {known}, got unknown {unknown}.")
    return names


def check_option_dicts(
    argument: str, options: Any, names: Sequence[str], *, what: str = "method"
) -> dict[str, dict[str, Any]]:
    """``{name: {option: value}}`` for every one of ``names`` (empty dicts where ``options`` has none).

    Args:
        argument: the argument's name (``"method_kwargs"``, ``"metric_kwargs"``), for the messages.
        options: what the user passed: None or a mapping from names to option mappings.
        names: the names options may be given for.
        what: what a name stands for, for the messages.

    Raises:
        TypeError: if ``options`` is not a mapping of mappings.
        ValueError: if it has options for a name not among ``names``.

    Example:
        >>> check_option_dicts("method_kwargs", {"mfaba": {"max_steps": 9}}, ["mfaba", "saliency"])
        {'mfaba': {'max_steps': 9}, 'saliency': {}}
    """
    if options is None:
        return {name: {} for name in names}
    if not isinstance(options, Mapping) or not all(isinstance(v, Mapping) for v in options.values()):
        raise TypeError(f"`{argument}` must map {what} names to option dicts, got {options!r}.")
    unknown = [key for key in options if key not in names]
    if unknown:
        raise ValueError(f"`{argument}` has options for {unknown}, which are not among the {what}s {list(names)}.")
    return {name: dict(options.get(name, {})) for name in names}


def check_sample_limits(name: str, limits: Any, names: Sequence[str]) -> dict[str, int]:
    """``{name: n}`` with ints >= 0 for some of ``names`` (None: no limits), else a TypeError/ValueError.

    Example:
        >>> check_sample_limits("metric_samples", {"randomization": 8}, ["randomization", "localization"])
        {'randomization': 8}
    """
    if limits is None:
        return {}
    if not isinstance(limits, Mapping) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in limits.values()
    ):
        raise TypeError(f"`{name}` must map metric names to ints >= 0, got {limits!r}.")
    unknown = [key for key in limits if key not in names]
    if unknown:
        raise ValueError(f"`{name}` has limits for {unknown}, which are not among the metrics {list(names)}.")
    return dict(limits)


def resolve_target(target: TargetType, logits: Tensor) -> Tensor:
    """The targets of a batch as an ``(N,)`` long tensor on the logits' device, checked against ``logits (N, K)``.

    Accepts the forms listed in this module's docstring: ``None`` (argmax of the logits), an int, or ``N``
    integer class indices of shape ``(N,)`` or ``(N, 1)``.

    Raises:
        TypeError: for floats, bools or non-integer tensors.
        ValueError: for a wrong number or shape of indices, or indices outside ``[0, K - 1]``.

    Example:
        >>> resolve_target(None, torch.tensor([[0.0, 2.0], [3.0, 1.0]]))
        tensor([1, 0])
        >>> resolve_target(1, torch.zeros(3, 2))
        tensor([1, 1, 1])
    """
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, (bool, float)) or (isinstance(target, Tensor) and not _is_integer(target)):
        raise TypeError(f"`target` must be None, an int, or N integer class indices, got {target!r}.")
    if isinstance(target, int):
        target = torch.full((n,), target, dtype=torch.long, device=logits.device)
    else:
        try:
            target = torch.as_tensor(target, device=logits.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"`target` must be None, an int, or N integer class indices, got {target!r}.") from error
        if not _is_integer(target):
            raise TypeError(f"`target` must be None, an int, or N integer class indices, got {target!r}.")
        if target.ndim > 2 or (target.ndim == 2 and target.shape[1] != 1):
            raise ValueError(
                f"`target` must be an int or N={n} class indices, (N,) or (N, 1), got {tuple(target.shape)}."
            )
        target = target.long().expand(n) if target.ndim == 0 else target.long().reshape(-1)
        if target.numel() != n:
            raise ValueError(f"`target` must have one entry per sample (N={n}), got {target.numel()} entries.")
    if target.numel() and (bool((target < 0).any()) or bool((target >= num_classes).any())):
        raise ValueError(
            f"`target` values must be in [0, {num_classes - 1}] for a model with {num_classes} classes, "
            f"got values in [{int(target.min())}, {int(target.max())}]."
        )
    return target


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
