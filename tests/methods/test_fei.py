"""FEI: gate truth tables, nested masks, reference loop, reused ReLUs, model hygiene."""

import copy

import pytest
import torch
from torch import nn

from lit_attr.methods import FEI, get_method
from lit_attr.methods.fei import ReluGates, gate_gradient

A0 = torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
A = torch.tensor([1.0, 1.0, 0.0, 0.0, 3.0, 3.0, 1.0, 1.0])
G = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
EXPECTED = {  # written out by hand from the spec's rules
    "none": [1, 1, 1, 1, 1, 1, 1, 1],
    "ibm": [1, 0, 1, 0, 1, 1, 1, 1],  # (g > 0) or (a0 > 0)
    "vm": [1, 0, 1, 0, 1, 0, 0, 1],  # (g > 0 and a >= a0) or (g <= 0 and a < a0)
    "ivm": [1, 0, 1, 1, 1, 0, 1, 1],  # (g > 0) or (a <= a0)
    "avm": [1, 1, 1, 1, 1, 1, 0, 1],  # (g < 0) or (a >= a0)
}


@pytest.mark.parametrize("gate", list(EXPECTED))
def test_gate_truth_tables_through_backward(gate):
    a = A.clone().requires_grad_(True)
    out = gate_gradient(a, A0, gate)
    assert torch.equal(out, A)  # identity forward
    (out * G).sum().backward()
    assert a.grad.tolist() == (G * torch.tensor(EXPECTED[gate], dtype=torch.float32)).tolist()


