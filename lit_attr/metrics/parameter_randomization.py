"""The parameter-randomisation sanity check (Adebayo et al. 2018) as a torchmetrics ``Metric``.

The layer selection, re-initialisation and stage walk live in :mod:`lit_attr.functional.randomization`, the private
model copy and the similarities of maps in :mod:`lit_attr.metrics.stagewise`; this module adds the bookkeeping, the
DDP-safe states and the check's registration (summary, headline and curves).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

import lit_attr.viz as viz
from lit_attr._checks import check_number, check_seed
from lit_attr.functional.randomization import (
    GRANULARITIES,
    ORDERS,
    STAGE_MODES,
    Layer,
    iter_randomized,
    randomizable_layers,
    randomization_stages,
)
from lit_attr.methods.base import AttributionMethod, TargetType, attributions_of
from lit_attr.metrics._model_ref import ModelRef
from lit_attr.metrics._plotting import figure_and_axes
from lit_attr.metrics.presentation import CurveDrawer, Presentation, Results, SanityCheck
from lit_attr.metrics.registry import register_metric, scalar_entries
from lit_attr.metrics.stage_maps import map_metrics_of
from lit_attr.metrics.stagewise import (
    SIMILARITIES,
    bind_to_copy,
    check_maps_batch,
    check_similarity,
    forward_ordered_layers,
    heatmaps,
    load_weights_into,
    stage_similarities,
)

if TYPE_CHECKING:
    from lit_attr.batch import Batch

__all__ = ["SIMILARITIES", "ParameterRandomization", "similarity_curves", "similarity_headline", "similarity_summary"]


class ParameterRandomization(Metric):
    """Similarity of a method's attributions before and after randomising the model's layers, per stage.

    A method that explains the model (rather than the input alone) must produce different maps for a network
    whose weights are random: the similarity between original and randomised-model maps should fall towards 0
    as more layers are randomised (Adebayo et al. 2018, "Sanity checks for saliency maps").

    **The user's model is never modified.** The metric holds a private deep copy (the working copy) and, at every
    :meth:`update`, first loads the user's current weights and buffers into it (``load_state_dict``), so a metric
    built before training checks the weights as they are when it is updated; it then follows the model's device
    and floating dtype. Every forward, attribution and randomisation runs on the working copy.

    The attribution method is bound to the working copy in one of two ways:

    * ``method`` is a registered name: the method is built with :func:`~lit_attr.methods.get_method` on the working
      copy, with ``method_kwargs``; ``model`` is required.
    * ``method`` is an :class:`~lit_attr.methods.AttributionMethod` instance: the instance is deep-copied together
      with its model, so every reference it holds to the model (``model``, ``forward_fn`` when it is the model or
      one of its bound methods, Captum wrappers) points to the working copy.

    A ``forward_fn`` that is a closure over the user's model (``lambda x: model(x)["logits"]``) cannot be
    re-bound: the first :meth:`update` detects that the working copy is never called and raises. Wrap such a model
    in an ``nn.Module`` whose ``forward`` returns logits instead.

    Layers are resolved at construction (``layers="auto"``: every convolution, linear and normalisation leaf, or
    top-level blocks with ``granularity="block"``; or explicit names; see
    :func:`~lit_attr.functional.randomization.randomizable_layers`), so the number of stages, and with it the
    shape of the states, is fixed before any data is seen (DDP-safe). Their forward order, which names and orders
    the stages, is found with hooks on the first :meth:`update` (one forward pass on one sample); it is the same on
    every rank.

    Stages (:func:`~lit_attr.functional.randomization.randomization_stages`): ``"original"`` (nothing randomised:
    the attributions are recomputed on the intact copy and compared with the originals, a determinism check that
    gives 1 for deterministic methods), then, for ``order="top_down"``, the last layer, the last two, ... up to all
    layers; ``"bottom_up"`` cascades from the input; ``"independent"`` randomises one layer at a time.
    ``stages="last"`` keeps only the fully randomised network (3 attribution passes per batch instead of
    L + 2). Layer ``i`` (forward order) is re-initialised with its own ``reset_parameters()`` seeded with
    ``seed + i``, identically on every update and rank; normalisation layers become identity transforms and, with
    ``reset_running_stats=True``, lose their running statistics.

    Similarities (per sample, averaged over the dataset):

    * ``"spearman_abs"``: Spearman rank correlation of ``|A|`` summed over channels (the default criterion);
    * ``"spearman"``: Spearman rank correlation of the signed channel sum;
    * ``"ssim"``: SSIM of the min-max normalised ``|A|`` channel sums (image attributions only).

    Spearman correlations use average ranks for ties and are 0 where a map is constant
    (:func:`~lit_attr.functional.similarity.spearman`). Attributions of shape ``(N, C, H, W)`` are summed over
    channels; other shapes (``(N, D)``, ``(N, L, E)``) are compared element-wise.

    :meth:`compute` returns the final-stage mean of every selected similarity as 0-d tensors (``{"spearman_abs":
    ...}``), so it works with ``LightningModule.log_dict`` and ``MetricCollection``. :meth:`report` adds what is not
    a scalar: for every similarity ``{"stages": names, "curve": (S,) mean per stage, "final": last stage,
    "passed": final < threshold}``, plus ``"threshold"`` and the overall verdict ``"passed"``. A method passes the
    check when its final ``spearman_abs`` (or, without it, every selected similarity) is below the threshold
    (default 0.5). :meth:`stage_attributions` yields the very maps that :meth:`update` scores, stage by stage.

    ``map_metrics`` names registered metrics of the maps alone (:func:`~lit_attr.metrics.stage_maps.map_metric_names`:
    ``sparseness``, ``complexity``, ``effective_complexity``), which score the maps of every stage as well (on the
    attributions themselves, with the metric's defaults): :meth:`report` adds ``"map_metrics": {score: {"stages",
    "curve", "final"}}``, the mean per stage over the samples where the score is defined, kept in ``sum``-reduced
    states beside the similarities'. A method that explains the model should lose sparseness and gain entropy as
    layers are randomised. They stay out of :meth:`compute` and the registry summary (no scalars by name).

    Args:
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` instance.
        model: the classifier (logits); required with a name, optional (must be ``method.model``) with an instance.
        layers: ``"auto"`` or a sequence of module names.
        order: ``"top_down"`` (default), ``"bottom_up"`` or ``"independent"``.
        stages: ``"all"`` or ``"last"``.
        similarity: a subset of :data:`SIMILARITIES` (a single name is accepted).
        seed: base seed of the re-initialisation.
        threshold: pass threshold on the final similarity.
        granularity: ``"leaf"`` or ``"block"`` (auto mode).
        method_kwargs: options for :func:`~lit_attr.methods.get_method` (name only).
        reset_running_stats: reset BatchNorm running statistics of randomised layers (PyTorch's
            ``reset_parameters`` behaviour); ``False`` keeps the trained statistics.
        map_metrics: registered metrics of the maps alone to score every stage's maps with (none by default).
        **kwargs: options of :class:`torchmetrics.Metric` (``sync_on_compute``, ``dist_sync_fn``, ...).

    Raises:
        TypeError: for a ``method``/``model`` of the wrong type.
        ValueError: for an unknown option, a missing or conflicting ``model``, ``method_kwargs`` with an instance,
            layers that cannot be resolved, or ``map_metrics`` that are unknown or need more than the maps.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        >>> check = ParameterRandomization("saliency", net)
        >>> check.update(torch.rand(2, 3, 8, 8))
        >>> sorted(check.compute())
        ['spearman', 'spearman_abs', 'ssim']
        >>> report = check.report()
        >>> report["spearman_abs"]["stages"], float(report["spearman_abs"]["curve"][0])
        (['original', '3', '0'], 1.0)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = -1.0
    plot_upper_bound = 1.0

    similarity_sum: Tensor
    total: Tensor

    def __init__(
        self,
        method: str | AttributionMethod,
        model: nn.Module | None = None,
        layers: Literal["auto"] | Sequence[str] = "auto",
        order: Literal["top_down", "bottom_up", "independent"] = "top_down",
        stages: Literal["all", "last"] = "all",
        similarity: str | Sequence[str] = ("spearman_abs", "spearman", "ssim"),
        seed: int = 0,
        threshold: float = 0.5,
        granularity: Literal["leaf", "block"] = "leaf",
        method_kwargs: dict[str, Any] | None = None,
        reset_running_stats: bool = True,
        map_metrics: str | Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for arg, value, choices in (("order", order, ORDERS), ("stages", stages, STAGE_MODES)):
            if value not in choices:
                raise ValueError(f"`{arg}` must be one of {choices}, got {value!r}.")
        if granularity not in GRANULARITIES:
            raise ValueError(f"`granularity` must be one of {GRANULARITIES}, got {granularity!r}.")
        if stages == "last" and order == "independent":
            raise ValueError("`stages='last'` (the fully randomised network) needs `order` 'top_down' or 'bottom_up'.")
        check_seed(seed)
        check_number("threshold", threshold)
        self.similarity = check_similarity(similarity)
        # A tuple, not module attributes: the scorers' states would otherwise join this metric's.
        self._map_metrics = map_metrics_of(map_metrics, reserved=self.similarity)
        self.map_keys = tuple(score.key for metric in self._map_metrics for score in metric.scores)
        self.order = order
        self.stages = stages
        self.seed = seed
        self.threshold = float(threshold)
        self.reset_running_stats = bool(reset_running_stats)

        source, bound = bind_to_copy(method, model, method_kwargs)
        self._source = ModelRef(source)
        self._method = bound
        self._layers: list[Layer] = randomizable_layers(bound.model, layers, granularity)
        # Filled on the first update, from a forward pass; until then the registration order stands in.
        self._forward_layers: list[Layer] | None = None
        num_stages = len(self._layers) + 1 if stages == "all" else 2
        self.add_state("similarity_sum", torch.zeros(len(self.similarity), num_stages), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        if self.map_keys:  # per score and stage: the sum over the samples where it is defined, and their count
            self.add_state("map_sum", torch.zeros(len(self.map_keys), num_stages), dist_reduce_fx="sum")
            self.add_state("map_count", torch.zeros(len(self.map_keys), num_stages), dist_reduce_fx="sum")

    @property
    def method(self) -> AttributionMethod:
        """The attribution method bound to the working copy."""
        return self._method

    @property
    def stage_names(self) -> list[str]:
        """Stage names, ``"original"`` first (in registration order of the layers until the first update)."""
        layers = self._forward_layers if self._forward_layers is not None else self._layers
        return [name for name, _ in randomization_stages([n for n, _ in layers], self.order, self.stages)]

    def prepare(self, data: Batch) -> None:
        """Pass data beyond the batch on to the method bound to the working copy (see ``AttributionMethod.prepare``).

        Its first sample also fixes the layers' forward order (the stage names), which otherwise waits for the first
        update: a resumed evaluation whose checked samples were all done before the interruption names them alike.
        """
        self._method.prepare(data)
        if self._forward_layers is None and len(data) and data.x.is_floating_point():
            with torch.inference_mode(False):
                self._load_source_weights()
                weight = next((p for p in self._method.model.parameters() if p.is_floating_point()), None)
                sample = data.x[:1] if weight is None else data.x[:1].to(device=weight.device, dtype=weight.dtype)
                self._forward_layers = self._sort_layers(sample)

    def stage_attributions(self, x: Tensor, target: TargetType = None) -> Iterator[tuple[str, Tensor]]:
        """Yield ``(stage name, attributions)`` for every stage, exactly as :meth:`update` computes them.

        The working copy is loaded with the user's current weights, the target is resolved on the intact copy
        (every stage explains the same, original target), and the stages are walked in order, ``"original"``
        first. The copy is restored when the generator ends, is closed, or its consumer raises.

        Args:
            x: input batch ``(N, ...)`` on the model's device (inference tensors are fine).
            target: class to explain: ``None`` (the original model's top-1 prediction), an int, or ``N`` indices.

        Example:
            >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
            >>> check = ParameterRandomization("saliency", net, similarity="spearman_abs")
            >>> [(stage, a.shape) for stage, a in check.stage_attributions(torch.rand(1, 3, 4, 4))]
            [('original', torch.Size([1, 3, 4, 4])), ('1', torch.Size([1, 3, 4, 4]))]
        """
        check_maps_batch(x, self._source.module)
        for stage, maps in self._walk(x, target, reference=False):
            yield str(stage), maps

    def _walk(self, x: Tensor, target: TargetType, reference: bool) -> Iterator[tuple[str | None, Tensor]]:
        """Load the user's weights, then yield ``(None, A)`` on the intact copy (if asked) and every stage's maps."""
        method = self._method
        # Lightning validates under inference mode; weights of the working copy are loaded and randomised in
        # place, which must happen on normal tensors.
        with torch.inference_mode(False):
            self._load_source_weights()
            if self._forward_layers is None:
                self._forward_layers = self._sort_layers(x)
            target = method.resolve_target(x, target)
            if reference:
                yield None, attributions_of(method.attribute(x, target))
            walk = iter_randomized(
                self._forward_layers,
                self.order,
                seed=self.seed,
                stages=self.stages,
                reset_running_stats=self.reset_running_stats,
            )
            # closing() restores the working copy at once, also when an attribution raises mid-walk.
            with closing(walk):
                for stage in walk:
                    yield stage, attributions_of(method.attribute(x, target))

    def score(self, x: Tensor, target: TargetType = None, attributions: Tensor | None = None) -> dict[str, Tensor]:
        """Attribute ``x`` with the original and every randomised network; return per-sample similarities.

        The states are left as they are.

        Args:
            x: input batch ``(N, ...)`` on the model's device (inference tensors are fine).
            target: class to explain: ``None`` (the original model's top-1 prediction), an int, or ``N`` indices.
                Every stage explains the same, original target.
            attributions: the original attributions for ``x`` and ``target`` if already computed (same shape as
                ``x``); computed on the intact working copy otherwise.

        Returns:
            For every similarity ``name``: ``name`` ``(N,)`` (the final stage) and ``name + "_curve"`` ``(N, S)``
            (every stage, ``"original"`` first); for every score of ``map_metrics``, ``key + "_curve"`` ``(N, S)``.

        Raises:
            TypeError: if ``x`` or ``attributions`` is not a tensor.
            ValueError: if ``attributions`` has the wrong shape, ``"ssim"`` is requested for non-image
                attributions, or the method's ``forward_fn`` does not call the model it was bound to.
        """
        check_maps_batch(x, self._source.module, attributions)
        if "ssim" in self.similarity and (x.ndim != 4 or min(x.shape[-2:]) < 6):
            raise ValueError(
                f"similarity 'ssim' needs image inputs (N, C, H, W) of at least 6x6 pixels (its window is 11x11), "
                f"got shape {tuple(x.shape)}; drop it from `similarity`."
            )
        rows, map_rows = [], []
        reference = None
        if attributions is not None:
            reference = heatmaps(attributions.to(x))
        for stage, maps in self._walk(x, target, reference=attributions is None):
            if stage is None:
                reference = heatmaps(maps)
            else:
                rows.append(stage_similarities(self.similarity, reference, heatmaps(maps), self.similarity_sum))
                if self.map_keys:
                    map_rows.append(torch.stack([v.to(maps) for metric in self._map_metrics for v in metric(maps)]))
        values = torch.stack(rows, dim=2)  # (similarities, N, stages)
        scores: dict[str, Tensor] = {}
        for row, name in enumerate(self.similarity):
            scores[name] = values[row, :, -1]
            scores[f"{name}_curve"] = values[row]
        if map_rows:
            mapped = torch.stack(map_rows, dim=2)  # (map scores, N, stages)
            for row, key in enumerate(self.map_keys):
                scores[f"{key}_curve"] = mapped[row]
        return scores

    def update(
        self,
        x: Tensor,
        target: TargetType = None,
        attributions: Tensor | None = None,
        *,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Accumulate the per-stage similarities of a batch (see :meth:`score` for the arguments).

        Args:
            x: input batch ``(N, ...)`` on the model's device (inference tensors are fine).
            target: class to explain (see :meth:`score`).
            attributions: the original attributions, if already computed.
            scores: this batch's :meth:`score`, if the caller already has it (nothing is attributed again).
        """
        if scores is None:
            scores = self.score(x, target, attributions)
        curves = torch.stack([scores[f"{name}_curve"] for name in self.similarity])  # (similarities, N, stages)
        self.similarity_sum += curves.sum(dim=1).to(self.similarity_sum)
        self.total += curves.shape[1]
        if self.map_keys:
            values = torch.stack([scores[f"{key}_curve"] for key in self.map_keys]).double()  # (keys, N, stages)
            defined = torch.isfinite(values)
            self.map_sum += torch.where(defined, values, 0.0).sum(dim=1).to(self.map_sum)
            self.map_count += defined.sum(dim=1).to(self.map_count)

    def compute(self) -> dict[str, Tensor]:
        """The final-stage mean of every similarity, as 0-d tensors keyed by similarity name."""
        curves = self.similarity_sum / self.total
        return {name: curves[row, -1] for row, name in enumerate(self.similarity)}

    def report(self) -> dict[str, Any]:
        """Per similarity ``{"stages", "curve", "final", "passed"}``, plus ``"threshold"``, ``"order"``, ``"passed"``.

        With ``map_metrics``, also ``"map_metrics": {score key: {"stages", "curve", "final"}}``. Synchronised across
        processes like :meth:`compute` (every process must call it).
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            curves = (self.similarity_sum / self.total).clone()
            map_curves = (self.map_sum / self.map_count).clone() if self.map_keys else None
        names = self.stage_names
        result: dict[str, Any] = {}
        for row, name in enumerate(self.similarity):
            final = curves[row, -1]
            result[name] = {"stages": names, "curve": curves[row], "final": final, "passed": final < self.threshold}
        result["threshold"] = self.threshold
        result["order"] = self.order  # what the stages are: the figures name the fully randomised one
        deciding = ["spearman_abs"] if "spearman_abs" in self.similarity else list(self.similarity)
        result["passed"] = all(bool(result[name]["passed"]) for name in deciding)
        if map_curves is not None:
            result["map_metrics"] = {
                key: {"stages": names, "curve": map_curves[row], "final": map_curves[row, -1]}
                for row, key in enumerate(self.map_keys)
            }
        return result

    def plot(self, val: dict[str, Any] | None = None, ax: Any | None = None) -> tuple[Any, Any]:
        """Draw the mean similarity per stage, one line per similarity measure, and the pass threshold.

        Uses matplotlib's object-oriented API only (no pyplot state), so it is safe in training loops and threads.

        Args:
            val: a result of :meth:`report`; ``None`` calls :meth:`report`.
            ax: axes to draw into; ``None`` creates a new figure.

        Returns:
            ``(figure, axes)``.

        Example:
            >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
            >>> check = ParameterRandomization("saliency", net, similarity="spearman_abs")
            >>> check.update(torch.rand(2, 3, 8, 8))
            >>> fig, ax = check.plot()
            >>> [label.get_text() for label in ax.get_xticklabels()]  # the stages: one randomised layer, so all
            ['original', 'fully randomised']
            >>> curve = torch.as_tensor(ax.get_lines()[0].get_ydata())  # 1 before any layer is randomised
            >>> round(float(curve[0]), 4), torch.allclose(curve, check.report()["spearman_abs"]["curve"])
            (1.0, True)
        """
        val = self.report() if val is None else val
        names = [name for name in SIMILARITIES if name in val]
        stages = val[names[0]]["stages"]
        fig, ax = figure_and_axes(ax, (max(5.0, 0.4 * len(stages) + 2.0), 3.8), layout="constrained")
        positions = list(range(len(stages)))
        for name in names:
            curve = val[name]["curve"].detach().float().cpu()
            ax.plot(positions, curve, marker="o", label=f"{name} (final {float(val[name]['final']):.2f})")
        ax.axhline(val["threshold"], color="grey", linestyle="--", linewidth=1, label=f"threshold {val['threshold']}")
        ax.axhline(0.0, color="black", linewidth=0.5)
        viz.label_stage_axis(ax, stages, self.order, fontsize="small")
        ax.set_ylim(self.plot_lower_bound - 0.05, self.plot_upper_bound + 0.05)
        ax.set_xlabel(f"randomised up to ({self.order.replace('_', '-')})")
        ax.set_ylabel("similarity to original")
        ax.set_title(f"{type(self).__name__}: {self._method.name or type(self._method).__name__}")
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
        return fig, ax

    # ------------------------------------------------------------------ internals
    def _load_source_weights(self) -> None:
        load_weights_into(self._source.module, self._method.model)

    def _sort_layers(self, x: Tensor) -> list[Layer]:
        return forward_ordered_layers(self._method, self._layers, x)




def _randomization(method: AttributionMethod, stages: str = "last", **options: Any) -> ParameterRandomization:
    # By name (monitor, evaluate, AttributionQuality) the check defaults to its cheap per-epoch form: only the fully
    # randomised network. ``stages="all"`` asks for the whole cascade.
    return ParameterRandomization(method, stages=stages, **options)  # type: ignore[arg-type]


def similarity_summary(values: Mapping[str, Any], per_sample: bool) -> dict[str, Tensor]:
    """The registry summary of a stage-wise check: each similarity at the final stage (per sample, or the mean)."""
    if per_sample:
        return scalar_entries(values, per_sample)
    return {name: entry["final"] for name, entry in values.items() if isinstance(entry, Mapping) and "final" in entry}


def similarity_headline(details: Mapping[str, Any]) -> tuple[float, bool | None]:
    """A stage-wise check's headline: the final ``spearman_abs`` (else the first measure's) and the verdict."""
    first = details.get("spearman_abs") or next((v for v in details.values() if isinstance(v, Mapping)), {})
    return first.get("final", float("nan")), details.get("passed", first.get("passed"))


def _similarity_figures(results: Results, when: str, *, stem: str, title: str) -> dict[str, Any]:
    return {stem: viz.similarity_figure(results, title=f"{title} ({when})")}


def similarity_curves(stem: str, title: str) -> CurveDrawer:
    """The curves of a stage-wise check: each method's similarity per stage, one panel per measure."""
    return functools.partial(_similarity_figures, stem=stem, title=title)


register_metric(
    "randomization",
    _randomization,
    consumes=("method", "x", "target", "attributions"),
    summary=similarity_summary,
    details=ParameterRandomization.report,
    modalities={"continuous"},  # similarity="ssim" (a default) needs images: it says so on other inputs
    presentation=Presentation(
        display_name="parameter randomisation (MPRT)",
        scores=(),
        sanity=SanityCheck("MPRT (final spearman |A|)", "MPRT", False, similarity_headline),
        curves=similarity_curves(
            "randomization_curves",
            "Parameter randomisation: similarity to the trained model's maps, lower is better",
        ),
    ),
)
