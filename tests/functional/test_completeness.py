import pytest
import torch

from lit_attr.functional.completeness import completeness_error
from lit_attr.methods import get_method


def test_completeness_error_hand_computed():
    a = torch.tensor([[[0.5, 0.25], [0.25, 0.0]], [[1.0, -1.0], [0.5, 0.0]]])  # sums 1.0 and 0.5
    torch.testing.assert_close(completeness_error(a, torch.tensor([1.0, -0.5])), torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(completeness_error(a, 2.0), torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(completeness_error(a, torch.tensor([[4.0], [1.0]])), torch.tensor([0.75, 0.5]))


def test_integrated_gradients_is_complete_on_a_linear_model():
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3).double()
    x = torch.rand(4, 5, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    attributions = get_method("integrated_gradients", net, n_steps=16).attribute(x, target)
    with torch.no_grad():
        delta = (net(x) - net(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
    assert float(completeness_error(attributions, delta).max()) < 1e-10


def test_completeness_error_errors():
    with pytest.raises(TypeError, match="`attributions` must be a floating-point tensor"):
        completeness_error(torch.ones(2, 3, dtype=torch.long), 1.0)
    with pytest.raises(TypeError, match="`delta` must be a tensor"):
        completeness_error(torch.ones(2, 3), "1")
    with pytest.raises(ValueError, match=r"`delta` must have shape \(N,\) = \(2,\) .* got \(3,\)"):
        completeness_error(torch.ones(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match=r"`delta` is 0 for samples \[1\]"):
        completeness_error(torch.ones(2, 3), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="`delta` must be finite"):
        completeness_error(torch.ones(2, 3), torch.tensor([1.0, float("inf")]))
