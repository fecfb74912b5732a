"""Sparseness, complexity and effective complexity against closed forms, chance levels and a per-sample loop."""

from __future__ import annotations

import math

import pytest
import torch

from lit_attr.functional.complexity import complexity, effective_complexity, sparseness
from lit_attr.metrics import Complexity, EffectiveComplexity, Sparseness


def _gini(values: list[float]) -> float:
    """Gini index as Hurley & Rickard write it: sorted ascending, 1 - 2 sum_k (a_k / ||a||_1) (d - k + 1/2) / d."""
    a = sorted(abs(v) for v in values)
    total, d = sum(a), len(a)
    if total == 0:
        return 0.0
    return 1 - 2 * sum(v / total * (d - k + 0.5) / d for k, v in enumerate(a, start=1))


def _entropy(values: list[float]) -> float:
    a = [abs(v) for v in values]
    total = sum(a)
    if total == 0:
        return math.log(len(a))
    return -sum(v / total * math.log(v / total) for v in a if v > 0)


def test_closed_forms_one_hot_constant_and_zero_maps():
    d = 16
    one_hot, constant = torch.zeros(1, d), torch.full((1, d), 0.3)
    one_hot[0, 5] = -2.0  # a negative unit counts by its magnitude
    maps = torch.cat([one_hot, constant, torch.zeros(1, d)])
    torch.testing.assert_close(sparseness(maps), torch.tensor([1 - 1 / d, 0.0, 0.0]))
    torch.testing.assert_close(complexity(maps), torch.tensor([0.0, math.log(d), math.log(d)]))
    assert effective_complexity(maps).tolist() == [1.0, float(d), 0.0]
    # The one-hot map is the sparsest of all: no random map reaches it.
    assert float(sparseness(torch.rand(200, d, generator=torch.Generator().manual_seed(0))).max()) < 1 - 1 / d


def test_random_maps_score_their_chance_levels():
    # Units ~ U(0, 1): Gini -> 1/3; entropy -> log d - (log 2 - 1/2) (E[u log u] / E[u] - log E[u] for U(0, 1)).
    d = 4096
    maps = torch.rand(8, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert sparseness(maps).mean().item() == pytest.approx(1 / 3, abs=0.01)
    assert complexity(maps).mean().item() == pytest.approx(math.log(d) - (math.log(2) - 0.5), abs=0.01)


def test_every_sample_equals_a_per_sample_loop_on_images():
    gen = torch.Generator().manual_seed(2)
    maps = torch.randn(5, 3, 6, 6, generator=gen, dtype=torch.float64)
    maps[2] = 0.0
    pixels = maps.abs().sum(dim=1).flatten(1)  # reduce="abs_sum": a pixel's absolute channel values summed
    torch.testing.assert_close(sparseness(maps), torch.tensor([_gini(row.tolist()) for row in pixels]).double())
    torch.testing.assert_close(complexity(maps), torch.tensor([_entropy(row.tolist()) for row in pixels]).double())
    elements = maps.flatten(1)  # reduce="none": every element a unit
    torch.testing.assert_close(
        sparseness(maps, reduce="none"), torch.tensor([_gini(row.tolist()) for row in elements]).double()
    )
    eps = 0.3
    expected = [sum(v > eps * max(row.tolist()) for v in row.tolist()) if row.max() > 0 else 0 for row in pixels]
    assert effective_complexity(maps, eps=eps).tolist() == [float(v) for v in expected]


def test_token_maps_count_their_valid_tokens_only():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 7, generator=gen)
    valid = torch.tensor([[0, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    scores[~valid] = 0.0  # padding and special tokens score 0, as the methods return them
    for function, reference in ((sparseness, _gini), (complexity, _entropy)):
        expected = torch.tensor([reference(row[keep].tolist()) for row, keep in zip(scores, valid, strict=True)])
        torch.testing.assert_close(function(scores, valid=valid), expected)
    # Without the mask the padding's zeros would make the maps look sparser.
    assert bool((sparseness(scores)[:2] > sparseness(scores, valid=valid)[:2]).all())


def test_metrics_average_the_functional_and_take_token_masks():
    gen = torch.Generator().manual_seed(4)
    maps = torch.randn(6, 5, generator=gen)
    attention = torch.ones(6, 5, dtype=torch.long)
    attention[:, 4] = 0
    special = torch.zeros(6, 5, dtype=torch.long)
    special[:, 0] = 1
    valid = attention.bool() & ~special.bool()
    for metric, function in ((Sparseness(), sparseness), (Complexity(), complexity)):
        metric.update(maps[:4], attention[:4], special[:4])
        metric.update(maps[4:], attention_mask=attention[4:], special_tokens_mask=special[4:])
        (value,) = metric.compute().values()
        torch.testing.assert_close(value, function(maps, valid=valid).mean())
    metric = EffectiveComplexity(eps=0.5)
    metric.update(maps)
    torch.testing.assert_close(metric.compute()["effective_complexity"], effective_complexity(maps, eps=0.5).mean())


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`reduce`"):
        sparseness(torch.ones(2, 3), reduce="max")
    with pytest.raises(ValueError, match="`eps`"):
        effective_complexity(torch.ones(2, 3), eps=1.0)
    with pytest.raises(ValueError, match="`eps`"):
        EffectiveComplexity(eps=-0.1)
    with pytest.raises(TypeError, match="`attributions`"):
        complexity([[1.0, 2.0]])
    with pytest.raises(ValueError, match="`attributions`"):
        complexity(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="`attention_mask`"):
        Sparseness().update(torch.ones(2, 5), torch.ones(2, 4))
