"""Robustness of explanations: how much the map moves when the input moves a little.

* :func:`local_lipschitz` (Alvarez-Melis & Jaakkola 2018): ``max ||A(x) - A(x')||_2 / ||x - x'||_2``;
* :func:`avg_sensitivity` (Yeh et al. 2019): ``E ||A(x + d) - A(x)||`` over the uniform ball (the existing
  ``sensitivity`` is its maximum, Captum's);
* :func:`continuity` (Montavon et al. 2018): ``max ||A(x) - A(x')||_1 / ||x - x'||_2``;
* :func:`~lit_attr.functional.stability.relative_stability` (Agarwal et al. 2022, in its own module): the relative
  change of the map over the relative change of the input (RIS), the logits (ROS) or a representation (RRS).

All of them explain ``n_perturb`` perturbed copies of every sample with the method (drawn per sample from a CPU
generator seeded by ``seed`` and the sample's values: the same copies in any batch, on any process and device;
clipped to the method's ``input_bounds``), ``internal_batch_size`` copies per ``attribute`` call, whose own chunks
back off when the device runs out of memory (:class:`~lit_attr._memory.MemoryBackoff`), as do relative stability's
forward passes (:mod:`lit_attr.functional.stability`). Lower is better.

The copies are moves in the input kind's neighbourhood (:meth:`~lit_attr.inputs.InputKind.neighbourhood`): the
inputs themselves for continuous kinds; for token ids, the embeddings of a sentence's real tokens that are not special
(the space every method attributes them in), with ``noise`` in units of the sample's root-mean-square embedding
value and distances measured between embeddings, while the maps compared are the per-token scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lit_attr._checks import (
    TargetType,
    check_batch,
    check_choice,
    check_device,
    check_finite,
    check_int,
    check_optional_int,
    check_seed,
)
from lit_attr.functional.infidelity import Explainer, check_noise_std
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, check_clean_logits
from lit_attr.functional.unit_games import batch_fields
from lit_attr.inputs import InputKind, input_kind
from lit_attr.inputs.neighbourhood import Moved, Neighbourhood

__all__ = [
    "NOISES",
    "check_copy_options",
    "Neighbours",
    "avg_sensitivity",
    "continuity",
    "local_lipschitz",
    "neighbour_maps",
]

#: Perturbations: uniform in the L-infinity ball of radius ``noise`` (Yeh et al.'s) or Gaussian with std ``noise``.
NOISES = ("uniform", "gaussian")
#: The normalisations of :func:`avg_sensitivity`: none (Yeh et al.'s) or by ``||A(x)||`` (Captum's and Quantus's).
SENSITIVITY_NORMALIZATIONS = ("none", "attributions")


class Neighbours(NamedTuple):
    """One block of samples with their perturbed copies and the method's maps of them.

    Attributes:
        rows: ``(b,)`` the samples' positions in the batch.
        x: ``(b, n, *P)`` the perturbed copies as points of the neighbourhood (clipped to the method's bounds; token
            ids: their embeddings).
        maps: ``(b, n, ...)`` their maps, explaining the samples' targets.
        moved: the ``b * n`` copies as the method and the model take them.
    """

    rows: Tensor
    x: Tensor
    maps: Tensor
    moved: Moved


def _maps(result: Any) -> Tensor:
    return result[0] if isinstance(result, tuple) else result


def check_method(method: object) -> Explainer:
    """Refuse an object that is not an attribution method (``attribute``, ``resolve_target``, ``clip``)."""
    if not all(callable(getattr(method, name, None)) for name in ("attribute", "resolve_target", "clip")):
        raise TypeError(
            f"`method` must be an attribution method (lit_attr.methods.get_method(...)), got {type(method).__name__}."
        )
    return method  # type: ignore[return-value]


def neighbour_maps(
    method: Explainer,
    x: Tensor,
    target: Tensor,
    *,
    n_perturb: int,
    noise: float,
    distribution: str,
    seed: int,
    internal_batch_size: int | None,
    neighbourhood: Neighbourhood | None = None,
    **attribute_kwargs: Any,
) -> Iterator[Neighbours]:
    """The method's maps of ``n_perturb`` perturbed copies of every sample, block by block of samples.

    Copy ``k`` of sample ``x`` is ``x + noise * (2 u_k - 1)`` (``"uniform"``, exactly the copies of
    :func:`~lit_attr.functional.infidelity.sensitivity_perturbation`) or ``x + noise * e_k`` (``"gaussian"``), with
    ``u, e`` drawn in float64 from a generator seeded by ``row_seed(seed, x)``; a block holds at most
    ``internal_batch_size`` copies (one sample at least). ``neighbourhood`` says what ``x`` is as a point
    (default: the kind's, without the batch's masks; token ids move their embeddings, the noise scaled per sample).
    """
    hood = input_kind(x).neighbourhood(method, x, {}) if neighbourhood is None else neighbourhood
    n = x.shape[0]
    block = n if internal_batch_size is None else max(1, internal_batch_size // n_perturb)
    sampler = torch.rand if distribution == "uniform" else torch.randn

    def draw(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return sampler(shape, generator=generator, dtype=torch.float64)

    for start in range(0, n, block):
        rows = torch.arange(start, min(n, start + block), device=x.device)
        expanded = rows.repeat_interleave(n_perturb)
        draws = hood.draws(rows, n_perturb, seed, draw).to(hood.points.dtype)
        step = noise * (2 * draws - 1 if distribution == "uniform" else draws)
        moved = hood.move(expanded, step * hood.scale[expanded].view(-1, *([1] * (step.ndim - 1))))
        maps = _maps(method.attribute(moved.inputs, target[expanded], **moved.kwargs, **attribute_kwargs))
        b = rows.numel()
        points = moved.points.view(b, n_perturb, *moved.points.shape[1:])
        yield Neighbours(rows, points, maps.to(hood.points).view(b, n_perturb, *maps.shape[1:]), moved)


class Explained(NamedTuple):
    """A checked batch of a metric that re-runs the method: the method, the targets, the clean maps, the neighbourhood.

    Attributes:
        method: the attribution method.
        target: ``(N,)`` the classes explained.
        maps: ``(N, ...)`` the method's maps of the batch (given or computed), in the neighbourhood's dtype.
        hood: the batch as points of its kind's neighbourhood.
    """

    method: Explainer
    target: Tensor
    maps: Tensor
    hood: Neighbourhood


def check_given(x: Tensor, attributions: object, logits: object) -> None:
    """Refuse maps (when given) that are not finite floats of ``x``'s shape, and logits that are not ``x``'s."""
    if attributions is not None:
        if not isinstance(attributions, Tensor):
            raise TypeError(f"`attributions` must be a tensor or None, got {type(attributions).__name__}.")
        if attributions.shape != x.shape:
            shapes = f"{tuple(x.shape)}, got {tuple(attributions.shape)}"
            raise ValueError(f"`attributions` must have the shape of x {shapes}.")
        if not attributions.is_floating_point():
            raise TypeError(f"`attributions` must be a floating-point tensor, got dtype {attributions.dtype}.")
        check_finite("attributions", attributions)
    if logits is not None:
        check_clean_logits(logits, x)


def checked_kind(method: Explainer, x: object, keywords: Mapping[str, Any] | None = None) -> InputKind:
    """The kind of ``x`` (``keywords``: ``attribute``'s, which may name it), refused off the model's device.

    Float inputs must also be finite; token ids are checked by the method.
    """
    kind = input_kind(x, keywords) if isinstance(x, Tensor) else None
    if kind is None or kind.continuous:
        check_batch("x", x, method.model)
    else:
        check_device("x", x, method.model)
    assert kind is not None  # check_batch refuses what is not a tensor
    return kind


def explain_batch(
    method: object,
    x: Tensor,
    target: TargetType,
    attributions: Tensor | None,
    logits: Tensor | None,
    fields: Mapping[str, Any],
    **attribute_kwargs: Any,
) -> Explained:
    """Check a batch, find its neighbourhood, resolve the targets and explain it (unless ``attributions`` is given).

    ``fields`` holds the batch's ``attention_mask``, ``special_tokens_mask`` and ``model_inputs`` (``None`` where
    absent); ``attribute_kwargs`` are the method's per-call options.
    """
    method = check_method(method)
    kind = checked_kind(method, x)
    check_given(x, attributions, logits)
    hood = kind.neighbourhood(method, x, fields)
    if logits is None and not kind.continuous:  # the method's own check runs the model on float inputs only
        logits = hood.clean_logits()
    target = method.resolve_target(x, target, logits)
    if attributions is None:
        rows = torch.arange(x.shape[0], device=x.device)
        attributions = _maps(method.attribute(x, target, **hood.fields(rows), **attribute_kwargs))
    return Explained(method, target, attributions.to(hood.points), hood)


def check_copy_options(options: Mapping[str, Any]) -> None:
    """Refuse the copies' options, naming the one that is wrong.

    ``options`` holds ``n_perturb_samples``, ``noise``, ``distribution``, ``seed`` and ``internal_batch_size``.
    """
    check_int("n_perturb_samples", options["n_perturb_samples"], 1)
    check_noise_std(options["noise"], "noise")
    check_choice("distribution", options["distribution"], NOISES)
    check_seed(options["seed"])
    check_optional_int("internal_batch_size", options["internal_batch_size"])


def _prepare(
    method: Any,
    x: Tensor,
    target: TargetType,
    attributions: Tensor | None,
    logits: Tensor | None,
    fields: Mapping[str, Any],
    **options: Any,
) -> Explained:
    """Check the copies' options and the batch; the method, targets, clean maps and neighbourhood."""
    check_copy_options(options)
    return explain_batch(method, x, target, attributions, logits, fields)


