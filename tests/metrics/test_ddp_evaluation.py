"""The metrics of issue #15 give the same result on 2 processes (each on part of the data) as on 1 process."""

import functools

import pytest
import torch
from ddp_helpers import assert_nested_close, compute_many_on_shards, compute_on_all, run_ddp
from torch import nn

from lit_attr.methods import get_method
from lit_attr.metrics.infidelity import Infidelity, Sensitivity
from lit_attr.metrics.insertion_deletion import InsertionDeletion
from lit_attr.metrics.mprt import EfficientMPRT, SmoothMPRT
from lit_attr.metrics.road import ROAD


def _tiny_cnn() -> nn.Module:
    # Built from torch modules only, so that it pickles into the spawned processes by reference.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    return model.eval()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_new_metrics_are_equal_on_two_processes_and_one():
    model = _tiny_cnn()
    tabular = nn.Sequential(nn.Linear(5, 3))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 8, 8, generator=gen)
    attributions = get_method("saliency", model).attribute(x)
    features = torch.randn(6, 5, generator=gen)
    feature_maps = torch.randn(6, 5, generator=gen)
    # Shards of different sizes (4 and 2 samples): a mean of per-rank means would be wrong.
    images = [(x[:4], attributions[:4]), {"x": x[4:], "attributions": attributions[4:]}]
    inputs = [(x[:4],), {"x": x[4:]}]
    factories = {
        "road": functools.partial(ROAD, model, percentiles=(20, 50, 80)),
        "emprt": functools.partial(EfficientMPRT, "saliency", model),
        "emprt_report": functools.partial(EfficientMPRT, "saliency", model),
        "smprt_report": functools.partial(SmoothMPRT, "saliency", model, n_noise=3),
        "infidelity": functools.partial(Infidelity, model, n_perturb_samples=4),
        "sensitivity": functools.partial(Sensitivity, "saliency", model, n_perturb_samples=3),
        "deletion_only": functools.partial(InsertionDeletion, model, n_steps=8, games="deletion"),
        "tabular_games": functools.partial(InsertionDeletion, tabular, n_steps=3),
    }
    batches = {
        "road": images,
        "emprt": inputs,
        "emprt_report": inputs,
        "smprt_report": inputs,
        "infidelity": images,
        "sensitivity": inputs,
        "deletion_only": images,
        "tabular_games": [(features[:4], feature_maps[:4]), (features[4:], feature_maps[4:])],
    }
    # One spawn for every metric: starting the interpreters is the expensive part.
    calls = {"emprt_report": "report", "smprt_report": "report"}
    per_rank = run_ddp(compute_many_on_shards, 2, factories, batches, calls)
    for name, factory in factories.items():
        expected = compute_on_all(factory, batches[name], calls.get(name, "compute"))
        for rank, results in enumerate(per_rank):
            assert_nested_close(results[name], expected, f"{name} on rank {rank}")
