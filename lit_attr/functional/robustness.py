"""Robustness of explanations: how much the map moves when the input moves a little.

* :func:`local_lipschitz` (Alvarez-Melis & Jaakkola 2018): ``max ||A(x) - A(x')||_2 / ||x - x'||_2``;
* :func:`avg_sensitivity` (Yeh et al. 2019): ``E ||A(x + d) - A(x)||`` over the uniform ball (the existing
  ``sensitivity`` is its maximum, Captum's);
* :func:`continuity` (Montavon et al. 2018): ``max ||A(x) - A(x')||_1 / ||x - x'||_2``;
* :func:`relative_stability` (Agarwal et al. 2022): the relative change of the map over the relative change of the
  input (RIS), of the logits (ROS) or of an internal representation (RRS), over neighbours with the same prediction.

All of them explain ``n_perturb`` perturbed copies of every sample with the method (drawn per sample from a CPU
generator seeded by ``seed`` and the sample's values: the same copies in any batch, on any process and device;
clipped to the method's ``input_bounds``), ``internal_batch_size`` copies per ``attribute`` call, whose own chunks
back off when the device runs out of memory (:class:`~lit_attr._memory.MemoryBackoff`), as do relative stability's
forward passes. Lower is better.

Continuous kinds only: every definition divides by (or draws) a small continuous change of the input, and token ids
have none (a token is there or replaced; the methods attribute them in the embedding space).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import (
    TargetType,
    check_batch,
    check_choice,
    check_finite,
    check_int,
    check_names,
    check_number,
    check_optional_int,
    check_seed,
)
from lit_attr._hygiene import preserved_model_state
from lit_attr._memory import MemoryBackoff
from lit_attr.functional.infidelity import Explainer, _per_sample_draws, check_noise_std
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, check_clean_logits

__all__ = [
    "NOISES",
    "STABILITIES",
    "Neighbours",
    "avg_sensitivity",
    "continuity",
    "local_lipschitz",
    "neighbour_maps",
    "relative_stability",
]

#: Perturbations: uniform in the L-infinity ball of radius ``noise`` (Yeh et al.'s) or Gaussian with std ``noise``.
NOISES = ("uniform", "gaussian")
#: The variants of :func:`relative_stability`: the input's, the logits' and the representation's relative change.
STABILITIES = ("input", "output", "representation")
#: The normalisations of :func:`avg_sensitivity`: none (Yeh et al.'s) or by ``||A(x)||`` (Captum's and Quantus's).
SENSITIVITY_NORMALIZATIONS = ("none", "attributions")


class Neighbours(NamedTuple):
    """One block of samples with their perturbed copies and the method's maps of them.

    Attributes:
        rows: ``(b,)`` the samples' positions in the batch.
        x: ``(b, n, ...)`` the perturbed copies (clipped to the method's bounds).
        maps: ``(b, n, ...)`` their maps, explaining the samples' targets.
    """

    rows: Tensor
    x: Tensor
    maps: Tensor


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
    **attribute_kwargs: Any,
) -> Iterator[Neighbours]:
    """The method's maps of ``n_perturb`` perturbed copies of every sample, block by block of samples.

    Copy ``k`` of sample ``x`` is ``x + noise * (2 u_k - 1)`` (``"uniform"``, exactly the copies of
    :func:`~lit_attr.functional.infidelity.sensitivity_perturbation`) or ``x + noise * e_k`` (``"gaussian"``), with
    ``u, e`` drawn in float64 from a generator seeded by ``row_seed(seed, x)``; a block holds at most
    ``internal_batch_size`` copies (one sample at least).
    """
    n = x.shape[0]
    block = n if internal_batch_size is None else max(1, internal_batch_size // n_perturb)
    sampler = torch.rand if distribution == "uniform" else torch.randn

    def draw(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return sampler(shape, generator=generator, dtype=torch.float64)

    for start in range(0, n, block):
        rows = torch.arange(start, min(n, start + block), device=x.device)
        expanded = x[rows].repeat_interleave(n_perturb, dim=0)
        draws = _per_sample_draws(expanded, n_perturb, seed, draw)
        moved = expanded + noise * (2 * draws - 1 if distribution == "uniform" else draws)
        moved = method.clip(moved)
        maps = _maps(method.attribute(moved, target[rows].repeat_interleave(n_perturb), **attribute_kwargs))
        shape = (rows.numel(), n_perturb, *x.shape[1:])
        yield Neighbours(rows, moved.view(shape), maps.to(x).view(shape))


def _prepare(
    method: Any, x: Tensor, target: TargetType, attributions: Tensor | None, logits: Tensor | None, **options: Any
) -> tuple[Explainer, Tensor, Tensor]:
    """Check the common inputs and options; return the method, the targets and the clean maps."""
    method = check_method(method)
    check_batch("x", x, method.model)
    check_int("n_perturb_samples", options["n_perturb_samples"], 1)
    check_noise_std(options["noise"], "noise")
    check_choice("distribution", options["distribution"], NOISES)
    check_seed(options["seed"])
    check_optional_int("internal_batch_size", options["internal_batch_size"])
    if logits is not None:
        check_clean_logits(logits, x)
    target = method.resolve_target(x, target, logits)
    if attributions is None:
        attributions = _maps(method.attribute(x, target))
    elif not isinstance(attributions, Tensor) or attributions.shape != x.shape:
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__
        raise ValueError(f"`attributions` must have the shape of x {tuple(x.shape)}, got {shape}.")
    elif not attributions.is_floating_point():
        raise TypeError(f"`attributions` must be a floating-point tensor, got dtype {attributions.dtype}.")
    check_finite("attributions", attributions)
    return method, target, attributions.to(x)


def _neighbours(method: Explainer, x: Tensor, target: Tensor, options: dict[str, Any]) -> Iterator[Neighbours]:
    return neighbour_maps(
        method, x, target, n_perturb=options["n_perturb_samples"], noise=options["noise"],
        distribution=options["distribution"], seed=options["seed"], internal_batch_size=options["internal_batch_size"],
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
) -> Tensor:
    """``(N, n_perturb)``: ``ratio(clean maps of the block, neighbours, clean inputs of the block)`` for every copy."""
    method, target, own = _prepare(method, x, target, attributions, logits, **options)
    out = torch.empty(x.shape[0], options["n_perturb_samples"], dtype=torch.float64, device=x.device)
    for block in _neighbours(method, x, target, options):
        out[block.rows] = ratio(own[block.rows].unsqueeze(1), block, x[block.rows].unsqueeze(1))
    return out


def _result(values: Tensor, x: Tensor) -> Tensor:
    return values.to(torch.promote_types(x.dtype, torch.float32))


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
) -> Tensor:
    """Local Lipschitz estimate of Alvarez-Melis & Jaakkola (2018) per sample: lower is better.

    ``max_k ||A(x) - A(x'_k)||_2 / ||x - x'_k||_2`` over ``n_perturb_samples`` copies ``x'_k = x + noise * e_k``
    (Gaussian, std 0.1, as Quantus; the paper searches the neighbourhood, Quantus samples 200 copies). A copy equal
    to ``x`` (clipped back onto it) adds 0. Cost: ``n_perturb_samples`` attributions per sample. Continuous kinds
    only (Gaussian neighbours of the input).

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

    Returns:
        ``(N,)`` estimates.

    Example:
        >>> from lit_attr.methods import get_method
        >>> net = nn.Linear(4, 2)
        >>> local_lipschitz(get_method("saliency", net), torch.rand(3, 4), n_perturb_samples=3)  # constant maps
        tensor([0., 0., 0.])
    """
    options = dict(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                   internal_batch_size=internal_batch_size)  # fmt: skip
    return _result(_ratios(method, x, target, attributions, logits, _lipschitz(2), options).amax(dim=1), x)


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
) -> Tensor:
    """Continuity of Montavon et al. (2018) per sample: ``max_k ||A(x) - A(x'_k)||_1 / ||x - x'_k||_2``, lower better.

    Montavon et al. ask that nearly equivalent inputs get nearly equivalent explanations and measure the largest
    ratio over such pairs; the near-equivalent inputs here are ``n_perturb_samples`` copies in the uniform ball of
    radius ``noise``. Quantus translates images and correlates patch-wise changes instead (not offered). Cost:
    ``n_perturb_samples`` attributions per sample. Continuous kinds only (a ball around the input).

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

    Returns:
        ``(N,)`` ratios.

    Example:
        >>> from lit_attr.methods import get_method
        >>> continuity(get_method("saliency", nn.Linear(4, 2)), torch.rand(3, 4), n_perturb_samples=2)
        tensor([0., 0., 0.])
    """
    options = dict(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                   internal_batch_size=internal_batch_size)  # fmt: skip
    return _result(_ratios(method, x, target, attributions, logits, _lipschitz(1), options).amax(dim=1), x)


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
) -> Tensor:
    """Average sensitivity of Yeh et al. (2019) per sample: ``mean_k ||A(x + d_k) - A(x)||_2``; lower is better.

    Over ``n_perturb_samples`` copies in the uniform L-infinity ball of radius ``noise`` (the copies of the max
    ``sensitivity`` metric, whose Captum implementation divides by ``||A(x)||``: ``normalize="attributions"`` does
    so here too, as Quantus; Yeh et al.'s average does not). A map of zeros under ``"attributions"`` scores 0.
    Cost: ``n_perturb_samples`` attributions per sample. Continuous kinds only (a ball around the input).

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

    Returns:
        ``(N,)`` averages.

    Example:
        >>> from lit_attr.methods import get_method
        >>> avg_sensitivity(get_method("saliency", nn.Linear(4, 2)), torch.rand(3, 4), n_perturb_samples=2)
        tensor([0., 0., 0.])
    """
    check_choice("normalize", normalize, SENSITIVITY_NORMALIZATIONS)
    options = dict(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                   internal_batch_size=internal_batch_size)  # fmt: skip

    def ratio(own: Tensor, block: Neighbours, clean: Tensor) -> Tensor:
        change = _norm(block.maps - own, 2)
        if normalize == "none":
            return change
        scale = _norm(own, 2)
        return torch.where(scale > 0, change / scale.clamp(min=1e-300), 0.0)

    return _result(_ratios(method, x, target, attributions, logits, ratio, options).mean(dim=1), x)


class _Capture:
    """The input of ``layer`` in the last forward (a forward pre-hook's target)."""

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0].detach()


class _Outputs:
    """The method's forward of rows in chunks that back off, with the ``capture``d representation of every row."""

    def __init__(self, method: Explainer, capture: _Capture | None) -> None:
        self.method = method
        self.capture = capture

    def __call__(self, rows: Tensor, backoff: MemoryBackoff) -> tuple[Tensor, Tensor | None]:
        model = self.method.model
        forward = getattr(self.method, "forward_fn", model)
        logits: list[Tensor] = []
        representations: list[Tensor] = []

        def body(start: int, stop: int) -> None:
            out = forward(rows[start:stop])  # a chunk that runs out of memory appends nothing: it is run again
            if self.capture is not None:
                representations.append(self.capture.value)
            logits.append(out)

        with torch.no_grad(), preserved_model_state(model):
            backoff.chunks(rows.shape[0], body)
        return torch.cat(logits), torch.cat(representations) if self.capture is not None else None


def _default_layer(model: nn.Module) -> nn.Module:
    linear = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(
            "relative_stability's 'representation' variant needs a `layer` (a module name of the model) when the "
            "model has no nn.Linear head; pass layer='...' or drop 'representation' from `variants`."
        )
    return linear[-1]


def relative_stability(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    attributions: Tensor | None = None,
    variants: str | Sequence[str] = STABILITIES,
    layer: str | None = None,
    n_perturb_samples: int = 10,
    noise: float = 0.05,
    distribution: str = "gaussian",
    order: float = 2.0,
    eps_min: float = 1e-6,
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """Relative input, output and representation stability of Agarwal et al. (2022) per sample: lower is better.

    With ``e = ||(A(x) - A(x')) / A(x)||_p`` (element-wise relative change of the map; a zero entry of ``A(x)``
    divides by ``eps_min``), ``RIS = max e / max(||(x - x') / x||_p, eps_min)``, ``ROS = max e / max(||h(x) -
    h(x')||_p, eps_min)`` with ``h`` the logits, ``RRS = max e / max(||(L(x) - L(x')) / L(x)||_p, eps_min)`` with
    ``L`` the input of ``layer`` (default: of the model's last ``nn.Linear``, what its head sees). The maximum runs
    over the copies that keep the prediction of ``x`` (the paper's neighbourhood; a sample without one has no value,
    NaN). The copies are Gaussian (std ``noise``). Cost: ``n_perturb_samples`` attributions and forwards per sample.
    Continuous kinds only (relative input changes).

    Args:
        method: the attribution method.
        x: ``(N, ...)`` inputs on the model's device.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        attributions: the method's maps of ``x`` for ``target`` if already computed.
        variants: ``"input"``, ``"output"``, ``"representation"`` or several.
        layer: the module (by name) whose input is the representation.
        n_perturb_samples: copies per sample (Quantus: 200).
        noise: the Gaussian's std (``"uniform"``: the radius), in input units.
        distribution: ``"gaussian"`` (default) or ``"uniform"``.
        order: the norm's ``p``.
        eps_min: the smallest denominator.
        seed: seed of the copies.
        internal_batch_size: most copies per ``attribute`` call (``None``: all).
        logits: the model's logits for ``x`` if already computed.

    Returns:
        ``{variant: (N,)}`` for every variant asked.

    Example:
        >>> from lit_attr.methods import get_method
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> sorted(relative_stability(get_method("saliency", net), torch.rand(2, 4), n_perturb_samples=2))
        ['input', 'output', 'representation']
    """
    asked = check_names("variants", variants, STABILITIES, what="variant")
    order, eps_min = check_number("order", order), check_number("eps_min", eps_min)
    if order <= 0 or eps_min <= 0:
        raise ValueError(f"`order` and `eps_min` must be > 0, got order={order!r} and eps_min={eps_min!r}.")
    options = dict(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                   internal_batch_size=internal_batch_size)  # fmt: skip
    method, target, own = _prepare(method, x, target, attributions, logits, **options)
    model = method.model
    module = None
    if "representation" in asked:
        module = _default_layer(model) if layer is None else _named(model, layer)
    capture = _Capture()
    handle = module.register_forward_pre_hook(capture) if module is not None else None
    n = x.shape[0]
    values = {name: x.new_full((n, n_perturb_samples), -torch.inf, dtype=torch.float64) for name in asked}
    # One bound for every forward of the call: the clean rows and each block's copies, chunked to fit.
    backoff = MemoryBackoff("relative_stability", internal_batch_size)
    outputs = _Outputs(method, capture if module is not None else None)
    try:
        clean_logits, clean_repr = outputs(x, backoff)
        for block in _neighbours(method, x, target, options):
            b = block.rows.numel()
            moved_logits, moved_repr = outputs(block.x.flatten(0, 1), backoff)
            moved_logits = moved_logits.view(b, n_perturb_samples, -1)
            same = moved_logits.argmax(dim=2) == clean_logits[block.rows].argmax(dim=1, keepdim=True)
            own_b = own[block.rows].unsqueeze(1)
            explained = _norm((own_b - block.maps) / _nonzero(own_b, eps_min), order)
            clean = x[block.rows].unsqueeze(1)
            denominators = {
                "input": _norm((clean - block.x) / _nonzero(clean, eps_min), order),
                "output": _norm(clean_logits[block.rows].unsqueeze(1) - moved_logits, order),
            }
            if module is not None:
                before = clean_repr[block.rows].unsqueeze(1)
                after = moved_repr.view(b, n_perturb_samples, *moved_repr.shape[1:])
                denominators["representation"] = _norm((before - after) / _nonzero(before, eps_min), order)
            for name in asked:
                ratio = explained / denominators[name].clamp(min=eps_min)
                values[name][block.rows] = torch.where(same, ratio, -torch.inf)
    finally:
        if handle is not None:
            handle.remove()
    backoff.finish()  # warns once if the bound shrank
    result = {}
    for name, value in values.items():
        best = value.amax(dim=1)
        result[name] = _result(torch.where(torch.isinf(best), float("nan"), best), x)
    return result


def _nonzero(t: Tensor, eps: float) -> Tensor:
    """``t`` with exact zeros replaced by ``eps`` (the denominators of relative changes)."""
    return torch.where(t == 0, eps, t).double()


def _named(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [key for key, _ in model.named_modules() if key]
        raise ValueError(f"`layer` must name a module of the model ({names[:10]}...), got {name!r}.") from None
