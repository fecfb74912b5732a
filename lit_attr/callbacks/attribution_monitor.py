"""``AttributionMonitor``: attribution quality on a fixed probe set, tracked epoch by epoch during training."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from typing_extensions import override

import lit_attr.delivery as delivery
import lit_attr.viz as viz
from lit_attr._checks import check_callable, check_flag, check_int, check_option_dicts
from lit_attr._hygiene import preserved_rng_state
from lit_attr.batch import BatchAdapter
from lit_attr.callbacks._base import AttributionCallback, warn_about_missing
from lit_attr.callbacks._budget import TimeBudget, fit_progress
from lit_attr.callbacks._monitor_media import RunMedia, deliver_run
from lit_attr.delivery import DeliveryWorker
from lit_attr.keys import OVERHEAD
from lit_attr.metrics.registry import check_metric_names
from lit_attr.runner import MethodsArg, SampleRecord, gather_records

__all__ = ["AttributionMonitor"]


class AttributionMonitor(AttributionCallback):
    """Run attribution methods and their quality metrics on a fixed probe set at the end of validation epochs.

    The probe set is ``num_samples`` validation samples drawn when ``fit`` starts by a generator seeded with
    ``seed``: the same samples on every rank and at every epoch, read from the dataset by index (the validation
    loader is never iterated). Each rank attributes its shard (every ``world_size``-th probe sample), the metrics are
    ``sum``-reduced, so the logged values equal a single-process run on the same probe set.

    At the end of every ``every_n_epochs``-th validation epoch of ``fit`` (never during the sanity check), and at
    the end of ``trainer.validate``/``trainer.test`` runs (on a probe set of the test data for ``test``):

    * the methods attribute the probe samples' ``target`` (the label, or the prediction) on the LightningModule
      itself (in eval mode, gradients enabled, everything about it restored afterwards);
    * each metric's ``compute()`` runs on all ranks and its headline numbers are logged with ``LightningModule.log``
      as ``attr/<method>/<metric>/<score>`` (:mod:`lit_attr.keys`; so they reach every logger and
      ``trainer.callback_metrics`` and can drive checkpointing), verdicts as ``attr/<method>/<metric>/passed``;
    * rank 0 logs, through :mod:`lit_attr.delivery`, a heatmap grid per method (``attr/<method>/heatmaps``: the
      first ``log_heatmaps`` probe samples, always the same ones), the mean insertion/deletion curves
      (``attr/insertion_deletion_curves``) and a table of every probe sample's scores per method (``attr/samples``;
      a score's column is headed by its key and direction, ``deletion ↓``, and its per-method mean is the scalar).

    **Time budget.** With ``max_overhead=0.1`` the monitor keeps its own time within 10 % of the fit's: it times
    itself (its runs and their deliveries, background ones counted as if they held up training) and the fit's
    training and validation, and runs at an eligible epoch (``every_n_epochs``) only if the cumulative overhead then
    stays within the budget, keeping room for one more run when ``max_epochs`` or ``max_steps`` tell how long the
    fit will be. A run's cost is estimated from the earlier runs and deliveries (before the first, from a
    calibration on one probe sample). It always scores the final weights, also when ``max_steps``, ``max_time`` or
    early stopping ends the fit or a ``val_check_interval`` below 1 ran it earlier in the last epoch (then in
    ``on_train_end``, logged straight to the loggers, with the epoch), and warns at the end of the fit if that
    mandatory run took it over the budget. Under DDP rank 0 decides and broadcasts, so all ranks run together.
    Every run logs ``attr/overhead``, the cumulative fraction (the latest run's background delivery is counted from
    the next one on). Rendering and delivery run on a background thread (``background_delivery=True``), off the
    training path: the media and their steps are the same, and they are flushed at the end of the fit, of
    ``validate``/``test``, and before an exception propagates.

    **Checkpoints on explanation quality.** ``AttributionCheckpoint`` and ``AttributionEarlyStopping``
    (:mod:`lit_attr.callbacks.selection`) are Lightning's ``ModelCheckpoint`` and ``EarlyStopping`` that consider
    an ``attr/...`` key only at epochs the monitor ran.

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
        metrics: names from :func:`~lit_attr.metrics.available_metrics` (every registered metric; ``"randomization"``
            is the cheap fully-randomised check, :class:`RandomizationCheck` draws the whole cascade and its maps).
        num_samples: probe-set size (all of the validation set if it is smaller, with a warning).
        every_n_epochs: run after the validation of every N-th training epoch.
        log_heatmaps: probe samples shown in the heatmap grids; 0 logs no images (the table is still logged).
        input_bounds: ``(low, high)`` valid input range passed to every method (path methods clip to it).
        method_kwargs: ``{method name: {option: value}}`` for the methods (e.g. ``{"mfaba": {"max_steps": 20}}``).
            Every method is prepared with the probe set (``AttributionMethod.prepare``): ``ig2`` draws its
            references from it unless given a ``reference_pool``.
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
        max_overhead: the monitor's time budget during ``fit``, a fraction of the fit's own time (e.g. 0.1), or
            ``None`` to run at every eligible epoch.
        background_delivery: render and deliver heatmaps, curves and tables on a background thread.
        clock: the clock the budget is measured with (seconds; default ``time.perf_counter``); tests inject one.
        tokenizer: turns token ids into the words shown in the highlighting of token inputs (a Hugging Face
            tokenizer, or anything :func:`lit_attr.viz.token_decoder` takes); defaults to the datamodule.
        model_output: ``"logits"`` (class logits ``(N, K >= 2)``) or ``"sigmoid"`` (a binary classifier's one logit
            ``z``: class 1 scores ``sigmoid(z)``, class 0 ``1 - sigmoid(z)``). A single output without it, or outputs
            that are probabilities, are refused at the first run.

    Raises:
        TypeError/ValueError: for arguments of the wrong type or range (here); in :meth:`setup` for an unknown
            metric name or ``validate``/``test`` under ``Trainer(inference_mode=True)``; when ``fit`` (``validate``,
            ``test``) starts, before any batch, for an unknown method name or a loader that does not exist (loaders
            handed straight to ``trainer.fit`` are checked when validation starts); when ``fit`` starts, for no
            validation data, an ``IterableDataset`` or ``limit_val_batches=0`` (``on_error="warn"``: a warning,
            and the monitor stays idle).

    Example:
        >>> import lightning as L
        >>> monitor = AttributionMonitor(["saliency", "mfaba"], method_kwargs={"mfaba": {"max_steps": 9}})
        >>> monitor.state_key
        "AttributionMonitor{'methods': ['saliency', 'mfaba'], 'metrics': ['insertion_deletion', 'localization']}"
        >>> trainer = L.Trainer(callbacks=[monitor], max_epochs=1, logger=False)  # then trainer.fit(model, dm)
    """

    runs_after_validation = True

    #: It attributes in validate/test too, so `lit_attr validate`/`test` switch their inference_mode off for it.
    needs_gradients = True

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
        max_overhead: float | None = None,
        background_delivery: bool = True,
        clock: Callable[[], float] | None = None,
        tokenizer: Any = None,
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
        self.metric_names = check_metric_names(metrics)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, 1)
        self.log_heatmaps = check_int("log_heatmaps", log_heatmaps, 0)
        self._metric_kwargs = check_option_dicts("metric_kwargs", metric_kwargs, self.metric_names, what="metric")
        if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, Sequence)):
            raise TypeError(f"`class_names` must be a sequence of names or None, got {type(class_names).__name__}.")
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.tokenizer = tokenizer
        self._checked_data: dict[str, bool] = {"val": False, "test": False}
        if max_overhead is not None and (
            isinstance(max_overhead, bool) or not isinstance(max_overhead, (int, float)) or not 0 < max_overhead < 1
        ):
            raise ValueError(f"`max_overhead` must be a fraction in (0, 1) or None, got {max_overhead!r}.")
        self.max_overhead = None if max_overhead is None else float(max_overhead)
        self.background_delivery = check_flag("background_delivery", background_delivery)
        self._clock = check_callable("clock", clock) or time.perf_counter
        self._budget = TimeBudget()
        self._worker: DeliveryWorker | None = None
        self._last_epoch: int | None = None
        self._history: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------ public state
    @property
    def history(self) -> dict[int, dict[str, float]]:
        """Logged scalars of every epoch the monitor ran during ``fit``: ``{epoch: {key: value}}``."""
        return {epoch: dict(values) for epoch, values in self._history.items()}

    @property
    def last_epoch(self) -> int | None:
        """The last training epoch the monitor ran at."""
        return self._last_epoch

    @property
    @override
    def state_key(self) -> str:
        """Unique per method/metric configuration, so that several monitors can share a checkpoint."""
        return self._generate_state_key(methods=self.method_names, metrics=list(self.metric_names))

    @override
    def state_dict(self) -> dict[str, Any]:
        """Probe indices, last epoch run and the score history."""
        return {
            "probe_indices": self.probe_indices,
            "last_epoch": self._last_epoch,
            "history": self.history,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; a resumed run keeps its probe set and continues its history."""
        self._probes["val"].restore(state_dict.get("probe_indices"))
        self._last_epoch = state_dict.get("last_epoch")
        self._history = {int(epoch): dict(values) for epoch, values in state_dict.get("history", {}).items()}

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse, before anything runs, ``validate``/``test`` under inference mode (no gradients)."""
        loop = trainer.validate_loop if stage == "validate" else trainer.test_loop if stage == "test" else None
        if loop is not None and loop.inference_mode:
            name = getattr(stage, "value", stage)  # a TrainerFn: its str() is "TrainerFn.VALIDATING"
            raise ValueError(
                f"AttributionMonitor needs gradients, but this Trainer runs `{name}` under torch.inference_mode: "
                f"build it with `Trainer(inference_mode=False)` (`lit_attr {name}` does this itself)."
            )

    # Methods, metrics and the probe set are prepared in the *_start hooks, not in setup: Lightning calls callback
    # setup before LightningModule.setup and configure_model, where modules may create their data and layers.
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Build the methods and metrics, choose the validation probe set (restored ones are checked), reset budget."""
        # Here, not in on_train_start: a fit whose training loop is skipped must not be judged on an earlier one's.
        self._budget = TimeBudget()
        if self._worker is not None:  # deliveries of an earlier validate/test are not this fit's
            self._worker.busy_seconds()
        self._prepare(trainer, pl_module, "fit", fit_start=True)

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare for ``trainer.validate``; during ``fit``, attach loaders given straight to ``trainer.fit``."""
        stage = "validate" if trainer.state.fn == TrainerFn.VALIDATING else "fit"
        if stage == "validate" or self._probes["val"].dataset is None:
            self._prepare(trainer, pl_module, stage)

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare for ``trainer.test``: the probe set comes from the test data."""
        self._prepare(trainer, pl_module, "test")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the budget's clock: the fit's own time is counted from here."""
        self._budget.started = self._clock()

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Note the epoch being trained (the one to score if the fit ends after it)."""
        self._budget.training_epoch = trainer.current_epoch

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run on the probe set after the scheduled validation epochs of ``fit`` and after ``validate``."""
        if trainer.sanity_checking or "val" in self._refused:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            epoch = trainer.current_epoch
            if self._last_epoch == epoch:
                return
            eligible = (epoch + 1) % self.every_n_epochs == 0
            if self.max_overhead is None:
                if eligible:
                    self._run(trainer, pl_module, "val", epoch)
                return
            progress = fit_progress(trainer)
            last = progress is not None and progress >= 1
            if (eligible or last) and trainer.strategy.broadcast(self._decide(trainer, pl_module, last), src=0):
                self._timed_run(trainer, pl_module, epoch)
        elif trainer.state.fn == TrainerFn.VALIDATING:
            self._run(trainer, pl_module, "val", None)

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run on the test probe set after ``trainer.test``."""
        if "test" not in self._refused:
            self._run(trainer, pl_module, "test", None)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """With a budget, score the final model if the last trained epoch was not scored yet."""
        epoch = self._budget.training_epoch
        # Unless a run saw these weights (steps), also one that failed (on_error="warn"): it is not tried again.
        if self.max_overhead is not None and epoch is not None and self._budget.attempted_step != trainer.global_step:
            self._timed_run(trainer, pl_module, epoch, in_loop=False)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Wait for the background delivery of this fit; with a budget, warn if the monitor's time went over it."""
        self._flush()
        budget = self._budget
        if self.max_overhead is None or not budget.runs:
            return
        self._count_deliveries()
        overhead = budget.overhead_now(self._clock())
        if overhead > self.max_overhead:
            # The mandatory last run, or a run that took longer than its estimate, overshot: say what helps.
            delivered = f", and its background delivery {budget.deliveries[-1]:.1f} s" if budget.deliveries else ""
            rank_zero_warn(
                f"AttributionMonitor: its time came to {overhead:.1%} of the fit's, over "
                f"`max_overhead={self.max_overhead}`: the run after the last epoch always happens (it took "
                f"{budget.runs[-1]:.1f} s{delivered}). Lower `num_samples`, `log_heatmaps` or the methods' budgets "
                "to stay within the budget."
            )

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After ``trainer.validate``, wait for the background delivery."""
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._flush()

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After ``trainer.test``, wait for the background delivery."""
        self._flush()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Deliver what was queued before the exception propagates (its own errors can only warn now)."""
        if self._worker is not None:
            try:
                errors = self._worker.flush()
            except TimeoutError as error:
                errors = [error]
            for error in errors:
                rank_zero_warn(f"AttributionMonitor: logging the attribution images failed ({error}).")

    # ------------------------------------------------------------------ internals
    @override
    def _runner_options(self) -> dict[str, Any]:
        return {
            "metrics": self.metric_names,
            "metric_kwargs": self._metric_kwargs,
            "keep_attributions": self.log_heatmaps,
        }

    def _prepare(self, trainer: Trainer, pl_module: LightningModule, stage: str, fit_start: bool = False) -> None:
        self._runner_for(pl_module)
        split = "test" if stage == "test" else "val"
        self._find_probe_data(trainer, pl_module, stage, fit_start=fit_start)
        # Each run may bring other data: whether it has masks and labels is found out again.
        self._checked_data[split] = False

    def _decide(self, trainer: Trainer, pl_module: LightningModule, last: bool) -> bool:
        """Rank 0's decision: run now if the budget allows it (the last epoch always runs)."""
        if last or not trainer.is_global_zero:
            return last
        if self._budget.needs_calibration:
            try:
                self._calibrate(trainer, pl_module)
            except Exception:  # noqa: BLE001
                # Decide to run: the run meets the error again and handles it per `on_error` on every rank together,
                # where raising here, on rank 0 alone, would leave the other ranks waiting in the broadcast.
                return True
        self._count_deliveries()
        return self._budget.allows(self._clock(), self.max_overhead, fit_progress(trainer))

    def _calibrate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Estimate a run's time from one probe sample (the metrics are reset afterwards)."""
        start = run_start = self._clock()
        runner = self._runner_for(pl_module)
        try:
            probe = self._probes["val"].load(trainer, self.batch_adapter)
            self._prepare_runner(runner, "val", probe)
            local = len(range(trainer.global_rank, len(probe), trainer.world_size))
            # One sample: on the demo, estimates from 1, 2, 4 or 8 samples agreed within 20 %, while their cost grew
            # with the count, and what the calibration costs counts against the budget.
            sample = probe.select(range(1))
            run_start = self._clock()
            with preserved_rng_state():
                self._run_on_probe(trainer, pl_module, runner, sample, shard=False)
        finally:
            runner.reset()
            end = self._clock()
            self._budget.spent += end - start
        self._budget.calibrate(end - run_start, local, len(sample))

    def _timed_run(self, trainer: Trainer, pl_module: LightningModule, epoch: int, in_loop: bool = True) -> None:
        self._budget.attempted_step = trainer.global_step
        start = self._clock()
        scored = self._run(trainer, pl_module, "val", epoch, in_loop=in_loop)
        self._budget.add_run(self._clock() - start)
        self._count_deliveries()
        # Rank 0's account, as for the decisions: every rank logs the same number.
        overhead = trainer.strategy.broadcast(self._budget.overhead_now(self._clock()), src=0)
        if scored:  # a failed run leaves an earlier run's entry of the same epoch alone
            self._history[epoch][OVERHEAD] = overhead
        if in_loop:
            pl_module.log(OVERHEAD, overhead, sync_dist=True, reduce_fx="max")
        else:
            delivery.log_metrics(trainer, {OVERHEAD: overhead, "epoch": epoch})

    def _run(
        self, trainer: Trainer, pl_module: LightningModule, split: str, epoch: int | None, in_loop: bool = True
    ) -> bool:
        """Score the probe set and log the results; False if the run failed (and ``on_error`` let it pass)."""
        when = f"epoch {epoch}" if epoch is not None else "this run"
        runner = self._runner_for(pl_module)
        error: BaseException | None = None
        records: list[SampleRecord] = []
        try:
            probe = self._probes[split].load(trainer, self.batch_adapter)
            if not self._checked_data[split]:
                warn_about_missing(split, probe, self.metric_names, self.target)
                self._checked_data[split] = True
            self._prepare_runner(runner, split, probe)
            records = self._run_on_probe(trainer, pl_module, runner, probe)
        except Exception as exc:  # noqa: BLE001  (handled per `on_error` once every rank knows)
            error = exc
        # A rank that skipped alone would leave the others waiting in compute(); all skip together.
        if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
            runner.reset()
            self._fail(error, when, "attribution")
            return False

        results = runner.compute()
        scalars = runner.scalars(results)
        runner.reset()
        if in_loop:
            for key, value in scalars.items():
                # The values are already reduced over ranks; "max" of identical values keeps them exact and quiet.
                pl_module.log(key, value, sync_dist=True, reduce_fx="max")
        else:  # after training, where LightningModule.log is not allowed; with the epoch, as Lightning logs it
            delivery.log_metrics(trainer, {**scalars, "epoch": epoch})
        records = gather_records(records)
        if epoch is not None:
            self._history[epoch] = {key: float(value) for key, value in scalars.items()}
            self._last_epoch = epoch
        # Rendering is the costly part of delivery; without a logger nothing would receive it.
        if trainer.is_global_zero and trainer.loggers:
            names = self.class_names or getattr(trainer.datamodule, "class_names", None)
            decode = viz.token_decoder(self.tokenizer if self.tokenizer is not None else trainer.datamodule)
            target = delivery.destination(trainer)
            # The worker renders from copies: nothing it reads can change under it.
            results = apply_to_collection(results, Tensor, lambda t: t.detach().cpu().clone())
            media = RunMedia(
                results=results,
                records=records,
                methods=self.method_names,
                dataset_indices=list(self._probes[split].indices or []),
                epoch=epoch,
                class_names=names,
                decode=decode,
            )
            job = functools.partial(deliver_run, target, media)
            self._submit(job, when)
        return True

    def _submit(self, job: Callable[[], None], when: str) -> None:
        """Deliver now, or on the background thread; report a failure of an earlier background job first."""
        if not self.background_delivery:
            try:
                with preserved_rng_state():
                    job()
            except Exception as exc:  # noqa: BLE001
                self._fail(exc, when, "logging the attribution images")
            return
        if self._worker is None:
            self._worker = DeliveryWorker(clock=self._clock)
        for error in self._worker.errors():
            self._fail(error, "an earlier run", "logging the attribution images")
        self._worker.submit(job)

    def _count_deliveries(self) -> None:
        """Add the background deliveries finished since the last count to the monitor's time.

        They are counted as if they had held up training (the safe side): on a machine with a spare core they
        partly overlap it, but they compete with it for the interpreter.
        """
        if self._worker is not None:
            self._budget.add_deliveries(self._worker.busy_seconds())

    def _flush(self) -> None:
        if self._worker is None:
            return
        try:
            errors = self._worker.flush()
        except TimeoutError as error:
            errors = [error]
        for error in errors:
            self._fail(error, "an earlier run", "logging the attribution images")
