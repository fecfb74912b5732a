"""Infidelity and Sensitivity equal Captum's functions called directly with the same perturbations."""

import pytest
import torch
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from lit_attr._hygiene import row_seed
from lit_attr.methods import get_method
from lit_attr.metrics.infidelity import Infidelity, Sensitivity


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    ).double().eval()  # fmt: skip


def draws(rows, n, seed, kind):
    """The documented per-sample draw: one (n, ...) float64 draw per sample, seeded by row_seed(seed, sample)."""
    out = []
    for i in range(rows.shape[0] // n):
        generator = torch.Generator().manual_seed(row_seed(seed, rows[i * n]))
        draw = torch.randn if kind == "normal" else torch.rand
        out.append(draw((n, *rows.shape[1:]), generator=generator, dtype=torch.float64))
    return torch.cat(out).to(rows)


def gradient(model, x, target):
    """Signed input gradient of the target logit, written out (Captum calls explanations under no_grad)."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return grad


@pytest.mark.parametrize(("baseline", "normalize"), [(0.0, True), (None, False)])
def test_infidelity_equals_captum_with_the_same_perturbations(baseline, normalize):
    model = small_cnn()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 6, 6, generator=generator, dtype=torch.float64)
    attributions = torch.randn(5, 3, 6, 6, generator=generator, dtype=torch.float64)
    n, std, seed = 6, 0.2, 4

    def perturb(inputs):
        eps = draws(inputs, n, seed, "normal")
        if baseline is None:  # around the input: I = std * eps
            return std * eps, inputs - std * eps
        return inputs - (baseline + std * eps), baseline + std * eps

    target = model(x).argmax(dim=1)
    expected = infidelity(model, perturb, x, attributions, target=target, n_perturb_samples=n, normalize=normalize)
    options = {"n_perturb_samples": n, "noise_std": std, "baseline": baseline, "normalize": normalize, "seed": seed}
    # 12 rows per forward: two samples per Captum call, and the batches split the samples unevenly.
    metric = Infidelity(model, internal_batch_size=12, **options)
    metric.update(x[:3], attributions[:3])
    metric.update(x[3:], attributions[3:], target=target[3:])
    torch.testing.assert_close(metric.compute()["infidelity"], expected.mean().float())
    torch.testing.assert_close(metric.score(x, attributions)["infidelity"], expected)


def test_infidelity_of_the_gradient_of_a_linear_model_is_zero():
    # f(x) - f(x - I) = <w, I> exactly for a linear f, so the gradient map has no infidelity.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double()
    x = torch.rand(4, 3, 2, 2, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    metric = Infidelity(model, normalize=False)
    metric.update(x, gradient(model, x, target), target)
    assert float(metric.compute()["infidelity"]) < 1e-20
    metric.update(x, torch.ones_like(x), target)
    assert float(metric.compute()["infidelity"]) > 1e-3


def test_sensitivity_equals_captum_with_the_same_perturbations():
    model = small_cnn()
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    n, radius, seed = 5, 0.05, 9

    def perturb(inputs, r):
        return inputs + r * (2 * draws(inputs, n, seed, "uniform") - 1)

    def explain(inputs, target):
        if isinstance(inputs, tuple):
            return (gradient(model, inputs[0], target),)
        return gradient(model, inputs, target)

    target = model(x).argmax(dim=1)
    expected = sensitivity_max(
        explain, x, perturb_func=perturb, perturb_radius=radius, n_perturb_samples=n, target=target
    )
    metric = Sensitivity("saliency", model, n_perturb_samples=n, perturb_radius=radius, seed=seed)
    metric.update(x[:1])
    metric.update(x[1:])
    torch.testing.assert_close(metric.compute()["sensitivity"], expected.mean().float())
    # Given the clean maps, the metric explains only the perturbed inputs, with the same result.
    scores = metric.score(x, target, attributions=get_method("saliency", model).attribute(x, target))
    torch.testing.assert_close(scores["sensitivity"], expected)
    assert float(expected.min()) > 0  # a ReLU network's gradient does move


def test_sensitivity_of_a_bounded_method_explains_perturbations_clipped_to_its_bounds():
    """Inputs at the bounds (black and white pixels) no longer fail: the ball is cut to the valid range."""
    model = small_cnn()
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x[:, :, 0], x[:, :, -1] = 0.0, 1.0
    n, radius, seed = 4, 0.05, 3

    def perturb(inputs, r):
        return (inputs + r * (2 * draws(inputs, n, seed, "uniform") - 1)).clamp(0.0, 1.0)

    def explain(inputs, target):
        if isinstance(inputs, tuple):
            return (gradient(model, inputs[0], target),)
        return gradient(model, inputs, target)

    target = model(x).argmax(dim=1)
    expected = sensitivity_max(
        explain, x, perturb_func=perturb, perturb_radius=radius, n_perturb_samples=n, target=target
    )
    metric = Sensitivity(
        "saliency", model, n_perturb_samples=n, perturb_radius=radius, seed=seed,
        method_kwargs={"input_bounds": (0.0, 1.0)},
    )  # fmt: skip
    metric.update(x, target)
    torch.testing.assert_close(metric.compute()["sensitivity"], expected.mean().float())


def test_infidelity_and_sensitivity_refuse_bad_options():
    model = small_cnn()
    with pytest.raises(ValueError, match="noise_std"):
        Infidelity(model, noise_std=0.0)
    with pytest.raises(ValueError, match="n_perturb_samples"):
        Infidelity(model, n_perturb_samples=0)
    with pytest.raises(ValueError, match="perturb_radius"):
        Sensitivity("saliency", model, perturb_radius=-1.0)
    with pytest.raises(TypeError, match="model"):
        Sensitivity("saliency")
    with pytest.raises(ValueError, match="shape of x"):
        Infidelity(model).update(torch.rand(2, 3, 6, 6, dtype=torch.float64), torch.rand(2, 6, 6))
