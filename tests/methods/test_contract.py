"""The AttributionMethod contract (DESIGN.md) for every registered method."""

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lit_attr.methods import available_methods, get_method

# The methods that apply to any model (attention maps need a transformer).
GENERIC_METHODS = available_methods(nn.Identity())


def small_cnn(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 4),
    )
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.rand(8, 3, 8, 8) * 2)
    return model


def fast_kwargs(name, shape=(3, 8, 8)):
    pool = (torch.rand(16, *shape, generator=torch.Generator().manual_seed(9)), torch.arange(16) % 3)
    fast = {
        "ig2": {"steps": 5, "n_references": 2, "reference_pool": pool},
        "integrated_gradients": {"n_steps": 8},
        "smoothgrad": {"nt_samples": 4},
        "gradient_shap": {"n_samples": 3},
        "mfaba": {"max_steps": 10},
        "big": {"attack_steps": 5, "ig_steps": 8},
        "agi": {"max_iter": 5, "n_classes": 2},
        "fei": {"iterations": 3, "levels": (0.3, 0.6)},
    }
    return fast.get(name, {})


def inputs(n=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g)


def user_state(model):
    """Set the second parameter requires_grad=False and the others a .grad of 0.5; snapshot what a user owns."""
    params = list(model.parameters())
    params[1].requires_grad_(False)
    for p in params:
        if p.requires_grad:
            p.grad = torch.full_like(p, 0.5)
    return {
        "params": params,
        "grads": [p.grad for p in params],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "rng": (torch.get_rng_state(), np.random.get_state(), random.getstate()),
    }


def assert_user_state_untouched(model, before):
    params, grads = before["params"], before["grads"]
    assert [m.training for m in model.modules()] == before["modes"]
    assert [p.requires_grad for p in params] == [i != 1 for i in range(len(params))]
    assert all(p.grad is g for p, g in zip(params, grads, strict=True))
    assert all(torch.equal(g, torch.full_like(g, 0.5)) for g in grads if g is not None)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before["state"][key]), key
    torch_rng, np_rng, py_rng = before["rng"]
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert np.random.get_state()[1].tolist() == np_rng[1].tolist()
    assert random.getstate() == py_rng


@pytest.mark.parametrize("name", GENERIC_METHODS)
def test_model_and_global_state_untouched(name):
    model = small_cnn().train()
    model[0].eval()  # a mixed-mode model: every module's own flag must come back
    before = user_state(model)

    a = get_method(name, model, input_bounds=(0.0, 1.0), **fast_kwargs(name)).attribute(inputs())

    assert_user_state_untouched(model, before)
    assert not a.requires_grad


@pytest.mark.parametrize("name", GENERIC_METHODS)
def test_eval_mode_used_output_contract_and_no_grad_contexts(name):
    model = small_cnn()
    method = get_method(name, model, input_bounds=(0.0, 1.0), **fast_kwargs(name))
    x = inputs()
    reference = method.attribute(x.double().float())  # plain call, model in train mode
    model.eval()
    torch.testing.assert_close(method.attribute(x), reference)  # BatchNorm ran on running statistics
    model.train()
    assert reference.shape == x.shape and reference.dtype == x.dtype and reference.device == x.device
    with torch.no_grad():
        torch.testing.assert_close(method.attribute(x), reference)
    with torch.inference_mode():
        x_inf = x.clone()
        torch.testing.assert_close(method.attribute(x_inf), reference)


@pytest.mark.parametrize("name", GENERIC_METHODS)
def test_batch_independence(name):
    method = get_method(name, small_cnn(), input_bounds=(0.0, 1.0), **fast_kwargs(name))
    x = inputs()
    batch = method.attribute(x)
    predicted = method.resolve_target(x, None)
    for i in (0, 5):
        alone = method.attribute(x[i : i + 1], target=int(predicted[i]))
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", GENERIC_METHODS)
def test_internal_batch_size_does_not_change_results(name):
    model = small_cnn()
    x = inputs()
    full = get_method(name, model, input_bounds=(0.0, 1.0), **fast_kwargs(name)).attribute(x, target=2)
    chunked = get_method(name, model, input_bounds=(0.0, 1.0), internal_batch_size=3, **fast_kwargs(name))
    torch.testing.assert_close(chunked.attribute(x, target=2), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["integrated_gradients", "deeplift", "occlusion", "gradient_shap"])
