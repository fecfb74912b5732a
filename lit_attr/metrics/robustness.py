"""Robustness of explanations as torchmetrics ``Metric`` classes.

Local Lipschitz, average sensitivity, continuity and relative stability (math in
:mod:`lit_attr.functional.robustness`). Each explains ``n_perturb_samples`` perturbed copies of every sample with
the method and reports, beside its score, ``<name>_method_calls``: the attributions it computed per sample (the
copies, and the clean input when the caller gave no maps), the cost that dominates these metrics. On token ids the
copies move the embeddings of a sentence's words (:mod:`lit_attr.inputs.token_neighbourhood`); ``update`` takes the
batch's ``attention_mask``, ``special_tokens_mask`` and ``model_inputs`` as the runner passes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import (
    TargetType,
    check_choice,
    check_names,
    check_number,
)
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE
from lit_attr.functional.robustness import (
    SENSITIVITY_NORMALIZATIONS,
    avg_sensitivity,
    check_copy_options,
    continuity,
    local_lipschitz,
)
from lit_attr.functional.stability import STABILITIES, relative_stability
from lit_attr.functional.unit_games import batch_fields
from lit_attr.methods.base import AttributionMethod
from lit_attr.metrics._method_scores import METHOD_INPUTS, MethodScores
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["AvgSensitivity", "Continuity", "LocalLipschitz", "RelativeStability"]


class _Robustness(MethodScores):
    """A robustness score of the method's maps of perturbed copies, and the attributions it cost per sample."""

    higher_is_better = False
    name = ""
    function: Callable[..., Any]

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        options: dict[str, Any],
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(method, model, method_kwargs=method_kwargs, **kwargs)
        check_copy_options(options)
        self._options = options

    def values(self, result: Tensor) -> dict[str, Tensor]:
        """``{key: values}`` of the functional's result."""
        return {self.keys[0]: result}

    def score(
        self,
        x: Tensor,
        target: TargetType = None,
        attributions: Tensor | None = None,
        *,
        logits: Tensor | None = None,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        model_inputs: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """One batch's per-sample scores and attributions computed per sample; the states are left as they are.

        Args:
            x: ``(N, ...)`` inputs on the model's device (or token ids ``(N, L)``: their embeddings move).
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            attributions: the method's maps of ``x`` for ``target`` if already computed (saves one attribution).
            logits: the model's logits for ``x`` if already computed.
            attention_mask: token ids: ``(N, L)`` 1 on real tokens.
            special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens.
            model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).
        """
        function = type(self).function
        fields = batch_fields(attention_mask, special_tokens_mask, model_inputs)
        values = function(
            self.method, x, target, attributions=attributions, logits=logits, **self._options, **fields
        )
        result = self.values(values)
        calls = self._options["n_perturb_samples"] + (attributions is None)
        result[f"{self.name}_method_calls"] = torch.full((x.shape[0],), float(calls), device=x.device)
        return result


def _options(**options: Any) -> dict[str, Any]:
    return options


class LocalLipschitz(_Robustness):
    """Mean local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018); lower is better.

    ``max_k ||A(x) - A(x'_k)||_2 / ||x - x'_k||_2`` over Gaussian copies; see
    :func:`~lit_attr.functional.robustness.local_lipschitz` for the options.

    Example:
        >>> metric = LocalLipschitz("saliency", nn.Linear(4, 2), n_perturb_samples=3)
        >>> metric.update(torch.rand(2, 4))
        >>> metric.compute()
        {'local_lipschitz': tensor(0.), 'local_lipschitz_method_calls': tensor(4.)}
    """

    name = "local_lipschitz"
    keys = ("local_lipschitz", "local_lipschitz_method_calls")
    function = local_lipschitz

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        n_perturb_samples: int = 10,
        noise: float = 0.1,
        distribution: str = "gaussian",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = _options(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                           internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(method, model, options=options, method_kwargs=method_kwargs, **kwargs)


class Continuity(_Robustness):
    """Mean continuity (Montavon et al. 2018): ``max_k ||A(x) - A(x'_k)||_1 / ||x - x'_k||_2``; lower is better.

    See :func:`~lit_attr.functional.robustness.continuity` for the options.

    Example:
        >>> metric = Continuity("saliency", nn.Linear(4, 2), n_perturb_samples=2)
        >>> metric.update(torch.rand(2, 4))
        >>> float(metric.compute()["continuity"])
        0.0
    """

    name = "continuity"
    keys = ("continuity", "continuity_method_calls")
    function = continuity

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        n_perturb_samples: int = 10,
        noise: float = 0.02,
        distribution: str = "uniform",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = _options(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                           internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(method, model, options=options, method_kwargs=method_kwargs, **kwargs)


class AvgSensitivity(_Robustness):
    """Mean average sensitivity (Yeh et al. 2019), beside the max ``sensitivity``; lower is better.

    ``mean_k ||A(x + d_k) - A(x)||_2`` over the uniform ball's copies (those of the max-sensitivity metric);
    ``normalize="attributions"`` divides by ``||A(x)||`` as Captum's and Quantus's. See
    :func:`~lit_attr.functional.robustness.avg_sensitivity`.

    Example:
        >>> metric = AvgSensitivity("saliency", nn.Linear(4, 2), n_perturb_samples=2)
        >>> metric.update(torch.rand(2, 4))
        >>> float(metric.compute()["avg_sensitivity"])
        0.0
    """

    name = "avg_sensitivity"
    keys = ("avg_sensitivity", "avg_sensitivity_method_calls")
    function = avg_sensitivity

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        n_perturb_samples: int = 10,
        noise: float = 0.02,
        normalize: str = "none",
        distribution: str = "uniform",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        check_choice("normalize", normalize, SENSITIVITY_NORMALIZATIONS)
        options = _options(n_perturb_samples=n_perturb_samples, noise=noise, normalize=normalize,
                           distribution=distribution, seed=seed, internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(method, model, options=options, method_kwargs=method_kwargs, **kwargs)


_STABILITY_KEYS = {
    "input": "relative_input_stability",
    "output": "relative_output_stability",
    "representation": "relative_representation_stability",
}


class RelativeStability(_Robustness):
    """Mean relative input, output and representation stability (Agarwal et al. 2022); lower is better.

    ``"relative_input_stability"``, ``"relative_output_stability"``, ``"relative_representation_stability"`` for
    the ``variants`` asked (all three by default, from one set of perturbed explanations); samples without a copy
    that keeps their prediction are left out. See :func:`~lit_attr.functional.stability.relative_stability`.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        >>> metric = RelativeStability("saliency", net, n_perturb_samples=2, variants=("input", "output"))
        >>> metric.update(torch.rand(2, 4))
        >>> sorted(metric.compute())
        ['relative_input_stability', 'relative_output_stability', 'relative_stability_method_calls']
    """

    name = "relative_stability"
    function = relative_stability

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        variants: str | Sequence[str] = STABILITIES,
        layer: str | None = None,
        n_perturb_samples: int = 10,
        noise: float = 0.05,
        distribution: str = "gaussian",
        order: float = 2.0,
        eps_min: float = 1e-6,
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        asked = check_names("variants", variants, STABILITIES, what="variant")
        self.variants = tuple(variant for variant in STABILITIES if variant in asked)
        self.keys = (*(_STABILITY_KEYS[variant] for variant in self.variants), "relative_stability_method_calls")
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"`layer` must be a module name (str) or None, got {type(layer).__name__}.")
        if check_number("order", order) <= 0 or check_number("eps_min", eps_min) <= 0:
            raise ValueError(f"`order` and `eps_min` must be > 0, got order={order!r} and eps_min={eps_min!r}.")
        options = _options(variants=self.variants, layer=layer, n_perturb_samples=n_perturb_samples, noise=noise,
                           distribution=distribution, order=order, eps_min=eps_min, seed=seed,
                           internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(method, model, options=options, method_kwargs=method_kwargs, **kwargs)

    def values(self, result: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every variant's values under its key."""
        return {_STABILITY_KEYS[variant]: result[variant] for variant in self.variants}


#: Token ids move their embeddings (lit_attr.inputs.token_neighbourhood): the batch's masks and model inputs come too.
for _name, _factory, _label in (
    ("local_lipschitz", LocalLipschitz, "local Lipschitz estimate"),
    ("avg_sensitivity", AvgSensitivity, "avg-sensitivity"),
    ("continuity", Continuity, "continuity"),
):
    register_metric(
        _name,
        _factory,
        consumes=METHOD_INPUTS,
        modalities={"continuous", "tokens"},
        presentation=Presentation(scores=(Score(_name, _label),), curves=None),
    )
register_metric(
    "relative_stability",
    RelativeStability,
    consumes=METHOD_INPUTS,
    modalities={"continuous", "tokens"},
    presentation=Presentation(
        display_name="relative stability",
        scores=(
            Score("relative_input_stability", "RIS"),
            Score("relative_output_stability", "ROS"),
            Score("relative_representation_stability", "RRS"),
        ),
        curves=None,
    ),
)
