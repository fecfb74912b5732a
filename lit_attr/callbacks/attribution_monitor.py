"""``AttributionMonitor``: attribution quality on a fixed probe set, tracked epoch by epoch during training."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr import logging as attr_logging
from lit_attr import viz
from lit_attr.callbacks._common import (
    BatchAdapter,
    MethodsArg,
    ProbeBatch,
    ProbeSet,
    build_method,
    check_dataloader_idx,
    check_int,
    check_method_kwargs,
    check_on_error,
    chunks,
    find_dataset,
    gather_to_all,
    normalize_methods,
    shard,
    to_float,
)
from lit_attr.methods._hygiene import preserved_model_state, preserved_rng_state
from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.ig2 import IG2
from lit_attr.metrics.insertion_deletion import InsertionDeletion
from lit_attr.metrics.localization import Localization

__all__ = ["MONITOR_METRICS", "AttributionMonitor"]


@dataclass(frozen=True)
class _MetricSpec:
    """How the monitor builds a metric and feeds it ``(x, attributions, target, mask)``."""

    build: Callable[..., Metric]
    arguments: Callable[[Tensor, Tensor, Tensor, Tensor | None], tuple]
    needs_mask: bool = False


_METRICS: dict[str, _MetricSpec] = {
    "insertion_deletion": _MetricSpec(
        build=lambda model, **kwargs: InsertionDeletion(model, **kwargs),
        arguments=lambda x, a, t, m: (x, a, t),
    ),
    "localization": _MetricSpec(
        build=lambda model, **kwargs: Localization(**kwargs),
        arguments=lambda x, a, t, m: (a, m),
        needs_mask=True,
    ),
}

MONITOR_METRICS: tuple[str, ...] = tuple(_METRICS)
"""Metric names :class:`AttributionMonitor` accepts."""


class AttributionMonitor(Callback):
    """Run attribution methods and their quality metrics on a fixed probe set at the end of validation epochs.

    The probe set is ``num_samples`` validation samples drawn when ``fit`` starts by a generator seeded with
    ``seed``: the same samples on every rank and at every epoch, read from the dataset by index (the validation
    loader is never iterated). Each rank attributes its shard (every ``world_size``-th probe sample), the metrics are
    ``sum``-reduced, so the logged values equal a single-process run on the same probe set.

    At the end of every ``every_n_epochs``-th validation epoch of ``fit`` (never during the sanity check), and at
    the end of ``trainer.validate``/``trainer.test`` runs (on a probe set of the test data for ``test``):

    * the methods attribute the probe samples' ``target`` (the label, or the prediction) on the LightningModule
      itself (in eval mode, gradients enabled, everything about it restored afterwards);
    * each metric's ``compute()`` runs on all ranks and its scalars are logged as ``attr/<method>/<metric>`` with
      ``LightningModule.log`` (so they reach every logger and ``trainer.callback_metrics``, and can drive
      checkpointing or early stopping);
    * rank 0 logs, through :mod:`lit_attr.logging`, a heatmap grid per method (``attr/<method>/heatmaps``: the
      first ``log_heatmaps`` probe samples, always the same ones), the mean insertion/deletion curves
      (``attr/insertion_deletion_curves``) and a table of every probe sample's scores per method
      (``attr/samples``; its per-method means are the logged scalars).

    Attaching the monitor does not change training: it draws no global random numbers (it restores the global
    generators), leaves the model's modes, buffers, ``requires_grad`` flags and gradients as they were, and never
    touches a dataloader's iteration. The weights after ``fit`` are bit-identical with and without it.

    Batches may be ``(x, y)``, ``(x, y, mask)``, a tensor ``x`` or a dict (inputs under ``image``/``input``,
    labels under ``label``/``target``, masks under ``mask``); ``batch_adapter`` maps anything else to
    ``(x, y, mask)``. Ground-truth masks enable ``"localization"``; without them it is skipped with a warning.

    Args:
        methods: registered method names (:func:`~lit_attr.methods.available_methods`), factories called as
            ``factory(model, **kwargs)`` returning an :class:`~lit_attr.methods.AttributionMethod`, a list of them,
            or a dict ``{name: name_or_factory}`` naming them in the logged keys.
        metrics: names from :data:`MONITOR_METRICS`.
        num_samples: probe-set size (all of the validation set if it is smaller, with a warning).
        every_n_epochs: run after the validation of every N-th training epoch.
        log_heatmaps: probe samples shown in the heatmap grids; 0 logs no images (the table is still logged).
        input_bounds: ``(low, high)`` valid input range passed to every method (path methods clip to it).
        method_kwargs: ``{method name: {option: value}}`` for the methods (e.g. ``{"mfaba": {"max_steps": 20}}``).
            ``ig2`` gets ``reference_pool=`` the probe set unless given one.
        batch_adapter: maps a collated batch to ``(x, y, mask)`` (y and mask may be None).
        on_error: ``"raise"`` re-raises an exception in attribution; ``"warn"`` turns it into a warning and skips
            that epoch (training goes on).
        metric_kwargs: ``{metric name: {option: value}}``, e.g. ``{"insertion_deletion": {"n_steps": 16}}``.
        seed: seed of the probe-set draw.
        target: explain the ``"label"`` (default; the prediction where there are no labels) or the
            ``"prediction"``.
        batch_size: probe samples attributed at once.
        class_names: names for the captions; defaults to the datamodule's ``class_names`` if it has one.
        dataloader_idx: which validation loader (of several) the probe set comes from, by position as Lightning
            numbers them or by key of a dict of loaders. ``trainer.test`` always draws from the first test loader.

    Raises:
        TypeError/ValueError: for arguments of the wrong type or range (here); in :meth:`setup` for an unknown
            metric name or ``validate``/``test`` under ``Trainer(inference_mode=True)``; when ``fit`` (``validate``,
            ``test``) starts, before any batch, for an unknown method name or a loader that does not exist.

    Example:
        >>> import lightning as L
        >>> monitor = AttributionMonitor(["saliency", "mfaba"], method_kwargs={"mfaba": {"max_steps": 9}})
        >>> monitor.state_key
        "AttributionMonitor{'methods': ['saliency', 'mfaba'], 'metrics': ['insertion_deletion', 'localization']}"
        >>> trainer = L.Trainer(callbacks=[monitor], max_epochs=1, logger=False)  # then trainer.fit(model, dm)
    """

    def __init__(
        self,
        methods: MethodsArg,
        metrics: str | Sequence[str] = ("insertion_deletion", "localization"),
        num_samples: int = 64,
        every_n_epochs: int = 1,
        log_heatmaps: int = 8,
        input_bounds: tuple[Any, Any] | None = None,
        method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        batch_adapter: BatchAdapter | None = None,
        on_error: Literal["raise", "warn"] = "raise",
        *,
        metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
        target: Literal["label", "prediction"] = "label",
        batch_size: int = 64,
        class_names: Sequence[str] | None = None,
        dataloader_idx: int | str = 0,
    ) -> None:
        super().__init__()
        self._specs = normalize_methods(methods)
        self.metric_names: tuple[str, ...] = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        if not self.metric_names or not all(isinstance(name, str) for name in self.metric_names):
            raise TypeError(f"`metrics` must be a metric name or a sequence of names, got {metrics!r}.")
        if len(set(self.metric_names)) != len(self.metric_names):
            raise ValueError(f"`metrics` must not repeat a name, got {list(self.metric_names)}.")
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)
        self.log_heatmaps = check_int("log_heatmaps", log_heatmaps, 0)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"`seed` must be an int, got {type(seed).__name__}.")
        self.seed = seed
        if target not in ("label", "prediction"):
            raise ValueError(f"`target` must be 'label' or 'prediction', got {target!r}.")
        self.target = target
        self.on_error = check_on_error(on_error)
        if batch_adapter is not None and not callable(batch_adapter):
            raise TypeError(f"`batch_adapter` must be callable or None, got {type(batch_adapter).__name__}.")
        self.batch_adapter = batch_adapter
        self.input_bounds = input_bounds
        self._method_kwargs = check_method_kwargs(method_kwargs, list(self._specs))
        if metric_kwargs is not None and (
            not isinstance(metric_kwargs, Mapping) or not all(isinstance(v, Mapping) for v in metric_kwargs.values())
        ):
            raise TypeError(f"`metric_kwargs` must map metric names to option dicts, got {metric_kwargs!r}.")
        stray = [name for name in metric_kwargs or {} if name not in self.metric_names]
        if stray:
            raise ValueError(f"`metric_kwargs` has options for {stray}, which are not among the metrics {metrics!r}.")
        self._metric_kwargs = {name: dict(options) for name, options in (metric_kwargs or {}).items()}
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.dataloader_idx = check_dataloader_idx(dataloader_idx)

        self._methods: dict[str, AttributionMethod] = {}
        self._metrics: dict[str, dict[str, Metric]] = {}
        self._model: nn.Module | None = None
        self._active_metrics: tuple[str, ...] = self.metric_names
        self._skipped_metrics: dict[str, tuple[str, ...]] = {"val": (), "test": ()}
        self._probes = {
            "val": ProbeSet(num_samples, seed, "AttributionMonitor", split="val", dataloader_idx=self.dataloader_idx),
            "test": ProbeSet(num_samples, seed, "AttributionMonitor", split="test"),
        }
        self._last_epoch: int | None = None
        self._history: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------ public state
    @property
    def method_names(self) -> list[str]:
        """The names used in the logged keys, in order."""
        return list(self._specs)

    @property
    def probe_indices(self) -> list[int] | None:
        """Dataset indices of the validation probe set (None before ``fit`` or ``validate`` starts)."""
        indices = self._probes["val"].indices
        return None if indices is None else list(indices)

    @property
    def history(self) -> dict[int, dict[str, float]]:
        """Logged scalars of every epoch the monitor ran during ``fit``: ``{epoch: {key: value}}``."""
        return {epoch: dict(values) for epoch, values in self._history.items()}

    @property
    def last_epoch(self) -> int | None:
        """The last training epoch the monitor ran at."""
        return self._last_epoch

    @property
    def state_key(self) -> str:
        """Unique per method/metric configuration, so that several monitors can share a checkpoint."""
        return self._generate_state_key(methods=self.method_names, metrics=list(self.metric_names))

    def state_dict(self) -> dict[str, Any]:
        """Probe indices, last epoch run and the score history."""
        return {
            "probe_indices": self.probe_indices,
            "last_epoch": self._last_epoch,
            "history": self.history,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; a resumed run keeps its probe set and continues its history."""
        self._probes["val"].restore(state_dict.get("probe_indices"))
        self._last_epoch = state_dict.get("last_epoch")
        self._history = {int(epoch): dict(values) for epoch, values in state_dict.get("history", {}).items()}

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse, before anything runs, what cannot work: inference mode outside ``fit``, unknown metric names."""
        if stage == "predict":
            return
        if stage in ("validate", "test"):
            loop = trainer.validate_loop if stage == "validate" else trainer.test_loop
            if loop.inference_mode:
                raise ValueError(
                    f"AttributionMonitor needs gradients, but `trainer.{stage}()` runs under torch.inference_mode. "
                    "Pass `Trainer(inference_mode=False)` to use the monitor outside of `fit`."
                )
        unknown = [name for name in self.metric_names if name not in _METRICS]
        if unknown:
            raise ValueError(f"AttributionMonitor: unknown metric(s) {unknown}; available: {list(MONITOR_METRICS)}.")

    # Methods, metrics and the probe set are prepared in the *_start hooks, not in setup: Lightning calls callback
    # setup before LightningModule.setup and configure_model, where modules may create their data and layers.
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Build the methods and metrics and choose the validation probe set (restored ones are checked)."""
        self._prepare(trainer, pl_module, "fit")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare for ``trainer.validate`` (``fit`` was prepared in :meth:`on_fit_start`)."""
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._prepare(trainer, pl_module, "validate")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare for ``trainer.test``: the probe set comes from the test data."""
        self._prepare(trainer, pl_module, "test")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run on the probe set after the scheduled validation epochs of ``fit`` and after ``validate``."""
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            epoch = trainer.current_epoch
            if (epoch + 1) % self.every_n_epochs or self._last_epoch == epoch:
                return
            self._run(trainer, pl_module, "val", epoch)
        elif trainer.state.fn == TrainerFn.VALIDATING:
            self._run(trainer, pl_module, "val", None)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run on the test probe set after ``trainer.test``."""
        self._run(trainer, pl_module, "test", None)

    # ------------------------------------------------------------------ internals
    def _prepare(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._model is not pl_module or not self._methods:
            self._build(pl_module)
        split = "test" if stage == "test" else "val"
        probes = self._probes[split]
        probes.attach(find_dataset(trainer, stage, probes.dataloader_idx))
        # Each run may bring other data: whether it has masks is found out again.
        self._skipped_metrics[split] = ()

    def _build(self, pl_module: LightningModule) -> None:
        methods = {}
        for name, spec in self._specs.items():
            try:
                methods[name] = build_method(name, spec, pl_module, self._method_kwargs[name], self.input_bounds)
            except ValueError as err:
                raise ValueError(f"AttributionMonitor: method {name!r}: {err}") from err
        self._methods = methods
        self._metrics = {
            method: {
                metric: _METRICS[metric].build(pl_module, **self._metric_kwargs.get(metric, {}))
                for metric in self.metric_names
            }
            for method in methods
        }
        self._model = pl_module

    def _probe(self, trainer: Trainer, split: str) -> ProbeBatch:
        probe = self._probes[split]
        fresh = probe.batch is None
        batch = probe.load(trainer, self.batch_adapter)
        skipped = self._skipped_metrics[split]
        needs_mask = [name for name in self.metric_names if _METRICS[name].needs_mask and name not in skipped]
        if batch.mask is None and needs_mask:
            rank_zero_warn(
                f"AttributionMonitor: the {split} probe batches have no ground-truth masks; skipping {needs_mask}."
            )
            self._skipped_metrics[split] = skipped = (*skipped, *needs_mask)
        # Masks are a property of the split: a test set with masks is scored on them even if validation had none.
        self._active_metrics = tuple(name for name in self.metric_names if name not in skipped)
        if fresh and batch.y is None and self.target == "label":
            rank_zero_warn("AttributionMonitor: the probe batches have no labels; explaining the predictions instead.")
        for method in self._methods.values():
            if isinstance(method, IG2) and method.reference_pool is None:
                if batch.y is None:
                    raise ValueError("AttributionMonitor: ig2 draws references from labelled samples; none found.")
                method.reference_pool = (batch.x, batch.y)
        return batch

    def _run(self, trainer: Trainer, pl_module: LightningModule, split: str, epoch: int | None) -> None:
        error: BaseException | None = None
        records: list[dict[str, Any]] = []
        try:
            probe = self._probe(trainer, split)
            positions = shard(probe.x.shape[0], trainer.global_rank, trainer.world_size)
            indices = self._probes[split].indices or []
            records = self._attribute_shard(trainer, pl_module, probe, indices, positions)
        except Exception as exc:  # noqa: BLE001  (handled per `on_error` once every rank knows)
            error = exc
        # A rank that skipped alone would leave the others waiting in compute(); all skip together.
        if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
            self._reset()
            self._fail(error, epoch)
            return

        results = {method: self._compute(method) for method in self._methods}
        self._reset()
        scalars = {
            f"attr/{method}/{key}": value
            for method, result in results.items()
            for key, value in result.items()
            if value.ndim == 0
        }
        for key, value in scalars.items():
            # The values are already reduced over ranks; "max" of identical values keeps them exact and quiet.
            pl_module.log(key, value, sync_dist=True, reduce_fx="max")
        gathered = [record for rank_records in gather_to_all(trainer, records) for record in rank_records]
        if epoch is not None:
            self._history[epoch] = {key: to_float(value) for key, value in scalars.items()}
            self._last_epoch = epoch
        # Rendering is the costly part of delivery; without a logger nothing would receive it.
        if trainer.is_global_zero and trainer.loggers:
            try:
                with preserved_rng_state():
                    self._deliver(trainer, results, sorted(gathered, key=lambda r: r["position"]), epoch)
            except Exception as exc:  # noqa: BLE001
                self._fail(exc, epoch, what="logging the attribution images")

    def _attribute_shard(
        self, trainer: Trainer, pl_module: LightningModule, probe: ProbeBatch, indices: list[int], positions: list[int]
    ) -> list[dict[str, Any]]:
        device = pl_module.device
        # Also on a rank without probes: its (empty) states take part in the device-side sync of compute().
        for metrics in self._metrics.values():
            for metric in metrics.values():
                metric.to(device)
        if not positions:
            return []
        with preserved_rng_state(), preserved_model_state(pl_module), torch.inference_mode(False):
            local = probe.select(positions).for_model(trainer, device)
            with torch.no_grad():
                logits = torch.cat([pl_module(local.x[c]) for c in _slices(len(positions), self.batch_size)])
            probabilities = logits.float().softmax(dim=1)
            confidence, prediction = probabilities.max(dim=1)
            use_label = self.target == "label" and local.y is not None
            target = local.y if use_label else prediction
            # Every probe sample gets a record (its row of the table); the shown ones also carry image and maps.
            records = [
                {
                    "position": position,
                    "index": indices[position],
                    "x": local.x[row].detach().float().cpu() if position < self.log_heatmaps else None,
                    "label": None if local.y is None else int(local.y[row]),
                    "target": int(target[row]),
                    "prediction": int(prediction[row]),
                    "confidence": float(confidence[row]),
                    "target_probability": float(probabilities[row, target[row]]),
                    "attributions": {},
                    "scores": {},
                }
                for row, position in enumerate(positions)
            ]
            # No enable_grad here: the methods switch gradients on themselves, the metrics are better off without.
            for name, method in self._methods.items():
                for rows in chunks(range(len(positions)), self.batch_size):
                    index = torch.as_tensor(rows, device=device)
                    x, t = local.x[index], target[index]
                    attributions = method.attribute(x, t)
                    if isinstance(attributions, tuple):
                        attributions = attributions[0]
                    self._update(name, x, attributions, t, _take(local.mask, index), [records[r] for r in rows])
        return records

    def _update(
        self,
        method: str,
        x: Tensor,
        attributions: Tensor,
        target: Tensor,
        mask: Tensor | None,
        records: list[dict[str, Any]],
    ) -> None:
        for metric_name in self._active_metrics:
            metric, spec = self._metrics[method][metric_name], _METRICS[metric_name]
            metric.update(*spec.arguments(x, attributions, target, mask))
            for key, values in metric.last_sample_scores.items():
                for record, value in zip(records, values.tolist(), strict=True):
                    record["scores"].setdefault(method, {})[key] = value
        for record, attribution in zip(records, attributions, strict=True):
            if record["x"] is not None:
                record["attributions"][method] = attribution.detach().float().cpu()

    def _compute(self, method: str) -> dict[str, Tensor]:
        result: dict[str, Tensor] = {}
        for metric_name in self._active_metrics:
            result.update(self._metrics[method][metric_name].compute())
        return result

    def _reset(self) -> None:
        for metrics in self._metrics.values():
            for metric in metrics.values():
                metric.reset()

    def _fail(self, error: BaseException | None, epoch: int | None, what: str = "attribution") -> None:
        when = f"epoch {epoch}" if epoch is not None else "this run"
        if self.on_error == "raise":
            if error is not None:
                raise error
            raise RuntimeError(f"AttributionMonitor: {what} failed on another process at {when}.")
        if error is not None:
            warnings.warn(
                f"AttributionMonitor: {what} failed at {when} ({type(error).__name__}: {error}); skipping it, "
                "training goes on (on_error='warn').",
                UserWarning,
                stacklevel=2,
            )
        else:
            rank_zero_warn(f"AttributionMonitor: {what} failed on another process at {when}; skipping it.")

    # ------------------------------------------------------------------ delivery (rank 0)
    def _deliver(
        self,
        trainer: Trainer,
        results: dict[str, dict[str, Tensor]],
        records: list[dict[str, Any]],
        epoch: int | None,
    ) -> None:
        when = f"epoch {epoch}" if epoch is not None else str(trainer.state.fn.value)
        names = self.class_names or getattr(trainer.datamodule, "class_names", None)

        def label(value: int | None) -> str:
            if value is None:
                return "?"
            return str(names[value]) if names is not None and 0 <= value < len(names) else str(value)

        shown = [record for record in records if record["x"] is not None]
        if shown and shown[0]["x"].ndim == 3:
            x = torch.stack([record["x"] for record in shown])
            titles = [f"#{record['index']} {label(record['label'])}" for record in shown]
            for method in self._methods:
                captions = [_caption(record, method, label) for record in shown]
                figure = viz.attribution_grid(
                    x,
                    torch.stack([record["attributions"][method] for record in shown]),
                    captions=captions,
                    titles=titles,
                    title=f"{method}, {when}",
                )
                attr_logging.log_image(trainer, f"attr/{method}/heatmaps", figure, caption=f"{method}, {when}")
        if "insertion_deletion" in self._active_metrics:
            figure = viz.insertion_deletion_figure(results, title=f"insertion / deletion, {when}")
            attr_logging.log_figure(trainer, "attr/insertion_deletion_curves", figure)
        if records:
            score_names = list(dict.fromkeys(k for r in records for s in r["scores"].values() for k in s))
            columns = ["epoch", "dataset_index", "label", "prediction", "confidence", "method", "target", "p_target"]
            rows = [
                [
                    -1 if epoch is None else epoch,
                    record["index"],
                    label(record["label"]),
                    label(record["prediction"]),
                    round(record["confidence"], 4),
                    method,
                    label(record["target"]),
                    round(record["target_probability"], 4),
                    *(record["scores"].get(method, {}).get(key, float("nan")) for key in score_names),
                ]
                for record in records
                for method in self._methods
            ]
            attr_logging.log_table(trainer, "attr/samples", columns + score_names, rows)


def _caption(record: dict[str, Any], method: str, label: Callable[[int | None], str]) -> str:
    scores = record["scores"].get(method, {})
    head = f"target {label(record['target'])}, pred {label(record['prediction'])} {record['confidence']:.2f}"
    parts = []
    if "insertion" in scores:
        parts.append(f"ins {scores['insertion']:.2f} del {scores['deletion']:.2f}")
    if "pointing_game" in scores:
        parts.append(f"point {scores['pointing_game']:.0f}")
    if "relevance_mass" in scores:
        parts.append(f"mass {scores['relevance_mass']:.2f}")
    return "\n".join([head, " ".join(parts)]) if parts else head


def _slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _take(tensor: Tensor | None, index: Tensor) -> Tensor | None:
    return None if tensor is None else tensor[index]
