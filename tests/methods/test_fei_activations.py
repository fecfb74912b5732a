"""FEI's gates on every activation module users have: torch's, Hugging Face's and timm's classes, found by what they
compute; a registry for the rest; the gated range on timm's ConvNeXt and EfficientNet."""

import pytest
import torch
from torch import nn
from vit_helpers import no_hooks_left

from lit_attr.methods import FEI
from lit_attr.methods.fei import ActivationGates, gate_rule_of, register_activation
from lit_attr.methods.fei_activations import _REGISTRY


def _hf(name, *args):
    from transformers import activations

    return getattr(activations, name)(*args)


def _timm(name):
    import timm.layers.activations as plain
    import timm.layers.activations_me as me

    return getattr(plain, name, None) or getattr(me, name)


#: Every activation class users meet, with the family written by hand: "rectifier" (gated at the output) or
#: "self_gated" (gated at the input).
ACTIVATIONS = {
    "nn.ReLU": (nn.ReLU, "rectifier"),
    "nn.ReLU(inplace)": (lambda: nn.ReLU(inplace=True), "rectifier"),
    "nn.ReLU6": (nn.ReLU6, "rectifier"),
    "nn.LeakyReLU(0.1)": (lambda: nn.LeakyReLU(0.1), "rectifier"),
    "nn.PReLU": (nn.PReLU, "rectifier"),
    "nn.ELU": (nn.ELU, "rectifier"),
    "nn.SELU": (nn.SELU, "rectifier"),
    "nn.GELU": (nn.GELU, "self_gated"),
    "nn.GELU(tanh)": (lambda: nn.GELU(approximate="tanh"), "self_gated"),
    "nn.SiLU": (nn.SiLU, "self_gated"),
    "nn.Hardswish": (nn.Hardswish, "self_gated"),
    "nn.Mish": (nn.Mish, "self_gated"),
    "hf GELUActivation": (lambda: _hf("GELUActivation"), "self_gated"),
    "hf NewGELUActivation": (lambda: _hf("NewGELUActivation"), "self_gated"),
    "hf FastGELUActivation": (lambda: _hf("FastGELUActivation"), "self_gated"),
    "hf QuickGELUActivation": (lambda: _hf("QuickGELUActivation"), "self_gated"),
    "hf ClippedGELUActivation": (lambda: _hf("ClippedGELUActivation", -10.0, 10.0), "self_gated"),
    "hf SiLUActivation": (lambda: _hf("SiLUActivation"), "self_gated"),
    "hf MishActivation": (lambda: _hf("MishActivation"), "self_gated"),
    "timm GELU": (lambda: _timm("GELU")(), "self_gated"),
    "timm GELUTanh": (lambda: _timm("GELUTanh")(), "self_gated"),
    "timm QuickGELU": (lambda: _timm("QuickGELU")(), "self_gated"),
    "timm Swish(inplace)": (lambda: _timm("Swish")(inplace=True), "self_gated"),
    "timm HardSwish": (lambda: _timm("HardSwish")(), "self_gated"),
    "timm Mish": (lambda: _timm("Mish")(), "self_gated"),
    "timm HardMish": (lambda: _timm("HardMish")(), "self_gated"),
    "timm PReLU": (lambda: _timm("PReLU")(), "rectifier"),
    "timm SwishMe": (lambda: _timm("SwishMe")(), "self_gated"),
    "timm HardSwishMe": (lambda: _timm("HardSwishMe")(), "self_gated"),
    "timm MishMe": (lambda: _timm("MishMe")(), "self_gated"),
    "timm HardMishMe": (lambda: _timm("HardMishMe")(), "self_gated"),
}

# Three units: (clean pre-activation z0, current pre-activation z, gradient u arriving at the module's output).
# A: off on the clean input, and descent (u < 0) would raise it: ibm closes it in both families.
# B: on on the clean input: open.
# C: off on the clean input; u > 0 pushes the output down, so a gate at the output lets it through; but at z = -1.8
#    every self-gated function is decreasing (f'(-1.8) < 0: its minimum lies between -1.8 and 0), so the gradient at
#    the input is negative, it would raise z, and a gate at the input closes it.
Z0 = torch.tensor([-1.0, 1.0, -0.5])
Z = torch.tensor([0.5, 2.0, -1.8])
U = torch.tensor([-1.0, -1.0, 1.0])
IBM_OPEN = {"rectifier": [0.0, 1.0, 1.0], "self_gated": [0.0, 1.0, 0.0]}


@pytest.mark.parametrize("kind", list(ACTIVATIONS))
def test_each_activation_gets_its_family_and_the_hand_computed_ibm_gate(kind):
    build, family = ACTIVATIONS[kind]
    module = build().eval()
    assert gate_rule_of(module) == family
    reference = build().eval()
    reference.load_state_dict(module.state_dict())
    ungated = Z.clone().requires_grad_(True)
    (reference(ungated.clone()) * U).sum().backward()  # clone: an in-place module must not overwrite the leaf
    if family == "self_gated":
        assert ungated.grad[2] < 0  # unit C's premise
    gates = ActivationGates([module], "ibm")
    with gates.active():
        gates.new_forward(capture=True)
        with torch.no_grad():
            module(Z0.clone())
        gates.new_forward()
        z = Z.clone().requires_grad_(True)
        out = module(z.clone())
        torch.testing.assert_close(out, reference(Z.clone()))  # identity forward
        (out * U).sum().backward()
    clean = gates.clean[(id(module), 0)]
    torch.testing.assert_close(clean, Z0 if family == "self_gated" else reference(Z0.clone()))
    torch.testing.assert_close(z.grad, ungated.grad * torch.tensor(IBM_OPEN[family]))
    assert getattr(module, "inplace", False) == ("inplace" in kind)  # flags restored
    assert not module._forward_pre_hooks and not module._forward_hooks


