"""The Lightning driver of an evaluation: a small module whose ``test_step`` runs the runner on this rank's shard.

Under DDP every sample is counted exactly once: the split is sharded by index without padding (rank ``r`` of ``W``
takes samples ``r, r + W, ...``; Lightning's distributed sampler, which pads, is switched off by
:data:`QUIET_TRAINER`), and every metric state is a ``sum``. A rank without samples (more processes than samples)
takes one empty step and every collective call. Every ``checkpoint_every`` batches, and after its last one, each
rank saves its partial state in the work directory, and a resumed run reloads it and skips the finished batches
(:mod:`lit_attr._resume`). :func:`limited_samples` turns the trainer's test limits into the number of samples
scored.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate
from typing_extensions import override

from lit_attr._probe import load_probe
from lit_attr._resume import WorkDirectory, agree
from lit_attr.batch import BatchAdapter, adapt_batch
from lit_attr.evaluate.checks import EvaluationError
from lit_attr.evaluate.preemption import Preemption
from lit_attr.evaluate.progress import ProgressBar  # here before it had its module: the name keeps working
from lit_attr.evaluate.results import to_plain
from lit_attr.evaluate.storage import storage_error
from lit_attr.metrics import get_metric_spec
from lit_attr.runner import AttributionRunner, SampleRecord, gather_records

__all__ = ["QUIET_TRAINER", "EvaluationModule", "ProgressBar", "limited_samples"]

QUIET_TRAINER: dict[str, Any] = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "inference_mode": False,
    "use_distributed_sampler": False,
}
"""Trainer options every evaluation needs (gradients, our own sharding) or wants (our own progress output)."""


def _collate_indexed(collate: Callable[[list], Any], items: list[tuple[int, Any]]) -> tuple[Tensor, Any]:
    """Collate ``(index, sample)`` pairs: the indices as a tensor, the samples with the split's own collate_fn."""
    return torch.tensor([index for index, _ in items]), collate([sample for _, sample in items])


def _nothing(items: list) -> None:
    return None


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


def limited_samples(trainer: Trainer, num_samples: int, batch_size: int) -> tuple[int, dict[str, Any]]:
    """The samples that the trainer's test limits leave (a prefix of the split), and the limits that cut it.

    Lightning caps each process's test batches with ``limit_test_batches`` (``fast_dev_run=n`` sets it to n): an int
    keeps that many batches per process, i.e. the first ``limit * batch_size * world_size`` samples of the strided
    shards; a fraction keeps that fraction of the samples (of the split, so the same samples for any number of
    processes). The evaluation cuts the split itself, so that it knows what it scores.

    Raises:
        EvaluationError: if the limits leave no sample.

    Example:
        >>> limited_samples(Trainer(limit_test_batches=2, logger=False), 8, 2)
        (4, {'limit_test_batches': 2})
    """
    limit = trainer.limit_test_batches
    if isinstance(limit, float):
        kept = num_samples if limit >= 1.0 else int(num_samples * limit)
    else:
        kept = min(num_samples, int(limit) * batch_size * trainer.world_size)
    if kept == num_samples:
        return num_samples, {}
    limits: dict[str, Any] = {"limit_test_batches": limit}
    if trainer.fast_dev_run:
        limits["fast_dev_run"] = trainer.fast_dev_run
    if kept < 1:
        raise EvaluationError(
            f"the trainer's limit_test_batches={limit} leaves none of the {num_samples} samples to evaluate; raise "
            "it, or leave it out (--limit_samples chooses how many samples to evaluate)"
        )
    return kept, limits


