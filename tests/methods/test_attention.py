"""Attention rollout and generic attention: hand computations, an unmodified model, what callers of the attention
see while it is recorded, and errors."""

import pytest
import torch
from torch import nn
from vit_helpers import hand_forward, no_hooks_left, timm_vit, torchvision_vit

from lit_attr.methods import AttentionRollout, GenericAttention, get_method
from lit_attr.methods.attention import recorded_attention

BUILDERS = {"torchvision": torchvision_vit, "timm": timm_vit}


def inputs(n=3, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def patch_values(pixel_map, patch=8):
    """The (N, 4, 4) per-patch values of a nearest-upsampled map, after checking it is constant on each patch."""
    n, c, h, w = pixel_map.shape
    assert torch.equal(pixel_map, pixel_map[:, :1].expand_as(pixel_map))  # broadcast over channels
    grid = pixel_map[:, 0].reshape(n, h // patch, patch, w // patch, patch)
    assert torch.equal(grid, grid[:, :, :1, :, :1].expand_as(grid))
    return grid[:, :, 0, :, 0]


@pytest.mark.parametrize("kind", BUILDERS)
def test_rollout_of_one_block_by_hand(kind):
    model, x = BUILDERS[kind](layers=1), inputs()
    with torch.no_grad():
        logits, (weights,) = hand_forward(model, x)
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)  # the hand forward is the model's
    expected = []
    for sample in weights:  # (heads, 17, 17): one class token and 4 x 4 patches
        mixed = 0.5 * sample.mean(dim=0) + 0.5 * torch.eye(17)
        mixed = mixed / mixed.sum(dim=1, keepdim=True)
        expected.append(mixed[0, 1:].reshape(4, 4))
    maps = AttentionRollout(model, upsample="nearest").attribute(x)
    torch.testing.assert_close(patch_values(maps), torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_rollout_multiplies_layers_from_the_input_up_and_fuses_heads():
    model, x = torchvision_vit(layers=3), inputs(2)
    with torch.no_grad():
        _, weights = hand_forward(model, x)
    for fusion, fuse in (("mean", lambda a: a.mean(dim=0)), ("max", lambda a: a.amax(dim=0))):
        maps = AttentionRollout(model, head_fusion=fusion, upsample="nearest").attribute(x)
        for i in range(2):
            rollout = torch.eye(17)
            for layer in weights:
                mixed = 0.5 * fuse(layer[i]) + 0.5 * torch.eye(17)
                rollout = (mixed / mixed.sum(dim=1, keepdim=True)) @ rollout
            torch.testing.assert_close(patch_values(maps)[i], rollout[0, 1:].reshape(4, 4), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", BUILDERS)
def test_generic_attention_against_a_naive_reference(kind):
    model, x, target = BUILDERS[kind](), inputs(), torch.tensor([0, 2, 3])
    maps = GenericAttention(model, upsample="nearest").attribute(x, target=target)
    for i in range(3):  # one sample at a time, gradients by autograd through the hand-written attention
        logits, weights = hand_forward(model, x[i : i + 1])
        grads = torch.autograd.grad(logits[0, target[i]], weights)
        relevance = torch.eye(17)
        for a, g in zip(weights, grads, strict=True):
            cam = (g[0] * a[0]).clamp(min=0).mean(dim=0)
            relevance = relevance + cam @ relevance
        torch.testing.assert_close(patch_values(maps)[i], relevance[0, 1:].reshape(4, 4), rtol=1e-4, atol=1e-6)
    other = GenericAttention(model, upsample="nearest").attribute(x, target=1)
    assert not torch.allclose(other, maps)  # class-specific, unlike rollout


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize("name", ["attention_rollout", "generic_attention"])
def test_model_left_unchanged(name, kind):
    model, x = BUILDERS[kind](), inputs()
    flags = [(m, vars(m).get("fused_attn")) for m in model.modules()]
    with torch.no_grad():
        before = model(x)
    maps = get_method(name, model).attribute(x)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert no_hooks_left(model)
    assert [(m, vars(m).get("fused_attn")) for m in model.modules()] == flags
    # Bilinear by default: smooth, non-negative, on every pixel of every channel.
    assert maps.shape == x.shape and (maps >= 0).all() and torch.equal(maps[:, 0], maps[:, 2])
    assert maps[0, 0].unique().numel() > 16


def test_callers_of_multihead_attention_get_what_they_asked_for():
    class Probe(nn.Module):
        """Calls one attention three ways and returns what it got back."""

        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return (
                self.attn(x, x, x, need_weights=False)[1],
                self.attn(x, x, x)[1],  # need_weights defaults to True, averaged over heads
                self.attn(x, x, x, None, True, None, False)[1],  # positional: per head
            )

    torch.manual_seed(0)
    probe, x = Probe().eval(), torch.randn(2, 5, 8)
    with torch.no_grad():
        expected = probe(x)
        with recorded_attention(probe) as records:
            got = probe(x)
    assert got[0] is None and expected[0] is None
    torch.testing.assert_close(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2])
    assert len(records) == 3 and all(r.weights.shape == (2, 2, 5, 5) for r in records)
    torch.testing.assert_close(records[0].weights, expected[2])
    assert no_hooks_left(probe)


def test_recording_restores_the_model_when_the_forward_raises():
    model = timm_vit()
    with pytest.raises(RuntimeError, match="boom"), recorded_attention(model):
        assert model.blocks[0].attn.fused_attn is False
        raise RuntimeError("boom")
    assert model.blocks[0].attn.fused_attn is True and no_hooks_left(model)


def test_wrapped_model_and_explicit_layout():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torchvision_vit()

        def forward(self, x):
            return self.net(x * 2 - 1)

    model, x = Wrapped().eval(), inputs(2)
    auto = get_method("generic_attention", model).attribute(x, target=1)
    explicit = get_method("generic_attention", model, patch_size=(8, 8), prefix_tokens=1).attribute(x, target=1)
    torch.testing.assert_close(auto, explicit)


def test_errors():
    model = torchvision_vit()
    with pytest.raises(ValueError, match="no nn.MultiheadAttention or timm-style Attention"):
        AttentionRollout(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)), patch_size=8, prefix_tokens=1)
    with pytest.raises(ValueError, match="pass `patch_size=` and `prefix_tokens=`"):
        AttentionRollout(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match=r"has 16 tokens; check `patch_size` and `prefix_tokens`"):
        AttentionRollout(model, prefix_tokens=0).attribute(inputs(1))
    with pytest.raises(ValueError, match=r"need images \(N, C, H, W\), got shape \(2, 8\)"):
        GenericAttention(nn.Sequential(nn.Linear(8, 8), nn.Unflatten(1, (2, 4)), _FirstRow()), patch_size=1,
                         prefix_tokens=0).attribute(torch.rand(2, 8))
    with pytest.raises(ValueError, match=r"`head_fusion` must be one of \('mean', 'max', 'min'\), got 'sum'"):
        AttentionRollout(model, head_fusion="sum")
    with pytest.raises(ValueError, match=r"`upsample` must be one of \('bilinear', 'nearest'\), got 'cubic'"):
        GenericAttention(model, upsample="cubic")
    with pytest.raises(ValueError, match=r"`prefix_tokens` must be an int >= 0, got -1"):
        GenericAttention(model, prefix_tokens=-1)
    with pytest.raises(ValueError, match="add_bias_kv"):
        biased = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
        with recorded_attention(biased):
            pass


