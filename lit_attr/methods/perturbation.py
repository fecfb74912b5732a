"""Perturbation baselines over the features of any input kind: feature ablation and Kernel SHAP, from Captum.

Both treat every feature of the input kind (:attr:`~lit_attr.inputs.Space.feature_shape`: a pixel over its
channels, a tabular feature, a token) as one player whose removal replaces it by the kind's baseline
(:attr:`~lit_attr.inputs.Space.baseline`: the [MASK], else [PAD] embedding for token ids), or in a raw space
without one by the method's ``baselines`` (default: the lower input bound, else 0). They give the gradient methods
a reference that runs the model on the perturbed inputs themselves, on images as on text.

Features outside the space's ``support`` (padding and special tokens) are never replaced and are no player: they
join the first feature's group, where their baseline is their own value, and score exactly 0.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from typing import Any

import captum.attr as ca
import torch
from captum._utils.models.model import Model
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lit_attr._checks import check_positive, check_seed
from lit_attr._hygiene import row_seed, seed_everything_locally
from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods._common import SCORES
from lit_attr.methods.base import BoundsType
from lit_attr.methods.captum import CaptumMethod, _low_bound
from lit_attr.methods.registry import register_method

__all__ = ["FeatureAblationMethod", "KernelShapMethod"]

#: Forward rows that one perturbation batch aims at when ``internal_batch_size`` leaves the choice to the method.
DEFAULT_ROWS = 256


class _FeaturePerturbation(CaptumMethod):
    """One player per feature of the input kind, removed by the kind's baseline (or ``baselines``)."""

    per_sample_kwargs = ("baselines",)

    def __init__(
        self,
        model: nn.Module,
        attribution: Callable[[Any], Any],
        *,
        baselines: Any,
        forward_fn: Callable[[Tensor], Tensor] | None,
        input_bounds: BoundsType,
        internal_batch_size: int | None,
        token_options: TokenOptions | Mapping[str, Any] | None,
        **options: Any,
    ) -> None:
        super().__init__(
            model,
            attribution,
            forward_fn=forward_fn,
            input_bounds=input_bounds,
            internal_batch_size=internal_batch_size,
            token_options=token_options,
            baselines=_low_bound({"input_bounds": input_bounds}) if baselines is None else baselines,
            **options,
        )

    def call_keywords(self) -> set[str]:
        """Per call: ``baselines`` (raw inputs only), and the options of the concrete method."""
        return {"baselines"}

    def _attribute(self, x: Tensor, target: Tensor, **kwargs: Any) -> Tensor:
        space = self.space
        x = x.detach()
        n = x.shape[0]
        if space.support is None:
            free = torch.ones(n, math.prod(space.feature_shape), dtype=torch.bool, device=x.device)
        else:
            free = space.support.reshape(n, -1) > 0
        ids = torch.where(free, free.cumsum(dim=1) - 1, 0).view(n, *space.feature_shape)
        baseline = self._baseline(x, kwargs)
        scores = self._scores(x, target, baseline, ids, free, {**self.attribute_kwargs, **kwargs})
        maps = torch.where(free, scores.to(x.dtype), 0).view(n, *space.feature_shape)
        return space.expand_features(maps)

    def _baseline(self, x: Tensor, kwargs: dict[str, Any]) -> Tensor:
        """Each point's replacement: the kind's baseline, else ``baselines``; the point itself outside the support."""
        space = self.space
        if space.baseline is not None:
            if "baselines" in kwargs:
                raise ValueError(
                    "`baselines` does not apply to these inputs: their kind gives the baseline (for token ids, the "
                    "embedding of `baseline_token_id` at every perturbable position)."
                )
            reference = space.baseline.detach()
        else:
            value = kwargs.get("baselines", self.attribute_kwargs["baselines"])
            try:
                reference = torch.as_tensor(value, dtype=x.dtype, device=x.device).detach().expand_as(x)
            except (RuntimeError, TypeError, ValueError) as error:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"`baselines` must be a number or a tensor broadcastable to the inputs {tuple(x.shape)} (one "
                    f"sample, or one per sample), got {shape}."
                ) from error
        if space.support is not None:
            reference = torch.where(space.support.expand_as(x) > 0, reference, x)
        return reference

    @abc.abstractmethod
    def _scores(
        self, x: Tensor, target: Tensor, baseline: Tensor, ids: Tensor, free: Tensor, options: dict[str, Any]
    ) -> Tensor:
        """``(n, features)`` the score of every feature (any value where ``free`` is False)."""