def _neighbours(ready: Explained, x: Tensor, options: dict[str, Any]) -> Iterator[Neighbours]:
    return neighbour_maps(
        ready.method, x, ready.target, n_perturb=options["n_perturb_samples"], noise=options["noise"],
        distribution=options["distribution"], seed=options["seed"], internal_batch_size=options["internal_batch_size"],
        neighbourhood=ready.hood,
    )  # fmt: skip


def _norm(t: Tensor, order: float) -> Tensor:
    """Norm of every ``(b, n, ...)`` entry over its trailing dimensions, in float64."""
    return torch.linalg.vector_norm(t.double().flatten(2), ord=order, dim=2)


def _ratios(
    method: Any,
    x: Tensor,
    target: TargetType,
    attributions: Tensor | None,
    logits: Tensor | None,
    ratio: Callable[[Tensor, Neighbours, Tensor], Tensor],
    options: dict[str, Any],
    fields: Mapping[str, Any],
) -> tuple[Tensor, torch.dtype]:
    """``(N, n_perturb)`` float64: ``ratio(clean maps, neighbours, clean points)`` of every copy; the maps' dtype."""
    ready = _prepare(method, x, target, attributions, logits, fields, **options)
    out = torch.empty(x.shape[0], options["n_perturb_samples"], dtype=torch.float64, device=x.device)
    for block in _neighbours(ready, x, options):
        out[block.rows] = ratio(ready.maps[block.rows].unsqueeze(1), block, ready.hood.points[block.rows].unsqueeze(1))
    return out, torch.promote_types(ready.maps.dtype, torch.float32)