class _FirstRow(nn.Module):
    """Self-attention over two 4-dim tokens, returning the first token as logits."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0][:, 0]


def _naive_discard(fused, ratio):
    """Gildenblat's discarding on one (T, T) matrix, by sorting: the int(ratio * T * T) smallest entries become 0,
    the first token's attention to itself excepted."""
    values = fused.flatten().tolist()
    order = sorted(range(len(values)), key=values.__getitem__)[: int(ratio * len(values))]
    kept = fused.flatten().clone()
    for index in order:
        if index != 0:
            kept[index] = 0.0
    return kept.view_as(fused)


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_rollout_discard_ratio_against_a_naive_loop(ratio):
    model, x = torchvision_vit(layers=2), inputs(2)
    with torch.no_grad():
        _, weights = hand_forward(model, x)
    maps = AttentionRollout(model, discard_ratio=ratio, upsample="nearest").attribute(x)
    plain = AttentionRollout(model, upsample="nearest").attribute(x)
    for i in range(2):  # every sample of the batch is discarded on its own
        rollout = torch.eye(17)
        for layer in weights:
            mixed = 0.5 * _naive_discard(layer[i].mean(dim=0), ratio) + 0.5 * torch.eye(17)
            rollout = (mixed / mixed.sum(dim=1, keepdim=True)) @ rollout
        torch.testing.assert_close(patch_values(maps)[i], rollout[0, 1:].reshape(4, 4), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(maps, plain)
    assert torch.equal(AttentionRollout(model, discard_ratio=0.0, upsample="nearest").attribute(x), plain)


@pytest.mark.parametrize("kind", BUILDERS)
def test_generic_attention_start_layer_skips_the_layers_below(kind):
    model, x, target = BUILDERS[kind](layers=3), inputs(2), torch.tensor([1, 2])
    maps = GenericAttention(model, start_layer=1, upsample="nearest").attribute(x, target=target)
    for i in range(2):
        logits, weights = hand_forward(model, x[i : i + 1])
        grads = torch.autograd.grad(logits[0, target[i]], weights)
        relevance = torch.eye(17)
        for a, g in list(zip(weights, grads, strict=True))[1:]:
            relevance = relevance + (g[0] * a[0]).clamp(min=0).mean(dim=0) @ relevance
        torch.testing.assert_close(patch_values(maps)[i], relevance[0, 1:].reshape(4, 4), rtol=1e-4, atol=1e-6)
    everything = GenericAttention(model, upsample="nearest").attribute(x, target=target)
    assert not torch.allclose(maps, everything)


def test_rollout_options_errors():
    model = torchvision_vit()
    for ratio in (1.0, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match=r"`discard_ratio` must be a number in \[0, 1\), got"):
            AttentionRollout(model, discard_ratio=ratio)
    for start in (-1, True, 1.5):
        with pytest.raises(ValueError, match=r"`start_layer` must be an int >= 0, got"):
            GenericAttention(model, start_layer=start)
    with pytest.raises(ValueError, match=r"`start_layer` must be below the number of attention layers \(2\), got 2"):
        GenericAttention(model, start_layer=2).attribute(inputs(1), target=0)
    assert get_method("attention_rollout", model, discard_ratio=0.9).discard_ratio == 0.9