class FeatureAblationMethod(_FeaturePerturbation):
    """Captum's ``FeatureAblation`` with one feature per feature of the input kind (see :func:`feature_ablation`)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        baselines: Any = None,
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        input_bounds: BoundsType = None,
        internal_batch_size: int | None = None,
        token_options: TokenOptions | Mapping[str, Any] | None = None,
    ) -> None:
        self._clean: tuple[Tensor, Tensor] | None = None
        super().__init__(
            model,
            lambda forward: ca.FeatureAblation(self._forward),
            baselines=baselines,
            forward_fn=forward_fn,
            input_bounds=input_bounds,
            internal_batch_size=internal_batch_size,
            token_options=token_options,
        )

    def _scores(
        self, x: Tensor, target: Tensor, baseline: Tensor, ids: Tensor, free: Tensor, options: dict[str, Any]
    ) -> Tensor:
        # Several features are removed per forward (each in its own copy of the chunk), within the row bound.
        per_eval = max(1, (self.internal_batch_size or DEFAULT_ROWS) // x.shape[0])
        clean = self.space.logits
        self._clean = None if clean is None else (x, clean)
        try:
            maps = self.captum.attribute(
                x, baselines=baseline, target=target, feature_mask=ids, perturbations_per_eval=per_eval
            )
        finally:
            self._clean = None
        # Every element of a feature holds its score: read one element per feature.
        index = tuple(slice(0, 1) if size == 1 else slice(None) for size in self.space.feature_shape)
        return maps[(slice(None), *index)].reshape(x.shape[0], -1)


    def _forward(self, z: Tensor) -> Tensor:
        """Captum's forward; its first call, on the clean points, is answered by the logits the call already has."""
        if self._clean is not None and z is self._clean[0]:
            return self._clean[1]
        return self.logits(z)


class _ShapleyRegression(Model):
    """Kernel SHAP's surrogate: least squares with an intercept, weighted by the Shapley kernel, solved in float64.

    It replaces Captum's default scikit-learn regression (no scikit-learn dependency); the solve is exact, so a
    model that is linear in the players gets its Shapley values to rounding.
    """

    def __init__(self) -> None:
        self.intercept: Tensor | None = None
        self.coefficients: Tensor | None = None

    def fit(self, train_data: DataLoader, **kwargs: Any) -> None:
        """Fit ``(coalitions, outputs, weights)`` batches; any extra keyword is ignored."""
        coalitions, outputs, weights = (torch.cat(list(part)) for part in zip(*train_data, strict=True))
        device = coalitions.device
        design = torch.cat([torch.ones_like(coalitions[:, :1]), coalitions], dim=1).cpu().double()
        root = weights.reshape(-1, 1).cpu().double().sqrt()
        # gelsd (SVD) also solves the rank-deficient systems of fewer coalitions than players (minimum norm).
        solution = torch.linalg.lstsq(design * root, outputs.reshape(-1, 1).cpu().double() * root, driver="gelsd")
        self.intercept, self.coefficients = solution.solution[0, 0].to(device), solution.solution[1:, 0].to(device)

    def representation(self) -> Tensor:
        """The players' coefficients ``(players,)``."""
        if self.coefficients is None:
            raise RuntimeError("The regression has not been fitted.")
        return self.coefficients

    def __call__(self, x: Tensor) -> Tensor:
        """The surrogate's prediction for coalitions ``(m, players)``."""
        if self.coefficients is None or self.intercept is None:
            raise RuntimeError("The regression has not been fitted.")
        return self.intercept + x.to(self.coefficients) @ self.coefficients


def _kernel_shap(forward: Callable[[Tensor], Tensor]) -> ca.KernelShap:
    explainer = ca.KernelShap(forward)
    explainer.interpretable_model = _ShapleyRegression()
    return explainer


