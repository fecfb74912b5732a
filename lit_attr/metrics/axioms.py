"""Randomisation and axiom checks as torchmetrics ``Metric`` classes.

Random logit, completeness, non-sensitivity and input invariance; the math lives in :mod:`lit_attr.functional.axioms`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lit_attr._checks import TargetType, check_int, check_names, check_number, check_seed
from lit_attr.functional.axioms import (
    MAP_SIMILARITIES,
    completeness,
    input_invariance,
    non_sensitivity,
    random_logit,
)
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, SubstrateType
from lit_attr.functional.unit_games import check_game_options
from lit_attr.methods.base import AttributionMethod
from lit_attr.metrics._method_scores import METHOD_INPUTS, MethodScores
from lit_attr.metrics.faithfulness import GAME_INPUTS, GAME_MODALITIES, GameMetric
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["Completeness", "InputInvariance", "NonSensitivity", "RandomLogit"]


class RandomLogit(MethodScores):
    """Mean similarity of the target's map and a random other class's map (Sixt et al. 2020); lower is better.

    See :func:`~lit_attr.functional.axioms.random_logit`. Cost: one attribution per sample.

    Args:
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` instance.
        model: the classifier; required with a name.
        similarity: ``"ssim"`` (the paper's; images), ``"spearman_abs"`` or ``"spearman"``.
        seed: seed of the other classes.
        method_kwargs: options for :func:`~lit_attr.methods.get_method` (name only).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = RandomLogit("saliency", nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)))
        >>> metric.update(torch.rand(2, 3, 8, 8))
        >>> sorted(metric.compute())
        ['random_logit']
    """

    higher_is_better = False
    keys = ("random_logit",)

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        similarity: str = "ssim",
        seed: int = 0,
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(method, model, method_kwargs=method_kwargs, **kwargs)
        (similarity,) = check_names("similarity", similarity, MAP_SIMILARITIES, what="similarity measure")[:1]
        self._options = {"similarity": similarity, "seed": check_seed(seed)}

    def score(
        self,
        x: Tensor,
        attributions: Tensor | None = None,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        model_inputs: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """``{"random_logit": (N,)}`` of a batch; the states are left as they are.

        Args:
            x: ``(N, ...)`` inputs on the model's device (or token ids ``(N, L)``).
            attributions: the method's maps of ``x`` for ``target`` if already computed.
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            logits: the model's logits for ``x`` if already computed.
            attention_mask: token ids: ``(N, L)`` 1 on real tokens.
            special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens.
            model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).
        """
        masks = {"attention_mask": attention_mask, "special_tokens_mask": special_tokens_mask}
        # Only what the batch has: a token keyword, even None, would make the method read the inputs as token ids.
        given = {key: value for key, value in {**masks, **(model_inputs or {})}.items() if value is not None}
        return {
            "random_logit": random_logit(
                self.method, x, target, attributions=attributions, logits=logits, **self._options, **given
            )
        }


class InputInvariance(MethodScores):
    """Input invariance (Kindermans et al. 2017) under a constant shift of the inputs.

    ``"input_invariance"``: the share of the samples whose map does not change (relative change at most
    ``tolerance``; Quantus's verdict), higher is better; ``"input_invariance_change"``: the mean relative change
    ``||A_g(x + c) - A_f(x)||_1 / (||A_g||_1 + ||A_f||_1)``, lower is better. See
    :func:`~lit_attr.functional.axioms.input_invariance`. Cost: one attribution per sample.

    Args:
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` instance.
        model: the classifier; required with a name.
        shift: the constant ``c`` (Quantus's -1).
        tolerance: the largest relative change that counts as none.
        method_kwargs: options for :func:`~lit_attr.methods.get_method` (name only).
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = InputInvariance("saliency", nn.Linear(3, 2))
        >>> metric.update(torch.rand(4, 3))
        >>> metric.compute()
        {'input_invariance': tensor(1.), 'input_invariance_change': tensor(0.)}
    """

    higher_is_better = True
    keys = ("input_invariance", "input_invariance_change")

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        shift: float = -1.0,
        tolerance: float = 1e-3,
        method_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(method, model, method_kwargs=method_kwargs, **kwargs)
        self.shift = check_number("shift", shift)
        self.tolerance = check_number("tolerance", tolerance)
        if self.tolerance < 0:
            raise ValueError(f"`tolerance` must be >= 0, got {tolerance!r}.")

    def score(
        self,
        x: Tensor,
        attributions: Tensor | None = None,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        model_inputs: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """``{"input_invariance": (N,) 1/0, "input_invariance_change": (N,)}`` of a batch.

        Args:
            x: ``(N, ...)`` inputs on the model's device (or token ids ``(N, L)``: their embeddings shift).
            attributions: the method's maps of ``x`` for ``target`` if already computed.
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            logits: the model's logits for ``x`` if already computed.
            attention_mask: token ids: ``(N, L)`` 1 on real tokens.
            special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens.
            model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).
        """
        change = input_invariance(
            self.method, x, target, attributions=attributions, shift=self.shift, logits=logits,
            attention_mask=attention_mask, special_tokens_mask=special_tokens_mask, model_inputs=model_inputs,
        )  # fmt: skip
        return {"input_invariance": (change <= self.tolerance).to(change.dtype), "input_invariance_change": change}


class Completeness(GameMetric):
    """Mean relative completeness error ``|sum(A) - (f(x) - f(x'))| / |f(x) - f(x')|``; lower is better.

    ``f`` is the target's logit and ``x'`` the kind's substrate (zeros by default; the [MASK] id on token ids, with
    padding and special tokens kept); samples whose output does not change are left out. See
    :func:`~lit_attr.functional.axioms.completeness`. Cost: one forward per sample.

    Example:
        >>> import torch
        >>> net = nn.Linear(4, 2)
        >>> metric = Completeness(net)
        >>> x = torch.rand(3, 4)
        >>> metric.update(x, x * net.weight[net(x).argmax(dim=1)].detach())  # IG from zero of a linear model
        >>> float(metric.compute()["completeness"]) < 1e-5
        True
    """

    higher_is_better = False
    keys = ("completeness",)
    function = completeness

    def __init__(
        self,
        model: nn.Module,
        *,
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, {"substrate": substrate, "substrate_value": substrate_value, "seed": seed}, **kwargs)


class NonSensitivity(GameMetric):
    """Mean non-sensitivity (Nguyen & Martinez 2020); lower is better.

    The number of groups of units whose zero attribution and the model's insensitivity disagree; see
    :func:`~lit_attr.functional.axioms.non_sensitivity`. Cost: ``G x n_samples`` forwards per sample.

    Example:
        >>> import torch
        >>> metric = NonSensitivity(nn.Linear(4, 2), n_samples=2)
        >>> metric.update(torch.rand(3, 4), torch.randn(3, 4))
        >>> sorted(metric.compute())
        ['non_sensitivity']
    """

    higher_is_better = False
    keys = ("non_sensitivity",)
    function = non_sensitivity

    def __init__(
        self,
        model: nn.Module,
        *,
        features_per_step: int = 1,
        eps: float = 1e-5,
        tolerance: float = 1e-5,
        n_samples: int = 10,
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        output: str = "prob",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        check_int("features_per_step", features_per_step, 1)
        check_int("n_samples", n_samples, 1)
        if not 0 <= check_number("eps", eps) < 1:
            raise ValueError(f"`eps` must be a relative threshold in [0, 1), got {eps!r}.")
        if check_number("tolerance", tolerance) < 0:
            raise ValueError(f"`tolerance` must be >= 0, got {tolerance!r}.")
        check_game_options(output=output)
        options = dict(features_per_step=features_per_step, eps=eps, tolerance=tolerance, n_samples=n_samples,
                       substrate=substrate, substrate_value=substrate_value, output=output, seed=seed,
                       internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(model, options, **kwargs)


register_metric(
    "random_logit",
    RandomLogit,
    consumes=METHOD_INPUTS,
    modalities={"continuous", "tokens"},  # similarity="ssim" (the default) needs images: it says so on other inputs
    presentation=Presentation(scores=(Score("random_logit", "random logit (similarity)"),), curves=None),
)
register_metric(
    "input_invariance",
    InputInvariance,
    consumes=METHOD_INPUTS,
    modalities={"continuous", "tokens"},
    presentation=Presentation(
        scores=(
            Score("input_invariance", "input invariance (share)"),
            Score("input_invariance_change", "input shift: relative change", higher_is_better=False),
        ),
        curves=None,
    ),
)
register_metric(
    "completeness",
    Completeness,
    consumes=GAME_INPUTS,
    per_sample=True,
    modalities=GAME_MODALITIES,
    presentation=Presentation(scores=(Score("completeness", "completeness error"),), curves=None),
)
register_metric(
    "non_sensitivity",
    NonSensitivity,
    consumes=GAME_INPUTS,
    per_sample=True,
    modalities=GAME_MODALITIES,
    presentation=Presentation(scores=(Score("non_sensitivity", "non-sensitivity"),), curves=None),
)