@pytest.mark.parametrize(
    "build",
    [
        nn.Sigmoid,
        nn.Tanh,
        nn.Identity,
        nn.Hardsigmoid,
        nn.Softplus,
        lambda: nn.Softmax(dim=-1),
        lambda: nn.Dropout(0.5),
        lambda: _timm("Sigmoid")(),
        lambda: _timm("HardSigmoid")(),
        lambda: _timm("HardSigmoidMe")(),
        lambda: _hf("LaplaceActivation"),
        lambda: _hf("ReLUSquaredActivation"),
        lambda: nn.Linear(2, 2),
    ],
)
def test_gates_squashers_and_other_modules_are_not_activations_to_gate(build):
    assert gate_rule_of(build().eval()) is None


class _UserSwish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class _UserLeaky(nn.Module):
    def forward(self, x):
        return torch.where(x > 0, x, 0.2 * x)


class _ScaledTanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.scale * torch.tanh(x)


def test_unknown_classes_are_recognised_by_what_they_compute_without_their_hooks():
    swish, leaky = _UserSwish(), _UserLeaky()
    calls = []
    swish.register_forward_hook(lambda *args: calls.append(1))
    assert gate_rule_of(swish) == "self_gated" and gate_rule_of(leaky) == "rectifier"
    assert calls == []  # the probe calls forward itself: the user's hooks see nothing
    assert gate_rule_of(_ScaledTanh()) is None  # a parameter: never probed


def test_register_activation_overrides_the_probe_and_covers_subclasses():
    class Sub(_UserSwish):
        pass

    try:
        assert register_activation(_UserSwish, None) is _UserSwish
        assert gate_rule_of(_UserSwish()) is None and gate_rule_of(Sub()) is None
        register_activation(_ScaledTanh, "rectifier")
        assert gate_rule_of(_ScaledTanh()) == "rectifier"
    finally:
        _REGISTRY.pop(_UserSwish, None)
        _REGISTRY.pop(_ScaledTanh, None)
    with pytest.raises(TypeError, match=r"`cls` must be an nn.Module subclass, got 'relu'"):
        register_activation("relu", "rectifier")
    with pytest.raises(ValueError, match=r"`gate_rule` must be one of \('rectifier', 'self_gated'\) or None, got 'x'"):
        register_activation(_UserSwish, "x")


def test_torchscript_activations_cannot_be_hooked_and_fei_says_so():
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated, but models still ship scripted modules
        scripted = torch.jit.script(nn.GELU())
    assert gate_rule_of(scripted) is None
    net = nn.Sequential(nn.Conv2d(3, 2, 3), scripted, nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"calls none: .* applied as functions .* or inside TorchScript modules"):
        FEI(net, iterations=1).attribute(torch.rand(1, 3, 4, 4))


def test_default_range_gates_rectifiers_and_self_gated_activations_of_a_feature_extractor():
    # MobileNetV3's mix: ReLU early, Hardswish late, all before the head's first nn.Linear.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Hardswish(), nn.Flatten(), nn.Linear(16, 6), nn.SiLU(),
        nn.Linear(6, 2),
    )  # fmt: skip
    assert FEI(net).gated_modules(torch.rand(1, 3, 6, 6)) == [net[1], net[3]]


def _timm_model(name, **config):
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=3, **config).eval()


# ConvNeXt's layer scale starts at 1e-6, which leaves a freshly built network's blocks (and their GELUs) without
# influence on the logits; at 1 they weigh as in a trained one.
@pytest.mark.parametrize(("name", "config"), [("convnext_atto", {"ls_init_value": 1.0}), ("efficientnet_b0", {})])
def test_fei_gates_timm_convnext_and_efficientnet(name, config):
    model = _timm_model(name, **config)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    activations = [m for m in model.modules() if type(m).__name__ in ("GELU", "SiLU")]
    assert activations  # ConvNeXt's blocks call GELUs, EfficientNet's SiLUs (timm's or torch's classes)
    gated = FEI(model).gated_modules(x)
    assert {id(m) for m in gated} == {id(m) for m in activations}  # every block's, and nothing else
    options = {"iterations": 4, "levels": (0.3, 0.6), "input_bounds": (0.0, 1.0), "lr": 0.3}
    with torch.no_grad():
        before = model(x)
    maps = FEI(model, **options).attribute(x, target=1)
    plain = FEI(model, gate="none", **options).attribute(x, target=1)
    assert bool(torch.isfinite(maps).all()) and not torch.allclose(maps, plain)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert no_hooks_left(model)
