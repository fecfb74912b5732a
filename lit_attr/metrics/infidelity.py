"""Infidelity and max-sensitivity (Yeh et al. 2019) as torchmetrics ``Metric`` classes over Captum.

The per-sample values come from :mod:`lit_attr.functional.infidelity`, which calls Captum's
:func:`captum.metrics.infidelity` and :func:`captum.metrics.sensitivity_max` with seeded per-sample perturbations;
the Metrics add them to ``sum`` states, so the result under DDP equals the single-process result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr._checks import check_flag, check_int, check_optional_int, check_seed
from lit_attr.functional.infidelity import (
    DEFAULT_INFIDELITY_SAMPLES,
    DEFAULT_SENSITIVITY_SAMPLES,
    check_baseline,
    check_noise_std,
    check_norm_ord,
    infidelity,
    sensitivity,
)
from lit_attr.methods.base import AttributionMethod, TargetType
from lit_attr.metrics._method_scores import resolve_method
from lit_attr.metrics._model_ref import ModelRef
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

if TYPE_CHECKING:
    from lit_attr.batch import Batch

__all__ = ["Infidelity", "Sensitivity"]


class _MeanOfScores(Metric):
    """A mean of one per-sample value, ``key``, over every sample seen (on all processes)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    key = ""

    value_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("value_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def _add(self, scores: dict[str, Tensor]) -> None:
        values = scores[self.key]
        self.value_sum += values.sum().to(dtype=self.value_sum.dtype, device=self.value_sum.device)
        self.count += values.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """The mean over every sample seen, as a 0-d tensor; NaN before any update."""
        return {self.key: self.value_sum / self.count}


class Infidelity(_MeanOfScores):
    """Mean infidelity (Yeh et al. 2019) of attribution maps, computed by Captum; lower is better.

    ``INFD = E_I[(I . A - (f(x) - f(x - I)))^2]``: how well the map, dotted with a perturbation ``I``, predicts the
    change of the target logit ``f``. The perturbation is the paper's Gaussian "noisy baseline" by default (the
    perturbed input is ``baseline + noise_std * eps``, ``eps ~ N(0, I)``; ``baseline=None`` perturbs around the
    input instead), with the paper's optimal scaling of the map (``normalize=True``). Each sample's perturbations
    are seeded by ``seed`` and its own values (see
    :func:`~lit_attr.functional.infidelity.infidelity_perturbation`).

    :meth:`compute` returns ``{"infidelity": mean}`` (0-d); :meth:`score` returns ``{"infidelity": (N,)}`` for one
    batch without changing the states; ``update(..., scores=...)`` adds values computed that way. The model is held
    by reference (not a submodule).

    Args:
        model: classifier returning logits ``(N, K)``.
        n_perturb_samples: perturbations per sample (Captum's default 10).
        noise_std: noise standard deviation in input units (the paper: 0.2 on [0, 1] images).
        baseline: centre of the noisy baseline (scalar or tensor broadcastable to a sample); ``None``: the input.
        normalize: the paper's optimal scaling of the map.
        seed: seed of the perturbations.
        internal_batch_size: most perturbed rows per forward pass (default 128).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> metric = Infidelity(net, n_perturb_samples=4)
        >>> metric.update(torch.rand(2, 3, 2, 2), torch.randn(2, 3, 2, 2))
        >>> list(metric.compute())
        ['infidelity']
    """

    key = "infidelity"

    def __init__(
        self,
        model: nn.Module,
        *,
        n_perturb_samples: int = DEFAULT_INFIDELITY_SAMPLES,
        noise_std: float = 0.2,
        baseline: float | Tensor | None = 0.0,
        normalize: bool = True,
        seed: int = 0,
        internal_batch_size: int | None = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self._model_ref = ModelRef(model)
        check_baseline(baseline)
        self._options: dict[str, Any] = {
            "n_perturb_samples": check_int("n_perturb_samples", n_perturb_samples, 1),
            "noise_std": check_noise_std(noise_std),
            "baseline": baseline,
            "normalize": check_flag("normalize", normalize),
            "seed": check_seed(seed),
            "internal_batch_size": check_optional_int("internal_batch_size", internal_batch_size),
        }

    @property
    def model(self) -> nn.Module:
        """The evaluated model (held by reference, not a submodule)."""
        return self._model_ref.module

    def score(
        self, x: Tensor, attributions: Tensor, target: TargetType = None, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Per-sample infidelities of a batch, ``{"infidelity": (N,)}``; the states are left as they are.

        Args:
            x: ``(N, ...)`` inputs on the model's device.
            attributions: maps of ``x``'s shape.
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            logits: the model's logits for ``x`` if already computed.
        """
        return {"infidelity": infidelity(self.model, x, attributions, target, logits=logits, **self._options)}

    def update(
        self,
        x: Tensor,
        attributions: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Add a batch's infidelities (see :meth:`score`; ``scores``: this batch's :meth:`score`, if at hand)."""
        self._add(self.score(x, attributions, target, logits=logits) if scores is None else scores)


class Sensitivity(_MeanOfScores):
    """Mean max-sensitivity (Yeh et al. 2019) of an attribution method, computed by Captum; lower is better.

    ``SENS_MAX = max_k ||A(x + delta_k) - A(x)|| / ||A(x)||`` over ``n_perturb_samples`` perturbations drawn
    uniformly from the L-infinity ball of radius ``perturb_radius`` (seeded per sample, see
    :func:`~lit_attr.functional.infidelity.sensitivity_perturbation`), every map explaining the clean input's
    target. It needs the method itself: the perturbed inputs are explained anew.

    :meth:`compute` returns ``{"sensitivity": mean}`` (0-d); :meth:`score` returns ``{"sensitivity": (N,)}`` for one
    batch without changing the states; ``update(..., scores=...)`` adds values computed that way.

    Args:
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` instance.
        model: the classifier; required with a name, optional (must be ``method.model``) with an instance.
        n_perturb_samples: perturbed inputs per sample (Captum's default 10).
        perturb_radius: radius of the L-infinity ball in input units (Captum's default 0.02, for [0, 1] images).
        norm_ord: norm of the map difference (``"fro"`` default).
        seed: seed of the perturbations.
        method_kwargs: options for :func:`~lit_attr.methods.get_method` (name only).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> metric = Sensitivity("saliency", net, n_perturb_samples=3)
        >>> metric.update(torch.rand(2, 3, 2, 2))
        >>> float(metric.compute()["sensitivity"])  # a linear model's gradient does not move
        0.0
    """

    key = "sensitivity"

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        n_perturb_samples: int = DEFAULT_SENSITIVITY_SAMPLES,
        perturb_radius: float = 0.02,
        norm_ord: str | float = "fro",
        seed: int = 0,
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        method = resolve_method(method, model, method_kwargs)
        # Held by reference like the model of the other metrics: the method holds the user's model, which must stay
        # out of this metric's modules and state, and a clone must explain with the same model.
        self._method_ref = ModelRef(method)
        self._options: dict[str, Any] = {
            "n_perturb_samples": check_int("n_perturb_samples", n_perturb_samples, 1),
            "perturb_radius": check_noise_std(perturb_radius, "perturb_radius"),
            "norm_ord": check_norm_ord(norm_ord),
            "seed": check_seed(seed),
        }

    @property
    def method(self) -> AttributionMethod:
        """The attribution method whose stability is measured (held by reference)."""
        return self._method_ref.module

    def prepare(self, data: Batch) -> None:
        """Pass data beyond the batch on to the method (see ``AttributionMethod.prepare``)."""
        self.method.prepare(data)

    def score(
        self, x: Tensor, target: TargetType = None, attributions: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Per-sample max-sensitivities of a batch, ``{"sensitivity": (N,)}``; the states are left as they are.

        Args:
            x: ``(N, ...)`` inputs on the model's device.
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            attributions: the method's maps of ``x`` for ``target`` if already computed (saves one attribution).
        """
        return {"sensitivity": sensitivity(self.method, x, target, attributions=attributions, **self._options)}

    def update(
        self,
        x: Tensor,
        target: TargetType = None,
        attributions: Tensor | None = None,
        *,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Add a batch's max-sensitivities (see :meth:`score`; ``scores``: this batch's :meth:`score`, if at hand)."""
        self._add(self.score(x, target, attributions) if scores is None else scores)


register_metric(
    "infidelity",
    Infidelity,
    consumes=("model", "x", "attributions", "target", "logits"),
    per_sample=True,
    modalities={"continuous"},
    presentation=Presentation(scores=(Score("infidelity"),), curves=None),
)
register_metric(
    "sensitivity",
    Sensitivity,
    consumes=("method", "x", "target", "attributions"),
    modalities={"continuous"},
    presentation=Presentation(scores=(Score("sensitivity", "max-sensitivity"),), curves=None),
)