def test_per_call_baselines_with_internal_batch_size(name):
    # One baseline per sample is split with the batch (IG, DeepLift, occlusion); GradientShap's baselines are a
    # distribution every sample draws from, and stay whole even when they happen to have N rows.
    model, x = small_cnn(), inputs()
    baselines = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    method = get_method(name, model, **fast_kwargs(name))
    full = method.attribute(x, target=1, baselines=baselines)
    rows = 3 * method.rows_per_sample(baselines=baselines)  # chunks of 3 samples
    chunked = get_method(name, model, internal_batch_size=rows, **fast_kwargs(name))
    torch.testing.assert_close(chunked.attribute(x, target=1, baselines=baselines), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", GENERIC_METHODS)
def test_internal_batch_size_bounds_forward_rows(name):
    model = small_cnn()
    seen = []
    model.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    get_method(name, model, internal_batch_size=5, **fast_kwargs(name)).attribute(inputs(), target=0)
    assert seen and max(seen) <= 5


@pytest.mark.parametrize("name", ["smoothgrad", "gradient_shap"])
def test_stochastic_methods_are_seeded(name):
    model = small_cnn()
    x = inputs(3)
    a = get_method(name, model, seed=1, **fast_kwargs(name)).attribute(x, target=0)
    b = get_method(name, model, seed=1, **fast_kwargs(name)).attribute(x, target=0)
    c = get_method(name, model, seed=2, **fast_kwargs(name)).attribute(x, target=0)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def _grad(fn, z):
    z = z.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(z), z)
    return g


