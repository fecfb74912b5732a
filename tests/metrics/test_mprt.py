"""eMPRT and sMPRT against hand-randomised models, NumPy/SciPy entropies and MPRT itself."""

import copy
import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from lit_attr._hygiene import row_seed
from lit_attr.functional.mprt import discrete_entropy, entropy_rise, noisy_copies
from lit_attr.functional.randomization import randomize_
from lit_attr.methods import get_method
from lit_attr.methods.base import AttributionMethod
from lit_attr.metrics.mprt import EfficientMPRT, NoiseAveraged, SmoothMPRT
from lit_attr.metrics.parameter_randomization import ParameterRandomization


class TinyCNN(nn.Module):
    """Head registered first, so definition order differs from forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


FORWARD = ["conv1", "bn", "conv2", "fc"]


class InputItself(AttributionMethod):
    """A "method" whose map ignores the model's parameters: the input."""

    def _attribute(self, x, target, **kwargs):
        return x.clone()


@pytest.fixture
def tiny():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyCNN()
        model.train()(torch.rand(16, 3, 8, 8))  # non-trivial BatchNorm statistics
        x = torch.rand(5, 3, 8, 8)
    return model.eval(), x


def numpy_entropy(maps: torch.Tensor, bins: int = 100) -> np.ndarray:
    """|A| summed over channels, divided by its max, histogram of `bins` bins on [0, 1], scipy's entropy."""
    out = []
    for heat in maps.abs().sum(dim=1).flatten(1).double().numpy():
        counts, _ = np.histogram(heat / heat.max(), bins=bins, range=(0.0, 1.0))
        out.append(scipy.stats.entropy(counts))  # normalises the counts; natural log
    return np.array(out)


# ----------------------------------------------------------------------------------------------------- eMPRT
def test_discrete_entropy_equals_numpy_histograms_and_scipy():
    maps = torch.rand(4, 3, 9, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.3
    np.testing.assert_allclose(discrete_entropy(maps).numpy(), numpy_entropy(maps), rtol=1e-12)
    np.testing.assert_allclose(discrete_entropy(maps, 7).numpy(), numpy_entropy(maps, 7), rtol=1e-12)
    assert discrete_entropy(torch.zeros(1, 3, 4, 4)).item() == 0.0  # one bin
    # A constant original map has no relative rise: the denominator is the smallest positive entropy of 16 units.
    floor = -(1 / 16) * math.log(1 / 16) - (15 / 16) * math.log(15 / 16)
    torch.testing.assert_close(entropy_rise(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0]), 16),
                               torch.tensor([0.0, 1.0 / floor]))  # fmt: skip


def test_emprt_equals_the_entropies_of_a_hand_randomised_copy(tiny):
    model, x = tiny
    before = copy.deepcopy(model.state_dict())
    metric = EfficientMPRT("saliency", model, seed=3)
    metric.update(x[:2])
    metric.update(x[2:])
    target = model(x).argmax(dim=1)
    original = get_method("saliency", model).attribute(x, target)
    clone = copy.deepcopy(model)
    for index, name in enumerate(FORWARD):  # every layer, seed + its index in forward order
        randomize_(getattr(clone, name), 3 + index)
    randomized = get_method("saliency", clone).attribute(x, target)
    h_orig, h_rand = numpy_entropy(original), numpy_entropy(randomized)
    result = metric.compute()
    np.testing.assert_allclose(result["entropy_original"].item(), h_orig.mean(), rtol=1e-5)
    np.testing.assert_allclose(result["entropy_randomized"].item(), h_rand.mean(), rtol=1e-5)
    np.testing.assert_allclose(result["emprt"].item(), ((h_rand - h_orig) / h_orig).mean(), rtol=0, atol=1e-6)
    # The user's model is untouched; per-sample scores, with given attributions, are the same.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    scores = metric.score(x, attributions=original)
    np.testing.assert_allclose(scores["emprt"].numpy(), (h_rand - h_orig) / h_orig, rtol=0, atol=1e-6)
    assert {key: tuple(value.shape) for key, value in scores.items()} == {
        "emprt": (5,), "entropy_original": (5,), "entropy_randomized": (5,)
    }  # fmt: skip


def test_emprt_fails_a_parameter_independent_map_and_passes_saliency_on_the_trained_demo(trained_demo):
    model, datamodule = trained_demo
    x = datamodule.val_set.images[:32]
    ignores = EfficientMPRT(InputItself(model))
    ignores.update(x)
    report = ignores.report()
    assert abs(float(report["emprt"])) < 1e-6 and not report["passed"]
    saliency = EfficientMPRT("saliency", model)
    saliency.update(x)
    report = saliency.report()
    assert report["passed"] and float(report["emprt"]) > report["threshold"]


# ----------------------------------------------------------------------------------------------------- sMPRT
def test_smprt_with_one_copy_is_bottom_up_mprt(tiny):
    model, x = tiny
    similarity = ("spearman_abs", "spearman")
    smooth = SmoothMPRT("saliency", model, n_noise=1, similarity=similarity, seed=1)
    plain = ParameterRandomization("saliency", model, order="bottom_up", similarity=similarity, seed=1)
    for metric in (smooth, plain):
        metric.update(x[:3])
        metric.update(x[3:])
    expected, report = plain.report(), smooth.report()
    for name in ("spearman_abs", "spearman"):
        assert report[name]["stages"] == expected[name]["stages"] == ["original", *FORWARD]
        torch.testing.assert_close(report[name]["curve"], expected[name]["curve"], rtol=0, atol=1e-6)
    assert report["passed"] == expected["passed"]


def test_smprt_maps_are_the_mean_over_the_documented_noisy_copies(tiny):
    model, x = tiny
    saliency = get_method("saliency", model)
    target = model(x).argmax(dim=1)
    expected = []
    for i in range(len(x)):  # the copies written out: N(0, 1) draws seeded per sample, scaled by 0.2 x range
        generator = torch.Generator().manual_seed(row_seed(7, x[i]))
        draws = torch.randn((3, 3, 8, 8), generator=generator, dtype=torch.float64)
        copies = torch.cat([x[i] + 0.2 * (x[i].max() - x[i].min()) * draws.float(), x[i][None]])
        expected.append(saliency.attribute(copies, int(target[i])).mean(dim=0))
    torch.testing.assert_close(noisy_copies(x, 4, 0.2, 7)[:, -1], x)
    smoothed = NoiseAveraged(saliency, n_noise=4, noise_level=0.2, seed=7)
    torch.testing.assert_close(smoothed.attribute(x), torch.stack(expected))
    # The metric's original stage is that map, computed on its private copy.
    metric = SmoothMPRT("saliency", model, n_noise=4, noise_level=0.2, seed=7)
    stage, maps = next(iter(metric.stage_attributions(x)))
    assert stage == "original"
    torch.testing.assert_close(maps, torch.stack(expected))
