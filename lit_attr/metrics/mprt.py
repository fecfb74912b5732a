"""Efficient and smooth MPRT (Hedström et al., "Sanity checks revisited") as torchmetrics ``Metric`` classes.

Both reuse :class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization`'s machinery: the private working
copy of the model (loaded with the user's current weights at every update, never touching the user's model), the
layer selection and forward order, and the seeded re-initialisation of
:func:`~lit_attr.functional.randomization.iter_randomized`. The math is in :mod:`lit_attr.functional.mprt`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr._checks import check_int, check_seed
from lit_attr.functional.mprt import DEFAULT_N_BINS, discrete_entropy, entropy_rise, noisy_copies
from lit_attr.functional.randomization import iter_randomized
from lit_attr.methods.base import AttributionMethod, TargetType, attributions_of
from lit_attr.metrics._method_scores import resolve_method
from lit_attr.metrics._plotting import figure_and_axes
from lit_attr.metrics.parameter_randomization import (
    ParameterRandomization,
    similarity_curves,
    similarity_headline,
    similarity_summary,
)
from lit_attr.metrics.presentation import Presentation, SanityCheck
from lit_attr.metrics.registry import register_metric
from lit_attr.metrics.stagewise import check_maps_batch

if TYPE_CHECKING:
    from lit_attr.batch import Batch

__all__ = ["EMPRT_THRESHOLD", "EfficientMPRT", "NoiseAveraged", "SmoothMPRT"]

#: Default pass threshold of eMPRT: the mean relative rise in entropy must exceed it. See :class:`EfficientMPRT`.
EMPRT_THRESHOLD = 0.05


class EfficientMPRT(Metric):
    """eMPRT: the relative rise in explanation entropy from the original to the fully randomised model.

    Hedström et al. (2023) replace MPRT's layer-by-layer comparison by two attribution passes per batch: on the
    original model and on the model with every layer randomised. For each sample, ``H`` is the
    :func:`~lit_attr.functional.mprt.discrete_entropy` of a histogram (``n_bins`` bins, default 100) of ``|A|``
    summed over channels and divided by its maximum, and the score is
    :func:`~lit_attr.functional.mprt.entropy_rise`: ``(H(e_rand) - H(e_orig)) / H(e_orig)``. Higher is better: an
    explanation of the model becomes noisier when the model is random, while a map that ignores the parameters (an
    edge detector, the input itself) keeps its entropy and scores 0.

    **Pass threshold.** A method passes when the mean score exceeds ``threshold`` (default
    :data:`EMPRT_THRESHOLD` = 0.05, a 5 % rise in entropy): 0 is the score of a parameter-independent map, and the
    margin keeps a map that depends on the parameters only marginally from passing. Measured on the trained demo
    classifier (32 validation images): saliency 0.09, input x gradient 0.19, integrated gradients 0.30, the input
    itself exactly 0.

    The model is never modified: like
    :class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization` (whose machinery it reuses, with
    ``order="bottom_up"`` and ``stages="last"``), the metric holds a private copy, loads the user's current weights
    into it at every update, and randomises every layer of ``layers`` (seeded ``seed + layer index``).

    :meth:`compute` returns 0-d tensors ``{"emprt", "entropy_original", "entropy_randomized"}`` (means over the
    samples); :meth:`score` returns one batch's per-sample values ``(N,)`` under the same names; :meth:`report` adds
    ``"threshold"`` and the verdict ``"passed"``.

    Args:
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` instance.
        model: the classifier; required with a name, optional (must be ``method.model``) with an instance.
        layers: ``"auto"`` or a sequence of module names (see ``ParameterRandomization``).
        n_bins: histogram bins of the entropy.
        threshold: pass threshold on the mean score.
        seed: base seed of the re-initialisation.
        granularity: ``"leaf"`` or ``"block"`` (auto mode).
        method_kwargs: options for :func:`~lit_attr.methods.get_method` (name only).
        reset_running_stats: reset BatchNorm running statistics of randomised layers.
        **kwargs: options of :class:`torchmetrics.Metric`.

    Raises:
        TypeError: for a ``method``/``model`` of the wrong type or a non-int ``n_bins``/``seed``.
        ValueError: for bad options (see ``ParameterRandomization``), ``n_bins < 2`` or a non-finite threshold.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        >>> check = EfficientMPRT("saliency", net)
        >>> check.update(torch.rand(2, 3, 8, 8))
        >>> sorted(check.compute()), sorted(check.report())
        (['emprt', 'entropy_original', 'entropy_randomized'], ['emprt', 'entropy_original', 'entropy_randomized', \
'passed', 'threshold'])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = None
    plot_upper_bound = None

    score_sum: Tensor
    entropy_original_sum: Tensor
    entropy_randomized_sum: Tensor
    count: Tensor

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        layers: Literal["auto"] | Sequence[str] = "auto",
        *,
        n_bins: int = DEFAULT_N_BINS,
        threshold: float = EMPRT_THRESHOLD,
        seed: int = 0,
        granularity: Literal["leaf", "block"] = "leaf",
        method_kwargs: dict[str, Any] | None = None,
        reset_running_stats: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_bins = check_int("n_bins", n_bins, 2)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"`threshold` must be a finite number, got {threshold!r}.")
        self.threshold = float(threshold)
        # The working copy, layer list and forward order of a ParameterRandomization walking straight to the fully
        # randomised network. Kept out of this module's children (and state) on purpose: only its machinery is used.
        self.__dict__["_randomization"] = ParameterRandomization(
            method,
            model,
            layers=layers,
            order="bottom_up",
            stages="last",
            similarity="spearman_abs",
            seed=check_seed(seed),
            granularity=granularity,
            method_kwargs=method_kwargs,
            reset_running_stats=reset_running_stats,
        )
        for name in ("score_sum", "entropy_original_sum", "entropy_randomized_sum"):
            self.add_state(name, torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    @property
    def method(self) -> AttributionMethod:
        """The attribution method bound to the working copy."""
        return self._randomization.method

    def prepare(self, data: Batch) -> None:
        """Pass data beyond the batch on to the method bound to the working copy (see ``AttributionMethod.prepare``)."""
        self._randomization.prepare(data)

    def stage_attributions(
        self, x: Tensor, target: TargetType = None, attributions: Tensor | None = None
    ) -> Iterator[tuple[str, Tensor]]:
        """Yield ``("original", A)`` and ``("randomized", A)``: the two maps :meth:`update` compares.

        Args:
            x: input batch ``(N, ...)`` on the model's device (inference tensors are fine).
            target: class to explain (``None``: the original model's top-1 prediction); both maps explain it.
            attributions: the original model's maps, if already computed (yielded as they are).
        """
        helper = self._randomization
        check_maps_batch(x, helper._source.module, attributions)
        method = helper.method
        # Weights are loaded into the working copy and randomised in place, which needs normal tensors.
        with torch.inference_mode(False):
            helper._load_source_weights()
            if helper._forward_layers is None:
                helper._forward_layers = helper._sort_layers(x)
            target = method.resolve_target(x, target)
            if attributions is None:
                attributions = attributions_of(method.attribute(x, target))
            yield "original", attributions.to(x)
            walk = iter_randomized(
                helper._forward_layers,
                "bottom_up",
                seed=helper.seed,
                stages="last",
                reset_running_stats=helper.reset_running_stats,
            )
            with closing(walk):
                next(walk)  # "original": the intact copy, already attributed
                next(walk)  # every layer randomised
                yield "randomized", attributions_of(method.attribute(x, target))

    def score(self, x: Tensor, target: TargetType = None, attributions: Tensor | None = None) -> dict[str, Tensor]:
        """Attribute ``x`` on the original and the fully randomised copy; return per-sample entropies and scores.

        Args:
            x: input batch ``(N, ...)`` on the model's device (inference tensors are fine).
            target: class to explain: ``None`` (the original model's top-1 prediction), an int, or ``N`` indices.
            attributions: the original attributions for ``x`` and ``target`` if already computed (same shape as
                ``x``; saves one of the two attribution passes).

        Returns:
            ``{"emprt", "entropy_original", "entropy_randomized"}``, each ``(N,)``.
        """
        maps = dict(self.stage_attributions(x, target, attributions))
        original = discrete_entropy(maps["original"], self.n_bins)
        randomized = discrete_entropy(maps["randomized"], self.n_bins)
        units = maps["original"][0].numel() // (maps["original"].shape[1] if maps["original"].ndim == 4 else 1)
        return {
            "emprt": entropy_rise(original, randomized, max(units, 2)),
            "entropy_original": original,
            "entropy_randomized": randomized,
        }

    def update(
        self,
        x: Tensor,
        target: TargetType = None,
        attributions: Tensor | None = None,
        *,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Add a batch's per-sample values to the states (see :meth:`score` for the arguments).

        Args:
            x: input batch ``(N, ...)`` on the model's device.
            target: class to explain.
            attributions: the original attributions, if already computed.
            scores: this batch's :meth:`score`, if the caller already has it (nothing is attributed again).
        """
        if scores is None:
            scores = self.score(x, target, attributions)
        dtype, device = self.score_sum.dtype, self.score_sum.device
        self.score_sum += scores["emprt"].sum().to(dtype=dtype, device=device)
        self.entropy_original_sum += scores["entropy_original"].sum().to(dtype=dtype, device=device)
        self.entropy_randomized_sum += scores["entropy_randomized"].sum().to(dtype=dtype, device=device)
        self.count += scores["emprt"].shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Means over every sample seen (on all processes), as 0-d tensors; NaN before any update."""
        return self._means()

    def _means(self) -> dict[str, Tensor]:
        return {
            "emprt": self.score_sum / self.count,
            "entropy_original": self.entropy_original_sum / self.count,
            "entropy_randomized": self.entropy_randomized_sum / self.count,
        }

    def report(self) -> dict[str, Any]:
        """:meth:`compute`'s values plus ``"threshold"`` and ``"passed"`` (mean score > threshold).

        Synchronised across processes like :meth:`compute` (every process must call it).
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            result: dict[str, Any] = {key: value.clone() for key, value in self._means().items()}
        result["threshold"] = self.threshold
        result["passed"] = bool(result["emprt"] > self.threshold)
        return result

    def plot(self, val: dict[str, Any] | None = None, ax: Any | None = None) -> tuple[Any, Any]:
        """Bar chart of the mean entropies of the original and randomised maps, titled with the score and verdict.

        Args:
            val: a result of :meth:`report`; ``None`` calls :meth:`report`.
            ax: axes to draw into; ``None`` creates a new figure.

        Returns:
            ``(figure, axes)``.

        Example:
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
            >>> check = EfficientMPRT("saliency", net)
            >>> check.update(torch.rand(2, 3, 8, 8))
            >>> fig, ax = check.plot()
            >>> [tick.get_text() for tick in ax.get_xticklabels()]
            ['original', 'randomised']
        """
        val = self.report() if val is None else val
        fig, ax = figure_and_axes(ax, (4.0, 3.0))
        bars = ax.bar(
            ["original", "randomised"],
            [float(val["entropy_original"]), float(val["entropy_randomized"])],
            color=["tab:blue", "tab:orange"],
        )
        ax.bar_label(bars, fmt="%.2f")
        ax.set_ylabel(f"entropy of |A| ({self.n_bins} bins, nats)")
        verdict = "passed" if val["passed"] else "failed"
        ax.set_title(f"eMPRT {float(val['emprt']):.3f} ({verdict}, threshold {val['threshold']})")
        return fig, ax


class NoiseAveraged(AttributionMethod):
    """An attribution method averaged over noisy copies of the input: sMPRT's explanation.

    ``attribute(x)`` is the mean of ``method``'s attributions of the ``n_noise`` copies of
    :func:`~lit_attr.functional.mprt.noisy_copies` (noise standard deviation ``noise_level`` times each sample's
    value range; the last copy noise-free), all explaining the target of the clean input. Copies are clipped to the
    method's ``input_bounds`` when it has some. ``internal_batch_size`` is taken from ``method``: a chunk holds at
    most that many rows (samples x copies).

    Args:
        method: the method to smooth.
        n_noise: copies per sample (Hedström et al.: 50).
        noise_level: noise standard deviation as a fraction of each sample's value range (0.1).
        seed: seed of the noise.

    Example:
        >>> from lit_attr.methods import get_method
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> smooth = NoiseAveraged(get_method("saliency", net), n_noise=4)
        >>> smooth.attribute(torch.rand(2, 3, 2, 2), target=1).shape
        torch.Size([2, 3, 2, 2])
    """

    def __init__(self, method: AttributionMethod, n_noise: int = 50, noise_level: float = 0.1, seed: int = 0) -> None:
        if not isinstance(method, AttributionMethod):
            raise TypeError(f"`method` must be an AttributionMethod, got {type(method).__name__}.")
        super().__init__(
            method.model,
            forward_fn=method.forward_fn,
            input_bounds=method.input_bounds,
            internal_batch_size=method.internal_batch_size,
        )
        self.inner = method
        self.name = method.name
        self.n_noise = check_int("n_noise", n_noise, 1)
        noisy_copies(torch.zeros(1, 1), 1, noise_level, seed)  # validates noise_level and seed
        self.noise_level = float(noise_level)
        self.seed = seed

    def prepare(self, data: Batch) -> None:
        """Pass data on to the smoothed method."""
        self.inner.prepare(data)

    def rows_per_sample(self, **kwargs: Any) -> int:
        """Every sample costs ``n_noise`` rows of the smoothed method."""
        return self.n_noise

    def _attribute(self, x: Tensor, target: Tensor, **kwargs: Any) -> Tensor:
        copies = self.clip(noisy_copies(x, self.n_noise, self.noise_level, self.seed))
        rows = copies.flatten(0, 1)
        maps = attributions_of(self.inner.attribute(rows, target.repeat_interleave(self.n_noise)))
        return maps.view(copies.shape).mean(dim=1)


class SmoothMPRT(ParameterRandomization):
    """sMPRT: bottom-up MPRT with every explanation averaged over noisy copies of the input.

    Hedström et al. (2023) observed that MPRT's similarity can fall for reasons unrelated to the randomisation
    (shattered gradients make single maps noisy). sMPRT denoises every map, of the original and of each
    randomisation stage, by averaging the method over ``n_noise`` copies of the input (:class:`NoiseAveraged`:
    Gaussian noise with standard deviation ``noise_level`` times each sample's value range, the last copy
    noise-free; 50 copies and 0.1 by default), and randomises ``order="bottom_up"`` (from the input to the logits),
    which they recommend over top-down. It then compares the maps per stage with Spearman's rank correlation as
    :class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization` does, whose interface it keeps:
    :meth:`compute` (final-stage means, 0-d), :meth:`report` (per-stage curves and verdict, lower is better),
    :meth:`score` (``(N,)`` final and ``(N, S)`` per-stage values), :meth:`stage_attributions` (the smoothed maps).
    With ``n_noise=1`` it is exactly bottom-up MPRT.

    Cost: ``n_noise`` times MPRT's, i.e. ``(L + 2) * n_noise`` attributions per sample for L layers.

    Args:
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` instance.
        model: the classifier; required with a name, optional (must be ``method.model``) with an instance.
        n_noise: noisy copies per map (the last one noise-free).
        noise_level: noise standard deviation as a fraction of each sample's value range.
        layers: ``"auto"`` or a sequence of module names.
        stages: ``"all"`` or ``"last"``.
        similarity: a subset of ``("spearman_abs", "spearman", "ssim")`` (default: the two Spearman variants).
        seed: base seed of the re-initialisation, and seed of the noise.
        threshold: pass threshold on the final similarity.
        granularity: ``"leaf"`` or ``"block"`` (auto mode).
        method_kwargs: options for :func:`~lit_attr.methods.get_method` (name only).
        reset_running_stats: reset BatchNorm running statistics of randomised layers.
        **kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        >>> check = SmoothMPRT("saliency", net, n_noise=4)
        >>> check.update(torch.rand(2, 3, 8, 8))
        >>> report = check.report()
        >>> report["spearman_abs"]["stages"], sorted(check.compute())
        (['original', '0', '3'], ['spearman', 'spearman_abs'])
    """

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        *,
        n_noise: int = 50,
        noise_level: float = 0.1,
        layers: Literal["auto"] | Sequence[str] = "auto",
        stages: Literal["all", "last"] = "all",
        similarity: str | Sequence[str] = ("spearman_abs", "spearman"),
        seed: int = 0,
        threshold: float = 0.5,
        granularity: Literal["leaf", "block"] = "leaf",
        method_kwargs: dict[str, Any] | None = None,
        reset_running_stats: bool = True,
        **kwargs: Any,
    ) -> None:
        # A name builds the method on the user's model only to be deep-copied with it by ParameterRandomization.
        inner = resolve_method(method, model, method_kwargs)
        smoothed = NoiseAveraged(inner, n_noise=n_noise, noise_level=noise_level, seed=check_seed(seed))
        super().__init__(
            smoothed,
            layers=layers,
            order="bottom_up",
            stages=stages,
            similarity=similarity,
            seed=seed,
            threshold=threshold,
            granularity=granularity,
            reset_running_stats=reset_running_stats,
            **kwargs,
        )
        self.n_noise = smoothed.n_noise
        self.noise_level = smoothed.noise_level


def _emprt_headline(details: Mapping[str, Any]) -> tuple[float, bool | None]:
    return details.get("emprt", float("nan")), details.get("passed")


register_metric(
    "emprt",
    EfficientMPRT,
    consumes=("method", "x", "target", "attributions"),
    details=EfficientMPRT.report,
    modalities={"continuous"},
    # Its bar chart of entropies is one number per method, already in the table: no curves.
    presentation=Presentation(
        display_name="efficient MPRT",
        scores=(),
        sanity=SanityCheck("eMPRT (entropy rise)", "eMPRT", True, _emprt_headline),
        curves=None,
    ),
)


def smprt_summary(values: Mapping[str, Any], per_sample: bool) -> dict[str, Tensor]:
    """The registry summary of sMPRT: MPRT's, each key prefixed ``smprt_`` so both checks can run side by side."""
    return {f"smprt_{key}": value for key, value in similarity_summary(values, per_sample).items()}


# The runner's attributions are the method's raw maps; sMPRT's reference is the noise-averaged map, drawn itself.
register_metric(
    "smprt",
    SmoothMPRT,
    consumes=("method", "x", "target"),
    summary=smprt_summary,
    details=SmoothMPRT.report,
    modalities={"continuous"},
    presentation=Presentation(
        display_name="smooth MPRT",
        scores=(),
        sanity=SanityCheck("sMPRT (final spearman |A|)", "sMPRT", False, similarity_headline),
        curves=similarity_curves(
            "smprt_curves", "Smooth MPRT (bottom-up, noise-averaged maps): similarity to the trained model's"
        ),
    ),
)