class ReusedRelu(nn.Module):
    """One ReLU module called twice per forward, on tensors of different shapes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = self.relu(self.conv(x))
        h = self.relu(self.pool(h) - 0.1)
        return self.fc(h.flatten(1))


def test_clean_activations_keyed_by_call_and_inplace_restored():
    torch.manual_seed(0)
    model = ReusedRelu()
    x = torch.rand(2, 3, 4, 4)
    gates = ReluGates([model.relu], "ibm")
    with gates.active():
        assert model.relu.inplace is False
        gates.new_forward(capture=True)
        with torch.no_grad():
            model(x)
        gates.new_forward()
        z = x.clone().requires_grad_(True)
        model(z).sum().backward()
    assert model.relu.inplace is True
    first, second = gates.clean[(id(model.relu), 0)], gates.clean[(id(model.relu), 1)]
    assert first.shape == (2, 4, 4, 4) and second.shape == (2, 4, 2, 2)
    torch.testing.assert_close(first, torch.relu(model.conv(x)).detach())
    assert not model.relu._forward_hooks


def test_reused_relu_in_torchvision_resnet_and_state_untouched():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=3).eval()
    x = torch.rand(1, 3, 32, 32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(x)
    A = FEI(model, iterations=2, levels=(0.5,), input_bounds=(0.0, 1.0)).attribute(x)
    assert A.shape == x.shape and torch.isfinite(A).all()
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    # BasicBlock calls its ReLU twice: the default gated set holds each module once, matched per call.
    relus = FEI(model).relu_modules(x)
    assert len(relus) == len({id(m) for m in relus}) == 9
    gates = ReluGates(relus, "ibm")
    with gates.active():
        gates.new_forward(capture=True)
        with torch.no_grad():
            model(x)
    block = model.layer1[0]
    first, second = gates.clean[(id(block.relu), 0)], gates.clean[(id(block.relu), 1)]
    with torch.no_grad():  # the block's two ReLU calls, recomputed by hand from its input
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        inner = torch.relu(block.bn1(block.conv1(stem)))
        torch.testing.assert_close(first, inner)
        torch.testing.assert_close(second, torch.relu(block.bn2(block.conv2(inner)) + stem))
    assert (id(model.relu), 1) not in gates.clean  # the stem's ReLU runs once


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def test_gate_none_equals_reference_adam_loop():
    model, x = small_cnn(), torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    levels, iters, lr, beta = (0.2, 0.6), 7, 0.1, 0.1
    method = FEI(model, gate="none", levels=levels, iterations=iters, lr=lr, beta=beta, input_bounds=(0.0, 1.0))
    A, info = method.attribute(x, target=1, return_masks=True)
    assert all(p.grad is None for p in model.parameters())
    colours = method._colours(x, len(levels) * iters, (1, 6, 6))  # one colour per channel: the masks are per pixel
    previous, masks = torch.zeros(3, 1, 6, 6), []
    for level, q in enumerate(levels):
        delta = torch.zeros_like(previous, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=0.0)
        for it in range(iters):
            r = colours[level * iters + it]
            m = previous + delta
            loss = beta * (m.sum(dim=(1, 2, 3)) - q * 36).abs() - model(x * m + r * (1 - m))[:, 1]
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                delta.copy_(delta.clamp(min=0).minimum(1 - previous))
        previous = (previous + delta).detach()
        masks.append(previous)
    torch.testing.assert_close(info["masks"], torch.stack(masks, dim=1))
    torch.testing.assert_close(A, torch.stack(masks).mean(0).expand_as(x))


def test_nested_masks_areas_determinism_and_batch_independence(trained_demo):
    model, data = trained_demo
    x = data.val_set.images[:3]
    method = FEI(model, iterations=30, input_bounds=(0.0, 1.0), seed=5)
    A, info = method.attribute(x, return_masks=True)
    masks = info["masks"]  # (N, 5, 1, H, W)
    assert masks.min() >= 0 and masks.max() <= 1
    assert bool((masks[:, 1:] >= masks[:, :-1]).all())  # nested
    areas = masks.flatten(2).mean(dim=2)
    torch.testing.assert_close(areas, torch.tensor(method.levels).expand_as(areas), atol=0.06, rtol=0)
    torch.testing.assert_close(method.attribute(x), A)
    # Adam turns float32 rounding differences between batch shapes into visible ones; in float64 they stay tiny.
    model64, x64 = copy.deepcopy(model).double(), x.double()
    method64 = FEI(model64, iterations=30, input_bounds=(0.0, 1.0), seed=5)
    batch = method64.attribute(x64)
    target = method64.resolve_target(x64, None)
    torch.testing.assert_close(method64.attribute(x64[1:2], target=int(target[1]))[0], batch[1], rtol=1e-6, atol=1e-6)
    small = FEI(model, iterations=30, input_bounds=(0.0, 1.0), seed=5, reduce=False).attribute(x)
    assert small.shape == (3, 1, 32, 32)
    torch.testing.assert_close(small.expand_as(x), A)


def test_hybrid_runs_two_gated_forwards_per_step():
    model, x = small_cnn(), torch.rand(2, 3, 6, 6)
    calls = []
    model[0].register_forward_hook(lambda *args: calls.append(1))
    FEI(model, objective="hybrid", gate="vm", levels=(0.5,), iterations=4).attribute(x, target=0)
    assert len(calls) == 1 + 1 + 1 + 2 * 4  # targets, gated-layer discovery, clean capture, 2 per step


def test_errors():
    functional = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"calls none: its activations are applied as functions \(F.relu.*gate='none'"):
        FEI(functional, iterations=1).attribute(torch.rand(1, 3, 4, 4))
    FEI(functional, gate="none", iterations=1).attribute(torch.rand(1, 3, 4, 4))  # fine without a gate
    with pytest.raises(ValueError, match=r"`gate` must be one of \('none', 'ibm', 'vm', 'ivm', 'avm'\), got 'x'"):
        FEI(functional, gate="x")
    with pytest.raises(ValueError, match=r"`levels` must be increasing fractions in \(0, 1\]"):
        FEI(functional, levels=(0.5, 0.3))
    with pytest.raises(ValueError, match=r"`gate_layers` must name activation modules of the model.*\['0'\]"):
        FEI(small_cnn(), gate_layers=["0"]).attribute(torch.rand(1, 3, 6, 6))
    with pytest.raises(ValueError, match=r"`objective` must be one of \('preservation', 'hybrid'\)"):
        get_method("fei", functional, objective="deletion")


def test_progress_callback_counts_levels_times_iterations():
    calls = []
    FEI(small_cnn(), levels=(0.3, 0.6), iterations=4, progress=lambda done, total: calls.append((done, total)))(
        torch.rand(1, 3, 6, 6), target=0
    )
    assert calls == [(i, 8) for i in range(1, 9)]
    with pytest.raises(TypeError, match="`progress` must be a bool or a callable"):
        FEI(small_cnn(), progress="yes")


def test_an_mlp_gates_its_hidden_relus_by_default():
    # No ReLU before the first nn.Linear (no convolutional stem): the ReLUs before the head are the hidden layers'.
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(4, 6)
    assert FEI(mlp).gated_modules(x) == [mlp[1], mlp[3]]
    gated = FEI(mlp, iterations=3, levels=(0.5,), input_bounds=(0.0, 1.0)).attribute(x, target=0)
    assert gated.shape == x.shape and bool(torch.isfinite(gated).all())
