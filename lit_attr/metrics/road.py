"""ROAD as a torchmetrics ``Metric`` (the math lives in :mod:`lit_attr.functional.road`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchmetrics import Metric

import lit_attr.viz as viz
from lit_attr._checks import check_choice, check_optional_int, check_seed
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, OUTPUTS
from lit_attr.functional.road import (
    DEFAULT_PERCENTILES,
    DEFAULT_RTOL,
    ROAD_REDUCTIONS,
    check_noise,
    check_percentiles,
    check_rtol,
    road,
)
from lit_attr.methods.base import TargetType
from lit_attr.metrics._model_ref import ModelRef
from lit_attr.metrics._plotting import figure_and_axes
from lit_attr.metrics.presentation import Presentation, Results, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["ROAD"]


class ROAD(Metric):
    """ROAD (RemOve And Debias, Rong et al. 2022): MoRF and LeRF curves under noisy linear imputation.

    Every :meth:`update` runs :func:`~lit_attr.functional.road.road` on a batch: for each percentile ``p``, the
    ``p`` % most relevant (MoRF) or least relevant (LeRF) pixels are filled by
    :func:`~lit_attr.functional.road.noisy_linear_imputation` and the target score is recorded. The per-sample
    curves are added to ``sum``-reduced states, so the result under DDP equals the single-process result (each
    sample's imputation noise is seeded from its own values).

    :meth:`compute` returns the means over all samples: ``"road"`` = ``(lerf - morf) / 2`` (higher is better),
    ``"morf"`` (mean MoRF score over the percentiles, lower is better), ``"lerf"`` (higher is better), and the
    curves ``"morf_curve"`` and ``"lerf_curve"`` of shape ``(P,)``, one point per percentile. :meth:`score` returns
    one batch's per-sample values under the same names (``(N,)`` and ``(N, P)``) without changing the states, and
    ``update(..., scores=...)`` adds values computed that way.

    The model is held by reference (not a submodule, not in ``state_dict``); its modes and buffers are restored
    after every update.

    Args:
        model: classifier returning logits ``(N, K)``.
        percentiles: percentages of pixels removed, each in (0, 100); default 10, 20, ..., 90.
        noise: standard deviation of the imputation noise, in the units of the model's input (ROAD: 0.01).
        seed: seed of the noise.
        reduce: ``"sum"`` or ``"abs_sum"``: how the map's channels become per-pixel relevance.
        output: ``"prob"``, ``"logit"`` or ``"prob_ratio"``.
        internal_batch_size: most (sample x percentile x order) rows per imputation and forward pass (default 128).
        rtol: relative residual of the imputation's conjugate-gradient solve
            (:data:`~lit_attr.functional.road.DEFAULT_RTOL`).
        kwargs: options of :class:`torchmetrics.Metric`.

    Raises:
        TypeError: if ``model`` is not a module or ``seed`` not an int.
        ValueError: for bad percentiles, noise, option names or sizes.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        >>> metric = ROAD(net, percentiles=(20, 50, 80))
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8))
        >>> result = metric.compute()
        >>> sorted(result), result["morf_curve"].shape
        (['lerf', 'lerf_curve', 'morf', 'morf_curve', 'road'], torch.Size([3]))
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = None
    plot_upper_bound = None

    morf_curve_sum: Tensor
    lerf_curve_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        noise: float = 0.01,
        seed: int = 0,
        reduce: str = "sum",
        output: str = "prob",
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        rtol: float = DEFAULT_RTOL,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self.percentiles = check_percentiles(percentiles)
        self.output = check_choice("output", output, OUTPUTS)
        self._model_ref = ModelRef(model)
        self._options: dict[str, Any] = {
            "percentiles": self.percentiles,
            "noise": check_noise(noise),
            "seed": check_seed(seed),
            "reduce": check_choice("reduce", reduce, ROAD_REDUCTIONS),
            "output": output,
            "internal_batch_size": check_optional_int("internal_batch_size", internal_batch_size),
            "rtol": check_rtol(rtol),
        }
        points = len(self.percentiles)
        self.add_state("morf_curve_sum", torch.zeros(points), dist_reduce_fx="sum")
        self.add_state("lerf_curve_sum", torch.zeros(points), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    @property
    def model(self) -> nn.Module:
        """The evaluated model (held by reference, not a submodule)."""
        return self._model_ref.module

    def score(
        self, x: Tensor, attributions: Tensor, target: TargetType = None, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        """ROAD's per-sample values for a batch; the states are left as they are.

        Args:
            x: ``(N, C, H, W)`` inputs on the model's device.
            attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps.
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            logits: the model's logits for ``x`` if already computed (saves one forward pass).

        Returns:
            ``{"road", "morf", "lerf"}`` of shape ``(N,)`` and ``{"morf_curve", "lerf_curve"}`` of shape ``(N, P)``.
        """
        result = road(self.model, x, attributions, target, logits=logits, **self._options)
        return {
            "road": result.road,
            "morf": result.morf,
            "lerf": result.lerf,
            "morf_curve": result.morf_curve,
            "lerf_curve": result.lerf_curve,
        }

    def update(
        self,
        x: Tensor,
        attributions: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Add a batch's curves to the states (see :meth:`score` for the arguments).

        Args:
            x: ``(N, C, H, W)`` inputs on the model's device.
            attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps.
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            logits: the model's logits for ``x`` if already computed.
            scores: this batch's :meth:`score`, if the caller already has it (nothing is imputed again).
        """
        if scores is None:
            scores = self.score(x, attributions, target, logits=logits)
        dtype, device = self.morf_curve_sum.dtype, self.morf_curve_sum.device
        self.morf_curve_sum += scores["morf_curve"].sum(dim=0).to(dtype=dtype, device=device)
        self.lerf_curve_sum += scores["lerf_curve"].sum(dim=0).to(dtype=dtype, device=device)
        self.count += scores["morf_curve"].shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Means over every sample seen (on all processes); NaN before any update.

        Returns:
            ``{"road", "morf", "lerf"}`` scalars and ``{"morf_curve", "lerf_curve"}`` of shape ``(P,)``.
        """
        count = self.count.to(self.morf_curve_sum.dtype)
        morf_curve, lerf_curve = self.morf_curve_sum / count, self.lerf_curve_sum / count
        morf, lerf = morf_curve.mean(), lerf_curve.mean()
        return {
            "road": (lerf - morf) / 2,
            "morf": morf,
            "lerf": lerf,
            "morf_curve": morf_curve,
            "lerf_curve": lerf_curve,
        }

    def plot(self, val: dict[str, Tensor] | None = None, ax: Any | None = None) -> tuple[Any, Any]:
        """Draw the mean MoRF and LeRF curves against the percentage of pixels removed.

        Uses matplotlib's object-oriented API only (no pyplot state).

        Args:
            val: a result of :meth:`compute`; ``None`` calls :meth:`compute`.
            ax: axes to draw into; ``None`` creates a new figure.

        Returns:
            ``(figure, axes)``.

        Example:
            >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
            >>> metric = ROAD(net, percentiles=(20, 50, 80))
            >>> metric.update(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8))
            >>> fig, ax = metric.plot()
            >>> [line.get_xdata().tolist() for line in ax.get_lines()]
            [[20, 50, 80], [20, 50, 80]]
        """
        val = self.compute() if val is None else val
        fig, ax = figure_and_axes(ax, (5.0, 3.5))
        removed = list(self.percentiles)
        for order, color in (("morf", "tab:red"), ("lerf", "tab:green")):
            curve = val[f"{order}_curve"].detach().float().cpu()
            ax.plot(removed, curve, marker="o", color=color, label=f"{order.upper()} (mean {float(val[order]):.3f})")
        ax.set_xlabel("% of pixels removed (noisy linear imputation)")
        ax.set_ylabel({"prob": "probability", "logit": "logit", "prob_ratio": "p(x_t) / p(x)"}[self.output])
        ax.set_title(f"ROAD (LeRF - MoRF) / 2 = {float(val['road']):.3f}")
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        return fig, ax


def _details(metric: ROAD) -> dict[str, Any]:
    # The report draws the curves against the percentiles they were measured at.
    return {**metric.compute(), "percentiles": [float(p) for p in metric.percentiles]}


def _curves(results: Results, when: str) -> dict[str, Figure]:
    figure = viz.insertion_deletion_figure(
        results,
        title=f"ROAD: target probability after noisy linear imputation, most / least relevant first ({when})",
        games=("morf", "lerf"),
        x_values=[p / 100 for p in next(iter(results.values()))["percentiles"]],
        x_label="fraction of pixels removed",
    )
    return {"road_curves": figure}


register_metric(
    "road",
    ROAD,
    consumes=("model", "x", "attributions", "target", "logits"),
    details=_details,
    per_sample=True,
    modalities={"images"},  # the imputation solves over the pixel grid's neighbours
    presentation=Presentation(display_name="ROAD", scores=(Score("road", "ROAD"),), curves=_curves),
)
