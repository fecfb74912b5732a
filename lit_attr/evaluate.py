"""Post-hoc evaluation of attribution methods on a trained model: the engine behind ``lit_attr evaluate``.

:func:`evaluate` runs the configured methods over one split of a data module with gradients enabled (a Lightning
``Trainer(inference_mode=False)`` drives a small wrapper module, so ``devices``/``strategy``/``num_nodes`` work as
in training), feeds the attributions to ``sum``-reduced metrics, and on global rank 0 writes ``metrics.json``,
PNG figures and a self-contained ``report.html`` into ``output_dir``.

Under DDP every sample is counted exactly once: the (possibly limited) split is sharded by index without padding
(rank ``r`` of ``W`` takes samples ``r, r + W, ...``; Lightning's distributed sampler, which pads, is switched off),
and every metric state is a ``sum``, so the result equals the single-process result up to float summation order.

Files appear atomically: everything is written into a hidden sibling work directory (``.<name>.work``) that is
renamed to ``output_dir`` only once complete, so a crash never leaves a half-written result that looks finished.
Every ``checkpoint_every`` batches each rank also saves its partial state there, and ``resume=True`` continues a
killed run from it (:mod:`lit_attr._resume`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningDataModule, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate
from typing_extensions import override

import lit_attr.viz as viz
from lit_attr._checks import (
    check_bounds,
    check_callable,
    check_choice,
    check_flag,
    check_int,
    check_names,
    check_option_dicts,
    check_optional_int,
)
from lit_attr._probe import load_probe
from lit_attr._resume import WorkDirectory, agree, check_output_dir, model_digest, write_result
from lit_attr.batch import Batch, BatchAdapter, adapt_batch
from lit_attr.methods import available_methods
from lit_attr.metrics import available_metrics, get_metric_spec
from lit_attr.runner import AttributionRunner, SampleRecord, gather_records

__all__ = ["EvaluationError", "check_logits", "evaluate", "load_checkpoint", "split_dataset"]

log = logging.getLogger(__name__)

_STAGES = {"val": "validate", "test": "test"}


class EvaluationError(RuntimeError):
    """A problem with the user's setup (checkpoint, model output, split) that the CLI reports in one line."""


# ---------------------------------------------------------------------------------------------------- set-up checks
def load_checkpoint(model: nn.Module, ckpt_path: str | os.PathLike, trust_checkpoint: bool = False) -> None:
    """Load the weights of a Lightning checkpoint (or a plain state dict) into ``model``, strictly.

    Checkpoints are unpickled with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain Python
    containers and values, so a malicious file cannot run code. That is enough for a Lightning checkpoint whose
    hyperparameters and callback states are plain values (the demo's, or one written by ``lit_attr fit``). A file
    that needs other Python objects is refused with the names of those objects; load it with
    ``trust_checkpoint=True`` (``--trust_checkpoint true`` on the command line), which unpickles it with
    ``weights_only=False``, only if you trust whoever wrote it. URLs (``https://``, ``s3://``, ...) are refused
    unless trusted, then read with ``fsspec``.

    Args:
        model: the module built from the configuration.
        ckpt_path: a ``.ckpt`` written by Lightning, or a ``torch.save``-d state dict of ``model``.
        trust_checkpoint: unpickle with ``weights_only=False`` and allow URLs: arbitrary code in the file runs.

    Raises:
        EvaluationError: if the file does not exist, is an untrusted URL, needs Python objects that safe loading
            refuses, or its weights do not match ``model``. The message is one line.

    Example:
        >>> import tempfile
        >>> path = tempfile.mktemp(suffix=".pt"); torch.save(nn.Linear(2, 2).state_dict(), path)
        >>> net = nn.Linear(2, 2)
        >>> load_checkpoint(net, path)
        >>> torch.equal(net.weight, torch.load(path)["weight"])
        True
    """

    def reason(error: Exception) -> str:
        # torch's weights_only errors span several lines; the one naming the cause starts "WeightsUnpickler error".
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        return next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0])

    source = str(ckpt_path)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", source):
        if not trust_checkpoint:
            raise EvaluationError(
                f"refusing to load checkpoint {source!r}: URLs are only loaded when trusted (--trust_checkpoint true, "
                "trust_checkpoint=True in Python), which unpickles with weights_only=False; or download the file"
            )
        import fsspec

        try:
            with fsspec.open(source, "rb") as stream:
                checkpoint = torch.load(stream, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - a missing backend, a network error or a bad file alike
            raise EvaluationError(f"cannot read checkpoint {source!r}: {reason(error)}") from error
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise EvaluationError(f"checkpoint not found: {source!r} is not a file")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
        except pickle.UnpicklingError as error:
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except ValueError:  # not a zip checkpoint: the legacy format names the first refused global only
                unsafe = re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))
            if not unsafe:
                raise EvaluationError(f"cannot read checkpoint {source!r}: {reason(error)}") from error
            raise EvaluationError(
                f"checkpoint {source!r} needs Python objects that safe loading (weights_only=True) refuses: "
                f"{', '.join(unsafe)}; if you trust the file, pass --trust_checkpoint true (trust_checkpoint=True "
                "in Python) to load it with weights_only=False"
            ) from error
        except Exception as error:  # noqa: BLE001 - any other unpickling failure means "not a checkpoint"
            raise EvaluationError(f"cannot read checkpoint {source!r}: {reason(error)}") from error
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise EvaluationError(f"checkpoint {source!r} holds no state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise EvaluationError(
            f"checkpoint {source!r} does not fit {type(model).__name__}: {' '.join(first[:2])}"
        ) from error