class EvaluationModule(LightningModule):
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
        self.scalars: dict[str, float] = {}  # the headline numbers, under the keys the monitor logs them
        self.records: list[SampleRecord] = []
        self.progress: Callable[[str, int], None] | None = None
        # Global rank 0's claim on the output before it judges the work directory (lock, checks): a refusal or None.
        self.claim: Callable[[], str | None] | None = None
        self.preemption: Preemption | None = None
        # After every finished batch: (batches done, the records list, how many of them, the runner's state), the
        # state saved when a signal abandons the batch in flight.
        self._snapshot: tuple[int, list[SampleRecord], int, dict[str, Any]] | None = None
        self._runner: AttributionRunner | None = None
        self._restored: dict[str, Any] | None = None
        self._start = 0  # batches of this rank's shard finished by an earlier, interrupted run
        self._saved = 0  # batches of this rank's shard in its saved state

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
        message = None
        if rank == 0:
            message = self.claim() if self.claim is not None else None
            message = message or self.work.decide(resume, self.resume["overwrite"], world_size)
        message = self.trainer.strategy.broadcast(message, src=0)
        if message is None and resume:
            self._restored, message = self.work.load(rank, world_size)
        message = agree(message)
        if message:
            raise EvaluationError(message)
        self._start = self._saved = self._restored["batches_done"] if self._restored is not None else 0

    def _batches(self) -> int:
        """The number of batches of this rank's shard."""
        return math.ceil(len(self._shard()) / self.settings["batch_size"])

    @override
    def test_dataloader(self) -> DataLoader:
        shard = self._shard()[self._start * self.settings["batch_size"] :]
        if not shard:
            # Nothing left for this rank (more processes than samples, or a resumed rank whose part is done): one
            # empty step, so that it still reaches the collective calls at the epoch's end with the others.
            return DataLoader([None], batch_size=1, collate_fn=_nothing)
        return DataLoader(
            _Indexed(self.dataset, shard),
            batch_size=self.settings["batch_size"],
            shuffle=False,
            collate_fn=functools.partial(_collate_indexed, self.collate),
        )

    @override
    def on_test_start(self) -> None:
        if self.preemption is not None:
            # Lightning registered its own SIGTERM handler when the run started (a notifier that makes the loop stop
            # with exit code 0); ours raises at once and passes the signal on to the ranks Lightning started.
            self.preemption.install()
            children = getattr(self.trainer.strategy.launcher, "procs", None) or []
            self.preemption.forward = lambda signum: [p.send_signal(signum) for p in children if p.poll() is None]
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
            model_output=s["model_output"],
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
        self._runner.to(self.device)  # also on a rank without samples: its states take part in compute()
        if self._restored is not None:  # after prepare(), exactly as in the interrupted run
            self._runner.load_state_dict(self._restored["runner"])
            self._runner.to(self.device)
            self.records = list(self._restored["records"])
            self._snapshot = (self._start, self.records, len(self.records), self._restored["runner"])
            if self.progress is not None:
                self.progress("", len(self.records))
            self._restored = None

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        if batch is None:  # the empty step of a rank without samples left
            return
        indices, sample = batch
        data = adapt_batch(sample, self.adapter)
        if data.x.is_floating_point():
            data = data.with_inputs(data.x.float())
        self.records += self._runner.run(data, indices=[int(i) for i in indices])
        done = self._start + batch_idx + 1
        self._snapshot = (done, self.records, len(self.records), self._runner.state_dict())
        # The last batch too: if the final write fails, a resumed run only computes and writes.
        if done % self.resume["checkpoint_every"] == 0 or done == self._batches():
            self._save(done, self.records, self._snapshot[3])

    def save_interrupted(self) -> tuple[int, int]:
        """Save the state after the last finished batch if it is newer than the saved one (a signal came).

        Returns:
            This rank's samples done, and its shard's size.

        Raises:
            EvaluationError: if the save meets a storage fault (one line, saying what stays).
        """
        total = len(self._shard()) if self._trainer is not None else self.num_samples
        if self._snapshot is None:
            return 0, total
        done, records, count, state = self._snapshot
        if done > self._saved:
            self._save(done, records[:count], state)
        return count, total

    def _save(self, done: int, records: list[SampleRecord], state: dict[str, Any]) -> None:
        """Save this rank's state after ``done`` batches; a storage fault is one line saying what stays."""
        rank, world_size = self.global_rank, self.trainer.world_size
        try:
            self.work.save(rank, world_size, done, records, state)
        except OSError as error:
            kept = (
                f"the state saved after {self._saved} of {self._batches()} batches stays in {str(self.work.path)!r}: "
                "fix that and rerun with --resume true"
                if self._saved
                else "nothing was saved yet"
            )
            path = self.work.state_path(rank, world_size)
            raise EvaluationError(f"{storage_error(error, 'save the partial state', path)}; {kept}") from error
        self._saved = done

    @override
    def on_test_epoch_end(self) -> None:
        # compute() on every rank: it all-reduces the sum states, so every rank must take part.
        results = self._runner.compute()
        self.results = to_plain(results)
        self.scalars = {key: float(value) for key, value in self._runner.scalars(results).items()}
        self.records = gather_records(self.records)

