"""``RandomizationCheck``: the parameter-randomisation sanity check (Adebayo et al. 2018) as a Lightning callback."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from contextlib import closing
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

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
    normalize_methods,
    shard,
    to_float,
)
from lit_attr.functional.randomization import ORDERS, STAGE_MODES, iter_randomized, randomizable_layers
from lit_attr.methods._hygiene import preserved_rng_state
from lit_attr.methods.ig2 import IG2
from lit_attr.metrics.parameter_randomization import SIMILARITIES, ParameterRandomization

__all__ = ["RandomizationCheck"]


class RandomizationCheck(Callback):
    """Check that attributions depend on the trained weights: randomise the layers and watch the maps change.

    For every method, a :class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization` metric compares
    the attributions of the trained model with those of copies whose layers are re-initialised stage by stage
    (``order="top_down"``: from the logits down). A method that explains the model gives maps whose similarity to
    the originals falls towards 0; one whose maps stay similar (above ``threshold``) fails the check. The model
    itself is never modified: the metric works on a private copy, loaded with the current weights at every run.

    It runs at the end of ``fit`` (``every_n_epochs=None``) or at the end of every N-th training epoch, on a fixed
    probe set of ``num_samples`` validation samples drawn with ``seed`` (the same on every rank; each rank checks
    its shard and the similarities are ``sum``-reduced over ranks). Rank 0 then logs, through
    :mod:`lit_attr.logging`:

    * scalars ``randomization/<method>/<similarity>`` (the similarity at the last stage) and
      ``randomization/<method>/passed`` (1 or 0);
    * the per-stage similarity curves (``randomization/similarity_curves``) and a table of them
      (``randomization/curves``);
    * a grid of the first ``log_heatmaps`` probe samples' ``|A|`` at every stage (``randomization/<method>/stages``);
    * a pass/fail table (``randomization/summary``).

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
        layers: ``"auto"`` or module names to randomise (see ``ParameterRandomization``).
        seed: seed of the probe-set draw and of the re-initialisation.
        log_heatmaps: probe samples in the stage grids (0: none).
        input_bounds: ``(low, high)`` passed to every method.
        method_kwargs: ``{method name: {option: value}}``.
        batch_adapter: maps a collated batch to ``(x, y, mask)``.
        on_error: ``"raise"`` or ``"warn"`` (skip this run with a warning; training goes on).
        target: explain the ``"label"`` or the ``"prediction"``.
        batch_size: probe samples checked at once.
        dataloader_idx: which validation loader (of several) the probe set comes from, by position as Lightning
            numbers them or by key of a dict of loaders.

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
    ) -> None:
        super().__init__()
        self._specs = normalize_methods(methods)
        self.num_samples = check_int("num_samples", num_samples, 1)
        if order not in ORDERS:
            raise ValueError(f"`order` must be one of {ORDERS}, got {order!r}.")
        if stages not in STAGE_MODES:
            raise ValueError(f"`stages` must be one of {STAGE_MODES}, got {stages!r}.")
        self.order = order
        self.stages = stages
        self.every_n_epochs = None if every_n_epochs is None else check_int("every_n_epochs", every_n_epochs, 1)
        self.similarity: tuple[str, ...] = (similarity,) if isinstance(similarity, str) else tuple(similarity)
        unknown = [name for name in self.similarity if name not in SIMILARITIES]
        if not self.similarity or unknown:
            raise ValueError(f"`similarity` must be drawn from {SIMILARITIES}, got {list(self.similarity)}.")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"`threshold` must be a number, got {type(threshold).__name__}.")
        self.threshold = float(threshold)
        self.layers = layers
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"`seed` must be an int, got {type(seed).__name__}.")
        self.seed = seed
        self.log_heatmaps = check_int("log_heatmaps", log_heatmaps, 0)
        self.input_bounds = input_bounds
        self._method_kwargs = check_method_kwargs(method_kwargs, list(self._specs))
        if batch_adapter is not None and not callable(batch_adapter):
            raise TypeError(f"`batch_adapter` must be callable or None, got {type(batch_adapter).__name__}.")
        self.batch_adapter = batch_adapter
        self.on_error = check_on_error(on_error)
        if target not in ("label", "prediction"):
            raise ValueError(f"`target` must be 'label' or 'prediction', got {target!r}.")
        self.target = target
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.dataloader_idx = check_dataloader_idx(dataloader_idx)

        self._checks: dict[str, ParameterRandomization] = {}
        self._model: nn.Module | None = None
        self._probe_set = ProbeSet(num_samples, seed, "RandomizationCheck", dataloader_idx=self.dataloader_idx)
        self._history: dict[int, dict[str, Any]] = {}
        self.results: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ state
    @property
    def method_names(self) -> list[str]:
        """The names used in the logged keys, in order."""
        return list(self._specs)

    @property
    def probe_indices(self) -> list[int] | None:
        """Dataset indices of the probe set (None before ``fit`` starts)."""
        indices = self._probe_set.indices
        return None if indices is None else list(indices)

    @property
    def history(self) -> dict[int, dict[str, Any]]:
        """Summary of every run: ``{epoch: {"<method>/<similarity>": final, "<method>/passed": bool}}``."""
        return {epoch: dict(values) for epoch, values in self._history.items()}

    @property
    def state_key(self) -> str:
        """Unique per method set and randomisation plan, so that several checks can share a checkpoint."""
        return self._generate_state_key(methods=self.method_names, order=self.order, stages=self.stages)

    def state_dict(self) -> dict[str, Any]:
        """Probe indices and the history of results."""
        return {"probe_indices": self.probe_indices, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self._probe_set.restore(state_dict.get("probe_indices"))
        self._history = {int(epoch): dict(values) for epoch, values in state_dict.get("history", {}).items()}

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Build one ``ParameterRandomization`` per method and choose the probe set.

        Not in ``setup``: Lightning calls callback setup before ``LightningModule.setup`` and ``configure_model``,
        where modules may create their data and layers, and the checks copy the layers.
        """
        if self._model is not pl_module or not self._checks:
            self._checks = {name: self._build(name, spec, pl_module) for name, spec in self._specs.items()}
            self._model = pl_module
        self._probe_set.attach(find_dataset(trainer, "fit", self.dataloader_idx))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run after every ``every_n_epochs``-th epoch (when set)."""
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module, trainer.current_epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run once at the end of ``fit`` (when ``every_n_epochs`` is None)."""
        if self.every_n_epochs is None:
            # The epoch counter has already moved past the last epoch trained.
            self._run(trainer, pl_module, max(trainer.current_epoch - 1, 0))

    # ------------------------------------------------------------------ internals
    def _build(self, name: str, spec: Any, pl_module: LightningModule) -> ParameterRandomization:
        options = dict(self._method_kwargs[name])
        common = {
            "layers": self.layers,
            "order": self.order,
            "stages": self.stages,
            "similarity": self.similarity,
            "seed": self.seed,
            "threshold": self.threshold,
        }
        try:
            if isinstance(spec, str):
                if self.input_bounds is not None:
                    options.setdefault("input_bounds", self.input_bounds)
                return ParameterRandomization(spec, model=pl_module, method_kwargs=options, **common)
            method = build_method(name, spec, pl_module, options, self.input_bounds)
            return ParameterRandomization(method, **common)
        except ValueError as err:
            raise ValueError(f"RandomizationCheck: method {name!r}: {err}") from err

    def _probe(self, trainer: Trainer) -> ProbeBatch:
        batch = self._probe_set.load(trainer, self.batch_adapter)
        for check in self._checks.values():
            if isinstance(check.method, IG2) and check.method.reference_pool is None:
                if batch.y is None:
                    raise ValueError("RandomizationCheck: ig2 draws references from labelled samples; none found.")
                check.method.reference_pool = (batch.x, batch.y)
        return batch

    def _targets(self, batch: ProbeBatch) -> Tensor | None:
        # None lets every check explain the (intact) model's own prediction.
        return batch.y if self.target == "label" else None

    def _run(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        error: BaseException | None = None
        stage_maps: dict[str, dict[str, Tensor]] = {}
        try:
            with preserved_rng_state(), torch.inference_mode(False):
                probe = self._probe(trainer)
                device = pl_module.device
                positions = shard(probe.x.shape[0], trainer.global_rank, trainer.world_size)
                local = probe.select(positions).for_model(trainer, device)
                targets = self._targets(local)
                for check in self._checks.values():
                    check.to(device)
                    for rows in chunks(range(local.x.shape[0]), self.batch_size):
                        index = torch.as_tensor(rows, device=device)
                        check.update(local.x[index], None if targets is None else targets[index])
                if trainer.is_global_zero and self.log_heatmaps and probe.x.ndim == 4:
                    shown = probe.select(range(min(self.log_heatmaps, probe.x.shape[0]))).for_model(trainer, device)
                    stage_maps = {
                        name: self._stage_maps(check, pl_module, shown.x, self._targets(shown))
                        for name, check in self._checks.items()
                    }
        except Exception as exc:  # noqa: BLE001  (handled per `on_error` once every rank knows)
            error = exc
        if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
            for check in self._checks.values():
                check.reset()
            self._fail(error, epoch)
            return

        results = {name: check.compute() for name, check in self._checks.items()}
        for check in self._checks.values():
            check.reset()
        self.results = {name: _to_cpu(result) for name, result in results.items()}
        summary: dict[str, Any] = {}
        for name, result in self.results.items():
            for measure in self.similarity:
                summary[f"{name}/{measure}"] = to_float(result[measure]["final"])
            summary[f"{name}/passed"] = self._passed(result)
        self._history[epoch] = summary
        if trainer.is_global_zero and trainer.loggers:
            try:
                with preserved_rng_state():
                    self._deliver(trainer, summary, stage_maps, epoch)
            except Exception as exc:  # noqa: BLE001
                self._fail(exc, epoch, what="logging the randomisation check")

    def _passed(self, result: dict[str, Any]) -> bool:
        if "spearman_abs" in result:
            return bool(result["spearman_abs"]["passed"])
        return all(bool(result[measure]["passed"]) for measure in self.similarity)

    def _stage_maps(
        self, check: ParameterRandomization, pl_module: LightningModule, x: Tensor, target: Tensor | None
    ) -> dict[str, Tensor]:
        """``|A|`` of a few samples at every stage, on the check's working copy (as its update computes them)."""
        method = check.method
        work = method.model
        state = pl_module.state_dict()
        with torch.no_grad():
            work.load_state_dict({key: state[key] for key in work.state_dict()})
        target = method.resolve_target(x, target)
        layers = randomizable_layers(work, self.layers, example_input=x[:1], forward_fn=method.forward_fn)
        maps: dict[str, Tensor] = {}
        walk = iter_randomized(layers, self.order, seed=self.seed, stages=self.stages)
        with closing(walk):
            for stage in walk:
                attributions = method.attribute(x, target)
                maps[stage] = (attributions[0] if isinstance(attributions, tuple) else attributions).abs().cpu()
        return maps

    def _fail(self, error: BaseException | None, epoch: int, what: str = "the randomisation check") -> None:
        if self.on_error == "raise":
            if error is not None:
                raise error
            raise RuntimeError(f"RandomizationCheck: {what} failed on another process at epoch {epoch}.")
        if error is not None:
            warnings.warn(
                f"RandomizationCheck: {what} failed at epoch {epoch} ({type(error).__name__}: {error}); skipping it "
                "(on_error='warn').",
                UserWarning,
                stacklevel=2,
            )
        else:
            rank_zero_warn(f"RandomizationCheck: {what} failed on another process at epoch {epoch}; skipping it.")

    def _deliver(
        self, trainer: Trainer, summary: dict[str, Any], stage_maps: dict[str, dict[str, Tensor]], epoch: int
    ) -> None:
        attr_logging.log_metrics(trainer, {f"randomization/{key}": float(value) for key, value in summary.items()})
        rows = [
            [epoch, name, measure, summary[f"{name}/{measure}"], self.threshold, summary[f"{name}/passed"]]
            for name in self.results
            for measure in self.similarity
        ]
        columns = ["epoch", "method", "similarity", "final", "threshold", "passed"]
        attr_logging.log_table(trainer, "randomization/summary", columns, rows)
        curve_rows = [
            [epoch, name, measure, position, stage, to_float(value)]
            for name, result in self.results.items()
            for measure in self.similarity
            for position, (stage, value) in enumerate(
                zip(result[measure]["stages"], result[measure]["curve"], strict=True)
            )
        ]
        attr_logging.log_table(
            trainer,
            "randomization/curves",
            ["epoch", "method", "similarity", "stage_index", "stage", "value"],
            curve_rows,
        )
        figure = viz.similarity_figure(self.results, self.threshold, title=f"parameter randomisation, epoch {epoch}")
        attr_logging.log_figure(trainer, "randomization/similarity_curves", figure)
        if stage_maps and self._probe_set.batch is not None:
            images = self._probe_set.batch.x[: self.log_heatmaps]
            for name, maps in stage_maps.items():
                verdict = "passed" if summary[f"{name}/passed"] else "FAILED"
                grid = viz.randomization_grid(images, maps, title=f"{name}: {verdict} (epoch {epoch})")
                attr_logging.log_image(trainer, f"randomization/{name}/stages", grid, caption=f"{name}: {verdict}")


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value