def split_dataset(datamodule: LightningDataModule, split: str) -> Dataset:
    """The dataset behind ``split`` (``"val"`` or ``"test"``) of a data module, after ``setup``.

    Looks for ``<split>_set``/``<split>_dataset`` attributes (``val_dataset``, ``test_set``, ...) and falls back to
    the ``dataset`` of ``<split>_dataloader()``.

    Raises:
        EvaluationError: if the data module has no such split.

    Example:
        >>> from lit_attr.data import ShapesDataModule
        >>> len(split_dataset(ShapesDataModule(num_train=8, num_val=8, num_test=4), "test"))
        4
    """
    if split not in _STAGES:
        raise EvaluationError(f"split must be one of {tuple(_STAGES)}, got {split!r}")
    datamodule.setup(_STAGES[split])
    names = (f"{split}_set", f"{split}_dataset", *(("validation_set", "valid_set") if split == "val" else ()))
    for name in names:
        dataset = getattr(datamodule, name, None)
        if isinstance(dataset, Dataset):
            return dataset
    hook = getattr(type(datamodule), f"{split}_dataloader", None)
    if hook is None or hook is getattr(LightningDataModule, f"{split}_dataloader", None):
        raise EvaluationError(f"the data module {type(datamodule).__name__} has no {split!r} split")
    try:
        loader = getattr(datamodule, f"{split}_dataloader")()
    except Exception as error:  # noqa: BLE001 - e.g. a RuntimeError("split not available") from the module
        raise EvaluationError(f"the data module {type(datamodule).__name__} has no {split!r} split: {error}") from error
    dataset = getattr(loader, "dataset", None)
    if not isinstance(dataset, Dataset):
        raise EvaluationError(f"the {split!r} dataloader of {type(datamodule).__name__} has no map-style dataset")
    return dataset


def split_collate(datamodule: LightningDataModule, split: str) -> Callable[[list], Any]:
    """The ``collate_fn`` of the split's dataloader (a text collator pads token ids), else ``default_collate``.

    Example:
        >>> from lit_attr.data import ShapesDataModule
        >>> split_collate(ShapesDataModule(num_train=8, num_val=8), "val") is default_collate
        True
    """
    hook = getattr(type(datamodule), f"{split}_dataloader", None)
    if hook is None or hook is getattr(LightningDataModule, f"{split}_dataloader", None):
        return default_collate
    try:
        collate = getattr(getattr(datamodule, f"{split}_dataloader")(), "collate_fn", None)
    except Exception:  # noqa: BLE001 - a split the module cannot load is reported by split_dataset
        return default_collate
    return collate or default_collate


