"""Faithfulness correlation, estimate, sensitivity-n and the two monotonicities: closed forms on linear models, chance
levels of random maps, and straightforward per-sample loops that remove the units one sample at a time."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from breadth_helpers import linear_model, tiny_cnn
from torch import nn

from lit_attr._hygiene import row_seed
from lit_attr.functional import (
    faithfulness_correlation,
    faithfulness_estimate,
    monotonicity,
    monotonicity_correlation,
    sensitivity_n,
)
from lit_attr.methods import get_method
from lit_attr.metrics import FaithfulnessCorrelation, SensitivityN


def _ig(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Integrated gradients from a zero baseline (lit-attr's Captum adapter); exact on a linear model."""
    return get_method("integrated_gradients", model, n_steps=4).attribute(x)


@pytest.mark.parametrize("kind", ["features", "images"])
def test_linear_model_with_integrated_gradients_scores_one_everywhere(kind):
    gen = torch.Generator().manual_seed(0)
    if kind == "features":
        model, x = linear_model(12), torch.rand(5, 12, generator=gen, dtype=torch.float64)
    else:  # a linear model on images: removing a pixel drops its channels' summed attribution
        model = nn.Sequential(nn.Flatten(), linear_model(3 * 6 * 6)).eval()
        x = torch.rand(5, 3, 6, 6, generator=gen, dtype=torch.float64)
    a = _ig(model, x)
    ones = torch.ones(5, dtype=torch.float64)
    options = {"output": "logit", "n_subsets": 6}
    torch.testing.assert_close(faithfulness_correlation(model, x, a, subset_size=0.3, **options), ones)
    torch.testing.assert_close(sensitivity_n(model, x, a, sizes=(1, 0.2, 0.8), **options), torch.ones(5, 3).double())
    torch.testing.assert_close(faithfulness_estimate(model, x, a, output="logit"), ones)
    torch.testing.assert_close(faithfulness_estimate(model, x, a, output="logit", features_per_step=5), ones)


def test_random_maps_score_near_zero_and_the_metric_averages_them():
    model, gen = linear_model(40), torch.Generator().manual_seed(1)
    x = torch.rand(24, 40, generator=gen, dtype=torch.float64)
    noise = torch.randn(24, 40, generator=gen, dtype=torch.float64)
    scores = faithfulness_correlation(model, x, noise, subset_size=8, n_subsets=60, output="logit")
    assert abs(float(scores.mean())) < 0.1  # per sample ~N(0, 1/60): the mean of 24 is within 0.1 at 3.8 sigma
    estimate = faithfulness_estimate(model, x, noise, output="logit")
    assert abs(float(estimate.mean())) < 0.15  # 40 units per correlation
    metric = FaithfulnessCorrelation(model, subset_size=8, n_subsets=60)
    metric.update(x[:10], noise[:10])
    metric.update(x[10:], noise[10:])
    torch.testing.assert_close(metric.compute()["faithfulness_correlation"], scores.mean().float())


@torch.no_grad()
def test_faithfulness_correlation_equals_a_per_sample_loop_with_the_documented_subsets():
    # Each sample's generator: seed + crc32 of its values; row r's subset: the first |S| units of argsort(rand(U)).
    model = tiny_cnn()
    gen = torch.Generator().manual_seed(2)
    x, a = torch.rand(3, 3, 8, 8, generator=gen), torch.randn(3, 3, 8, 8, generator=gen)
    size, rows, seed = 10, 5, 7
    got = faithfulness_correlation(model, x, a, subset_size=size, n_subsets=rows, seed=seed, output="prob")
    expected = []
    for sample, maps in zip(x, a.detach(), strict=True):
        keys = torch.rand((rows, 64), generator=torch.Generator().manual_seed(row_seed(seed, sample)))
        probs = model(sample[None]).softmax(dim=1)[0]
        target = int(probs.argmax())
        sums, drops = [], []
        for r in range(rows):
            chosen = keys[r].argsort()[:size]
            pixels = torch.zeros(64, dtype=torch.bool)
            pixels[chosen] = True
            removed = torch.where(pixels.view(1, 8, 8), 0.0, sample)
            drops.append(float(probs[target] - model(removed[None]).softmax(dim=1)[0, target]))
            sums.append(float(maps.sum(dim=0).flatten()[chosen].sum()))
        expected.append(np.corrcoef(sums, drops)[0, 1])
    torch.testing.assert_close(got.double(), torch.tensor(expected).double(), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_faithfulness_estimate_equals_a_per_sample_loop_over_pixels():
    model = tiny_cnn()
    gen = torch.Generator().manual_seed(3)
    x, a = torch.rand(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)
    got = faithfulness_estimate(model, x, a, substrate="mean")
    expected = []
    for sample, maps in zip(x, a, strict=True):
        probs = model(sample[None]).softmax(dim=1)[0]
        target, mean = int(probs.argmax()), sample.mean(dim=(1, 2), keepdim=True)
        drops = []
        for pixel in range(64):
            only = torch.zeros(64, dtype=torch.bool)
            only[pixel] = True
            removed = torch.where(only.view(1, 8, 8), mean, sample)
            drops.append(float(probs[target] - model(removed[None]).softmax(dim=1)[0, target]))
        expected.append(np.corrcoef(maps.sum(dim=0).flatten().tolist(), drops)[0, 1])
    torch.testing.assert_close(got.double(), torch.tensor(expected).double(), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_monotonicity_equals_a_per_sample_loop_on_both_verdicts():
    # Two classes; feature 0 lowers class 1's logit, the others raise it: putting feature 0 back makes the
    # probability fall, unless the sample's feature 0 is 0. Half the samples have it, half do not.
    model = nn.Linear(6, 2).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0] * 6, [-3.0, 1.0, 2.0, 3.0, 4.0, 5.0]]))
        model.bias.zero_()
    gen = torch.Generator().manual_seed(4)
    x = 0.1 + torch.rand(8, 6, generator=gen, dtype=torch.float64)
    x[::2, 0] = 0.0
    maps = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    expected = []
    for sample, a in zip(x, maps, strict=True):
        kept, probs = torch.zeros(6, dtype=torch.bool), []
        for unit in [None, *a.argsort(stable=True).tolist()]:  # least attributed first, from the zero baseline
            if unit is not None:
                kept[unit] = True
            probs.append(float(model(torch.where(kept, sample, 0.0)[None]).softmax(dim=1)[0, 1]))
        expected.append(float(all(after >= before for before, after in zip(probs, probs[1:], strict=False))))
    assert expected == [1.0, 0.0] * 4
    assert monotonicity(model, x, maps, 1).tolist() == expected


