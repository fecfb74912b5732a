"""Every metric gives the same result on 2 processes (each on half the data) as on 1 process on all of it."""

import functools

import pytest
import torch
from ddp_helpers import assert_nested_close, compute_many_on_shards, compute_on_all, run_ddp
from text_helpers import game_metrics, plain_transformer, token_metric_inputs, token_metric_shards
from torch import nn

from lit_attr.attribution_quality import AttributionQuality
from lit_attr.methods import get_method
from lit_attr.metrics.insertion_deletion import InsertionDeletion
from lit_attr.metrics.localization import Localization
from lit_attr.metrics.parameter_randomization import ParameterRandomization
from lit_attr.metrics.token_localization import TokenLocalization


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
def test_metrics_are_equal_on_two_processes_and_one():
    model = _tiny_cnn()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 8, 8, generator=gen)
    attributions = get_method("saliency", model).attribute(x)
    masks = torch.rand(6, 8, 8, generator=gen) < 0.3
    masks[:, 0, 0], masks[:, 7, 7] = True, False
    # Shards of different sizes (4 and 2 samples): a mean of per-rank means would be wrong.
    factories = {
        "localization": functools.partial(Localization, tolerance=1),
        "parameter_randomization": functools.partial(ParameterRandomization, "saliency", model),
        # With metrics of the maps alone at every stage: their sums and counts are reduced as the similarities'.
        "parameter_randomization_report": functools.partial(
            ParameterRandomization, "saliency", model, map_metrics=("sparseness", "complexity")
        ),
        "insertion_deletion": functools.partial(InsertionDeletion, model, n_steps=8),
        "attribution_quality": functools.partial(
            AttributionQuality,
            model,
            "saliency",
            metrics=("insertion_deletion", "localization"),
            metric_kwargs={"insertion_deletion": {"n_steps": 8}},
        ),
    }
    batches = {
        "localization": [(attributions[:4], masks[:4]), (attributions[4:], masks[4:])],
        "parameter_randomization": [(x[:4],), {"x": x[4:], "target": None}],
        "parameter_randomization_report": [(x[:4],), {"x": x[4:], "target": None}],
        "insertion_deletion": [(x[:4], attributions[:4]), {"x": x[4:], "attributions": attributions[4:]}],
        "attribution_quality": [(x[:4], None, masks[:4]), {"x": x[4:], "masks": masks[4:]}],
    }
    # The token metrics, on a plain nn.TransformerEncoder classifier, with padded batches.
    text_model = plain_transformer()
    ids, attention, token_scores, rationale = token_metric_inputs(seed=3)
    shards = (slice(0, 4), slice(4, 6))
    games = [{"x": ids[s], "attributions": token_scores[s], "attention_mask": attention[s]} for s in shards]
    for name, factory in game_metrics(text_model).items():
        factories[name], batches[name] = factory, games
    factories["token_localization"] = TokenLocalization
    batches["token_localization"] = [
        {"attributions": token_scores[s], "masks": rationale[s], "attention_mask": attention[s]} for s in shards
    ]
    # Issue #26's token metrics on padded sentence pairs (a sample without a value is NaN on every process).
    breadth, breadth_batches = token_metric_shards()
    factories.update(breadth)
    batches.update(breadth_batches)
    # One spawn for every metric: starting the interpreters is the expensive part.
    calls = {"parameter_randomization_report": "report"}  # the curves and verdict, synced like compute()
    per_rank = run_ddp(compute_many_on_shards, 2, factories, batches, calls)
    for name, factory in factories.items():
        expected = compute_on_all(factory, batches[name], calls.get(name, "compute"))
        for rank, results in enumerate(per_rank):
            assert_nested_close(results[name], expected, f"{name} on rank {rank}", equal_nan=name in breadth)
