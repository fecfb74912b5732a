"""The randomisation cascade on vision transformers: every parameter is re-initialised, seeded, in forward order."""

import warnings

import pytest
import torch
from torch import nn
from vit_helpers import timm_vit, torchvision_vit

from lit_attr.functional.randomization import (
    FREE_PARAMETER_STD,
    FreeParameter,
    iter_randomized,
    randomizable_layers,
    randomize_,
)

BUILDERS = {"torchvision": torchvision_vit, "timm": timm_vit}
X = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def trained(kind):
    """A ViT whose every parameter has moved away from its initialisation, as training would move it."""
    model = BUILDERS[kind]()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def names(layers):
    return [name for name, _ in layers]


@pytest.mark.parametrize("granularity", ["leaf", "block"])
@pytest.mark.parametrize("kind", BUILDERS)
def test_fully_randomised_stage_changes_every_parameter_and_is_undone(kind, granularity):
    model = trained(kind)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every unit is on the call path: no "never called" warning
        layers = randomizable_layers(model, granularity=granularity, example_input=X)
    walk = iter_randomized(layers, stages="last", seed=3)
    assert next(walk) == "original"
    next(walk)  # the fully randomised stage
    unchanged = [k for k, p in model.named_parameters() if (p == before[k]).any()]
    assert unchanged == []
    with pytest.raises(StopIteration):
        next(walk)
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())


def test_torchvision_units_in_forward_order_by_encoder_block():
    model = trained("torchvision")
    parts = ("ln_1", "self_attention", "ln_2", "mlp.0", "mlp.3")
    block = [f"encoder.layers.encoder_layer_{{}}.{part}" for part in parts]
    leaves = randomizable_layers(model, example_input=X)
    assert names(leaves) == [
        "conv_proj", "class_token", "encoder.pos_embedding",
        *(name.format(0) for name in block), *(name.format(1) for name in block),
        "encoder.ln", "heads.head",
    ]  # fmt: skip
    assert isinstance(leaves[1][1], FreeParameter) and leaves[1][1].value is model.class_token
    assert leaves[4][1] is model.encoder.layers[0].self_attention  # its out_proj is part of it, not a unit
    blocks = randomizable_layers(model, granularity="block", example_input=X)
    assert names(blocks) == [
        "conv_proj", "class_token", "encoder.pos_embedding", "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_1", "encoder.ln", "heads",
    ]  # fmt: skip


def test_timm_units_in_forward_order_by_encoder_block():
    model = trained("timm")
    parts = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    assert names(randomizable_layers(model, example_input=X)) == [
        "patch_embed.proj", "cls_token", "pos_embed",
        *(f"blocks.0.{p}" for p in parts), *(f"blocks.1.{p}" for p in parts), "norm", "head",
    ]  # fmt: skip
    assert names(randomizable_layers(model, granularity="block", example_input=X)) == [
        "patch_embed", "cls_token", "pos_embed", "blocks.0", "blocks.1", "norm", "head"
    ]  # fmt: skip


def test_free_parameters_are_ordered_by_their_first_use():
    class EmbeddingLast(nn.Module):
        """Defines its token before the layer that runs first, and adds it only after that layer."""

        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.ones(4))
            self.early = nn.Linear(4, 4)
            self.late = nn.Linear(4, 2)
            self.unused = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.late(self.early(x) + self.token)

    model = EmbeddingLast()
    with pytest.warns(UserWarning, match=r"never called \['unused'\]"):
        assert names(randomizable_layers(model, example_input=torch.rand(1, 4))) == ["early", "token", "late", "unused"]


def test_attention_and_free_parameters_are_reset_seeded():
    torch.manual_seed(0)
    a, b = nn.MultiheadAttention(8, 2), nn.MultiheadAttention(8, 2)
    rng = torch.get_rng_state()
    randomize_(a, seed=4)
    randomize_(b, seed=4)
    assert torch.equal(torch.get_rng_state(), rng)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    # the same numbers as the module's own initialisers under torch.manual_seed
    c = nn.MultiheadAttention(8, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        c._reset_parameters()
        c.out_proj.reset_parameters()
    assert torch.equal(a.in_proj_weight, c.in_proj_weight) and torch.equal(a.out_proj.weight, c.out_proj.weight)

    token = nn.Parameter(torch.zeros(1, 1, 4096))
    randomize_(FreeParameter(token), seed=2)
    drawn = token.detach()
    assert abs(float(drawn.std()) - FREE_PARAMETER_STD) < 0.002 and abs(float(drawn.mean())) < 0.002
    again = nn.Parameter(torch.zeros(1, 1, 4096))
    randomize_(FreeParameter(again), seed=2)
    assert torch.equal(token, again)


def test_parameter_randomization_metric_on_a_vit():
    from lit_attr.metrics import ParameterRandomization

    model = trained("torchvision")
    metric = ParameterRandomization("saliency", model, similarity="spearman_abs", stages="last")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.update(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)), target=1)
    result = metric.report()["spearman_abs"]
    assert result["stages"] == ["original", "conv_proj"]  # the fully randomised network, named bottom-most
    assert result["curve"][0] == 1 and result["curve"][1] < 0.5
