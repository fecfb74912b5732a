"""Faithfulness correlations and monotonicity as torchmetrics ``Metric`` classes.

The math lives in :mod:`lit_attr.functional.faithfulness` and :mod:`lit_attr.functional.monotonicity`; each Metric
holds the model by reference and its options, and adds the per-sample values of a batch to ``sum`` states
(:class:`~lit_attr.metrics._scores.MeanScores`), so the result under DDP equals the single-process result. Every one
plays on any input kind (images, features, token ids, a user's kind) through the kind's units, substrates and model
call, except monotonicity correlation, whose random values need a continuous kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lit_attr._checks import TargetType, check_int
from lit_attr.functional.faithfulness import (
    DEFAULT_SENSITIVITY_N_SIZES,
    faithfulness_correlation,
    faithfulness_estimate,
    sensitivity_n,
)
from lit_attr.functional.monotonicity import monotonicity, monotonicity_correlation
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, SubstrateType
from lit_attr.functional.unit_games import batch_fields, check_game_options, check_size
from lit_attr.metrics._scores import MeanScores
from lit_attr.metrics._token_metric import TOKEN_GAME_INPUTS
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = [
    "FaithfulnessCorrelation",
    "FaithfulnessEstimate",
    "Monotonicity",
    "MonotonicityCorrelation",
    "SensitivityN",
]


class GameMetric(MeanScores):
    """A mean of a unit game's per-sample values: the functional named by :attr:`function` with the options given.

    Subclasses set :attr:`keys`, :attr:`function` and the options' defaults; :meth:`values` turns the functional's
    result into ``{key: (N,) values}``.
    """

    function: Callable[..., Any]

    def __init__(self, model: nn.Module, options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        check_game_options(**{key: options[key] for key in _SHARED if key in options})
        self._options = options

    def values(self, result: Any) -> dict[str, Tensor]:
        """``{key: values}`` of the functional's result (one tensor by default)."""
        return {self.keys[0]: result}

    def score(
        self,
        x: Tensor,
        attributions: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
        model_inputs: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Play the game on a batch; its per-sample values, the states left as they are.

        Args:
            x: ``(N, ...)`` inputs on the model's device (or token ids ``(N, L)``).
            attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            logits: the model's logits for ``x`` if already computed (saves one forward pass).
            attention_mask: token ids: ``(N, L)`` 1 on real tokens.
            special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens.
            model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).
        """
        function = type(self).function
        options = {**self._options, **batch_fields(attention_mask, special_tokens_mask, model_inputs)}
        return self.values(function(self.model, x, attributions, target, logits=logits, **options))


_SHARED = ("substrate", "substrate_value", "output", "reduce", "seed", "internal_batch_size")


class FaithfulnessCorrelation(GameMetric):
    """Mean faithfulness correlation (Bhatt et al. 2020); higher is better.

    The Pearson correlation between the summed attributions of ``n_subsets`` random subsets of ``subset_size``
    units and the drops of the target's logit when they are removed; see
    :func:`~lit_attr.functional.faithfulness.faithfulness_correlation` for the options. Cost: ``n_subsets`` forwards
    per sample.

    Example:
        >>> import torch
        >>> net = nn.Linear(6, 3)
        >>> x = torch.rand(4, 6)
        >>> metric = FaithfulnessCorrelation(net, subset_size=2, n_subsets=8)
        >>> metric.update(x, x * net.weight[net(x).argmax(dim=1)].detach())  # IG from zero: drops = sums
        >>> round(float(metric.compute()["faithfulness_correlation"]), 4)
        1.0
    """

    higher_is_better = True
    keys = ("faithfulness_correlation",)
    function = faithfulness_correlation

    def __init__(
        self,
        model: nn.Module,
        *,
        subset_size: int | float = 224,
        n_subsets: int = 100,
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        output: str = "logit",
        reduce: str = "sum",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        check_size("subset_size", subset_size)
        check_int("n_subsets", n_subsets, 2)
        options = dict(subset_size=subset_size, n_subsets=n_subsets, substrate=substrate,
                       substrate_value=substrate_value, output=output, reduce=reduce, seed=seed,
                       internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(model, options, **kwargs)


class SensitivityN(GameMetric):
    """Mean sensitivity-n (Ancona et al. 2018) over the subset sizes, and its curve over them; higher is better.

    ``"sensitivity_n"`` is the mean over the sizes of the per-size correlations, ``"sensitivity_n_curve"`` one
    correlation per size (in the order of ``sizes``); see :func:`~lit_attr.functional.faithfulness.sensitivity_n`.
    Cost: ``len(sizes) x n_subsets`` forwards per sample.

    Example:
        >>> import torch
        >>> net = nn.Linear(8, 2)
        >>> x = torch.rand(3, 8)
        >>> metric = SensitivityN(net, sizes=(1, 4), n_subsets=6)
        >>> metric.update(x, x * net.weight[net(x).argmax(dim=1)].detach())
        >>> metric.compute()["sensitivity_n_curve"].shape
        torch.Size([2])
    """

    higher_is_better = True
    keys = ("sensitivity_n",)
    function = sensitivity_n

    def __init__(
        self,
        model: nn.Module,
        *,
        sizes: Sequence[int | float] = DEFAULT_SENSITIVITY_N_SIZES,
        n_subsets: int = 100,
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        output: str = "logit",
        reduce: str = "sum",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        if isinstance(sizes, (str, int, float)) or not isinstance(sizes, Sequence) or not sizes:
            raise TypeError(f"`sizes` must be a non-empty sequence of ints or float fractions, got {sizes!r}.")
        for size in sizes:
            check_size("sizes", size)
        check_int("n_subsets", n_subsets, 2)
        options = dict(sizes=tuple(sizes), n_subsets=n_subsets, substrate=substrate, substrate_value=substrate_value,
                       output=output, reduce=reduce, seed=seed, internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(model, options, curve_points={"sensitivity_n_curve": len(sizes)}, **kwargs)

    def values(self, result: Tensor) -> dict[str, Tensor]:
        """The mean over the sizes and the per-size correlations."""
        return {"sensitivity_n": result.mean(dim=1), "sensitivity_n_curve": result}


class FaithfulnessEstimate(GameMetric):
    """Mean faithfulness estimate (Alvarez-Melis & Jaakkola 2018); higher is better.

    The Pearson correlation between the attributions of the units (or of groups of ``features_per_step`` units) and
    the drops of the target's probability when each is removed alone; see
    :func:`~lit_attr.functional.faithfulness.faithfulness_estimate`. Cost: one forward per group.

    Example:
        >>> import torch
        >>> net = nn.Linear(6, 3)
        >>> metric = FaithfulnessEstimate(net, output="logit")
        >>> x = torch.rand(4, 6)
        >>> metric.update(x, x * net.weight[net(x).argmax(dim=1)].detach())
        >>> round(float(metric.compute()["faithfulness_estimate"]), 4)
        1.0
    """

    higher_is_better = True
    keys = ("faithfulness_estimate",)
    function = faithfulness_estimate

    def __init__(
        self,
        model: nn.Module,
        *,
        features_per_step: int = 1,
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        output: str = "prob",
        reduce: str = "sum",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        check_int("features_per_step", features_per_step, 1)
        options = dict(features_per_step=features_per_step, substrate=substrate, substrate_value=substrate_value,
                       output=output, reduce=reduce, seed=seed, internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(model, options, **kwargs)


class Monotonicity(GameMetric):
    """Share of the samples whose target probability never falls as units return (Arya et al. 2019); higher is better.

    The units return to the baseline least attributed first.

    See :func:`~lit_attr.functional.monotonicity.monotonicity`. Cost: ``G + 1`` forwards per sample for ``G``
    groups of ``features_per_step`` units.

    Example:
        >>> import torch
        >>> net = nn.Linear(4, 2)
        >>> metric = Monotonicity(net)
        >>> metric.update(torch.rand(3, 4), torch.rand(3, 4))
        >>> sorted(metric.compute())
        ['monotonicity']
    """

    higher_is_better = True
    keys = ("monotonicity",)
    function = monotonicity

    def __init__(
        self,
        model: nn.Module,
        *,
        features_per_step: int = 1,
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        output: str = "prob",
        reduce: str = "sum",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        check_int("features_per_step", features_per_step, 1)
        options = dict(features_per_step=features_per_step, substrate=substrate, substrate_value=substrate_value,
                       output=output, reduce=reduce, seed=seed, internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(model, options, **kwargs)


class MonotonicityCorrelation(GameMetric):
    """Mean monotonicity correlation (Nguyen & Martinez 2020); higher is better.

    The Spearman correlation between the units' absolute attributions and the expected squared change of the
    target's probability when each takes random values; see
    :func:`~lit_attr.functional.monotonicity.monotonicity_correlation`. Cost: ``G x n_samples`` forwards per sample.

    Example:
        >>> import torch
        >>> metric = MonotonicityCorrelation(nn.Linear(5, 2), n_samples=3)
        >>> metric.update(torch.rand(3, 5), torch.rand(3, 5))
        >>> sorted(metric.compute())
        ['monotonicity_correlation']
    """

    higher_is_better = True
    keys = ("monotonicity_correlation",)
    function = monotonicity_correlation

    def __init__(
        self,
        model: nn.Module,
        *,
        features_per_step: int = 1,
        n_samples: int = 10,
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        output: str = "prob",
        reduce: str = "abs_sum",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        check_int("features_per_step", features_per_step, 1)
        check_int("n_samples", n_samples, 1)
        options = dict(features_per_step=features_per_step, n_samples=n_samples, substrate=substrate,
                       substrate_value=substrate_value, output=output, reduce=reduce, seed=seed,
                       internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(model, options, **kwargs)


#: What the unit games consume: a token batch's masks and model inputs too (``None`` for other kinds).
GAME_INPUTS = TOKEN_GAME_INPUTS
#: The kinds the unit games replacing units by a substrate play on (the kind says what a unit and a substrate are).
GAME_MODALITIES = frozenset({"continuous", "tokens"})
for _name, _factory, _label in (
    ("faithfulness_correlation", FaithfulnessCorrelation, "faithfulness correlation"),
    ("faithfulness_estimate", FaithfulnessEstimate, "faithfulness estimate"),
    ("sensitivity_n", SensitivityN, "sensitivity-n (mean over n)"),
    ("monotonicity", Monotonicity, "monotonicity (Arya)"),
    ("monotonicity_correlation", MonotonicityCorrelation, "monotonicity correlation"),
):
    # Sensitivity-n draws its per-size curve (the default: every 1-D entry); the others have none.
    _curves = {} if _name == "sensitivity_n" else {"curves": None}
    register_metric(
        _name,
        _factory,
        consumes=GAME_INPUTS,
        per_sample=True,
        modalities=GAME_MODALITIES,
        presentation=Presentation(scores=(Score(_name, _label),), **_curves),
    )
