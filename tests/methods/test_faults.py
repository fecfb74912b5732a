"""Faults inside attribution: an interrupt mid-path leaves the user's model and RNGs as they were; NaN logits
along a path are an error naming the method and the sample."""

import random
import re
from typing import Any

import numpy as np
import pytest
import torch
from test_contract import fast_kwargs, inputs, small_cnn
from torch import Tensor, nn

from lit_attr.methods import AttributionMethod, available_methods, get_method


# ------------------------------------------------------------------ KeyboardInterrupt mid-path
def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything of the model an attribution may touch, by module name."""
    modules = dict(model.named_modules())
    return {
        # Every hook registry (forward, pre-forward, backward, with-kwargs, ...): handle ids and the hooks.
        "hooks": {
            (name, key): dict(value)
            for name, module in modules.items()
            for key, value in vars(module).items()
            if "hooks" in key and isinstance(value, dict)
        },
        # Attribute names and plain flags (training, inplace, ...).
        "attributes": {name: sorted(vars(module)) for name, module in modules.items()},
        "flags": {
            name: {k: v for k, v in vars(module).items() if isinstance(v, (bool, int, float, str))}
            for name, module in modules.items()
        },
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _rng() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].tolist(), random.getstate()


def _user_model() -> nn.Module:
    """A mixed-mode model with hand-set flags and gradients, as a training loop leaves it."""
    model = small_cnn().train()
    model[0].eval()
    params = list(model.parameters())
    params[1].requires_grad_(False)
    for p in params:
        if p.requires_grad:
            p.grad = torch.full_like(p, 0.25)
    return model


def _method(name: str, model: nn.Module) -> AttributionMethod:
    return get_method(name, model, input_bounds=(0.0, 1.0), **fast_kwargs(name))


@pytest.mark.parametrize("name", available_methods(small_cnn()))
def test_keyboard_interrupt_mid_path_restores_the_model_and_the_rngs(name: str):
    x = inputs(4)
    model = _user_model()
    forwards = []
    counter = model.register_forward_hook(lambda *_: forwards.append(1))
    reference = _method(name, model).attribute(x, target=1)
    counter.remove()
    # The first forward resolves the target; later ones are the method's own (its path, its gradients).
    stop_at = min(3, len(forwards))
    assert stop_at >= 2

    calls = []

    def interrupt(module: nn.Module, args: Any, output: Tensor) -> None:
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt

    handle = model.register_forward_hook(interrupt)  # the user's own hook: it must survive
    before, rng = _snapshot(model), _rng()
    with pytest.raises(KeyboardInterrupt):
        _method(name, model).attribute(x, target=1)
    after = _snapshot(model)
    assert len(calls) == stop_at

    assert after["hooks"] == before["hooks"], "a hook of the method was left behind"
    assert after["attributes"] == before["attributes"], "an attribute was left on a module"
    assert after["flags"] == before["flags"]  # modes, inplace flags
    assert after["requires_grad"] == before["requires_grad"]
    assert all(a is b for a, b in zip(after["grads"], before["grads"], strict=True))
    for a, b in zip(after["grad_values"], before["grad_values"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    torch_state, np_state, py_state = _rng()
    assert torch.equal(torch_state, rng[0]) and np_state == rng[1] and py_state == rng[2]
    # Nothing stale either: the next call, without the interrupt, gives what it gave before.
    handle.remove()
    torch.testing.assert_close(_method(name, model).attribute(x, target=1), reference, rtol=0, atol=0)


# ------------------------------------------------------------------ NaN logits along a path
class _NaNOffTheInput(nn.Module):
    """Finite logits, except NaN for inputs whose top-left 4x4 block has a mean strictly in (0.6, 1).

    The culprit sample has that block at exactly 1, every other sample a flat image of at most 0.4: the clean
    inputs are fine, and so is every path of the other samples, but the culprit's path (towards a darker baseline
    or reference, or a perturbation of the block) passes through NaN part-way.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        block = x[:, :, :4, :4].mean(dim=(1, 2, 3))
        return out.masked_fill(((block > 0.6) & (block < 1.0))[:, None], float("nan"))


def _batch(culprit: int, n: int = 4) -> Tensor:
    x = (0.1 + 0.3 * torch.rand(n, 3, 1, 1, generator=torch.Generator().manual_seed(5))).expand(n, 3, 8, 8).clone()
    x[culprit] = 0.2
    x[culprit, :, :4, :4] = 1.0
    return x


