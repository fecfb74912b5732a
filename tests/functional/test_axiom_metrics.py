"""Random logit, completeness, non-sensitivity and input invariance: closed forms on linear models (whose gradients
are the weight rows) and per-sample loops."""

from __future__ import annotations

import math

import pytest
import torch
from breadth_helpers import linear_model
from torch import nn

from lit_attr._hygiene import row_seed
from lit_attr.functional import completeness, input_invariance, non_sensitivity, random_logit, spearman
from lit_attr.functional.axioms import map_similarity, shifted_method
from lit_attr.methods import get_method
from lit_attr.metrics import Completeness, InputInvariance, NonSensitivity, RandomLogit


def test_random_logit_equals_a_loop_over_the_drawn_classes():
    # Saliency of a linear model is |w_c| whatever x: the similarity is that of two weight rows.
    model = linear_model(10, classes=5)
    x = torch.rand(6, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = model(x).argmax(dim=1)
    got = random_logit(get_method("saliency", model), x, similarity="spearman_abs", seed=3)
    weights = model.weight.detach()
    expected = []
    for row, label in zip(x, target.tolist(), strict=True):
        draw = int(torch.randint(4, (1,), generator=torch.Generator().manual_seed(row_seed(3, row))))
        other = draw + (draw >= label)
        assert other != label
        expected.append(float(spearman(weights[label][None].abs(), weights[other][None].abs())))
    torch.testing.assert_close(got.double(), torch.tensor(expected).double())


def test_random_logit_is_one_for_class_blind_maps_and_chance_for_independent_classes():
    model = linear_model(64, classes=8, seed=1)
    with torch.no_grad():
        model.weight.copy_(torch.arange(1.0, 9.0)[:, None] * model.weight[0])  # every class's row is a multiple
    x = torch.rand(8, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ones = random_logit(get_method("saliency", model), x, similarity="spearman_abs")
    torch.testing.assert_close(ones, torch.ones(8).double())
    independent = linear_model(64, classes=50, seed=3)  # 50 independent Gaussian rows
    x = torch.rand(40, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    chance = random_logit(get_method("saliency", independent), x, similarity="spearman_abs")
    assert abs(float(chance.mean())) < 0.1  # each ~N(0, 1/63)
    images = nn.Sequential(nn.Flatten(), linear_model(3 * 8 * 8, classes=4)).eval()
    assert random_logit(get_method("saliency", images), torch.rand(2, 3, 8, 8).double()).shape == (2,)


def test_completeness_closed_forms():
    model = linear_model(6)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x[3] = 0.0  # f(x) = f(0): the error is undefined
    ig = get_method("integrated_gradients", model, n_steps=4).attribute(x)
    errors = completeness(model, x, ig)
    assert float(errors[:3].abs().max()) < 1e-10 and math.isnan(float(errors[3]))
    saliency = get_method("saliency", model).attribute(x)  # |w_target|
    target = model(x).argmax(dim=1)
    delta = (x * model.weight[target]).sum(dim=1).detach()
    expected = (saliency.sum(dim=1) - delta).abs() / delta.abs()
    torch.testing.assert_close(completeness(model, x, saliency)[:3], expected[:3])
    metric = Completeness(model)
    metric.update(x, saliency)
    torch.testing.assert_close(metric.compute()["completeness"], expected[:3].mean().float())


def test_non_sensitivity_counts_units_that_move_the_logit_without_attribution():
    # IG from zero on a linear model is w_t,i x_i: zero where x_i = 0 (the logit still moves with x_i unless
    # w_t,i = 0) and where w_t,i = 0 (the logit does not move: no disagreement).
    model = linear_model(8, classes=2, seed=6)
    with torch.no_grad():
        model.weight[:, 7] = 0.0  # a dummy feature
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x[0, [1, 2]] = 0.0
    x[1, 7] = 0.0
    ig = get_method("integrated_gradients", model, n_steps=4).attribute(x)
    got = non_sensitivity(model, x, ig, output="logit", n_samples=3)
    assert got.tolist() == [2.0, 0.0, 0.0]
    # Groups of 4: each group of sample 0 holds a unit with attribution, and every group moves the logit.
    assert non_sensitivity(model, x, ig, output="logit", features_per_step=4, n_samples=3).tolist() == [0.0, 0.0, 0.0]
    # A zero map disagrees with the model on the 7 units it depends on (random draws move them, x_i = 0 or not).
    assert non_sensitivity(model, x, torch.zeros_like(x), output="logit", n_samples=3).tolist() == [7.0, 7.0, 7.0]


def test_input_invariance_closed_forms_and_the_user_model_untouched():
    model = linear_model(5)
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    torch.testing.assert_close(input_invariance(get_method("saliency", model), x), torch.zeros(4).double())
    # Input x gradient moves with the inputs: ||c w|| / (||x w|| + ||(x + c) w||) = 1 for x in [0, 1], c = -1.
    ixg = input_invariance(get_method("input_x_gradient", model), x)
    torch.testing.assert_close(ixg, torch.ones(4).double())
    shift = 0.5
    target = model(x).argmax(dim=1)
    w = model.weight[target].detach()
    expected = (shift * w).abs().sum(dim=1) / ((x * w).abs().sum(dim=1) + ((x + shift) * w).abs().sum(dim=1))
    torch.testing.assert_close(input_invariance(get_method("input_x_gradient", model), x, shift=shift), expected)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    bounded = shifted_method(get_method("saliency", model, input_bounds=(0.0, 1.0)), -1.0)
    assert bounded.input_bounds == (-1.0, 0.0) and bounded.model is model
    metric = InputInvariance("input_x_gradient", model, shift=shift)
    metric.update(x[:1])
    metric.update(x[1:])
    result = metric.compute()
    assert float(result["input_invariance"]) == 0.0
    torch.testing.assert_close(result["input_invariance_change"], expected.mean().float())


def test_bad_input_names_the_argument():
    model = linear_model(4, dtype=torch.float32)
    x = torch.rand(2, 4)
    with pytest.raises(ValueError, match="`similarity`"):
        RandomLogit("saliency", model, similarity="cosine")
    with pytest.raises(ValueError, match="ssim"):
        map_similarity(torch.rand(2, 4), torch.rand(2, 4), "ssim")
    with pytest.raises(ValueError, match="`attributions`"):
        random_logit(get_method("saliency", model), x, attributions=torch.rand(2, 3))
    with pytest.raises(ValueError, match="`logits`"):
        input_invariance(get_method("saliency", model), x, logits=torch.zeros(3, 3))
    with pytest.raises(TypeError, match="`shift`"):
        InputInvariance("saliency", model, shift="one")
    with pytest.raises(ValueError, match="`tolerance`"):
        non_sensitivity(model, x, torch.rand(2, 4), tolerance=-1.0)
    with pytest.raises(ValueError, match="`attributions`"):
        completeness(model, x, torch.rand(2, 5))
    with pytest.raises(TypeError, match="`method`"):
        random_logit(model, x)


# ----------------------------------------------------------------------- per-sample references, one call at a time
def _mlp(features: int, classes: int = 3, seed: int = 0) -> nn.Module:
    """A float64 non-linear classifier (tanh, ReLU)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(features, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, classes))
    return model.double().eval()


@torch.no_grad()
def _logit(model: nn.Module, row: torch.Tensor, label: int) -> float:
    return float(model(row[None])[0, label])


def _uneven_mean(metric, key: str, batches: list[dict]) -> torch.Tensor:
    for batch in batches:
        metric.update(**batch)
    return metric.compute()[key].double()


def test_completeness_equals_a_per_sample_loop_for_integrated_gradients_with_few_steps():
    model = _mlp(6, seed=1)
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    maps = get_method("integrated_gradients", model, n_steps=3).attribute(x)  # a coarse integral: errors > 0
    for substrate, value in (("zero", 0.0), ("constant", 0.5)):
        expected = []
        for row, attribution in zip(x, maps.detach(), strict=True):
            label = int(model(row[None]).argmax())
            delta = _logit(model, row, label) - _logit(model, torch.full_like(row, value), label)
            expected.append(abs(float(attribution.sum()) - delta) / abs(delta))
        expected = torch.tensor(expected, dtype=torch.float64)
        assert float(expected.min()) > 1e-4  # not the exact IG of a linear model: the error means something
        got = completeness(model, x, maps, substrate=substrate, substrate_value=value)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-12)
    metric = Completeness(model)
    expected = completeness(model, x, maps)
    torch.testing.assert_close(metric.score(x, maps)["completeness"], expected)
    batches = [{"x": x[rows], "attributions": maps[rows]} for rows in (slice(0, 3), slice(3, 5))]
    torch.testing.assert_close(_uneven_mean(metric, "completeness", batches), expected.mean(), rtol=1e-5, atol=0)


def _non_sensitivity_reference(model, x, maps, *, per_step, n_samples, eps, tolerance, seed) -> list[float]:
    """Groups where zero attribution and the model's insensitivity disagree, by loops over samples, groups, draws."""
    draws = [torch.randn((1, x.shape[1]), generator=torch.Generator().manual_seed(seed + j), dtype=x.dtype)[0]
             for j in range(n_samples)]  # fmt: skip
    counts = []
    for row, attribution in zip(x, maps, strict=True):
        probs = model(row[None]).softmax(dim=1)[0]
        label = int(probs.argmax())
        largest = float(attribution.abs().max())
        count = 0
        for start in range(0, x.shape[1], per_step):
            columns = list(range(start, min(start + per_step, x.shape[1])))
            zero = all(abs(float(attribution[c])) <= eps * largest for c in columns)
            moved = False
            for draw in draws:
                perturbed = row.clone()
                perturbed[columns] = draw[columns]
                moved |= abs(float(model(perturbed[None]).softmax(dim=1)[0, label] - probs[label])) > tolerance
            count += zero == moved
        counts.append(float(count))
    return counts


@torch.no_grad()
def test_non_sensitivity_equals_a_per_sample_loop_on_a_model_that_ignores_three_features():
    torch.manual_seed(3)
    model = nn.Sequential(nn.ReLU(), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()
    model[1].weight[:, [4, 6, 7]] = 0.0  # of the groups (0, 1), (2, 3), (4, 5), (6, 7), the last moves nothing
    x = torch.rand(4, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x[3, 5] = -0.5  # behind the ReLU: only a positive draw of feature 5 moves sample 3's group (4, 5)
    maps = torch.randn(4, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    maps[0, 0:2] = 0.0  # zero attribution on features the model uses
    maps[1, 6:8] = 1e-7  # (near) zero attribution on the ignored ones
    maps[2, 3] = 0.0  # one zero unit in a group whose other unit has attribution
    maps[3, 4:6] = 0.0  # zero attribution where one draw of three (seed 7: the last) moves the output
    options = {"per_step": 2, "n_samples": 3, "eps": 1e-5, "tolerance": 1e-5, "seed": 7}
    expected = torch.tensor(_non_sensitivity_reference(model, x, maps, **options), dtype=torch.float64)
    assert expected.tolist() == [2.0, 0.0, 1.0, 2.0]  # between the extremes 0 and 4
    kwargs = {"features_per_step": 2, "n_samples": 3, "eps": 1e-5, "tolerance": 1e-5, "seed": 7}
    torch.testing.assert_close(non_sensitivity(model, x, maps, **kwargs), expected)
    metric = NonSensitivity(model, **kwargs)
    torch.testing.assert_close(metric.score(x, maps)["non_sensitivity"], expected)
    batches = [{"x": x[rows], "attributions": maps[rows]} for rows in (slice(0, 3), slice(3, 4))]
    torch.testing.assert_close(_uneven_mean(metric, "non_sensitivity", batches), expected.mean())


def _input_x_gradient(forward, row: torch.Tensor, label: int) -> torch.Tensor:
    point = row.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(forward(point[None])[0, label], point)
    return point.detach() * gradient


def test_input_invariance_equals_a_per_sample_loop_on_a_non_linear_model():
    # Inputs of both signs: |x| + |x + c| is not |c| everywhere, so input x gradient's change is not 1 as on [0, 1].
    model = _mlp(5, seed=7)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    shift = -1.0
    expected = []
    for row in x:
        label = int(model(row[None]).argmax())
        own = _input_x_gradient(model, row, label)
        moved = _input_x_gradient(lambda z: model(z - shift), row + shift, label)  # g(z) = f(z - c) at x + c
        expected.append(float((moved - own).abs().sum() / (moved.abs().sum() + own.abs().sum())))
    expected = torch.tensor(expected, dtype=torch.float64)
    assert 0.1 < float(expected.min()) and float(expected.max()) < 0.9
    got = input_invariance(get_method("input_x_gradient", model), x, shift=shift)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-12)
    tolerance = float(expected.median())
    metric = InputInvariance("input_x_gradient", model, shift=shift, tolerance=tolerance)
    scores = metric.score(x)
    torch.testing.assert_close(scores["input_invariance_change"], expected, rtol=1e-5, atol=1e-12)
    assert scores["input_invariance"].tolist() == [float(value <= tolerance) for value in expected.tolist()]
    batches = [{"x": x[rows]} for rows in (slice(0, 4), slice(4, 6))]
    for batch in batches:
        metric.update(**batch)
    result = metric.compute()
    torch.testing.assert_close(result["input_invariance_change"].double(), expected.mean(), rtol=1e-5, atol=0)
    assert float(result["input_invariance"]) == pytest.approx(float((expected <= tolerance).double().mean()))