def _linear_case(name, model, x):
    """``(options, attributions expected on the linear model f(x) = W x + b, target c = its prediction)``.

    Closed forms where the method has one; plain one-sample loops for the adversarial paths (BIG, AGI).
    """
    f = lambda z: model(z[None])[0]  # noqa: E731 - one sample in, its logits out
    c = [int(f(row).argmax()) for row in x]
    w = torch.stack([model[-1].weight.detach()[k].reshape(x.shape[1:]) for k in c])  # d logit_c / dx, per sample
    if name in ("saliency", "smoothgrad"):  # (averaged) gradients of a linear function: the weights
        return fast_kwargs(name), w
    # Baseline 0: x * w (for Kernel SHAP the Shapley values of a linear model, exact once n_samples > features).
    if name in ("input_x_gradient", "integrated_gradients", "deeplift", "occlusion", "feature_ablation", "kernel_shap"):
        return fast_kwargs(name), x * w
    if name == "gradient_shap":  # without noise, every random point between 0 and x has gradient w
        return {**fast_kwargs(name), "stdevs": 0.0}, x * w
    if name == "mfaba":  # logit score: straight steps along -w/|w| until the prediction flips (or max_steps)
        step, top = 0.1, 10
        expected = []
        for row, k, wk in zip(x, c, w, strict=True):
            u = wk / wk.norm()
            t = next((t for t in range(1, top + 1) if int(f(row - t * step * u).argmax()) != k), top)
            expected.append(t * step * u * wk)
        return {"score": "logit", "step_size": step, "max_steps": top}, torch.stack(expected)
    if name == "ig2":  # per-call references; steps of eta straight towards each, in the input space (fc's input)
        refs = torch.randn(x.shape[0], 2, *x.shape[1:], generator=torch.Generator().manual_seed(7), dtype=x.dtype)
        eta, steps = 0.5, 5
        ends = []
        for row, row_refs in zip(x, refs, strict=True):
            for ref in row_refs:
                distance, walked = float((ref - row).norm()), 0.0
                for _ in range(steps):
                    walked += eta * (1.0 if distance > walked else -1.0)
                ends.append(row + walked * (ref - row) / distance)
        ends = torch.stack(ends).view_as(refs)
        return {"eta": eta, "steps": steps, "references": refs}, w * (x - ends.mean(dim=1))
    if name == "big":  # one radius (alpha * attack_steps caps them all), then exact IG on the logit
        alpha, attack_steps = 0.001, 5
        expected = []
        for row, k, wk in zip(x, c, w, strict=True):
            adv = row.clone()
            for _ in range(attack_steps):
                adv = adv + alpha * _grad(lambda z, k=k: F.cross_entropy(f(z)[None], torch.tensor([k])), adv).sign()
            expected.append((row - adv) * wk)
        return {"attack_steps": attack_steps, "alpha": alpha, "ig_steps": 4, "score": "logit"}, torch.stack(expected)
    if name == "agi":
        eps, max_iter = 0.05, 5
        method = get_method("agi", model, n_classes=2, max_iter=max_iter, eps=eps)
        false = method.false_classes(x, torch.tensor(c), model[-1].out_features)
        expected = []
        for row, k, classes in zip(x, c, false.tolist(), strict=True):
            total = torch.zeros_like(row)
            for j in classes:
                point = row
                for _ in range(max_iter):
                    if int(f(point).argmax()) == j:
                        break
                    step = eps * _grad(lambda z, j=j: f(z).softmax(0)[j], point).sign()
                    total = total - _grad(lambda z, k=k: f(z).softmax(0)[k], point) * step
                    point = row + step
            expected.append(total / len(classes))
        return {"n_classes": 2, "max_iter": max_iter, "eps": eps}, torch.stack(expected)
    if name == "fei":
        # One Adam step from the empty mask, no area term: the loss gradient for m_i is -w_i (x_i - r_i), so with
        # x in {0, 1} and a reference colour r in (0, 1) the mask opens (to lr) exactly where w_i (2 x_i - 1) > 0.
        lr = 0.1
        options = {"gate": "none", "levels": (0.5,), "iterations": 1, "beta": 0.0, "lr": lr, "input_bounds": (0, 1)}
        return options, lr * (w * (2 * x - 1) > 0).to(x.dtype)
    raise AssertionError(f"no closed form for {name}")


def test_tabular_and_sequence_inputs():
    torch.manual_seed(0)
    tabular = nn.Sequential(nn.Linear(5, 3)).double()
    seq = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6, 3)).double()
    g = torch.Generator().manual_seed(1)
    for name in GENERIC_METHODS:
        for model, shape in ((tabular, (5,)), (seq, (4, 6))):
            x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
            if name == "fei":
                x = (x > 0).double()  # inside its input bounds (0, 1), at either end
            options, expected = _linear_case(name, model, x)
            per_call = {"references": options.pop("references")} if "references" in options else {}
            a = get_method(name, model, **options).attribute(x, **per_call)
            assert a.shape == (2, *shape)
            assert expected.abs().sum() > 0
            rtol = 1e-5 if name == "fei" else 1e-6  # Adam's step is lr * |g| / (|g| + 1e-8)
            # Captum fits Kernel SHAP's regression to float32 outputs (logits of about 1 here).
            atol = 1e-6 if name == "kernel_shap" else 1e-9
            label = f"{name} {shape}"
            torch.testing.assert_close(a, expected, rtol=rtol, atol=atol, msg=lambda m, label=label: f"{label}: {m}")


def test_input_x_gradient_closed_form_on_linear_model():
    model = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    a = get_method("input_x_gradient", model).attribute(x, target=torch.tensor([0, 1, 1]))
    expected = x * model.weight.detach()[torch.tensor([0, 1, 1])]
    torch.testing.assert_close(a, expected)
