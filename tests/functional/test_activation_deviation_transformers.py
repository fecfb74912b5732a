"""Activation deviation on transformers: default probes at every encoder block, against a hand recomputation."""

import torch
from torch import nn
from vit_helpers import timm_vit, torchvision_vit

from lit_attr.functional.activation_deviation import activation_deviation, resolve_probe_layers


def test_default_probes_are_the_encoder_blocks():
    names = tuple(f"encoder.layers.encoder_layer_{i}" for i in range(3))
    assert resolve_probe_layers(torchvision_vit(layers=3)) == names
    assert resolve_probe_layers(timm_vit()) == ("blocks.0", "blocks.1")
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, dim_feedforward=8, batch_first=True), num_layers=2)
    assert resolve_probe_layers(nn.Sequential(encoder, nn.Linear(8, 2))) == ("0.layers.0", "0.layers.1")


def test_default_probes_of_hugging_face_bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8)
    model = BertForSequenceClassification(config)
    assert resolve_probe_layers(model) == ("bert.encoder.layer.0", "bert.encoder.layer.1")


def hand_block_outputs(model, x):
    """The output of every encoder block of a torchvision ViT, with the attention written out by hand."""
    h = model.conv_proj(x).flatten(2).transpose(1, 2)
    h = torch.cat([model.class_token.expand(len(x), -1, -1), h], dim=1) + model.encoder.pos_embedding
    outputs = []
    for block in model.encoder.layers:
        mha = block.self_attention
        q, k, v = (
            t.unflatten(-1, (mha.num_heads, -1)).transpose(1, 2)
            for t in torch.nn.functional.linear(block.ln_1(h), mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
        )
        weights = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(dim=-1)
        h = h + mha.out_proj((weights @ v).transpose(1, 2).flatten(2))
        h = h + block.mlp(block.ln_2(h))
        outputs.append(h)
    return outputs


def test_vit_block_probes_against_a_hand_recomputation():
    model = torchvision_vit(image_size=16).double()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=generator, dtype=torch.float64)
    attributions = torch.randn(2, 3, 16, 16, generator=generator, dtype=torch.float64)
    result = activation_deviation(
        model, x, attributions, pixels_per_step=64, insertion_substrate="zero", deletion_substrate="zero"
    )
    assert result.layers == ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1")
    with torch.no_grad():
        for i in range(2):
            clean = hand_block_outputs(model, x[i : i + 1])
            order = torch.sort(attributions[i].sum(0).flatten(), descending=True, stable=True).indices
            stats = {key: torch.zeros(5, 2, dtype=torch.float64) for key in ("ins_mse", "del_mse", "ins_ov", "del_ov")}
            for t in range(5):  # 256 pixels, 64 per step: 5 points including both ends
                kept = torch.zeros(256, dtype=torch.float64)
                kept[order[: 64 * t]] = 1
                kept = kept.view(1, 1, 16, 16)
                for game, image in (("ins", x[i] * kept), ("del", x[i] * (1 - kept))):
                    for j, (now, ref) in enumerate(zip(hand_block_outputs(model, image), clean, strict=True)):
                        stats[f"{game}_mse"][t, j] = (now - ref).square().mean()
                        stats[f"{game}_ov"][t, j] = ((now > 0) == (ref > 0)).double().mean()
            torch.testing.assert_close(result.insertion_mse[i], stats["ins_mse"].mean(0))
            torch.testing.assert_close(result.deletion_mse[i], stats["del_mse"].mean(0))
            torch.testing.assert_close(result.insertion_overlap[i], stats["ins_ov"].mean(0))
            torch.testing.assert_close(result.deletion_overlap[i], stats["del_ov"].mean(0))


class _TupleBlock(nn.Module):
    """A block that returns ``(tokens, attention weights)``, as older Hugging Face layers do."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, h):
        out, weights = self.attention(h, h, h)
        return h + out, weights


class _TupleNet(nn.Module):
    """4x4 single-channel images as four tokens of width 4, two tuple blocks, a linear head on the mean token."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_TupleBlock(), _TupleBlock()])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = x.view(len(x), 4, 4)
        for layer in self.layers:
            h = layer(h)[0]
        return self.head(h.mean(dim=1))


def test_blocks_returning_tuples_are_probed_at_their_first_tensor():
    torch.manual_seed(0)
    model = _TupleNet().double().eval()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    attributions = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)
    result = activation_deviation(model, x, attributions, pixels_per_step=16, deletion_substrate="zero")
    assert result.layers == ("layers.0", "layers.1")
    with torch.no_grad():  # one step deletes everything: mean over the clean input (0) and the all-zero input
        clean, zero = x.view(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.float64)
        expected = []
        for layer in model.layers:
            clean, zero = layer(clean)[0], layer(zero)[0]
            expected.append((zero - clean).square().mean() / 2)
    torch.testing.assert_close(result.deletion_mse[0], torch.stack(expected))
