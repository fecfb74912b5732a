""":func:`evaluate`: check the arguments and the set-up, drive the evaluation, write and log its results.

Files appear atomically: everything is written into a hidden sibling work directory (``.<name>.work``) that is
renamed to ``output_dir`` only once complete, so a crash never leaves a half-written result that looks finished.
Every ``checkpoint_every`` batches each rank also saves its partial state there, and ``resume=True`` continues a
killed run from it (:mod:`lit_attr._resume`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning import LightningDataModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

import lit_attr.viz as viz
from lit_attr._checks import (
    MODEL_OUTPUTS,
    check_bounds,
    check_bounds_fit,
    check_callable,
    check_choice,
    check_flag,
    check_int,
    check_names,
    check_option_dicts,
    check_optional_int,
)
from lit_attr._probe import load_probe
from lit_attr._resume import WorkDirectory, check_output_dir, model_digest, recover_interrupted_swap
from lit_attr.batch import BatchAdapter
from lit_attr.evaluate.checks import STAGES, EvaluationError, check_logits, split_collate, split_dataset
from lit_attr.evaluate.driver import QUIET_TRAINER, EvaluationModule, ProgressBar, limited_samples
from lit_attr.evaluate.preemption import (
    EvaluationInterruptedError,
    Preemption,
    Stop,
    preemption_signals,
    requeue_slurm_job,
    signal_name,
)
from lit_attr.evaluate.results import model_accuracy, package_versions, per_sample_scores, to_plain, write_and_log
from lit_attr.evaluate.storage import OutputLock, check_storage, expected_bytes
from lit_attr.methods import available_methods
from lit_attr.metrics import available_metrics, get_metric_spec

__all__ = ["evaluate"]

def evaluate(
    model: nn.Module,
    datamodule: LightningDataModule,
    output_dir: str | os.PathLike = "lit_attr_evaluation",
    methods: Sequence[str] = ("saliency", "integrated_gradients"),
    method_kwargs: dict[str, dict[str, Any]] | None = None,
    metrics: Sequence[str] = ("insertion_deletion", "localization", "activation_deviation"),
    metric_kwargs: dict[str, dict[str, Any]] | None = None,
    split: Literal["val", "test"] = "val",
    limit_samples: int | None = None,
    batch_size: int = 16,
    input_bounds: tuple[float, float] | None = (0.0, 1.0),
    target: Literal["label", "prediction"] = "label",
    heatmap_samples: int = 8,
    randomization_samples: int = 8,
    reference_pool_size: int = 64,
    trainer: Trainer | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
    tokenizer: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 10,
    batch_adapter: BatchAdapter | None = None,
    model_output: Literal["logits", "sigmoid"] = "logits",
) -> dict[str, Any]:
    """Attribute one split with every method, score the maps and write ``metrics.json``, PNGs and ``report.html``.

    Args:
        model: a classifier returning logits (typically a LightningModule loaded from a checkpoint).
        datamodule: provides the split; samples are ``(x, y[, mask])``, a tensor or a dict.
        output_dir: directory that receives the results; the work happens in its hidden sibling
            ``.<name>.work``, renamed to ``output_dir`` when complete. A finished evaluation there is only replaced
            with ``overwrite=True``; a non-empty directory without ``metrics.json`` never.
        methods: registered method names (:func:`~lit_attr.methods.available_methods`).
        method_kwargs: ``{method: {option: value}}``, e.g. ``{"fei": {"iterations": 20}}``.
        metrics: names from :func:`~lit_attr.metrics.available_metrics` (every registered metric); those that
            need masks (``"localization"``) are skipped when the data has none.
        metric_kwargs: ``{metric: {option: value}}``, e.g. ``{"insertion_deletion": {"preset": "rise"}}``.
        split: ``"val"`` or ``"test"``.
        limit_samples: evaluate only the first N samples of the split.
        batch_size: samples attributed at once (per process).
        input_bounds: valid input range, passed to every method.
        target: explain the ``"label"`` or the model's ``"prediction"``.
        heatmap_samples: the first N samples are shown in the heatmap grids.
        randomization_samples: the first N samples go through the metrics that re-run the method on other
            weights or inputs (``randomization``, ``emprt``, ``smprt``, ``sensitivity``): they cost many passes.
        reference_pool_size: IG2's reference pool: the first N samples of the split.
        trainer: runs the loop (devices, strategy, loggers); forced to ``inference_mode=False`` semantics by
            construction. ``None`` builds a single-process CPU trainer. Its ``limit_test_batches`` (or
            ``fast_dev_run``) cuts the evaluated samples to a prefix of the split, with a warning; the limit is
            recorded under ``trainer_limits`` and ``num_samples`` counts the samples actually scored.
        config: the resolved configuration, stored in ``metrics.json``.
        progress: show progress on rank 0: a rich bar on a terminal, plain lines on stderr elsewhere
            (:mod:`lit_attr.evaluate.progress`).
        tokenizer: turns token ids into the words of the report's highlighting (see
            :func:`lit_attr.viz.token_decoder`); defaults to the datamodule (its ``decode`` or ``tokenizer``).
        resume: continue the unfinished evaluation in the work directory (a killed run): every rank reloads its
            metric states and records and skips its finished batches. It must have the same configuration and
            number of processes, else the resume is refused with the reason. Without an unfinished evaluation
            the run starts from the beginning.
        overwrite: replace a finished evaluation in ``output_dir``; without ``resume``, also discard an
            unfinished one (which is otherwise an error).
        checkpoint_every: each rank saves its partial state every this many batches.
        batch_adapter: turns a collated batch of the split into :class:`~lit_attr.batch.Batch` (the callbacks'
            ``batch_adapter``); ``None`` reads ``(x, y[, mask])`` tuples and dicts
            (:func:`~lit_attr.batch.default_batch_adapter`).
        model_output: ``"logits"`` for class logits ``(N, K >= 2)``; ``"sigmoid"`` for a binary classifier that
            returns one logit ``z`` per sample: class 1 is scored by ``sigmoid(z)``, class 0 by ``1 - sigmoid(z)``.
            A single output is refused without it, and so are outputs that look like probabilities.

    Returns:
        The content of ``metrics.json`` (on every rank; only rank 0 writes files).

    Raises:
        EvaluationError: for an unusable split, a model that does not return logits, a trainer in inference mode,
            an ``output_dir`` that must not be replaced, an unfinished evaluation without ``resume`` or
            ``overwrite``, or a resume with another configuration or number of processes.
        ValueError: for unknown method or metric names.

    Example:
        >>> from lit_attr.data import ShapesDataModule
        >>> from lit_attr.models import DemoClassifier
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as out:
        ...     result = evaluate(DemoClassifier(), ShapesDataModule(num_train=8, num_val=8), out,
        ...                       methods=["saliency"], limit_samples=4, progress=False)
        >>> sorted(result["methods"]["saliency"])
        ['activation_deviation', 'insertion_deletion', 'localization']
    """
    _check_arguments(locals())  # every parameter, before anything is built or read
    methods = check_names("methods", methods, available_methods(), what="method")
    metrics = check_names("metrics", metrics, available_metrics(), what="metric") if metrics else ()
    rerunning = [name for name in metrics if "method" in get_metric_spec(name).consumes]
    if rerunning and randomization_samples == 0:
        raise ValueError(
            f"`randomization_samples` is 0, so the metrics that re-run the method ({', '.join(rerunning)}) would see "
            "no sample and be left out; pass randomization_samples >= 1 or leave them out of `metrics`."
        )
    output = Path(output_dir).resolve()
    note = recover_interrupted_swap(output)
    if note:
        rank_zero_warn(note, category=UserWarning)
    refusal = check_output_dir(output, overwrite)
    if refusal:
        raise EvaluationError(refusal)
    dataset = split_dataset(datamodule, split)
    total = len(dataset)  # type: ignore[arg-type]
    num_samples = total if limit_samples is None else min(int(limit_samples), total)
    if num_samples < 1:
        raise EvaluationError(f"the {split!r} split has no samples to evaluate")
    collate = split_collate(datamodule, split)
    first = load_probe(dataset, [0, 0], batch_adapter, collate)
    num_classes = check_logits(
        model, first.x.float() if first.x.is_floating_point() else first.x, first.attention_mask, model_output
    )
    try:
        check_bounds_fit("input_bounds", input_bounds, first.x)
    except ValueError as error:
        raise ValueError(f"{error} (the split's samples have shape {tuple(first.x.shape[1:])})") from error

    if trainer is None:
        trainer = Trainer(accelerator="cpu", devices=1, logger=False, **QUIET_TRAINER)
    if trainer.test_loop.inference_mode:
        raise EvaluationError("attribution needs gradients: build the Trainer with inference_mode=False")
    split_samples, (num_samples, limits) = num_samples, limited_samples(trainer, num_samples, batch_size)
    if limits:
        rank_zero_warn(_limit_warning(limits, num_samples, split_samples), category=UserWarning)
    kept = min(heatmap_samples, num_samples)
    check_storage(output, expected_bytes(first.x[0].numel(), num_samples, kept, len(methods)))
    settings = {
        "methods": list(methods),
        "method_kwargs": {k: dict(v) for k, v in (method_kwargs or {}).items() if k in methods},
        "metrics": list(metrics),
        "metric_kwargs": {k: dict(v) for k, v in (metric_kwargs or {}).items() if k in metrics},
        "batch_size": int(batch_size),
        "input_bounds": None if input_bounds is None else tuple(input_bounds),
        "target": target,
        "heatmap_samples": int(heatmap_samples),
        "randomization_samples": int(randomization_samples),
        "reference_pool_size": int(reference_pool_size),
        "model_output": model_output,
    }
    fingerprint = {
        **settings,
        "split": split,
        "num_samples": num_samples,
        "trainer_limits": limits,
        "world_size": trainer.world_size,
        "accelerator": trainer.strategy.root_device.type,
        "precision": str(trainer.precision),
        "model": model_digest(model),
        "config": {k: v for k, v in (config or {}).items() if k not in _RUN_CONTROL},
    }
    work = WorkDirectory(output, to_plain(fingerprint))
    control = {"resume": resume, "overwrite": overwrite, "checkpoint_every": checkpoint_every}
    wrapper = EvaluationModule(model, dataset, num_samples, settings, work, control, collate, batch_adapter)
    # The bar follows rank 0's shard, which is representative of every rank's.
    bar = ProgressBar(enabled=progress and trainer.is_global_zero, total=math.ceil(num_samples / trainer.world_size))
    wrapper.progress = bar.update if bar.enabled else None
    lock = OutputLock(output)
    wrapper.claim = functools.partial(_claim, lock, output, overwrite)
    signums, slurm = preemption_signals(trainer)
    with Preemption(signums) as wrapper.preemption:
        try:
            with bar, _lifted_test_limits(trainer):
                trainer.test(wrapper, verbose=False)
            return _finish(trainer, wrapper, output, split, num_classes, limits, config, datamodule, tokenizer)
        except Stop as stop:
            raise _interrupted(stop.signum, trainer, wrapper, slurm) from None
        finally:
            lock.release()


def _interrupted(signum: int, trainer: Trainer, wrapper: EvaluationModule, slurm: Any) -> EvaluationInterruptedError:
    """Save what a signal interrupted and say so in one line (with the exit code ``128 + signal``)."""
    name = signal_name(signum)
    try:
        done, total = wrapper.save_interrupted()
    except EvaluationError as error:  # a storage fault: the message says what stays
        return EvaluationInterruptedError(f"interrupted by {name}, but {error}", signum)
    # The ranks Lightning started got the signal from rank 0: their states are saved once they have exited.
    for child in getattr(trainer.strategy.launcher, "procs", None) or []:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=120)
    where = f"{done} of {total} samples"
    if trainer.world_size > 1:
        where += f" of process {trainer.global_rank} of {trainer.world_size} (each saves its own part)"
    message = f"interrupted by {name} after {where}; resume with --resume true"
    if slurm is not None and slurm.auto_requeue and signum == slurm.requeue_signal and trainer.is_global_zero:
        message += f" ({requeue_slurm_job()})"
    return EvaluationInterruptedError(message, signum)


def _claim(lock: OutputLock, output: Path, overwrite: bool) -> str | None:
    """Global rank 0's claim on ``output_dir`` before it touches the work directory: a refusal, or None.

    It takes the output's lock and judges ``output_dir`` again, now that no other run can change it.
    """
    try:
        taken_over = lock.acquire()
    except EvaluationError as error:
        return str(error)
    if taken_over:
        rank_zero_warn(taken_over, category=UserWarning)
    return check_output_dir(output, overwrite)


def _finish(
    trainer: Trainer,
    wrapper: EvaluationModule,
    output: Path,
    split: str,
    num_classes: int,
    limits: Mapping[str, Any],
    config: Mapping[str, Any] | None,
    datamodule: LightningDataModule,
    tokenizer: Any,
) -> dict[str, Any]:
    """The result of a finished run; on global rank 0 also its files and its logs."""
    scored = len(wrapper.records)  # every rank's records: what was scored, counted
    result: dict[str, Any] = {
        "split": split,
        "num_samples": scored,
        "trainer_limits": limits,
        "num_classes": num_classes,
        "world_size": trainer.world_size,
        "methods": wrapper.results,
        "timing": {
            name: {"seconds_per_sample": sum(record.seconds[name] for record in wrapper.records) / max(scored, 1)}
            for name in wrapper.results
        },
        "config": to_plain(dict(config)) if config is not None else None,
        "versions": package_versions(),
        "model_accuracy": model_accuracy(wrapper.records),
        "samples": per_sample_scores(wrapper.records),
        # The checks that re-run the method saw only the first samples: their figures say how many.
        "randomization_samples": min(wrapper.settings["randomization_samples"], scored),
    }
    if trainer.is_global_zero:
        decode = viz.token_decoder(tokenizer or datamodule)
        class_names = getattr(datamodule, "class_names", None)
        # Rank 0 removes the work directory, every rank's states with it, once the result is in place; the other
        # ranks keep theirs until then, so that a failed write is completed by --resume true.
        write_and_log(trainer, output, result, wrapper.scalars, wrapper.records, class_names, decode)
    return result


@contextlib.contextmanager
def _lifted_test_limits(trainer: Trainer) -> Iterator[None]:
    """Lightning's own cut of the test batches lifted: :func:`limited_samples` has cut the split already."""
    limit = trainer.limit_test_batches
    trainer.limit_test_batches = 1.0
    try:
        yield
    finally:
        trainer.limit_test_batches = limit


