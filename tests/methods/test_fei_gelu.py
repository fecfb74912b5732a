"""FEI on GELU networks: the gate truth table at a GELU's pre-activation, the default gated range on ViTs."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from vit_helpers import no_hooks_left, timm_vit, torchvision_vit

from lit_attr.methods import FEI
from lit_attr.methods.fei import ActivationGates

# Pre-activations z (GELU inputs) on the clean image (z0) and now (z), and the gradient u arriving at the GELU's
# output. GELU'(z) > 0 for z > -0.75 and GELU'(-2) < 0, so the gradient at the pre-activation, g = u * GELU'(z), has
# the sign of u except in the last two cases. Gradient descent raises z where g < 0.
Z0 = torch.tensor([-0.5, -0.5, -0.5, -0.5, 1.0, 1.0, 1.0, 1.0, -0.5, -0.5])
Z = torch.tensor([0.5, 0.5, -0.5, -0.5, 2.0, 2.0, 0.5, 0.5, -2.0, -2.0])
U = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
G_SIGN = [1, -1, 1, -1, 1, -1, 1, -1, -1, 1]
EXPECTED = {  # written out by hand from the rules in words
    "none": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    # off on the clean image (z0 <= 0: the first four and last two): nothing may raise z (g < 0)
    "ibm": [1, 0, 1, 0, 1, 1, 1, 1, 0, 1],
    # only moves back towards z0: lower z when z >= z0 (g > 0), raise it when z < z0 (g <= 0)
    "vm": [1, 0, 1, 0, 1, 0, 0, 1, 1, 0],
    # nothing may raise z while z > z0
    "ivm": [1, 0, 1, 1, 1, 0, 1, 1, 1, 1],
    # nothing may lower z while z < z0
    "avm": [1, 1, 1, 1, 1, 1, 0, 1, 1, 0],
}


def _hf_gelu(name, **kwargs):
    from transformers import activations

    return getattr(activations, name)(**kwargs)


#: GELU modules and the function each computes (the ungated reference); Hugging Face's are what ``hidden_act`` builds.
GELUS = {
    "nn.GELU": (nn.GELU, F.gelu),
    "nn.GELU(tanh)": (lambda: nn.GELU(approximate="tanh"), lambda z: F.gelu(z, approximate="tanh")),
    "hf gelu": (lambda: _hf_gelu("GELUActivation"), F.gelu),
    "hf gelu_python": (lambda: _hf_gelu("GELUActivation", use_gelu_python=True), F.gelu),
    "hf gelu_new": (lambda: _hf_gelu("NewGELUActivation"), lambda z: F.gelu(z, approximate="tanh")),
    "hf gelu_pytorch_tanh": (lambda: _hf_gelu("GELUTanh"), lambda z: F.gelu(z, approximate="tanh")),
    "hf quick_gelu": (lambda: _hf_gelu("QuickGELUActivation"), lambda z: z * torch.sigmoid(1.702 * z)),
}


@pytest.mark.parametrize("kind", list(GELUS))
def test_gelu_derivative_signs_of_the_table(kind):
    z = Z.clone().requires_grad_(True)
    (GELUS[kind][1](z) * U).sum().backward()
    assert torch.sign(z.grad).tolist() == G_SIGN


@pytest.mark.parametrize("kind", list(GELUS))
@pytest.mark.parametrize("gate", list(EXPECTED))
def test_gelu_gate_truth_table_through_backward(gate, kind):
    build, function = GELUS[kind]
    gelu = build()
    gates = ActivationGates([gelu], gate)
    with gates.active():
        gates.new_forward(capture=True)
        with torch.no_grad():
            gelu(Z0)
        gates.new_forward()
        z = Z.clone().requires_grad_(True)
        out = gelu(z)
        torch.testing.assert_close(out, function(Z))  # identity forward
        (out * U).sum().backward()
    assert torch.equal(gates.clean[(id(gelu), 0)], Z0)  # keyed on the clean pre-activation
    ungated = Z.clone().requires_grad_(True)
    (function(ungated) * U).sum().backward()
    torch.testing.assert_close(z.grad, ungated.grad * torch.tensor(EXPECTED[gate], dtype=torch.float32))
    assert torch.equal(z.grad == 0, torch.tensor(EXPECTED[gate]) == 0)  # closed exactly where the table says
    assert not gelu._forward_pre_hooks and not gelu._forward_hooks


def test_default_gated_range_on_vits_is_the_encoder_mlps():
    x = torch.rand(1, 3, 32, 32)
    tv, tm = torchvision_vit(), timm_vit()
    assert FEI(tv).gated_modules(x) == [block.mlp[1] for block in tv.encoder.layers]
    assert FEI(tm).gated_modules(x) == [block.mlp.act for block in tm.blocks]
    named = FEI(tv, gate_layers=["encoder.layers.encoder_layer_1.mlp.1"])
    assert named.gated_modules(x) == [tv.encoder.layers[1].mlp[1]]
    assert FEI(tm, gate_layers=(1, 2)).gated_modules(x) == [tm.blocks[1].mlp.act]


def test_a_gelu_after_the_head_input_is_not_gated_by_default():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3))
    assert FEI(net).gated_modules(torch.rand(1, 3, 2, 2)) == [net[2], net[4]]
    head = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.GELU())
    with pytest.raises(ValueError, match=r"no activation module to gate in the default range.*calls \['2'\]"):
        FEI(head).gated_modules(torch.rand(1, 3, 2, 2))


@pytest.mark.parametrize("gate", ["ibm", "vm"])
def test_gated_fei_on_a_vit_differs_from_ungated_and_leaves_the_model(gate):
    model, x = torchvision_vit(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    options = {"iterations": 4, "levels": (0.3, 0.6), "input_bounds": (0.0, 1.0), "lr": 0.3}
    gated = FEI(model, gate=gate, **options).attribute(x, target=1)
    plain = FEI(model, gate="none", **options).attribute(x, target=1)
    assert not torch.allclose(gated, plain)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert no_hooks_left(model)
