"""``RandomizationCheck``: the parameter-randomisation sanity check (Adebayo et al. 2018) as a Lightning callback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

import lit_attr.delivery as delivery
import lit_attr.viz as viz
from lit_attr._checks import check_choice, check_int, check_names, check_number
from lit_attr._hygiene import preserved_rng_state
from lit_attr.batch import Batch, BatchAdapter
from lit_attr.callbacks._base import AttributionCallback
from lit_attr.functional.randomization import ORDERS, STAGE_MODES
from lit_attr.keys import VERDICT, scalar_key
from lit_attr.metrics.parameter_randomization import SIMILARITIES
from lit_attr.metrics.stage_maps import map_metrics_of
from lit_attr.runner import AttributionRunner, MethodsArg

__all__ = ["RandomizationCheck"]

METRIC = "randomization"  # the registered metric the check runs: the <metric> of its keys


class RandomizationCheck(AttributionCallback):
    """Check that attributions depend on the trained weights: randomise the layers and watch the maps change.

    For every method, a :class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization` metric compares
    the attributions of the trained model with those of copies whose layers are re-initialised stage by stage
    (``order="top_down"``: from the logits down). A method that explains the model gives maps whose similarity to
    the originals falls towards 0; one whose maps stay similar (above ``threshold``) fails the check. The model
    itself is never modified: the metric works on a private copy, loaded with the current weights at every run.

    It runs at the end of ``fit`` (``every_n_epochs=None``) or at the end of every N-th training epoch, on a fixed
    probe set of ``num_samples`` validation samples drawn with ``seed`` (the same on every rank; each rank checks
    its shard and the similarities are ``sum``-reduced over ranks). Rank 0 then logs, through
    :mod:`lit_attr.delivery`:

    * scalars ``attr/<method>/randomization/<similarity>`` (the similarity at the last stage) and
      ``attr/<method>/randomization/passed`` (1 or 0): the keys of :mod:`lit_attr.keys`, as the monitor's
      ``"randomization"`` metric logs them;
    * the per-stage similarity curves (``randomization/similarity_curves``) and a table of them
      (``randomization/curves``);
    * a grid of the first ``log_heatmaps`` probe samples' ``|A|`` at every stage (``randomization/<method>/stages``):
      the very maps the metric scores (:meth:`ParameterRandomization.stage_attributions`);
    * a pass/fail table (``randomization/summary``);
    * with ``map_metrics`` (registered metrics of the maps alone: ``sparseness``, ``complexity``,
      ``effective_complexity``), each of their scores on the maps of every stage, averaged over the probe samples:
      the last stage's as ``attr/<method>/randomization/<score>``, the curves in a figure with a panel per score,
      titled with its direction (``randomization/map_metric_curves``), and a table (``randomization/map_metrics``).
      A method that explains the model loses sparseness and gains entropy as its layers are randomised (the idea
      of eMPRT). Their per-sample values are reduced over ranks as the similarities are, in the metric's ``sum``
      states.

    The last results are also kept in :attr:`results`. Like :class:`~lit_attr.callbacks.AttributionMonitor`, the
    check leaves training untouched (no global random draws, model state and data loaders as they were).

    Args:
        methods: registered method names, factories ``factory(model, **kwargs)``, or a dict ``{name: method}``.
        num_samples: probe-set size.
        order: ``"top_down"``, ``"bottom_up"`` or ``"independent"``.
        stages: ``"all"`` (a cascade, one stage per layer) or ``"last"`` (only the fully randomised network).
        every_n_epochs: ``None`` runs once at the end of ``fit``; N runs after every N-th training epoch.
        similarity: names from :data:`~lit_attr.metrics.parameter_randomization.SIMILARITIES`.
        threshold: a method passes when its final ``spearman_abs`` similarity (else every similarity) is below it.
        map_metrics: names of registered metrics of the maps alone
            (:func:`~lit_attr.metrics.stage_maps.map_metric_names`) that score every stage's maps, with their default
            options; a metric that needs the model, the inputs or masks is refused. They do not decide the verdict.
        layers: ``"auto"`` or module names to randomise (see ``ParameterRandomization``).
        seed: seed of the probe-set draw and of the re-initialisation.
        log_heatmaps: probe samples in the stage grids (0: none).
        input_bounds: ``(low, high)`` passed to every method.
        method_kwargs: ``{method name: {option: value}}``. Every method is prepared with the probe set
            (``AttributionMethod.prepare``): ``ig2`` draws its references from it unless given a ``reference_pool``.
        batch_adapter: maps a collated batch to ``(x, y, mask)``.
        on_error: ``"raise"`` or ``"warn"`` (skip this run with a warning; training goes on).
        target: explain the ``"label"`` or the ``"prediction"``.
        batch_size: probe samples checked at once.
        dataloader_idx: which validation loader (of several) the probe set comes from, by position as Lightning
            numbers them or by key of a dict of loaders.
        model_output: ``"logits"`` (class logits) or ``"sigmoid"`` (a binary classifier's one logit), as in
            :class:`~lit_attr.callbacks.AttributionMonitor`.

    Example:
        >>> check = RandomizationCheck(["saliency", "integrated_gradients"], num_samples=8, stages="last")
        >>> check.state_key
        "RandomizationCheck{'methods': ['saliency', 'integrated_gradients'], 'order': 'top_down', 'stages': 'last'}"
    """

    def __init__(
        self,
        methods: MethodsArg,
        num_samples: int = 16,
        order: Literal["top_down", "bottom_up", "independent"] = "top_down",
        stages: Literal["all", "last"] = "all",
        every_n_epochs: int | None = None,
        similarity: str | Sequence[str] = ("spearman_abs", "ssim"),
        *,
        threshold: float = 0.5,
        map_metrics: str | Sequence[str] = (),
        layers: Literal["auto"] | Sequence[str] = "auto",
        seed: int = 0,
        log_heatmaps: int = 4,
        input_bounds: tuple[Any, Any] | None = None,
        method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        batch_adapter: BatchAdapter | None = None,
        on_error: Literal["raise", "warn"] = "raise",
        target: Literal["label", "prediction"] = "label",
        batch_size: int = 16,
        dataloader_idx: int | str = 0,
        model_output: Literal["logits", "sigmoid"] = "logits",
    ) -> None:
        super().__init__(
            methods,
            num_samples=num_samples,
            seed=seed,
            input_bounds=input_bounds,
            method_kwargs=method_kwargs,
            batch_adapter=batch_adapter,
            on_error=on_error,
            target=target,
            batch_size=batch_size,
            dataloader_idx=dataloader_idx,
            model_output=model_output,
        )
        self.order = check_choice("order", order, ORDERS)
        self.stages = check_choice("stages", stages, STAGE_MODES)
        self.every_n_epochs = None if every_n_epochs is None else check_int("every_n_epochs", every_n_epochs, 1)
        self.similarity = check_names("similarity", similarity, SIMILARITIES, what="similarity measure")
        self.threshold = check_number("threshold", threshold)
        built = map_metrics_of(map_metrics, reserved=self.similarity)
        self.map_metrics = tuple(metric.name for metric in built)
        self._map_scores = {score.key: score for metric in built for score in metric.scores}
        if layers != "auto":
            check_names("layers", layers, what="layer")
        self.layers = layers
        self.log_heatmaps = check_int("log_heatmaps", log_heatmaps, 0)
        self._history: dict[int, dict[str, Any]] = {}
        self.results: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ state
    @property
    def history(self) -> dict[int, dict[str, Any]]:
        """Summary of every run: ``{epoch: {key: value}}``, the logged scalars (the verdicts as bools)."""
        return {epoch: dict(values) for epoch, values in self._history.items()}

    @property
    @override
    def state_key(self) -> str:
        """Unique per method set and randomisation plan, so that several checks can share a checkpoint."""
        plan = {"map_metrics": list(self.map_metrics)} if self.map_metrics else {}
        return self._generate_state_key(methods=self.method_names, order=self.order, stages=self.stages, **plan)

    @override
    def state_dict(self) -> dict[str, Any]:
        """Probe indices and the history of results."""
        return {"probe_indices": self.probe_indices, "history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self._probes["val"].restore(state_dict.get("probe_indices"))
        self._history = {int(epoch): dict(values) for epoch, values in state_dict.get("history", {}).items()}

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Build one ``ParameterRandomization`` per method and choose the probe set.

        Not in ``setup``: Lightning calls callback setup before ``LightningModule.setup`` and ``configure_model``,
        where modules may create their data and layers, and the checks copy the layers.
        """
        self._runner_for(pl_module)
        self._find_probe_data(trainer, pl_module, "fit", fit_start=True)

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Attach the validation loaders given straight to ``trainer.fit``, once Lightning has loaded them."""
        if self._probes["val"].dataset is None:
            self._find_probe_data(trainer, pl_module, "validate")

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run after every ``every_n_epochs``-th epoch (when set)."""
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module, trainer.current_epoch)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run once at the end of ``fit`` (when ``every_n_epochs`` is None)."""
        if self.every_n_epochs is None:
            # The epoch counter has already moved past the last epoch trained.
            self._run(trainer, pl_module, max(trainer.current_epoch - 1, 0))

    # ------------------------------------------------------------------ internals
    @override
    def _runner_options(self) -> dict[str, Any]:
        options = {
            "layers": self.layers,
            "order": self.order,
            "stages": self.stages,
            "similarity": self.similarity,
            "seed": self.seed,
            "threshold": self.threshold,
            "map_metrics": self.map_metrics,
        }
        return {"metrics": (METRIC,), "metric_kwargs": {METRIC: options}}

    def _run(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        if "val" in self._refused:  # said once when the fit started
            return
        runner = self._runner_for(pl_module)
        error: BaseException | None = None
        stage_maps: dict[str, dict[str, Tensor]] = {}
        try:
            probe = self._probes["val"].load(trainer, self.batch_adapter)
            self._prepare_runner(runner, "val", probe)
            self._run_on_probe(trainer, pl_module, runner, probe)
            if trainer.is_global_zero and self.log_heatmaps and probe.x.ndim == 4:
                stage_maps = self._stage_maps(trainer, pl_module, runner, probe)
        except Exception as exc:  # noqa: BLE001  (handled per `on_error` once every rank knows)
            error = exc
        if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
            runner.reset()
            self._fail(error, f"epoch {epoch}", "the randomisation check")
            return

        results = runner.compute()
        runner.reset()
        self.results = {name: _to_cpu(metrics[METRIC]) for name, metrics in results.items()}
        summary: dict[str, Any] = {}
        for name, result in self.results.items():
            for measure in self.similarity:
                summary[scalar_key(name, METRIC, measure)] = float(result[measure]["final"])
            summary[scalar_key(name, METRIC, VERDICT)] = bool(result["passed"])
            for key, entry in result.get("map_metrics", {}).items():
                summary[scalar_key(name, METRIC, key)] = float(entry["final"])
        self._history[epoch] = summary
        if trainer.is_global_zero and trainer.loggers:
            try:
                with preserved_rng_state():
                    self._deliver(trainer, summary, stage_maps, epoch)
            except Exception as exc:  # noqa: BLE001
                self._fail(exc, f"epoch {epoch}", "logging the randomisation check")

    def _stage_maps(
        self, trainer: Trainer, pl_module: LightningModule, runner: AttributionRunner, probe: Batch
    ) -> dict[str, dict[str, Tensor]]:
        """``|A|`` of the first probe samples at every stage: the maps each check's metric scores for them."""
        shown = probe.select(range(min(self.log_heatmaps, len(probe)))).to(pl_module.device)
        shown = shown.with_inputs(trainer.precision_plugin.convert_input(shown.x))
        # The runner's policy: the labels where there are any, else the (intact) model's own prediction.
        target = shown.y if self.target == "label" else None
        return {
            name: {
                stage: maps.abs().cpu()
                for stage, maps in runner.metrics[name][METRIC].stage_attributions(shown.x, target)
            }
            for name in self.method_names
        }

    def _deliver(
        self, trainer: Trainer, summary: dict[str, Any], stage_maps: dict[str, dict[str, Tensor]], epoch: int
    ) -> None:
        delivery.log_metrics(trainer, {key: float(value) for key, value in summary.items()})
        rows = [
            [epoch, name, measure, float(result[measure]["final"]), self.threshold, bool(result["passed"])]
            for name, result in self.results.items()
            for measure in self.similarity
        ]
        columns = ["epoch", "method", "similarity", "final", "threshold", "passed"]
        delivery.log_table(trainer, "randomization/summary", columns, rows)
        curve_rows = [
            [epoch, name, measure, position, stage, float(value)]
            for name, result in self.results.items()
            for measure in self.similarity
            for position, (stage, value) in enumerate(
                zip(result[measure]["stages"], result[measure]["curve"], strict=True)
            )
        ]
        delivery.log_table(
            trainer,
            "randomization/curves",
            ["epoch", "method", "similarity", "stage_index", "stage", "value"],
            curve_rows,
        )
        figure = viz.similarity_figure(self.results, self.threshold, title=f"parameter randomisation, epoch {epoch}")
        delivery.log_figure(trainer, "randomization/similarity_curves", figure)
        if self._map_scores:
            self._deliver_map_metrics(trainer, epoch)
        probe = self._probes["val"].batch
        if stage_maps and probe is not None:
            images = probe.x[: self.log_heatmaps]
            for name, maps in stage_maps.items():
                verdict = "passed" if self.results[name]["passed"] else "FAILED"
                title = f"{name}: {verdict} (epoch {epoch})"
                grid = viz.randomization_grid(images, maps, title=title, order=self.order)
                delivery.log_image(trainer, f"randomization/{name}/stages", grid, caption=f"{name}: {verdict}")

    def _deliver_map_metrics(self, trainer: Trainer, epoch: int) -> None:
        """The map metrics' curves: a panel per score titled with its direction, and a table of every point."""
        curves = {name: result["map_metrics"] for name, result in self.results.items()}
        rows = [
            [epoch, name, key, self._map_scores[key].arrow, position, stage, float(value)]
            for name, entries in curves.items()
            for key, entry in entries.items()
            for position, (stage, value) in enumerate(zip(entry["stages"], entry["curve"], strict=True))
        ]
        columns = ["epoch", "method", "score", "direction", "stage_index", "stage", "value"]
        delivery.log_table(trainer, "randomization/map_metrics", columns, rows)
        panels = {
            score.title: {name: entries[key] for name, entries in curves.items()}
            for key, score in self._map_scores.items()
        }
        title = f"map metrics under parameter randomisation, epoch {epoch}"
        figure = viz.stage_values_figure(panels, self.order, title=title)
        delivery.log_figure(trainer, "randomization/map_metric_curves", figure)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value
