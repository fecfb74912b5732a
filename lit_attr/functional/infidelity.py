"""Infidelity and max-sensitivity (Yeh et al., NeurIPS 2019) through Captum, with seeded per-sample perturbations.

Captum computes both measures (:func:`captum.metrics.infidelity`, :func:`captum.metrics.sensitivity_max`); this
module only supplies what Captum leaves to the caller, in a form that is reproducible and DDP-exact:

* the perturbations of the paper, drawn per sample from a CPU ``torch.Generator`` seeded with ``seed`` and a
  checksum of the sample's values (:func:`~lit_attr.methods._common.row_seed`), so that a sample gets the same
  perturbations in any batch, on any process and device (:func:`infidelity_perturbation`,
  :func:`sensitivity_perturbation`);
* target resolution, input checks, the model's eval mode and state restoration, and chunking of the
  ``N x n_perturb_samples`` perturbed rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max
from torch import Tensor, nn

from lit_attr._checks import (
    TargetType,
    check_batch,
    check_finite,
    check_flag,
    check_int,
    check_number,
    check_optional_int,
    check_seed,
    resolve_target,
)
from lit_attr._hygiene import keyed_draws, preserved_model_state
from lit_attr._memory import MemoryBackoff
from lit_attr.functional.perturbation import check_clean_logits, model_logits

__all__ = [
    "DEFAULT_INFIDELITY_SAMPLES",
    "DEFAULT_SENSITIVITY_SAMPLES",
    "check_baseline",
    "infidelity",
    "infidelity_perturbation",
    "sensitivity",
    "sensitivity_perturbation",
]


class Explainer(Protocol):
    """What :func:`sensitivity` needs of an attribution method (:class:`lit_attr.methods.AttributionMethod` has it)."""

    model: nn.Module

    def attribute(self, x: Tensor, target: TargetType = None, **kwargs: Any) -> Any:
        """Attributions of ``x`` (or ``(attributions, info)``)."""

    def resolve_target(self, x: Tensor, target: TargetType, logits: Tensor | None = None) -> Tensor:
        """``(N,)`` classes explained."""

    def clip(self, x: Tensor) -> Tensor:
        """``x`` projected onto the method's input bounds."""


#: Perturbations per sample (Captum's default; the estimate's noise falls as 1 / sqrt of it).
DEFAULT_INFIDELITY_SAMPLES = 10
#: Perturbed inputs per sample whose explanations are compared (Captum's default).
DEFAULT_SENSITIVITY_SAMPLES = 10


def _per_sample_draws(rows: Tensor, n_perturb: int, seed: int, draw: Callable[..., Tensor]) -> Tensor:
    """``draw(shape, generator)`` for every sample of Captum's expanded batch (each sample repeated n_perturb times)."""
    return keyed_draws(rows[::n_perturb], n_perturb, seed, draw).to(device=rows.device, dtype=rows.dtype)


