"""What every metric of issue #26 promises, checked on each: per-sample scores that do not depend on the batch,
means over uneven shards and a batch of one, the global random state untouched, and DDP equal to one process."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch
from breadth_helpers import FAST, build_metric, image_batch, inputs_for
from ddp_helpers import assert_nested_close, compute_many_on_shards, compute_on_all, run_ddp

from lit_attr.metrics import get_metric_spec

NAMES = sorted(FAST)


@functools.cache
def _batch():
    return image_batch(6)


def _random_states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_per_sample_means_over_uneven_shards_and_leave_the_random_state(name):
    model, given = _batch()
    spec = get_metric_spec(name)
    before = _random_states()
    whole = build_metric(name, model).score(**inputs_for(name, given))
    shards = [build_metric(name, model).score(**inputs_for(name, given, rows)) for rows in (slice(0, 4), slice(4, 6))]
    one = build_metric(name, model).score(**inputs_for(name, given, slice(5, 6)))  # a batch of one
    after = _random_states()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2], name
    keys = [key for key, value in whole.items() if value.ndim == 1]
    assert keys and all(whole[key].shape == (6,) for key in keys)
    if spec.per_sample:  # a sample's score does not depend on the rest of its batch
        for key in keys:
            torch.testing.assert_close(whole[key], torch.cat([shard[key] for shard in shards]), equal_nan=True)
            torch.testing.assert_close(one[key], whole[key][5:], equal_nan=True)
    # The metric's mean over two uneven batches is the mean over their samples (where a score is defined).
    metric = build_metric(name, model)
    for rows in (slice(0, 4), slice(4, 6)):
        metric.update(**inputs_for(name, given, rows))
    computed = metric.compute()
    for key in keys:
        values = torch.cat([shard[key] for shard in shards]).double()
        expected = values[torch.isfinite(values)].mean()
        torch.testing.assert_close(computed[key].double(), expected, equal_nan=True, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_every_new_metric_on_two_processes_equals_one_process():
    model, given = _batch()
    factories = {name: functools.partial(build_metric, name, model) for name in NAMES}
    # Shards of different sizes (4 and 2 samples): a mean of per-rank means would be wrong.
    batches = {name: [inputs_for(name, given, rows) for rows in (slice(0, 4), slice(4, 6))] for name in NAMES}
    per_rank = run_ddp(compute_many_on_shards, 2, factories, batches)
    for name, factory in factories.items():
        expected = compute_on_all(factory, batches[name])
        for rank, results in enumerate(per_rank):
            assert_nested_close(results[name], expected, f"{name} on rank {rank}", equal_nan=True)
