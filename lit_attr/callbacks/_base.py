"""What both callbacks share: their common arguments, a probe set per split, the runner, and error handling."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lit_attr._checks import (
    MODEL_OUTPUTS,
    check_bounds,
    check_callable,
    check_choice,
    check_int,
    check_option_dicts,
    check_seed,
)
from lit_attr._probe import ProbeSet, chunks, find_dataset
from lit_attr._probe import shard as shard_of
from lit_attr.batch import Batch, BatchAdapter
from lit_attr.metrics.registry import get_metric_spec
from lit_attr.runner import AttributionRunner, MethodsArg, SampleRecord, normalize_methods

ON_ERROR = ("raise", "warn")


def check_dataloader_idx(value: Any) -> int | str:
    """Validate ``dataloader_idx``: a position (int >= 0) in a list of loaders, or a key of a dict of them."""
    if isinstance(value, str):
        return value
    return check_int("dataloader_idx", value, 0)


def warn_about_missing(split: str, probe: Batch, metric_names: Sequence[str], target: str) -> None:
    """Warn once that the probe set lacks masks (metrics that need them are skipped) or labels (predictions)."""
    needs_masks = [name for name in metric_names if get_metric_spec(name).needs_masks]
    if probe.mask is None and needs_masks:
        rank_zero_warn(
            f"AttributionMonitor: the {split} probe batches have no ground-truth masks; skipping {needs_masks}."
        )
    if probe.y is None and target == "label":
        rank_zero_warn("AttributionMonitor: the probe batches have no labels; explaining the predictions instead.")


class AttributionCallback(Callback):
    """Base of :class:`AttributionMonitor` and :class:`RandomizationCheck` (see their docstrings for the arguments).

    It validates the arguments both take, keeps a :class:`~lit_attr._probe.ProbeSet` per split, runs an
    :class:`~lit_attr.runner.AttributionRunner` on this rank's shard of a probe set, and turns a failure into an
    exception or a warning per ``on_error`` once every rank knows of it.
    """

    def __init__(
        self,
        methods: MethodsArg,
        *,
        num_samples: int,
        seed: int,
        input_bounds: tuple[Any, Any] | None,
        method_kwargs: Mapping[str, Mapping[str, Any]] | None,
        batch_adapter: BatchAdapter | None,
        on_error: Literal["raise", "warn"],
        target: Literal["label", "prediction"],
        batch_size: int,
        dataloader_idx: int | str,
        model_output: str = "logits",
    ) -> None:
        super().__init__()
        self._specs = normalize_methods(methods)
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.seed = check_seed(seed)
        check_bounds("input_bounds", input_bounds)
        self.input_bounds = input_bounds
        self._method_kwargs = check_option_dicts("method_kwargs", method_kwargs, list(self._specs), what="method")
        self.batch_adapter = check_callable("batch_adapter", batch_adapter)
        self.on_error = check_choice("on_error", on_error, ON_ERROR)
        self.target = check_choice("target", target, ("label", "prediction"))
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.dataloader_idx = check_dataloader_idx(dataloader_idx)
        self.model_output = check_choice("model_output", model_output, MODEL_OUTPUTS)
        owner = type(self).__name__
        self._probes = {
            "val": ProbeSet(num_samples, seed, owner, split="val", dataloader_idx=self.dataloader_idx),
            "test": ProbeSet(num_samples, seed, owner, split="test"),
        }
        self._runner: AttributionRunner | None = None
        self._model: LightningModule | None = None
        self._refused: dict[str, str] = {}  # split -> why the callback does not run on it (said once)

    @property
    def method_names(self) -> list[str]:
        """The names used in the logged keys, in order."""
        return list(self._specs)

    @property
    def runner(self) -> AttributionRunner | None:
        """The :class:`~lit_attr.runner.AttributionRunner` doing the work (None until ``fit``/``validate`` starts)."""
        return self._runner

    @property
    def probe_indices(self) -> list[int] | None:
        """Dataset indices of the validation probe set (None before it is drawn)."""
        indices = self._probes["val"].indices
        return None if indices is None else list(indices)

    # ------------------------------------------------------------------ for subclasses
    #: Whether the callback runs after validation epochs of ``fit`` (so that ``limit_val_batches=0`` silences it).
    runs_after_validation = False

    def _find_probe_data(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, fit_start: bool = False
    ) -> None:
        """Attach the split's dataset to its probe set; where there is none to read by index, say so once.

        At ``fit`` start the callback refuses (``on_error="raise"``) or warns and stays idle (``"warn"``) when the
        validation data is missing, is an ``IterableDataset`` (a fixed probe set is read by index), or is switched
        off by ``limit_val_batches=0`` for a callback that runs after validation epochs: before any training step,
        never in the middle of ``fit``.
        """
        split = "test" if stage == "test" else "val"
        if fit_start:
            self._refused.pop(split, None)
        if split in self._refused:
            return
        probes = self._probes[split]
        try:
            probes.attach(find_dataset(trainer, pl_module, stage, probes.dataloader_idx))
        except TypeError as error:  # not a map-style dataset
            self._refuse(split, str(error), TypeError)
            return
        if not fit_start:
            return
        if self.runs_after_validation and trainer.limit_val_batches == 0:
            self._refuse(split, "`limit_val_batches=0` switches validation off, and it runs after validation epochs")
        elif probes.dataset is None:
            self._refuse(
                split,
                "there is no validation data to draw its probe set from (no `val_dataloader` on the datamodule or "
                "the module, none given to `trainer.fit`)",
            )

    def _refuse(self, split: str, reason: str, kind: type[Exception] = ValueError) -> None:
        self._refused[split] = reason
        message = f"{type(self).__name__} will not run: {reason[:1].lower()}{reason[1:].rstrip('.')}"
        if self.on_error == "raise":
            raise kind(f"{message}.")
        rank_zero_warn(f"{message}; training goes on without it (on_error='warn').")

    def _runner_options(self) -> dict[str, Any]:
        """Options of the :class:`~lit_attr.runner.AttributionRunner` beyond the methods (metrics, ...)."""
        return {}

    def _runner_for(self, pl_module: LightningModule) -> AttributionRunner:
        """The runner on ``pl_module``, built on first use (and again for another module)."""
        if self._runner is None or self._model is not pl_module:
            try:
                self._runner = AttributionRunner(
                    pl_module,
                    self._specs,
                    method_kwargs=self._method_kwargs,
                    input_bounds=self.input_bounds,
                    target=self.target,
                    model_output=self.model_output,
                    **self._runner_options(),
                )
            except (TypeError, ValueError) as error:
                raise type(error)(f"{type(self).__name__}: {error}") from error
            self._model = pl_module
        return self._runner

    def _prepare_runner(self, runner: AttributionRunner, split: str, probe: Batch) -> None:
        """Hand the methods the probe set in dataset order (IG2's reference pool), the same however it was drawn."""
        indices = self._probes[split].indices or []
        runner.prepare(probe.select(sorted(range(len(indices)), key=indices.__getitem__)))

    def _run_on_probe(
        self, trainer: Trainer, pl_module: LightningModule, runner: AttributionRunner, probe: Batch, shard: bool = True
    ) -> list[SampleRecord]:
        """This rank's shard of ``probe`` (all of it with ``shard=False``) through ``runner`` in batches.

        Returns its records, indexed by probe position.

        Gather them (:func:`~lit_attr.runner.gather_records`) only once every rank knows that none failed: a rank
        that raised here never reaches a collective call.
        """
        device = pl_module.device
        # Also on a rank without probes: its (empty) states take part in the device-side sync of compute().
        runner.to(device)
        positions = shard_of(len(probe), trainer.global_rank, trainer.world_size) if shard else list(range(len(probe)))
        records: list[SampleRecord] = []
        if positions:
            local = probe.select(positions).to(device)
            local = local.with_inputs(trainer.precision_plugin.convert_input(local.x))
            with torch.inference_mode(False):
                for rows in chunks(range(len(positions)), self.batch_size):
                    records += runner.run(local.select(rows), indices=[positions[row] for row in rows])
        return records

    def _fail(self, error: BaseException | None, when: str, what: str) -> None:
        name = type(self).__name__
        if self.on_error == "raise":
            if error is not None:
                raise error
            raise RuntimeError(f"{name}: {what} failed on another process at {when}.")
        if error is not None:
            warnings.warn(
                f"{name}: {what} failed at {when} ({type(error).__name__}: {error}); skipping it, training goes on "
                "(on_error='warn').",
                UserWarning,
                stacklevel=3,
            )
        else:
            rank_zero_warn(f"{name}: {what} failed on another process at {when}; skipping it.")
