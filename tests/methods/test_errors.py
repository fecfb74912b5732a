"""Bad input gets a clear error naming the argument."""

import pytest
import torch
from torch import nn

from lit_attr.methods import get_method


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


@pytest.fixture
def x():
    return torch.rand(2, 3, 2, 2)


def test_unknown_method_lists_available(model):
    with pytest.raises(ValueError, match=r"Unknown attribution method 'nope'; available: .*saliency"):
        get_method("nope", model)


def test_target_out_of_range(model, x):
    with pytest.raises(ValueError, match=r"`target` values must be in \[0, 2\].*got values in \[0, 3\]"):
        get_method("saliency", model).attribute(x, target=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"`target` values must be in \[0, 2\]"):
        get_method("saliency", model).attribute(x, target=-1)


def test_target_wrong_length(model, x):
    with pytest.raises(ValueError, match=r"one entry per sample \(N=2\), got 3 entries"):
        get_method("saliency", model).attribute(x, target=[0, 1, 2])


def test_target_float(model, x):
    with pytest.raises(TypeError, match="`target` must be None, an int"):
        get_method("saliency", model).attribute(x, target=1.0)


def test_non_floating_input(model):
    with pytest.raises(TypeError, match=r"`x` must be a floating-point tensor, got dtype torch.int64"):
        get_method("saliency", model).attribute(torch.ones(2, 3, 2, 2, dtype=torch.long))


def test_not_a_tensor(model):
    with pytest.raises(TypeError, match=r"`x` must be a torch.Tensor, got list"):
        get_method("saliency", model).attribute([[1.0]])


def test_device_mismatch(x):
    meta_model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).to("meta")
    with pytest.raises(ValueError, match=r"`x` is on cpu but the model is on meta"):
        get_method("saliency", meta_model).attribute(x)


def test_output_not_logits(x):
    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 3)

        def forward(self, inp):
            return self.lin(inp.flatten(1)), None

    with pytest.raises(TypeError, match=r"returned tuple.*forward_fn"):
        get_method("saliency", TupleOut()).attribute(x)
    with pytest.raises(ValueError, match=r"logits of shape \(N, K\) = \(2, K\), got \(2, 3, 1\).*forward_fn"):
        get_method("saliency", nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.Unflatten(1, (3, 1)))).attribute(x)
    # forward_fn fixes it
    model = TupleOut()
    a = get_method("saliency", model, forward_fn=lambda inp: model(inp)[0]).attribute(x)
    assert a.shape == x.shape


def test_nan_and_inf_inputs(model, x):
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            get_method("saliency", model).attribute(y)


def test_inputs_outside_bounds(model, x):
    with pytest.raises(ValueError, match=r"outside `input_bounds`"):
        get_method("saliency", model, input_bounds=(0.0, 0.5)).attribute(x + 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"internal_batch_size": 0}, "`internal_batch_size` must be a positive int"),
        ({"input_bounds": (1.0, 0.0)}, "`input_bounds` must satisfy low < high"),
        ({"input_bounds": (0.0,)}, r"`input_bounds` must be None or a pair"),
        ({"forward_fn": 3}, "`forward_fn` must be callable"),
    ],
)
def test_constructor_arguments(model, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        get_method("saliency", model, **kwargs)


def test_model_not_a_module():
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module, got function"):
        get_method("saliency", lambda t: t)


def test_gradient_shap_internal_batch_size_below_n_samples(model):
    with pytest.raises(ValueError, match=r"`internal_batch_size` \(4\) must be >= `n_samples` \(20\)"):
        get_method("gradient_shap", model, internal_batch_size=4)
