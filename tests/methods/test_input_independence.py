"""A model whose target logit ignores the input (a zero head) gets a warning naming the cause, once per method and
model, instead of all-zero maps passing silently."""

import warnings

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from lit_attr.batch import Batch
from lit_attr.methods import InputIndependenceWarning, get_method

OPTIONS = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 2},
    "gradient_shap": {"n_samples": 2},
    "deeplift": {},
    "mfaba": {"max_steps": 3},
    "big": {"attack_steps": 2, "ig_steps": 2, "epsilons": (0.1,)},
    "agi": {"max_iter": 2},
    "ig2": {"steps": 3, "n_references": 1},
    "feature_ablation": {},
    "kernel_shap": {"n_samples": 16},
    "generic_attention": {},
    "fei": {"iterations": 2, "levels": (0.5,)},
}


def _vit(zero_head=True):
    """torchvision's ViT as built without weights: its head is zero, so every input gets the same logits."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8,
                                  num_classes=3)  # fmt: skip
        if not zero_head:
            nn.init.normal_(model.heads.head.weight)
    return model.eval()


def _attribute(name, model, x):
    method = get_method(name, model, input_bounds=(0.0, 1.0), **OPTIONS.get(name, {}))
    method.prepare(
        Batch(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0]))
    )
    result = method.attribute(x, target=1)
    return result[0] if isinstance(result, tuple) else result


def _independence_warnings(record):
    return [w for w in record if issubclass(w.category, InputIndependenceWarning)]


@pytest.mark.parametrize("name", list(OPTIONS))
def test_a_zero_head_is_named_once_per_method_and_model(name):
    model, x = _vit(), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(2, 3))  # the premise: no logit depends on the input
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        maps = _attribute(name, model, x)
        _attribute(name, model, x)  # the same method and model again: no second warning
    (warning,) = _independence_warnings(record)
    assert str(warning.message).startswith(
        f"{name}: the target logit of VisionTransformer does not depend on the input"
    )
    assert "initialised to zero" in str(warning.message)
    if name != "fei":  # FEI's masks follow their area term; every other method's maps are exactly zero
        assert not maps.any()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _attribute(name, _vit(), x)  # another model: warned again
    assert len(_independence_warnings(record)) == 1


@pytest.mark.parametrize("name", ["saliency", "generic_attention", "fei", "attention_rollout", "feature_ablation"])
def test_no_warning_when_the_logit_depends_on_the_input(name):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _attribute(name, _vit(zero_head=False), x)
        if name == "attention_rollout":  # it reads attention, not the logits: informative even with a zero head
            assert _attribute(name, _vit(), x).any()
    assert not _independence_warnings(record)
