import pytest
import torch
from torch import nn

from lit_attr.functional.randomization import (
    iter_randomized,
    randomizable_layers,
    randomization_stages,
    randomize_,
    sort_in_forward_order,
)
from lit_attr.models import DemoClassifier


class _HeadFirst(nn.Module):
    """Registers the head before the trunk and the second conv before the first: definition != forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.conv_a = nn.Conv2d(2, 4, 3, padding=1)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv_a(x)))
        x = self.conv_b(x)
        return self.head(x.mean(dim=(2, 3)))


def _names(layers):
    return [name for name, _ in layers]


def test_randomizable_layers_follow_forward_order_not_definition_order():
    model = _HeadFirst()
    assert _names(randomizable_layers(model)) == ["head", "norm", "conv_b", "conv_a", "unused"]
    with pytest.warns(UserWarning, match=r"never called \['unused'\]"):
        ordered = randomizable_layers(model, example_input=torch.rand(1, 2, 5, 5))
    assert _names(ordered) == ["conv_a", "norm", "conv_b", "head", "unused"]
    assert ordered[0][1] is model.conv_a


def test_forward_order_pass_leaves_the_model_as_it_was():
    model = _HeadFirst().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning):
        randomizable_layers(model, example_input=torch.rand(3, 2, 5, 5))
    assert model.training and model.norm.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm stats untouched
    assert not model.conv_a._forward_pre_hooks


def test_auto_leaves_and_blocks_of_the_demo_classifier():
    model = DemoClassifier(width=4).eval()
    leaves = randomizable_layers(model, example_input=torch.rand(1, 3, 16, 16))
    assert _names(leaves) == [
        "stem.0", "stem.1",
        "layer1.conv1", "layer1.bn1", "layer1.conv2", "layer1.bn2", "layer1.shortcut.0", "layer1.shortcut.1",
        "layer2.conv1", "layer2.bn1", "layer2.conv2", "layer2.bn2", "layer2.shortcut.0", "layer2.shortcut.1",
        "fc",
    ]  # fmt: skip
    blocks = randomizable_layers(model, granularity="block", example_input=torch.rand(1, 3, 16, 16))
    assert [(name, module) for name, module in blocks] == [
        ("stem", model.stem), ("layer1", model.layer1), ("layer2", model.layer2), ("fc", model.fc)
    ]  # fmt: skip


def test_explicit_layer_names_and_their_errors():
    model = DemoClassifier(width=4)
    named = randomizable_layers(model, ["fc", "layer1"], example_input=torch.rand(1, 3, 16, 16))
    assert [(n, m) for n, m in named] == [("layer1", model.layer1), ("fc", model.fc)]
    with pytest.raises(ValueError, match="'nope', which is not a submodule"):
        randomizable_layers(model, ["nope"])
    with pytest.raises(ValueError, match="lists both 'layer1' and its submodule 'layer1.conv1'"):
        randomizable_layers(model, ["layer1", "layer1.conv1"])
    with pytest.raises(ValueError, match="must not repeat a name"):
        randomizable_layers(model, ["fc", "fc"])
    with pytest.raises(ValueError, match="'pool', but neither it nor its submodules have parameters"):
        randomizable_layers(model, ["pool"])
    with pytest.raises(ValueError, match="applies to `layers='auto'` only"):
        randomizable_layers(model, ["fc"], granularity="block")
    with pytest.raises(ValueError, match="`granularity` must be one of"):
        randomizable_layers(model, granularity="layer")
    with pytest.raises(TypeError, match="'auto' or a sequence of module names"):
        randomizable_layers(model, [1, 2])
    with pytest.raises(ValueError, match="found no convolution, linear or normalisation layer"):
        randomizable_layers(nn.Sequential(nn.ReLU()))


def test_randomize_is_seeded_changes_weights_and_keeps_the_global_rng():
    torch.manual_seed(123)
    a, b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
    original = a.weight.detach().clone()
    rng = torch.get_rng_state()
    randomize_(a, seed=5)
    randomize_(b, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, original)
    # the same numbers as the module's own reset_parameters() under torch.manual_seed
    c = nn.Conv2d(3, 4, 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        c.reset_parameters()
    assert torch.equal(a.weight, c.weight)
    randomize_(b, seed=6)
    assert not torch.equal(a.weight, b.weight)


def test_randomize_resets_or_keeps_batchnorm_running_stats():
    bn = nn.BatchNorm2d(3)
    bn.train()(torch.randn(8, 3, 4, 4) * 3 + 2)
    with torch.no_grad():
        bn.weight.mul_(4)
    stats = bn.running_mean.clone(), bn.running_var.clone()
    randomize_(bn, seed=0, reset_running_stats=False)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.weight, torch.ones(3))  # reset_parameters of a norm layer is the identity transform
    randomize_(bn, seed=0)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))
    assert int(bn.num_batches_tracked) == 0


def test_randomize_containers_and_errors():
    block = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    before = [p.detach().clone() for p in block.parameters()]
    randomize_(block, seed=1)
    assert all(not torch.equal(p, q) for p, q in zip(block.parameters(), before, strict=True))
    with pytest.raises(TypeError, match="Nothing in \\['ReLU'\\] has parameters"):
        randomize_(nn.ReLU(), seed=0)
    with pytest.raises(TypeError, match="`seed` must be an int"):
        randomize_(block, seed=1.0)
    with pytest.raises(TypeError, match="`module` must be an nn.Module"):
        randomize_("fc", seed=1)


def test_stage_plans():
    names = ["a", "b", "c"]
    assert randomization_stages(names, "top_down") == [("original", ()), ("c", (2,)), ("b", (1, 2)), ("a", (0, 1, 2))]
    assert randomization_stages(names, "bottom_up") == [("original", ()), ("a", (0,)), ("b", (0, 1)), ("c", (0, 1, 2))]
    assert randomization_stages(names, "independent") == [("original", ()), ("c", (2,)), ("b", (1,)), ("a", (0,))]
    assert randomization_stages(names, "top_down", "last") == [("original", ()), ("a", (0, 1, 2))]
    with pytest.raises(ValueError, match="needs a cascading `order`"):
        randomization_stages(names, "independent", "last")
    with pytest.raises(ValueError, match="`order` must be one of"):
        randomization_stages(names, "random")
    with pytest.raises(ValueError, match="`stages` must be one of"):
        randomization_stages(names, stages="first")
    with pytest.raises(ValueError, match="at least one layer"):
        randomization_stages([])


def _reference_weights(layers, seed=0):
    """Weights of each layer after randomize_(copy, seed + i), computed independently of iter_randomized."""
    import copy

    result = []
    for index, (_, module) in enumerate(layers):
        clone = copy.deepcopy(module)
        randomize_(clone, seed + index)
        result.append(clone.weight.detach().clone())
    return result


@pytest.mark.parametrize("order", ["top_down", "bottom_up", "independent"])
def test_iter_randomized_states_and_restoration(order):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    layers = [(str(i), net[i]) for i in range(3)]
    original = [m.weight.detach().clone() for m in net]
    randomised = _reference_weights(layers, seed=10)
    plan = dict(randomization_stages(["0", "1", "2"], order))
    seen = []
    for stage in iter_randomized(layers, order, seed=10):
        seen.append(stage)
        for index, module in enumerate(net):
            expected = randomised[index] if index in plan[stage] else original[index]
            assert torch.equal(module.weight, expected), (stage, index)
    assert seen == list(plan)
    assert seen[1] == ("2" if order != "bottom_up" else "0")  # top_down starts from the logits
    assert all(torch.equal(m.weight, w) for m, w in zip(net, original, strict=True))


def test_iter_randomized_restores_when_abandoned_or_failing():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    layers = [("0", net[0]), ("1", net[1])]
    original = [m.weight.detach().clone() for m in net]
    walk = iter_randomized(layers)
    next(walk), next(walk)
    assert not torch.equal(net[1].weight, original[1])
    walk.close()
    assert all(torch.equal(m.weight, w) for m, w in zip(net, original, strict=True))
    with pytest.raises(RuntimeError, match="boom"):
        for stage in iter_randomized(layers, stages="last"):
            if stage != "original":
                raise RuntimeError("boom")
    assert all(torch.equal(m.weight, w) for m, w in zip(net, original, strict=True))


def test_sort_in_forward_order_handles_containers_entered_through_children():
    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.ModuleList([nn.Linear(2, 2)])  # a ModuleList is never called itself
            self.early = nn.Linear(2, 2)

        def forward(self, x):
            return self.late[0](self.early(x))

    tower = Tower()
    ordered = sort_in_forward_order([("late", tower.late), ("early", tower.early)], tower, torch.zeros(1, 2))
    assert _names(ordered) == ["early", "late"]