def _lipschitz(order: float) -> Callable[[Tensor, Neighbours, Tensor], Tensor]:
    def ratio(own: Tensor, block: Neighbours, clean: Tensor) -> Tensor:
        distance = _norm(block.x - clean, 2)
        return torch.where(distance > 0, _norm(block.maps - own, order) / distance.clamp(min=1e-300), 0.0)

    return ratio


def local_lipschitz(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    attributions: Tensor | None = None,
    n_perturb_samples: int = 10,
    noise: float = 0.1,
    distribution: str = "gaussian",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Local Lipschitz estimate of Alvarez-Melis & Jaakkola (2018) per sample: lower is better.

    ``max_k ||A(x) - A(x'_k)||_2 / ||x - x'_k||_2`` over ``n_perturb_samples`` copies ``x'_k = x + noise * e_k``
    (Gaussian, std 0.1, as Quantus; the paper searches the neighbourhood, Quantus samples 200 copies). A copy equal
    to ``x`` (clipped back onto it) adds 0. Cost: ``n_perturb_samples`` attributions per sample.

    Args:
        method: the attribution method (it explains the copies, and ``x`` unless ``attributions`` is given).
        x: ``(N, ...)`` inputs on the model's device.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        attributions: the method's maps of ``x`` for ``target`` if already computed.
        n_perturb_samples: copies per sample.
        noise: the Gaussian's std (``"uniform"``: the ball's radius), in input units.
        distribution: ``"gaussian"`` (default) or ``"uniform"``.
        seed: seed of the copies.
        internal_batch_size: most copies per ``attribute`` call (``None``: all).
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding never moves).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (they never move).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).

    Returns:
        ``(N,)`` estimates.

    Example:
        >>> from torch import nn
        >>> from lit_attr.methods import get_method
        >>> net = nn.Linear(4, 2)
        >>> local_lipschitz(get_method("saliency", net), torch.rand(3, 4), n_perturb_samples=3)  # constant maps
        tensor([0., 0., 0.])
    """
    options = dict(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                   internal_batch_size=internal_batch_size)  # fmt: skip
    fields = batch_fields(attention_mask, special_tokens_mask, model_inputs)
    values, dtype = _ratios(method, x, target, attributions, logits, _lipschitz(2), options, fields)
    return values.amax(dim=1).to(dtype)


def continuity(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    attributions: Tensor | None = None,
    n_perturb_samples: int = 10,
    noise: float = 0.02,
    distribution: str = "uniform",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Continuity of Montavon et al. (2018) per sample: ``max_k ||A(x) - A(x'_k)||_1 / ||x - x'_k||_2``, lower better.

    Montavon et al. ask that nearly equivalent inputs get nearly equivalent explanations and measure the largest
    ratio over such pairs; the near-equivalent inputs here are ``n_perturb_samples`` copies in the uniform ball of
    radius ``noise``. Quantus translates images and correlates patch-wise changes instead (not offered). Cost:
    ``n_perturb_samples`` attributions per sample.

    Args:
        method: the attribution method.
        x: ``(N, ...)`` inputs on the model's device.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        attributions: the method's maps of ``x`` for ``target`` if already computed.
        n_perturb_samples: copies per sample.
        noise: the ball's radius (``"gaussian"``: the std), in input units.
        distribution: ``"uniform"`` (default) or ``"gaussian"``.
        seed: seed of the copies.
        internal_batch_size: most copies per ``attribute`` call (``None``: all).
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding never moves).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (they never move).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).

    Returns:
        ``(N,)`` ratios.

    Example:
        >>> from torch import nn
        >>> from lit_attr.methods import get_method
        >>> continuity(get_method("saliency", nn.Linear(4, 2)), torch.rand(3, 4), n_perturb_samples=2)
        tensor([0., 0., 0.])
    """
    options = dict(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                   internal_batch_size=internal_batch_size)  # fmt: skip
    fields = batch_fields(attention_mask, special_tokens_mask, model_inputs)
    values, dtype = _ratios(method, x, target, attributions, logits, _lipschitz(1), options, fields)
    return values.amax(dim=1).to(dtype)


