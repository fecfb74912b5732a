"""DemoViT: forward, options, seeded training, and that every transformer-aware part of lit-attr recognises it."""

import pytest
import torch
from torch import nn

from lit_attr.data import ShapesDataModule
from lit_attr.functional.activation_deviation import resolve_probe_layers
from lit_attr.functional.randomization import iter_randomized, randomizable_layers
from lit_attr.methods import FEI, IG2, available_methods, get_method
from lit_attr.methods.attention import TokenLayout, token_layout
from lit_attr.models import DemoViT, train_demo_vit


def _fresh(**kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DemoViT(**kwargs).eval()


def test_forward_normalises_inside_and_returns_the_head_logits():
    model = _fresh(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), num_classes=3)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.net((x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / 0.5)
        torch.testing.assert_close(model(x), expected)
    assert model(x).shape == (2, 3)
    assert model.net.patch_size == 8 and len(model.net.encoder.layers) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"patch_size": 5}, "image_size must be a multiple of patch_size, got 32 and 5"),
        ({"num_heads": 3}, "num_heads must divide hidden_dim, got 3 and 64"),
        ({"num_layers": 0}, "num_layers must be >= 1, got 0"),
        ({"lr": 0}, "lr must be > 0"),
        ({"schedule": "step"}, "schedule must be one of"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be positive"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DemoViT(**kwargs)


def test_training_is_seeded_and_leaves_the_global_rng():
    data = {"num_train": 64, "num_val": 16, "num_test": 16, "batch_size": 32}
    rng = torch.get_rng_state()
    first, _ = train_demo_vit(ShapesDataModule(**data), seed=3, epochs=1, num_layers=1, hidden_dim=16, mlp_dim=16)
    assert torch.equal(torch.get_rng_state(), rng)
    second, _ = train_demo_vit(ShapesDataModule(**data), seed=3, epochs=1, num_layers=1, hidden_dim=16, mlp_dim=16)
    untrained = _fresh(num_layers=1, hidden_dim=16, mlp_dim=16)
    for (name, p), q in zip(first.named_parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(first.net.heads.head.weight, untrained.net.heads.head.weight)  # zero at init
    assert not first.training


def test_trained_demo_vit_beats_chance(trained_demo_vit):
    model, data = trained_demo_vit
    x, y = data.val_set.images, data.val_set.labels
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean()
    assert accuracy > 0.4  # four balanced classes: chance is 0.25


def test_every_transformer_aware_part_recognises_demo_vit(trained_demo_vit):
    model, data = trained_demo_vit
    x = data.val_set.images[:2]
    net = model.net
    assert available_methods(model) == available_methods()
    assert token_layout(model, None, None) == TokenLayout((8, 8), 1)
    assert IG2(model).module is net.heads.head
    assert FEI(model).gated_modules(x) == [block.mlp[1] for block in net.encoder.layers]
    assert resolve_probe_layers(model) == tuple(f"net.encoder.layers.encoder_layer_{i}" for i in range(2))
    layers = randomizable_layers(model, example_input=x)
    assert [name for name, _ in layers][:3] == ["net.conv_proj", "net.class_token", "net.encoder.pos_embedding"]
    before = {k: v.clone() for k, v in model.named_parameters()}
    walk = iter_randomized(layers, stages="last")
    next(walk), next(walk)
    assert all(not torch.equal(p, before[k]) for k, p in model.named_parameters())
    walk.close()
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())


@pytest.mark.parametrize("name", ["attention_rollout", "generic_attention"])
def test_attention_maps_of_the_trained_demo_vit(trained_demo_vit, name):
    model, data = trained_demo_vit
    x = data.val_set.images[:4]
    maps = get_method(name, model).attribute(x)
    assert maps.shape == x.shape and (maps >= 0).all() and maps.flatten(1).sum(1).gt(0).all()


def test_normalisation_buffers_are_not_parameters():
    model = _fresh()
    assert {name for name, _ in model.named_buffers()} == {"mean", "std"}
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