def _limit_warning(limits: Mapping[str, Any], kept: int, total: int) -> str:
    if "fast_dev_run" in limits:
        given = f"fast_dev_run={limits['fast_dev_run']} ({limits['limit_test_batches']} batch(es) per process)"
    else:
        given = f"limit_test_batches={limits['limit_test_batches']}"
    return (
        f"lit_attr evaluate: the trainer's {given} limits the evaluation to {kept} of the {total} samples; "
        f"metrics.json records num_samples={kept} and the limit under trainer_limits"
    )


def _check_arguments(arguments: Mapping[str, Any]) -> None:
    """Refuse bad arguments of :func:`evaluate` before anything runs (TypeError/ValueError naming the argument)."""
    for name, kind in (("model", nn.Module), ("datamodule", LightningDataModule)):
        if not isinstance(arguments[name], kind):
            raise TypeError(f"`{name}` must be a {kind.__name__}, got {type(arguments[name]).__name__}")
    for name, kind in (("trainer", Trainer), ("config", Mapping)):
        if arguments[name] is not None and not isinstance(arguments[name], kind):
            raise TypeError(f"`{name}` must be a {kind.__name__} or None, got {type(arguments[name]).__name__}")
    # Options for registered methods that are not run are fine (a config narrowed with --methods); unknown names
    # are typos.
    check_option_dicts("method_kwargs", arguments["method_kwargs"], available_methods(), what="method")
    check_option_dicts("metric_kwargs", arguments["metric_kwargs"], available_metrics(), what="metric")
    check_choice("split", arguments["split"], tuple(STAGES))
    check_choice("target", arguments["target"], ("label", "prediction"))
    check_optional_int("limit_samples", arguments["limit_samples"], 1)
    check_int("batch_size", arguments["batch_size"], 1)
    check_int("checkpoint_every", arguments["checkpoint_every"], 1)
    for name in ("heatmap_samples", "randomization_samples", "reference_pool_size"):
        check_int(name, arguments[name], 0)
    check_bounds("input_bounds", arguments["input_bounds"])
    for name in ("progress", "resume", "overwrite"):
        check_flag(name, arguments[name])
    check_callable("batch_adapter", arguments["batch_adapter"])
    check_choice("model_output", arguments["model_output"], MODEL_OUTPUTS)


_RUN_CONTROL = ("output_dir", "resume", "overwrite", "checkpoint_every", "trainer", "ckpt_path", "trust_checkpoint")
"""Configuration keys that do not decide the numbers: a resumed run may change them (the weights are compared by
their digest, the number of processes on its own)."""