class KernelShapMethod(_FeaturePerturbation):
    """Captum's ``KernelShap`` with one player per feature of the input kind (see :func:`kernel_shap`)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        n_samples: int = 200,
        baselines: Any = None,
        seed: int = 0,
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        input_bounds: BoundsType = None,
        internal_batch_size: int | None = None,
        token_options: TokenOptions | Mapping[str, Any] | None = None,
    ) -> None:
        check_positive("n_samples", n_samples, int)
        super().__init__(
            model,
            _kernel_shap,
            baselines=baselines,
            forward_fn=forward_fn,
            input_bounds=input_bounds,
            internal_batch_size=internal_batch_size,
            token_options=token_options,
            stochastic=True,
            seed=check_seed(seed),
            n_samples=n_samples,
        )

    def call_keywords(self) -> set[str]:
        """Per call: ``baselines`` (raw inputs only) and ``n_samples``."""
        return {"baselines", "n_samples"}

    def _scores(
        self, x: Tensor, target: Tensor, baseline: Tensor, ids: Tensor, free: Tensor, options: dict[str, Any]
    ) -> Tensor:
        n_samples = check_positive("n_samples", options["n_samples"], int)
        per_eval = min(n_samples, self.internal_batch_size or DEFAULT_ROWS)
        keys = self.space.keys()
        rows = []
        for i in range(x.shape[0]):
            players = int(free[i].sum())
            one = slice(i, i + 1)
            if players < 2:  # no coalitions to sample: the lone player's Shapley value is its removal's effect
                with torch.no_grad():
                    logits = self.logits(torch.cat([x[one], baseline[one]]))
                drop = SCORES["logit"](logits, target[one].expand(2))
                rows.append((drop[0] - drop[1]).expand(free.shape[1]))
                continue
            # Each sample draws its coalitions under its own seed: its values do not depend on the batch.
            seed_everything_locally(row_seed(self.seed, keys[i]))
            coefficients = self.captum.attribute(
                x[one],
                baselines=baseline[one],
                target=target[one],
                feature_mask=ids[one],
                n_samples=n_samples,
                perturbations_per_eval=per_eval,
                return_input_shape=False,
            )
            rows.append(coefficients.reshape(-1)[ids[i].reshape(-1)])
        return torch.stack(rows)


@register_method("feature_ablation")
def feature_ablation(model: nn.Module, *, baselines: Any = None, **kwargs: Any) -> FeatureAblationMethod:
    """Feature ablation (Captum's ``FeatureAblation``): the target logit's drop when one feature is removed.

    One feature per feature of the input kind: a pixel over all its channels, a tabular feature, a token (on token
    ids the [MASK], else [PAD], embedding replaces it: the model sees the sentence with that token masked). Removed
    features take the kind's baseline, or on raw inputs ``baselines`` (a number or a tensor broadcastable to the
    inputs, one per sample allowed; default: the lower input bound, else 0). Padding and special tokens score
    exactly 0. Cost: one forward row per feature plus one per sample, several features per forward within
    ``internal_batch_size`` (default: about 256 rows per forward).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> scores = feature_ablation(net).attribute(torch.ones(1, 3), target=0)
        >>> torch.allclose(scores, net.weight[0].detach()[None])  # a linear model: w * (x - 0)
        True
    """
    return FeatureAblationMethod(model, baselines=baselines, **kwargs)


@register_method("kernel_shap")
def kernel_shap(
    model: nn.Module, *, n_samples: int = 200, baselines: Any = None, seed: int = 0, **kwargs: Any
) -> KernelShapMethod:
    """Kernel SHAP (Lundberg & Lee 2017, Captum's ``KernelShap``): Shapley values of the features, by regression.

    Each sample draws ``n_samples`` coalitions (the full and the empty one first) under its own seed, derived from
    ``seed`` and the sample's values, so results are reproducible and batch-independent; absent features take the
    kind's baseline (token ids: the [MASK], else [PAD], embedding) or on raw inputs ``baselines`` (default: the
    lower input bound, else 0). The surrogate is solved exactly in float64, on the float32 outputs Captum keeps:
    a model linear in the features gets its Shapley values ``w * (x - baseline)`` once ``n_samples`` exceeds the
    number of features; the scores of a sample add up to the logit change from the baseline. Padding and special
    tokens are no player and score exactly 0. Cost: ``n_samples`` forward rows per sample, in forwards of at most
    ``internal_batch_size`` rows (default: up to 256).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> scores = kernel_shap(net, n_samples=16).attribute(torch.ones(1, 3), target=0)
        >>> torch.allclose(scores, net.weight[0].detach()[None], atol=1e-5)
        True
    """
    return KernelShapMethod(model, n_samples=n_samples, baselines=baselines, seed=seed, **kwargs)