def avg_sensitivity(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    attributions: Tensor | None = None,
    n_perturb_samples: int = 10,
    noise: float = 0.02,
    normalize: str = "none",
    distribution: str = "uniform",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Average sensitivity of Yeh et al. (2019) per sample: ``mean_k ||A(x + d_k) - A(x)||_2``; lower is better.

    Over ``n_perturb_samples`` copies in the uniform L-infinity ball of radius ``noise`` (the copies of the max
    ``sensitivity`` metric, whose Captum implementation divides by ``||A(x)||``: ``normalize="attributions"`` does
    so here too, as Quantus; Yeh et al.'s average does not). A map of zeros under ``"attributions"`` scores 0.
    Cost: ``n_perturb_samples`` attributions per sample.

    Args:
        method: the attribution method.
        x: ``(N, ...)`` inputs on the model's device.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        attributions: the method's maps of ``x`` for ``target`` if already computed.
        n_perturb_samples: copies per sample.
        noise: the ball's radius (Captum's 0.02 for [0, 1] images; ``"gaussian"``: the std).
        normalize: ``"none"`` (default) or ``"attributions"``.
        distribution: ``"uniform"`` (default) or ``"gaussian"``.
        seed: seed of the copies.
        internal_batch_size: most copies per ``attribute`` call (``None``: all).
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding never moves).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (they never move).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).

    Returns:
        ``(N,)`` averages.

    Example:
        >>> from torch import nn
        >>> from lit_attr.methods import get_method
        >>> avg_sensitivity(get_method("saliency", nn.Linear(4, 2)), torch.rand(3, 4), n_perturb_samples=2)
        tensor([0., 0., 0.])
    """
    check_choice("normalize", normalize, SENSITIVITY_NORMALIZATIONS)
    options = dict(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                   internal_batch_size=internal_batch_size)  # fmt: skip
    fields = batch_fields(attention_mask, special_tokens_mask, model_inputs)

    def ratio(own: Tensor, block: Neighbours, clean: Tensor) -> Tensor:
        change = _norm(block.maps - own, 2)
        if normalize == "none":
            return change
        scale = _norm(own, 2)
        return torch.where(scale > 0, change / scale.clamp(min=1e-300), 0.0)

    values, dtype = _ratios(method, x, target, attributions, logits, ratio, options, fields)
    return values.mean(dim=1).to(dtype)
