"""The ROAD Metric accumulates the functional layer's per-sample values."""

import torch
from torch import nn

from lit_attr.functional.road import road
from lit_attr.metrics.road import ROAD


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    ).double().eval()  # fmt: skip


def test_updates_equal_the_functional_means_and_score_matches_update():
    model = small_cnn()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 8, generator=generator, dtype=torch.float64)
    attributions = torch.randn(5, 3, 8, 8, generator=generator, dtype=torch.float64)
    options = {"percentiles": (20, 50, 80), "noise": 0.05, "seed": 3}
    metric, from_scores = ROAD(model, **options), ROAD(model, **options)
    metric.update(x[:2], attributions[:2])
    metric.update(x[2:], attributions[2:], target=torch.tensor([0, 1, 2]))
    target = torch.cat([road(model, x[:2], attributions[:2]).target, torch.tensor([0, 1, 2])])
    reference = road(model, x, attributions, target, **options)
    result = metric.compute()
    torch.testing.assert_close(result["morf_curve"], reference.morf_curve.mean(dim=0).float())
    torch.testing.assert_close(result["lerf_curve"], reference.lerf_curve.mean(dim=0).float())
    torch.testing.assert_close(result["road"], reference.road.mean().float())
    torch.testing.assert_close(result["morf"], reference.morf.mean().float())
    # score() is per sample, under compute()'s names, and leaves the states alone.
    scores = metric.score(x, attributions, target)
    assert {key: tuple(value.shape) for key, value in scores.items()} == {
        "road": (5,), "morf": (5,), "lerf": (5,), "morf_curve": (5, 3), "lerf_curve": (5, 3)
    }  # fmt: skip
    torch.testing.assert_close(metric.compute(), result)
    from_scores.update(x, attributions, scores=scores)
    torch.testing.assert_close(from_scores.compute(), result)
