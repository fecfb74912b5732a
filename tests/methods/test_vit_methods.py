"""Every registered method on small torchvision and timm vision transformers: the contract, batch independence,
IG2's representation layer and the completeness of the path methods."""


import pytest
import torch
from test_contract import assert_user_state_untouched, user_state
from vit_helpers import timm_vit, torchvision_vit

from lit_attr.functional import completeness_error
from lit_attr.methods import IG2, available_methods, get_method

BUILDERS = {"torchvision": torchvision_vit, "timm": timm_vit}


def fast_kwargs(name):
    pool = (torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(9)), torch.arange(12) % 4)
    fast = {
        "ig2": {"steps": 4, "n_references": 2, "reference_pool": pool},
        "integrated_gradients": {"n_steps": 4},
        "smoothgrad": {"nt_samples": 2},
        "gradient_shap": {"n_samples": 2},
        "mfaba": {"max_steps": 6},
        "big": {"attack_steps": 3, "ig_steps": 4},
        "agi": {"max_iter": 3, "n_classes": 2},
        "fei": {"iterations": 2, "levels": (0.5,)},
        "occlusion": {"window": 8, "stride": 8},
    }
    return fast.get(name, {})


def inputs(n=4, seed=3):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_every_method_applies_to_vits():
    assert available_methods(torchvision_vit()) == available_methods() == available_methods(timm_vit())
    assert {"attention_rollout", "generic_attention"} <= set(available_methods())


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("name", available_methods())
def test_contract_on_vits(name, kind):
    model = BUILDERS[kind]().train()
    next(iter(model.children())).eval()  # mixed modes: every module's own flag must come back
    before = user_state(model)
    x = inputs()

    with torch.no_grad():
        a = get_method(name, model, input_bounds=(0.0, 1.0), **fast_kwargs(name)).attribute(x)

    assert a.shape == x.shape and a.dtype == x.dtype and not a.requires_grad
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    assert_user_state_untouched(model, before)


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("name", available_methods())
def test_batch_independence_on_vits(name, kind):
    method = get_method(name, BUILDERS[kind](), input_bounds=(0.0, 1.0), **fast_kwargs(name))
    x = inputs()
    batch = method.attribute(x)
    predicted = method.resolve_target(x, None)
    for i in (0, 3):
        alone = method.attribute(x[i : i + 1], target=int(predicted[i]))
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-4, atol=1e-5)


def test_ig2_default_representation_is_the_head_input():
    tv, tm = torchvision_vit(), timm_vit()
    assert IG2(tv).module is tv.heads.head
    assert IG2(tm).module is tm.head
    # The representation IG2 matches is the final class token, the head's input, recomputed here.
    x = inputs(2)
    method = IG2(tv)
    with torch.no_grad():
        _, rep = method._forward(x)
        h = tv._process_input(x)
        h = tv.encoder(torch.cat([tv.class_token.expand(2, -1, -1), h], dim=1))
    torch.testing.assert_close(rep, h[:, 0])


@pytest.mark.parametrize("kind", BUILDERS)
def test_path_methods_are_complete_on_vits(kind):
    model = BUILDERS[kind]().double()
    x = inputs(2).double()
    refs = inputs(4, seed=5).double().view(2, 2, 3, 32, 32)
    a, info = IG2(model, steps=40, eta=0.05, return_baseline=True).attribute(x, target=1, references=refs)
    with torch.no_grad():
        ends = model(info["baseline"].flatten(0, 1))[:, 1].view(2, 2)
        delta = model(x)[:, 1] - ends.mean(dim=1)
    assert completeness_error(a, delta).max() < 0.05  # sum(A) = logit(x) - mean logit(GradCF), Riemann sum
    ig = get_method("integrated_gradients", model, n_steps=64).attribute(x, target=2)
    with torch.no_grad():
        delta = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    assert completeness_error(ig, delta).max() < 1e-2
