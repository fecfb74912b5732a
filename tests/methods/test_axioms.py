"""The attribution axioms of specs/metrics.md for the Captum baselines, in float64."""

import pytest
import torch
from torch import nn

from lit_attr.functional import completeness_error
from lit_attr.methods import InputIndependenceWarning, available_methods, get_method

# The methods that apply to any model (attention maps need a transformer).
GENERIC_METHODS = available_methods(nn.Identity())

GRADIENT_METHODS = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "gradient_shap"]


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def smooth_mlp(seed=0, d_in=6, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, k)).double()


def test_ig_completeness_at_50_steps():
    model = smooth_mlp()
    x = torch.randn(5, 6, dtype=torch.float64)
    a = get_method("integrated_gradients", model, n_steps=50).attribute(x, target=2)
    with torch.no_grad():
        delta = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    assert a.dtype == torch.float64
    assert completeness_error(a, delta).max() < 1e-2


def test_saturation_gradient_zero_ig_one():
    # f(x) = 1 - ReLU(1 - x): flat at x = 2, yet it rose by 1 from x' = 0 (Sundararajan et al., sensitivity).
    model = Lambda(lambda x: 1 - torch.relu(1 - x))
    x = torch.tensor([[2.0]], dtype=torch.float64)
    with pytest.warns(InputIndependenceWarning, match="does not depend on the input"):  # the gradient is zero here
        assert get_method("saliency", model).attribute(x, target=0).item() == 0.0
    ig = get_method("integrated_gradients", model, n_steps=50, method="riemann_middle").attribute(x, target=0)
    assert ig.item() == pytest.approx(1.0, abs=1e-6)  # 25 of 50 midpoints lie below the kink, each 2 / 50


# FEI's masks answer a different question (which area preserves the logit): its area term touches every feature.
# Kernel SHAP estimates every player's value by a regression on sampled coalitions: a dummy's is 0 only on average.
@pytest.mark.parametrize("name", [m for m in GENERIC_METHODS if m not in ("fei", "kernel_shap")])
def test_dummy_feature_gets_exactly_zero(name):
    torch.manual_seed(1)
    inner = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    # Feature 3 never reaches the output.
    model = nn.Sequential(Lambda(lambda x: x[:, :3]), inner)
    x = torch.randn(4, 4, dtype=torch.float64)
    extra = {"reference_pool": (torch.randn(8, 4, dtype=torch.float64), torch.arange(8) % 2)} if name == "ig2" else {}
    a = get_method(name, model, **extra).attribute(x, target=1)
    assert torch.all(a[:, 3] == 0)
    assert a[:, :3].abs().sum() > 0


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_implementation_invariance(name):
    # Sundararajan's pair: the same function, two implementations.
    f = Lambda(lambda x: torch.relu(torch.relu(x[:, :1]) - 1 - torch.relu(x[:, 1:2])))
    g = Lambda(lambda x: torch.relu(torch.relu(x[:, :1] - 1) - torch.relu(x[:, 1:2])))
    x = torch.tensor([[3.0, 0.5], [2.2, 0.3], [0.5, 1.0]], dtype=torch.float64)
    a_f = get_method(name, f).attribute(x, target=0)
    a_g = get_method(name, g).attribute(x, target=0)
    torch.testing.assert_close(a_f, a_g, rtol=1e-10, atol=1e-10)
    assert a_f.abs().sum() > 0


@pytest.mark.parametrize("name", [*GRADIENT_METHODS, "occlusion"])
def test_linearity(name):
    f1, f2 = smooth_mlp(1, k=2), smooth_mlp(2, k=2)
    combined = Lambda(lambda x: f1(x) + 2 * f2(x))
    x = torch.randn(3, 6, dtype=torch.float64)
    a = get_method(name, combined).attribute(x, target=0)
    a1 = get_method(name, f1).attribute(x, target=0)
    a2 = get_method(name, f2).attribute(x, target=0)
    # Captum's ablation accumulates in float32, so occlusion is linear only to single precision.
    tol = 1e-6 if name == "occlusion" else 1e-10
    torch.testing.assert_close(a, a1 + 2 * a2, rtol=tol, atol=tol)


def test_ig_symmetry():
    # f is symmetric in (x1, x2); at x1 = x2 with a symmetric baseline both get the same attribution.
    model = Lambda(lambda x: torch.stack([torch.sigmoid(x[:, 0] * x[:, 1] + x[:, 0] + x[:, 1])], dim=1))
    x = torch.tensor([[0.7, 0.7], [-1.3, -1.3]], dtype=torch.float64)
    a = get_method("integrated_gradients", model).attribute(x, target=0)
    torch.testing.assert_close(a[:, 0], a[:, 1])
    assert a.abs().sum() > 0
