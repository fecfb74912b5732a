"""Run a function in several CPU processes joined by a gloo process group, as torchmetrics' MetricTester does.

Typical use, checking that a metric gives the same result on 2 processes (each on its shard) as on one::

    from ddp_helpers import assert_nested_close, compute_many_on_shards, compute_on_all, compute_on_shards, run_ddp

    factory = functools.partial(InsertionDeletion, model, n_steps=8)  # picklable: module-level callables only
    batches = [(x[:4], a[:4]), (x[4:], a[4:])]  # positional update() arguments, or {"x": ..., ...} keywords
    per_rank = run_ddp(compute_on_shards, 2, factory, batches)
    for result in per_rank:
        assert_nested_close(result, compute_on_all(factory, batches))

    # several metrics in one spawn: dicts of factories and of batch lists, keyed alike
    per_rank = run_ddp(compute_many_on_shards, 2, {"id": factory}, {"id": batches})

Everything given to :func:`run_ddp` is pickled into freshly spawned interpreters: functions and classes must be
importable by name there (define them in ``lit_attr`` or in this module, not in a test function; torch's own
modules are fine, a ``nn.Sequential`` model travels well). The children inherit ``sys.path``, so this module is
importable in them as it is in the parent.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

Batch = Sequence[Any] | Mapping[str, Any]


def _free_port() -> int:
    # Port 0 asks the OS for an unused port; it is released before the children bind it, which is racy only in
    # theory on a test machine.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, out_dir: str) -> None:
    # Two processes on a small machine: one intra-op thread each avoids oversubscription (and flaky timeouts).
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_MODE", "disabled")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=120),
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ddp(fn: Callable[..., Any], world_size: int = 2, *args: Any) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` spawned CPU processes sharing a gloo process group.

    Returns:
        The value each rank returned (anything ``torch.save`` can store), indexed by rank. An exception in a
        child is re-raised in the parent by ``torch.multiprocessing.spawn`` with the child's traceback.
    """
    with tempfile.TemporaryDirectory(prefix="lit_attr_ddp_") as out_dir:
        mp.spawn(_worker, args=(world_size, _free_port(), fn, args, out_dir), nprocs=world_size, join=True)
        return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def _update(metric: Any, batch: Batch) -> None:
    if isinstance(batch, Mapping):
        metric.update(**batch)
    else:
        metric.update(*batch)


def compute_on_shards(
    rank: int, world_size: int, factory: Callable[[], Any], batches: Sequence[Batch], result: str = "compute"
) -> Any:
    """For :func:`run_ddp`: build a metric, update it with this rank's batches (``batches[rank::world_size]``) and
    return ``compute()`` (or another synchronising method named by ``result``, e.g. ``"report"``), which
    torchmetrics syncs across the process group."""
    metric = factory()
    for batch in batches[rank::world_size]:
        _update(metric, batch)
    return getattr(metric, result)()


def compute_many_on_shards(
    rank: int,
    world_size: int,
    factories: Mapping[str, Callable[[], Any]],
    batches: Mapping[str, Sequence[Batch]],
    results: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`compute_on_shards` for several metrics in one spawn (starting the interpreters dominates the cost);
    ``results`` maps a name to the method to call instead of ``compute``."""
    results = results or {}
    return {
        name: compute_on_shards(rank, world_size, factory, batches[name], results.get(name, "compute"))
        for name, factory in factories.items()
    }


def compute_on_all(factory: Callable[[], Any], batches: Sequence[Batch], result: str = "compute") -> Any:
    """The single-process reference: one metric updated with every batch."""
    metric = factory()
    for batch in batches:
        _update(metric, batch)
    return getattr(metric, result)()


def assert_nested_close(actual: Any, expected: Any, path: str = "result", **tolerances: Any) -> None:
    """``torch.testing.assert_close`` through nested dicts/lists/tuples; other leaves must be equal.

    Results that hold no tensor at all (two empty dicts, ``None`` for a rank that returned nothing) and ``None``
    leaves fail: an empty comparison would pass whatever the processes computed.
    """
    compared = _compare(actual, expected, path, tolerances)
    assert compared > 0, f"{path}: no tensor to compare (empty or missing results: {actual!r} vs {expected!r})"


def _compare(actual: Any, expected: Any, path: str, tolerances: dict[str, Any]) -> int:
    """Compare recursively; return how many tensors were compared."""
    assert expected is not None and actual is not None, f"{path}: missing value ({actual!r} vs {expected!r})"
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping) and set(actual) == set(expected), f"{path}: keys differ"
        return sum(_compare(actual[key], expected[key], f"{path}[{key!r}]", tolerances) for key in expected)
    if isinstance(expected, (list, tuple)) and not isinstance(expected, str):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{path}: lengths differ"
        return sum(
            _compare(a, e, f"{path}[{index}]", tolerances)
            for index, (a, e) in enumerate(zip(actual, expected, strict=True))
        )
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, msg=lambda m: f"{path}: {m}", **tolerances)
        return 1
    assert actual == expected, f"{path}: {actual!r} != {expected!r}"
    return 0
