"""The machinery the stage-wise randomisation checks share (MPRT, sMPRT, eMPRT).

A method bound to a private deep copy of the user's model (:func:`bind_to_copy`), the user's current weights loaded
into that copy (:func:`load_weights_into`), the copy's units in the order its forward pass enters them
(:func:`forward_ordered_layers`), and the similarity of the maps of two networks (:func:`stage_similarities`).
:class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization` builds the check on them.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import check_batch, check_finite, check_names
from lit_attr._hygiene import preserved_model_state
from lit_attr.functional.randomization import Layer, sort_in_forward_order
from lit_attr.functional.similarity import spearman, ssim_maps
from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.registry import get_method
from lit_attr.metrics._method_scores import check_method_arguments

__all__ = [
    "SIMILARITIES",
    "bind_to_copy",
    "check_maps_batch",
    "check_similarity",
    "forward_ordered_layers",
    "heatmaps",
    "load_weights_into",
    "stage_similarities",
]

SIMILARITIES: tuple[str, ...] = ("spearman_abs", "spearman", "ssim")
"""Similarity measures between original and randomised-model attributions."""


def check_maps_batch(x: Any, model: nn.Module, attributions: Any = None) -> None:
    """``x``: a finite floating batch on ``model``'s device; ``attributions`` (if given): finite maps of its shape.

    Example:
        >>> check_maps_batch(torch.zeros(2, 3), nn.Linear(3, 2), torch.ones(2, 4))
        Traceback (most recent call last):
        ...
        ValueError: `attributions` must have the shape of `x`, (2, 3), got (2, 4).
    """
    check_batch("x", x, model)
    if attributions is None:
        return
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`attributions` must be a tensor or None, got {type(attributions).__name__}.")
    if attributions.shape != x.shape:
        shapes = f"{tuple(x.shape)}, got {tuple(attributions.shape)}"
        raise ValueError(f"`attributions` must have the shape of `x`, {shapes}.")
    if not attributions.is_floating_point():
        raise TypeError(f"`attributions` must be a floating-point tensor, got dtype {attributions.dtype}.")
    check_finite("attributions", attributions)


def heatmaps(attributions: Tensor) -> tuple[Tensor, Tensor]:
    """``|A|`` and ``A`` summed over channels for images ``(N, C, H, W)``; unchanged otherwise.

    Example:
        >>> [tuple(m.shape) for m in heatmaps(torch.ones(2, 3, 4, 4))], heatmaps(torch.ones(2, 5))[0].shape
        ([(2, 4, 4), (2, 4, 4)], torch.Size([2, 5]))
    """
    if attributions.ndim == 4:
        return attributions.abs().sum(dim=1), attributions.sum(dim=1)
    return attributions.abs(), attributions


def check_similarity(similarity: str | Sequence[str]) -> tuple[str, ...]:
    """Similarity names from :data:`SIMILARITIES` as a tuple (one name or several, no repeats).

    Example:
        >>> check_similarity("ssim")
        ('ssim',)
    """
    return check_names("similarity", similarity, SIMILARITIES, what="similarity measure")


def bind_to_copy(
    method: str | AttributionMethod, model: nn.Module | None, method_kwargs: dict[str, Any] | None
) -> tuple[nn.Module, AttributionMethod]:
    """Return ``(the user's model, a method bound to a private deep copy of it)``.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> source, method = bind_to_copy("saliency", net, None)
        >>> source is net, method.model is net, isinstance(method.model, nn.Linear)
        (True, False, True)
    """
    check_method_arguments(method, model, method_kwargs)
    if isinstance(method, str):
        assert model is not None  # checked
        return model, get_method(method, copy.deepcopy(model), **(method_kwargs or {}))
    # One deepcopy of the instance copies its model with it; the memo maps every reference the instance holds to
    # the model (its forward_fn when that is the model or a bound method of it, Captum's wrappers) onto the same copy.
    return method.model, copy.deepcopy(method)


def load_weights_into(source: nn.Module, work: nn.Module) -> None:
    """Copy the user's current parameters and buffers into the working copy (reading the user's model only).

    The copy follows the user's model's device and floating dtype first.

    Raises:
        RuntimeError: where the user's model lost entries the copy has (its structure changed since the copy).

    Example:
        >>> source, work = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> load_weights_into(source, work)
        >>> torch.equal(work.weight, source.weight)
        True
    """
    reference = next(itertools.chain(source.parameters(), source.buffers()), None)
    current = next(itertools.chain(work.parameters(), work.buffers()), None)
    if reference is not None and current is not None and reference.device != current.device:
        work.to(reference.device)
    floating = next((p for p in source.parameters() if p.is_floating_point()), None)
    mine = next((p for p in work.parameters() if p.is_floating_point()), None)
    if floating is not None and mine is not None and floating.dtype != mine.dtype:
        work.to(floating.dtype)
    # Only the working copy's own keys: the user's model may since have gained entries the copy never had
    # (e.g. this metric as an attribute, with persistent states).
    state = source.state_dict()
    missing = [key for key in work.state_dict() if key not in state]
    if missing:
        raise RuntimeError(
            f"The model no longer has {missing[:5]} (of {len(missing)} missing entries); its structure changed "
            "after the metric was built. Build a new ParameterRandomization for the new model."
        )
    with torch.no_grad():
        work.load_state_dict({key: state[key] for key in work.state_dict()})


def forward_ordered_layers(method: AttributionMethod, layers: Sequence[Layer], x: Tensor) -> list[Layer]:
    """``layers`` in the order the method's ``forward_fn`` enters them on one sample of ``x``.

    Raises:
        ValueError: where ``forward_fn`` never calls the model the method is bound to (a closure over another).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> method = get_method("saliency", net)
        >>> [name for name, _ in forward_ordered_layers(method, [("2", net[2]), ("0", net[0])], torch.zeros(2, 3))]
        ['0', '2']
    """
    sample = x[:1]
    called: list[bool] = []
    handles = [
        module.register_forward_pre_hook(lambda module, args: called.append(True)) for module in method.model.modules()
    ]
    try:
        with preserved_model_state(method.model), torch.no_grad():
            method.forward_fn(sample)
    finally:
        for handle in handles:
            handle.remove()
    if not called:
        raise ValueError(
            "The attribution method's `forward_fn` never calls the model it is bound to, so randomising that "
            "model would change nothing (typically a closure over the original model, e.g. "
            "`lambda x: model(x)[...]`). Wrap the model in an nn.Module whose forward returns logits and pass "
            "that module instead."
        )
    with preserved_model_state(method.model):
        return sort_in_forward_order(layers, method.forward_fn, sample)


def stage_similarities(
    names: Sequence[str], reference: tuple[Tensor, Tensor], maps: tuple[Tensor, Tensor], like: Tensor
) -> Tensor:
    """Per-sample similarities ``(len(names), N)`` of two networks' maps, each given as :func:`heatmaps` ``(|A|, A)``.

    Args:
        names: similarity names from :data:`SIMILARITIES`, in the order of the rows.
        reference: the original network's ``(|A|, A)``.
        maps: the other network's ``(|A|, A)``.
        like: the result takes its device and dtype.

    Example:
        >>> a = heatmaps(torch.tensor([[1.0, -2.0, 3.0]]))
        >>> stage_similarities(["spearman_abs", "spearman"], a, a, torch.zeros(0)).tolist()
        [[1.0], [1.0]]
    """
    (ref_abs, ref_signed), (new_abs, new_signed) = reference, maps
    values = []
    for name in names:
        if name == "spearman_abs":
            values.append(spearman(ref_abs, new_abs))
        elif name == "spearman":
            values.append(spearman(ref_signed, new_signed))
        else:
            values.append(ssim_maps(ref_abs, new_abs))
    return torch.stack([v.to(like.device, like.dtype) for v in values])