def check_logits(model: nn.Module, x: Tensor, attention_mask: Tensor | None = None) -> int:
    """Check that ``model`` maps a batch ``x`` to raw logits ``(N, K)``; return ``K``.

    Token ids ``x`` go in as the methods pass them (:meth:`lit_attr.batch.Batch.logits`): with ``attention_mask``
    where the forward takes one, a Hugging Face output reduced to its ``logits``.

    Raises:
        EvaluationError: for outputs that are not a 2-D float tensor with one row per sample and >= 2 columns, or
            that look like probabilities (non-negative rows summing to 1).

    Example:
        >>> check_logits(nn.Linear(3, 4), torch.rand(2, 3))
        4
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = Batch(x, attention_mask=attention_mask).logits(model)
    except ValueError as error:  # a token model's output without logits
        raise EvaluationError(str(error)) from error
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor):
        raise EvaluationError(
            f"the model must return a logits tensor (N, num_classes), got {type(out).__name__}; wrap it in a module "
            "whose forward returns the logits"
        )
    if out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] < 2 or not out.is_floating_point():
        raise EvaluationError(
            f"the model must return logits of shape (N, num_classes >= 2) for inputs of shape {tuple(x.shape)}, "
            f"got a {out.dtype} tensor of shape {tuple(out.shape)}"
        )
    if bool((out >= 0).all()) and torch.allclose(out.sum(dim=1), torch.ones(out.shape[0], dtype=out.dtype), atol=1e-4):
        raise EvaluationError(
            "the model's outputs look like probabilities (non-negative, rows sum to 1); attribution methods and "
            "metrics expect raw logits: remove the final softmax"
        )
    return int(out.shape[1])


# ---------------------------------------------------------------------------------------------------- the loop
def _collate_indexed(collate: Callable[[list], Any], items: list[tuple[int, Any]]) -> tuple[Tensor, Any]:
    """Collate ``(index, sample)`` pairs: the indices as a tensor, the samples with the split's own collate_fn."""
    return torch.tensor([index for index, _ in items]), collate([sample for _, sample in items])