def infidelity_perturbation(
    n_perturb: int, noise_std: float = 0.2, baseline: float | Tensor | None = 0.0, seed: int = 0
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Yeh et al.'s Gaussian perturbation for :func:`captum.metrics.infidelity`: ``inputs -> (I, inputs - I)``.

    Captum calls it with every sample repeated ``n_perturb`` times (``repeat_interleave``). Copy ``k`` of sample
    ``x`` gets ``eps_k ~ N(0, I)`` from a generator seeded with ``row_seed(seed, x)`` (one float64 draw of shape
    ``(n_perturb, *x.shape)`` per sample), and

    * with a ``baseline`` (the paper's "noisy baseline", default 0): the perturbed input is ``baseline + noise_std *
      eps_k`` and ``I = x - (baseline + noise_std * eps_k)``;
    * with ``baseline=None``: the perturbed input is ``x - noise_std * eps_k``, ``I = noise_std * eps_k`` (a small
      Gaussian perturbation of the input, Captum's documentation example).

    Args:
        n_perturb: copies per sample Captum passes (its ``n_perturb_samples``).
        noise_std: standard deviation of the noise, in input units (the paper: 0.2 on [0, 1] images).
        baseline: scalar or tensor broadcastable to a sample; ``None`` perturbs around the input.
        seed: seed of the noise.

    Example:
        >>> perturb = infidelity_perturbation(2, noise_std=0.1, baseline=None)
        >>> perturbation, perturbed = perturb(torch.ones(2, 3).repeat_interleave(2, dim=0))
        >>> torch.allclose(perturbed, 1 - perturbation)
        True
    """

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        eps = _per_sample_draws(
            inputs, n_perturb, seed, lambda shape, g: torch.randn(shape, generator=g, dtype=torch.float64)
        )
        if baseline is None:
            perturbation = noise_std * eps
            return perturbation, inputs - perturbation
        perturbed = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device) + noise_std * eps
        return inputs - perturbed, perturbed

    return perturb


def sensitivity_perturbation(n_perturb: int, seed: int = 0) -> Callable[[Tensor, float], Tensor]:
    """Yeh et al.'s uniform L-infinity-ball perturbation for :func:`captum.metrics.sensitivity_max`.

    Captum calls it with every sample repeated ``n_perturb`` times and the radius ``r``. Copy ``k`` of sample ``x``
    becomes ``x + r * (2 u_k - 1)`` with ``u_k ~ U[0, 1)`` drawn by ``torch.rand`` from a generator seeded with
    ``row_seed(seed, x)`` (one float64 draw of shape ``(n_perturb, *x.shape)`` per sample).

    Example:
        >>> perturb = sensitivity_perturbation(3)
        >>> bool((perturb(torch.zeros(6, 4), 0.02).abs() <= 0.02).all())
        True
    """

    def perturb(inputs: Tensor, radius: float) -> Tensor:
        u = _per_sample_draws(
            inputs, n_perturb, seed, lambda shape, g: torch.rand(shape, generator=g, dtype=torch.float64)
        )
        return inputs + radius * (2 * u - 1)

    return perturb


def _check_attributions(attributions: object, x: Tensor) -> None:
    if not isinstance(attributions, Tensor) or attributions.shape != x.shape:
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__
        raise ValueError(f"`attributions` must have the shape of x {tuple(x.shape)}, got {shape}.")
    if not attributions.is_floating_point():
        raise TypeError(f"`attributions` must be a floating-point tensor, got dtype {attributions.dtype}.")
    check_finite("attributions", attributions)


def check_norm_ord(norm_ord: object) -> str | float:
    """A norm order for :func:`torch.norm`: ``"fro"``, ``"nuc"`` or a positive number (``inf`` included)."""
    if norm_ord in ("fro", "nuc"):
        return norm_ord  # type: ignore[return-value]
    if isinstance(norm_ord, bool) or not isinstance(norm_ord, (int, float)) or not norm_ord > 0:
        raise ValueError(f"`norm_ord` must be 'fro', 'nuc' or a positive number (inf too), got {norm_ord!r}.")
    return norm_ord


def check_noise_std(noise_std: object, name: str = "noise_std") -> float:
    """A finite number > 0 (a standard deviation or a radius)."""
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not math.isfinite(noise_std):
        raise ValueError(f"`{name}` must be a finite number > 0, got {noise_std!r}.")
    if noise_std <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {noise_std!r}.")
    return float(noise_std)


def check_baseline(baseline: Any, x: Tensor | None = None) -> None:
    """Refuse a noisy-baseline centre that is not ``None``, a finite number or a finite tensor fitting a sample.

    Args:
        baseline: the value to check.
        x: the ``(N, ...)`` batch whose samples the baseline must broadcast to (not checked when ``None``).

    Raises:
        TypeError: for anything but ``None``, a real number or a floating tensor.
        ValueError: for NaN/inf values or a tensor that does not broadcast to one sample of ``x``.

    Example:
        >>> check_baseline(0.5, torch.rand(2, 3, 4, 4))
    """
    if baseline is None:
        return
    if not isinstance(baseline, Tensor):
        check_number("baseline", baseline)
        return
    if not baseline.is_floating_point():
        raise TypeError(f"`baseline` must be a floating tensor, a number or None, got a {baseline.dtype} tensor.")
    check_finite("baseline", baseline)
    if x is not None:
        sample = tuple(x.shape[1:])
        try:
            fits = torch.broadcast_shapes(tuple(baseline.shape), sample) == sample
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"`baseline` must broadcast to one sample of shape {sample}, got shape {tuple(baseline.shape)}."
            )


def infidelity(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    n_perturb_samples: int = DEFAULT_INFIDELITY_SAMPLES,
    noise_std: float = 0.2,
    baseline: float | Tensor | None = 0.0,
    normalize: bool = True,
    seed: int = 0,
    internal_batch_size: int | None = 128,
    logits: Tensor | None = None,
) -> Tensor:
    """Infidelity of attribution maps (Yeh et al. 2019), per sample, computed by :func:`captum.metrics.infidelity`.

    ``INFD = E_I[(I . A - (f(x) - f(x - I)))^2]`` with ``f`` the target logit and ``I`` drawn by
    :func:`infidelity_perturbation` (the paper's Gaussian noisy baseline by default). With ``normalize=True`` (the
    paper's optimal scaling, default) ``A`` is first multiplied by the ``beta`` minimising the error, so the value
    does not depend on the map's scale. Lower is better.

    Args:
        model: classifier returning logits ``(N, K)``; run in eval mode, its state restored afterwards.
        x: ``(N, ...)`` inputs on the model's device.
        attributions: maps of ``x``'s shape.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        n_perturb_samples: perturbations per sample.
        noise_std: noise standard deviation (input units).
        baseline: the noisy baseline's centre (scalar or tensor broadcastable to a sample); ``None``: perturb
            around ``x``.
        normalize: apply the optimal scaling ``beta``.
        seed: seed of the perturbations.
        internal_batch_size: most perturbed rows per forward pass (whole samples: at least ``n_perturb_samples``);
            ``None``: all at once.
        logits: the model's logits for ``x`` if already computed (resolves ``target`` without a forward pass).

    Returns:
        ``(N,)`` infidelities in the dtype of ``x``.

    Raises:
        TypeError: for non-tensor or non-floating inputs, or a model that is not a module.
        ValueError: for mismatched shapes or devices, bad options or targets.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> infidelity(net, torch.rand(2, 3, 2, 2), torch.randn(2, 3, 2, 2), n_perturb_samples=4).shape
        torch.Size([2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    check_batch("x", x, model)
    _check_attributions(attributions, x)
    n_perturb = check_int("n_perturb_samples", n_perturb_samples, 1)
    noise_std = check_noise_std(noise_std)
    check_seed(seed)
    check_optional_int("internal_batch_size", internal_batch_size)
    check_baseline(baseline, x)
    normalize = check_flag("normalize", normalize)
    n = x.shape[0]
    perturb = infidelity_perturbation(n_perturb, noise_std, baseline, seed)
    with torch.no_grad(), preserved_model_state(model), MemoryBackoff("infidelity", internal_batch_size) as backoff:
        if logits is None:
            outputs: list[Tensor] = []
            backoff.chunks(n, lambda start, stop: outputs.append(model_logits(model, x[start:stop])))
            clean = torch.cat(outputs)
        else:
            check_clean_logits(logits, x)
            clean = logits
        target = resolve_target(target, clean.detach()).to(x.device)
        parts: list[Tensor] = []

        def score(start: int, size: int | None) -> int:
            # A chunk of whole samples: Captum runs every perturbation of a sample in one forward.
            stop = n if size is None else min(n, start + max(1, size // n_perturb))
            parts.append(
                captum_infidelity(
                    model,
                    perturb,
                    x[start:stop],
                    attributions[start:stop].to(x),
                    target=target[start:stop],
                    n_perturb_samples=n_perturb,
                    normalize=normalize,
                )
            )
            return stop

        backoff.run(n, score, unbounded=n * n_perturb)
    return torch.cat(parts).to(x.dtype)


def sensitivity(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    attributions: Tensor | None = None,
    n_perturb_samples: int = DEFAULT_SENSITIVITY_SAMPLES,
    perturb_radius: float = 0.02,
    norm_ord: str | float = "fro",
    seed: int = 0,
    **attribute_kwargs: Any,
) -> Tensor:
    """Max-sensitivity of an attribution method (Yeh et al. 2019) per sample, by Captum's ``sensitivity_max``.

    ``SENS_MAX = max_k ||A(x + delta_k) - A(x)|| / ||A(x)||`` over ``n_perturb_samples`` perturbations from the
    uniform L-infinity ball of radius ``perturb_radius`` (:func:`sensitivity_perturbation`), every explanation of the
    same target (the clean prediction when ``target`` is None). Lower is better (a stable explanation). A method
    with ``input_bounds`` explains the perturbed inputs clipped to them (the part of the ball it accepts as input).

    Args:
        method: the attribution method (its ``attribute`` runs on the perturbed inputs, and on ``x`` unless
            ``attributions`` is given).
        x: ``(N, ...)`` inputs on the model's device.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        attributions: ``method``'s maps of ``x`` for ``target`` if already computed.
        n_perturb_samples: perturbed inputs per sample.
        perturb_radius: radius of the L-infinity ball, in input units (Captum's default 0.02, for [0, 1] images).
        norm_ord: norm of the difference (``"fro"``, or an order accepted by :func:`torch.norm`).
        seed: seed of the perturbations.
        **attribute_kwargs: per-call options of ``method.attribute``.

    Returns:
        ``(N,)`` max-sensitivities in the dtype of ``x``.

    Example:
        >>> from lit_attr.methods import get_method
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> float(sensitivity(get_method("saliency", net), torch.rand(2, 3, 2, 2)).abs().max())  # linear: constant
        0.0
    """
    if not all(callable(getattr(method, name, None)) for name in ("attribute", "resolve_target", "clip")):
        raise TypeError(
            f"`method` must be an attribution method (lit_attr.methods.get_method(...)), got {type(method).__name__}."
        )
    check_batch("x", x, method.model)
    if attributions is not None:
        _check_attributions(attributions, x)
    n_perturb = check_int("n_perturb_samples", n_perturb_samples, 1)
    radius = check_noise_std(perturb_radius, "perturb_radius")
    check_norm_ord(norm_ord)
    check_seed(seed)
    target = method.resolve_target(x, target)

    def explain(inputs: Tensor | tuple[Tensor, ...], target: Tensor | int) -> Tensor | tuple[Tensor, ...]:
        # Captum passes the clean inputs as a 1-tuple and expects a tuple back (it iterates over the result), the
        # perturbed ones as a tensor.
        batch = inputs[0] if isinstance(inputs, tuple) else method.clip(inputs)
        if target.numel() == 1:  # Captum leaves a single target unexpanded: it applies to every row
            target = int(target.reshape(-1)[0])
        if attributions is not None and batch is x:
            maps = attributions.to(x)
        else:
            result = method.attribute(batch, target, **attribute_kwargs)
            maps = result[0] if isinstance(result, tuple) else result  # (maps, info) of methods asked for info
        return (maps,) if isinstance(inputs, tuple) else maps

    result = sensitivity_max(
        explain,
        x,
        perturb_func=sensitivity_perturbation(n_perturb, seed),
        perturb_radius=radius,
        n_perturb_samples=n_perturb,
        norm_ord=norm_ord,
        target=target,
    )
    return result.to(x.dtype)