@torch.no_grad()
def test_monotonicity_correlation_equals_a_per_sample_loop():
    # The draws are the "noise" substrate: N(0, 1) of one sample's shape from a CPU generator seeded seed + j.
    model, gen = linear_model(5), torch.Generator().manual_seed(5)
    x = torch.rand(4, 5, generator=gen, dtype=torch.float64)
    maps = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    draws, seed = 3, 11
    generators = [torch.Generator().manual_seed(seed + j) for j in range(draws)]
    noise = [torch.randn((1, 5), generator=g, dtype=torch.float64) for g in generators]
    got = monotonicity_correlation(model, x, maps, n_samples=draws, seed=seed)
    expected = []
    for sample, a in zip(x, maps, strict=True):
        probs = model(sample[None]).softmax(dim=1)[0]
        target = int(probs.argmax())
        effects = []
        for unit in range(5):
            changes = []
            for fill in noise:
                changed = sample.clone()
                changed[unit] = fill[0, unit]
                changes.append(float(probs[target] - model(changed[None]).softmax(dim=1)[0, target]) ** 2)
            effects.append(np.mean(changes))
        expected.append(scipy.stats.spearmanr(a.abs().tolist(), effects).statistic)
    torch.testing.assert_close(got, torch.tensor(expected).double())
    # On a linear model, the effect of a unit grows with |w_i (x_i - draw)|; |IG| = |w_i x_i| tracks it: positive.
    assert float(monotonicity_correlation(model, x, _ig(model, x), n_samples=8).mean()) > 0.3


def test_sensitivity_n_metric_keeps_a_curve_per_size():
    model = linear_model(10)
    x = torch.rand(4, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a = _ig(model, x)
    metric = SensitivityN(model, sizes=(2, 5), n_subsets=4)
    metric.update(x[:1], a[:1])
    metric.update(x[1:], a[1:])
    result = metric.compute()
    torch.testing.assert_close(result["sensitivity_n_curve"], torch.ones(2))
    torch.testing.assert_close(result["sensitivity_n"], torch.tensor(1.0))


def test_bad_input_names_the_argument():
    model, x = linear_model(6, dtype=torch.float32), torch.rand(2, 6)
    a = torch.randn(2, 6)
    with pytest.raises(ValueError, match="`subset_size`"):
        faithfulness_correlation(model, x, a, subset_size=7)
    with pytest.raises(ValueError, match="`subset_size`"):
        FaithfulnessCorrelation(model, subset_size=1.5)
    with pytest.raises(ValueError, match="`n_subsets`"):
        FaithfulnessCorrelation(model, n_subsets=1)
    with pytest.raises(TypeError, match="`sizes`"):
        sensitivity_n(model, x, a, sizes=3)
    with pytest.raises(ValueError, match="`output`"):
        faithfulness_estimate(model, x, a, output="prob_ratio")
    with pytest.raises(ValueError, match="`features_per_step`"):
        monotonicity(model, x, a, features_per_step=0)
    with pytest.raises(ValueError, match="`substrate`"):
        faithfulness_estimate(model, x, a, substrate="blur")  # RISE's blur needs images
    with pytest.raises(ValueError, match="`substrate_value`"):
        SensitivityN(model, substrate="constant")
    with pytest.raises(ValueError, match="`attributions`"):
        monotonicity_correlation(model, x, torch.randn(2, 5))
    with pytest.raises(TypeError, match="`x`"):
        faithfulness_correlation(model, x.long(), a)