class _Indexed(Dataset):
    """``(global index, sample)`` for the given indices of a dataset: one rank's shard."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, Any]:
        index = self.indices[position]
        return index, self.dataset[index]


class _EvaluationModule(LightningModule):
    """Runs the runner in ``test_step``; ``compute()`` and the gathering of records in ``on_test_epoch_end``."""

    def __init__(
        self,
        net: nn.Module,
        dataset: Dataset,
        num_samples: int,
        settings: dict[str, Any],
        work: WorkDirectory,
        resume: dict[str, Any],
        collate: Callable[[list], Any] = default_collate,
        adapter: BatchAdapter | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.dataset = dataset
        self.collate = collate
        self.adapter = adapter
        self.num_samples = num_samples
        self.settings = settings
        self.work = work
        self.resume = resume  # {"resume": bool, "overwrite": bool, "checkpoint_every": int}
        self.results: dict[str, Any] = {}
        self.records: list[SampleRecord] = []
        self.progress: Callable[[str, int], None] | None = None
        self._runner: AttributionRunner | None = None
        self._restored: dict[str, Any] | None = None
        self._start = 0  # batches of this rank's shard finished by an earlier, interrupted run

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shard(self) -> range:
        # Shard by index, no padding: a padded DistributedSampler would count some samples twice.
        return range(self.global_rank, self.num_samples, self.trainer.world_size)

    @override
    def setup(self, stage: str) -> None:
        # The process group exists here: global rank 0 judges the work directory, then every rank loads its state.
        rank, world_size = self.global_rank, self.trainer.world_size
        resume = self.resume["resume"]
        message = self.work.decide(resume, self.resume["overwrite"], world_size) if rank == 0 else None
        message = self.trainer.strategy.broadcast(message, src=0)
        if message is None and resume:
            self._restored, message = self.work.load(rank, world_size)
        message = agree(message)
        if message:
            raise EvaluationError(message)
        self._start = self._restored["batches_done"] if self._restored is not None else 0

    @override
    def test_dataloader(self) -> DataLoader:
        shard = self._shard()[self._start * self.settings["batch_size"] :]
        return DataLoader(
            _Indexed(self.dataset, shard),
            batch_size=self.settings["batch_size"],
            shuffle=False,
            collate_fn=functools.partial(_collate_indexed, self.collate),
        )

    @override
    def on_test_start(self) -> None:
        s = self.settings
        # Checks that re-run the method (randomisation, eMPRT, sMPRT, sensitivity) see only the first samples.
        metric_samples = {
            name: s["randomization_samples"] for name in s["metrics"] if "method" in get_metric_spec(name).consumes
        }
        self._runner = AttributionRunner(
            self.net,
            s["methods"],
            s["metrics"],
            method_kwargs=s["method_kwargs"],
            metric_kwargs=s["metric_kwargs"],
            input_bounds=s["input_bounds"],
            target=s["target"],
            keep_attributions=s["heatmap_samples"],
            metric_samples=metric_samples,
            progress=self.progress,
        )
        # Data beyond the batch (IG2's reference pool): the first samples of the split, the same on every rank, so
        # the results do not depend on the number of processes.
        pool_indices = range(min(s["reference_pool_size"], len(self.dataset)))
        if pool_indices:
            pool = load_probe(self.dataset, pool_indices, self.adapter, self.collate)
            try:
                self._runner.prepare(pool.to(self.device))
            except ValueError as error:
                raise EvaluationError(f"{error} (the pool is the split's first {len(pool)} samples)") from error
        if self._restored is not None:  # after prepare(), exactly as in the interrupted run
            self._runner.load_state_dict(self._restored["runner"])
            self._runner.to(self.device)
            self.records = list(self._restored["records"])
            if self.progress is not None:
                self.progress("", len(self.records))
            self._restored = None

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        indices, sample = batch
        data = adapt_batch(sample, self.adapter)
        if data.x.is_floating_point():
            data = data.with_inputs(data.x.float())
        self.records += self._runner.run(data, indices=[int(i) for i in indices])
        done = self._start + batch_idx + 1
        every, total = self.resume["checkpoint_every"], math.ceil(len(self._shard()) / self.settings["batch_size"])
        if done % every == 0 and done < total:
            state = self._runner.state_dict()
            self.work.save(self.global_rank, self.trainer.world_size, done, self.records, state)

    @override
    def on_test_epoch_end(self) -> None:
        # compute() on every rank: it all-reduces the sum states, so every rank must take part.
        self.results = _to_plain(self._runner.compute())
        self.records = gather_records(self.records)


def _to_plain(value: Any) -> Any:
    """Tensors and tuples to JSON-ready floats and lists."""
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        return float(value) if value.ndim == 0 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------------- public API
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
            construction. ``None`` builds a single-process CPU trainer.
        config: the resolved configuration, stored in ``metrics.json``.
        progress: show rich progress bars on rank 0.
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
    output = Path(output_dir).resolve()
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
    num_classes = check_logits(model, first.x.float() if first.x.is_floating_point() else first.x, first.attention_mask)

    if trainer is None:
        trainer = Trainer(accelerator="cpu", devices=1, logger=False, **QUIET_TRAINER)
    if trainer.test_loop.inference_mode:
        raise EvaluationError("attribution needs gradients: build the Trainer with inference_mode=False")
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
    }
    fingerprint = {
        **settings,
        "split": split,
        "num_samples": num_samples,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
        "model": model_digest(model),
        "config": {k: v for k, v in (config or {}).items() if k not in _RUN_CONTROL},
    }
    work = WorkDirectory(output, _to_plain(fingerprint))
    control = {"resume": resume, "overwrite": overwrite, "checkpoint_every": checkpoint_every}
    wrapper = _EvaluationModule(model, dataset, num_samples, settings, work, control, collate, batch_adapter)
    # The bar follows rank 0's shard, which is representative of every rank's.
    bar = _ProgressBar(enabled=progress and trainer.is_global_zero, total=math.ceil(num_samples / trainer.world_size))
    wrapper.progress = bar.update if bar.enabled else None
    with bar:
        trainer.test(wrapper, verbose=False)

    result: dict[str, Any] = {
        "split": split,
        "num_samples": num_samples,
        "num_classes": num_classes,
        "world_size": trainer.world_size,
        "methods": wrapper.results,
        "timing": {
            name: {"seconds_per_sample": sum(record.seconds[name] for record in wrapper.records) / num_samples}
            for name in wrapper.results
        },
        "config": _to_plain(dict(config)) if config is not None else None,
        "versions": package_versions(),
    }
    if trainer.is_global_zero:
        import lit_attr.report as report

        samples = {
            record.index: {"x": record.x, "target": record.target, "label": record.label, "maps": record.attributions}
            for record in wrapper.records
            if record.x is not None
        }
        class_names = getattr(datamodule, "class_names", None)
        figures = report.build_figures(result, samples, class_names=class_names)
        highlights = report.token_highlights(samples, viz.token_decoder(tokenizer or datamodule), class_names)
        figures.update({stem: figure for stem, (_, figure) in highlights.items()})
        html_sections = {stem: text for stem, (text, _) in highlights.items()}
        _log_to_loggers(trainer, result, figures, html_sections)
        write_result(output, lambda tmp: report.write_outputs(tmp, result, figures, html_sections))
    else:
        work.discard(trainer.global_rank, trainer.world_size)
    return result


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
    check_choice("split", arguments["split"], tuple(_STAGES))
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


_RUN_CONTROL = ("output_dir", "resume", "overwrite", "checkpoint_every", "trainer", "ckpt_path", "trust_checkpoint")
"""Configuration keys that do not decide the numbers: a resumed run may change them (the weights are compared by
their digest, the number of processes on its own)."""


QUIET_TRAINER: dict[str, Any] = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "inference_mode": False,
    "use_distributed_sampler": False,
}
"""Trainer options every evaluation needs (gradients, our own sharding) or wants (our own progress output)."""


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers, for ``metrics.json``.

    Example:
        >>> "torch" in package_versions()
        True
    """
    versions = {"python": platform.python_version()}
    for name in ("lit-attr", "torch", "torchvision", "lightning", "torchmetrics", "captum", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def flat_scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """``{"<method>/<metric>/<name>": value}`` for every finite scalar of a result (for loggers and tables).

    Example:
        >>> flat_scalars({"methods": {"saliency": {"localization": {"pointing_game": 0.5}}}})
        {'saliency/localization/pointing_game': 0.5}
    """
    out: dict[str, float] = {}
    for method, metrics in result["methods"].items():
        for metric, values in metrics.items():
            for key, value in values.items():
                if isinstance(value, dict):  # randomisation: one entry per similarity
                    if isinstance(value.get("final"), (int, float)):
                        out[f"{method}/{metric}/{key}"] = float(value["final"])
                elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    out[f"{method}/{metric}/{key}"] = float(value)
    return out


def _log_to_loggers(
    trainer: Trainer, result: Mapping[str, Any], figures: Mapping[str, Any], html_sections: Mapping[str, str]
) -> None:
    if not trainer.loggers:
        return
    from lit_attr.delivery import log_figure, log_html, log_metrics, log_table

    scalars = flat_scalars(result)
    log_metrics(trainer, {f"evaluate/{k}": v for k, v in scalars.items()}, step=0)
    for key, figure in figures.items():
        if key in html_sections:
            log_html(trainer, f"evaluate/{key}", html_sections[key], figure, step=0)
        else:
            log_figure(trainer, f"evaluate/{key}", figure, step=0)
    log_table(trainer, "evaluate/scores", ["key", "value"], [[k, v] for k, v in scalars.items()], step=0)


class _ProgressBar:
    """A rich progress bar over attributed samples, or nothing (other ranks, ``progress=False``)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]evaluating[/bold] {task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} samples"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def update(self, description: str, samples: int) -> None:
        if self._progress is None:
            return
        if description:
            self._progress.update(self._task, description=description)
        if samples:
            self._progress.advance(self._task, samples)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
