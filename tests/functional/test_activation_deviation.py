"""Activation deviation against a naive per-image, per-step loop with forward hooks, plus probes and hygiene."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_attr.functional.activation_deviation import activation_deviation, resolve_probe_layers
from lit_attr.functional.perturbation import blur


def tiny_cnn(seed: int = 0) -> nn.Module:
    # The inplace ReLU right after the probed BatchNorm ("1") overwrites the BN output in the same forward: the
    # probe must record a copy.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 5, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 3),
    ).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)
        net[1].running_mean.copy_(torch.randn(4, generator=generator, dtype=torch.float64) * 0.1)
    return net.eval()


def data(n: int, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=generator, dtype=torch.float64)
    return x, torch.randn(n, 3, size, size, generator=generator, dtype=torch.float64)


def naive_activation_deviation(model, x, attributions, layers, pixels_per_step, substrates):
    """Per image, game and step: set the pixels by flat index, one forward with hooks, F.mse_loss."""
    modules = dict(model.named_modules())
    captured = {}
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o.clone()))
        for name in layers
    ]
    n, channels, height, width = x.shape
    hw = height * width
    points = math.ceil(hw / pixels_per_step) + 1
    out = {key: torch.zeros(n, len(layers), dtype=torch.float64) for key in ("ins_mse", "del_mse", "ins_ov", "del_ov")}
    try:
        with torch.no_grad():
            for i in range(n):
                model(x[i : i + 1])
                clean = {name: captured[name].clone() for name in layers}
                order = torch.sort(attributions[i].sum(0).flatten(), descending=True, stable=True).indices
                for game, substrate in substrates.items():
                    start, finish = (substrate[i], x[i]) if game == "ins" else (x[i], substrate[i])
                    for t in range(points):
                        image = start.clone().view(channels, hw)
                        coords = order[: min(t * pixels_per_step, hw)]
                        image[:, coords] = finish.reshape(channels, hw)[:, coords]
                        model(image.view(1, channels, height, width))
                        for j, name in enumerate(layers):
                            a, a0 = captured[name], clean[name]
                            out[f"{game}_mse"][i, j] += F.mse_loss(a, a0).item() / points
                            out[f"{game}_ov"][i, j] += ((a > 0) == (a0 > 0)).double().mean().item() / points
    finally:
        for handle in handles:
            handle.remove()
    return out


@pytest.mark.parametrize("layers", [None, ["1", "4"]])
def test_equals_the_naive_loop_in_float64(layers):
    model = tiny_cnn()
    x, attributions = data(3)
    result = activation_deviation(model, x, attributions, layers=layers, n_steps=7, internal_batch_size=5)
    names = list(result.layers)
    assert names == (["2", "4"] if layers is None else layers)
    # 8x8 with n_steps=7: ceil(64 / 7) = 10 pixels per step, 7 steps; RISE substrates (blur in, zeros out).
    expected = naive_activation_deviation(model, x, attributions, names, 10, {"ins": blur(x), "del": x * 0})
    for got, key in (
        (result.insertion_mse, "ins_mse"),
        (result.deletion_mse, "del_mse"),
        (result.insertion_overlap, "ins_ov"),
        (result.deletion_overlap, "del_ov"),
    ):
        assert got.dtype == torch.float64 and got.shape == (3, 2)
        torch.testing.assert_close(got, expected[key], rtol=0, atol=1e-6)
    assert bool((result.deletion_mse > 0).all()) and bool((result.insertion_overlap < 1).any())


def test_identity_perturbation_gives_zero_mse_and_full_overlap():
    model = tiny_cnn()
    x, attributions = data(2)
    result = activation_deviation(
        model, x, attributions, insertion_substrate=lambda z: z, deletion_substrate=lambda z: z.clone()
    )
    for tensor in (result.insertion_mse, result.deletion_mse):
        assert torch.equal(tensor, torch.zeros(2, 2, dtype=torch.float64))
    for tensor in (result.insertion_overlap, result.deletion_overlap):
        assert torch.equal(tensor, torch.ones(2, 2, dtype=torch.float64))


def test_a_sample_does_not_depend_on_its_batch_or_the_chunking():
    model = tiny_cnn()
    x, attributions = data(4)
    options = {"n_steps": 5, "preset": "mfaba", "reduce": "abs_sum"}
    full = activation_deviation(model, x, attributions, **options)
    part = activation_deviation(model, x[2:3], attributions[2:3], internal_batch_size=4, **options)
    for got, want in zip(part[:4], full[:4], strict=True):
        torch.testing.assert_close(got, want[2:3], rtol=0, atol=1e-12)


def test_default_chunks_of_128_rows_equal_one_pass_of_all_rows():
    model = tiny_cnn()
    x, attributions = data(12)
    rows: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    default = activation_deviation(model, x, attributions, n_steps=15)
    # 64 pixels, ceil(64 / 15) = 5 per step: 14 points per game and sample, after 12 clean rows.
    assert max(rows) == 128 and sum(rows) == 12 + 2 * 12 * 14
    rows.clear()
    whole = activation_deviation(model, x, attributions, n_steps=15, internal_batch_size=None)
    assert max(rows) == 12 * 14
    for got, want in zip(default[:4], whole[:4], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_default_probes_of_torchvision_resnet18_are_its_four_stages():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    assert resolve_probe_layers(model) == ("layer1", "layer2", "layer3", "layer4")
    # A wrapper holding the network as its only ReLU-bearing child is looked through.
    assert resolve_probe_layers(nn.Sequential(model)) == ("0.layer1", "0.layer2", "0.layer3", "0.layer4")
    x = torch.rand(1, 3, 32, 32)
    result = activation_deviation(model, x, torch.randn(1, 32, 32), n_steps=2)
    assert result.layers == ("layer1", "layer2", "layer3", "layer4") and result.insertion_mse.shape == (1, 4)


def test_default_probes_of_the_demo_classifier_and_of_a_vgg_like_model():
    from lit_attr.models import DemoClassifier

    # Stem output and the output of each residual block (relu2 follows the shortcut addition).
    assert resolve_probe_layers(DemoClassifier()) == ("stem.2", "layer1.relu2", "layer2.relu2")

    class VggLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3),
                nn.ReLU(), nn.MaxPool2d(2),
            )  # fmt: skip
            self.classifier = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    # One probe per VGG block (split at the pools), plus the classifier's last ReLU.
    assert resolve_probe_layers(VggLike()) == ("features.1", "features.6", "classifier.1")


def test_unknown_layer_names_are_reported_with_close_matches():
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"unknown: 'conv'\. Top-level modules: \['0', '1',"):
        activation_deviation(model, *data(1), layers=["2", "conv"])
    from lit_attr.models import DemoClassifier

    with pytest.raises(ValueError, match=r"'layer1\.relu' \(did you mean 'layer1\.relu\d', 'layer1\.relu\d'"):
        resolve_probe_layers(DemoClassifier(), ["layer1.relu"])
    with pytest.raises(ValueError, match="duplicates"):
        resolve_probe_layers(model, ["2", "2"])
    with pytest.raises(ValueError, match="at least one"):
        resolve_probe_layers(model, [])
    with pytest.raises(TypeError, match="`layers`"):
        resolve_probe_layers(model, [2])
    with pytest.raises(ValueError, match="no nn.ReLU"):
        resolve_probe_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_model_state_is_untouched_and_hooks_are_removed_even_on_errors():
    model = tiny_cnn().train()
    model[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x, attributions = data(2)
    activation_deviation(model, x, attributions, n_steps=3)
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert model[2].inplace
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics were not updated
    assert all(not m._forward_hooks for m in model.modules())

    # The Linear probe outputs a tensor, the failing module comes after it: hooks must still be removed.
    class Boom(nn.Module):
        def forward(self, z):
            raise RuntimeError("boom")

    broken = nn.Sequential(*list(model), Boom())
    with pytest.raises(RuntimeError, match="boom"):
        activation_deviation(broken, x, attributions, layers=["2"], n_steps=3)
    assert all(not m._forward_hooks for m in broken.modules()) and broken.training


def test_bad_inputs_and_targets_raise():
    model = tiny_cnn()
    x, attributions = data(2)
    with pytest.raises(ValueError, match="attributions"):
        activation_deviation(model, x, attributions[:, :, :4])
    with pytest.raises(ValueError, match="target"):
        activation_deviation(model, x, attributions, target=7)
    with pytest.raises(ValueError, match="n_steps"):
        activation_deviation(model, x, attributions, n_steps=4, pixels_per_step=2)
    # A valid target is accepted and does not change the result (the games follow the map alone).
    with_target = activation_deviation(model, x, attributions, target=[0, 2], n_steps=4)
    without = activation_deviation(model, x, attributions, n_steps=4)
    assert all(torch.equal(a, b) for a, b in zip(with_target[:4], without[:4], strict=True))


def test_trained_demo_classifier_default_probes_equal_the_naive_loop(trained_demo):
    model, datamodule = trained_demo
    model = copy.deepcopy(model).double()  # the session fixture is shared: never change it
    x = datamodule.val_set.images[:2].double()
    attributions = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # FEI's protocol (blur in, zeros out) on a coarser schedule to keep the naive loop short.
    result = activation_deviation(model, x, attributions, preset="fei", n_steps=8, internal_batch_size=16)
    assert result.layers == ("stem.2", "layer1.relu2", "layer2.relu2")
    # 32x32 with 8 steps: ceil(1024 / 8) = 128 pixels per step.
    substrates = {"ins": blur(x), "del": x * 0}
    expected = naive_activation_deviation(model, x, attributions, list(result.layers), 128, substrates)
    torch.testing.assert_close(result.insertion_mse, expected["ins_mse"], rtol=0, atol=1e-6)
    torch.testing.assert_close(result.deletion_mse, expected["del_mse"], rtol=0, atol=1e-6)
    torch.testing.assert_close(result.insertion_overlap, expected["ins_ov"], rtol=0, atol=1e-6)
    torch.testing.assert_close(result.deletion_overlap, expected["del_ov"], rtol=0, atol=1e-6)