PATH_METHODS = [
    "agi", "big", "feature_ablation", "fei", "gradient_shap", "ig2", "integrated_gradients", "kernel_shap", "mfaba",
    "occlusion", "smoothgrad",
]
# saliency and input_x_gradient evaluate the model at the input only; deeplift at the input and its baseline.
assert set(available_methods(small_cnn())) - set(PATH_METHODS) == {"saliency", "input_x_gradient", "deeplift"}


def _path_kwargs(name: str) -> dict[str, Any]:
    kwargs = {"input_bounds": (0.0, 1.0), **fast_kwargs(name)}
    if name == "fei":
        kwargs["input_bounds"] = None  # reference colours from each sample's own range: flat samples stay flat
    if name == "gradient_shap":
        kwargs["baselines"] = torch.zeros(1, 3, 8, 8)  # not the white bound, whose paths would pass (0.6, 1) too
    return kwargs


@pytest.mark.parametrize("name", PATH_METHODS)
@pytest.mark.parametrize("chunked", [False, True], ids=["one_chunk", "two_per_chunk"])
def test_nan_logits_along_a_path_name_the_method_and_the_sample(name: str, chunked: bool):
    model = _NaNOffTheInput()
    x = _batch(culprit=2)
    target = torch.tensor([0, 1, 2, 3])
    kwargs = _path_kwargs(name)
    if chunked:  # two samples per chunk: the culprit is the first of the second chunk
        rows = get_method(name, model, **kwargs).rows_per_sample()
        kwargs["internal_batch_size"] = 2 * rows
    method = get_method(name, model, **kwargs)
    # Without the culprit every path stays finite, so the clean samples are no trouble.
    keep = torch.tensor([0, 1, 3])
    assert torch.isfinite(method.attribute(x[keep], target=target[keep])).all()
    message = rf"^{name}: the model returned NaN or infinite logits along the path of sample 2 \(position in the batch"
    with pytest.raises(ValueError, match=message) as info:
        method.attribute(x, target=target)
    assert "\n" not in str(info.value)


def test_nan_logits_at_the_input_name_every_such_sample():
    x = _batch(culprit=1)
    x[3, :, :4, :4] = 0.8  # a clean input inside the NaN region
    x[1, :, :4, :4] = 0.7
    method = get_method("saliency", _NaNOffTheInput())
    with pytest.raises(ValueError, match=re.escape("saliency: the model returned NaN or infinite logits for the "
                                                   "input of samples [1, 3] (position in the batch")):
        method.attribute(x, target=0)
    chunked = get_method("saliency", _NaNOffTheInput(), internal_batch_size=2)  # stops at the first bad chunk
    with pytest.raises(ValueError, match=re.escape("for the input of sample 1 (position")):
        chunked.attribute(x, target=0)


class _NeedsCompany(AttributionMethod):
    """A batch-dependent method (it cannot attribute a sample alone) whose path meets NaN logits."""

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        if x.shape[0] == 1:
            raise RuntimeError("needs at least two samples")
        self.logits(x * 0.8)  # the culprit's block at 0.8: NaN
        return x


def test_a_culprit_that_cannot_be_isolated_is_named_with_its_chunk():
    x = _batch(culprit=2)
    method = _NeedsCompany(_NaNOffTheInput(), internal_batch_size=2)
    with pytest.raises(ValueError, match=re.escape("_NeedsCompany: the model returned NaN or infinite logits along "
                                                   "the path of one of samples [2, 3] (position")):
        method.attribute(x, target=0)


def test_deeplift_checks_the_logits_captum_computes_itself():
    # Captum's DeepLift runs the model on the inputs and their baselines; one baseline lies in the NaN region.
    x = _batch(culprit=0)
    baselines = torch.zeros_like(x)
    baselines[2, :, :4, :4] = 0.8
    method = get_method("deeplift", _NaNOffTheInput())
    assert torch.isfinite(method.attribute(x, target=1)).all()  # default baselines (zeros) are fine
    with pytest.raises(ValueError, match=r"^deeplift: .* logits along the path of sample 2 \(position"):
        method.attribute(x, target=1, baselines=baselines)
