"""Tiny torchvision and timm vision transformers, and their forward pass written out by hand.

Usage from a test module (tests/ is on sys.path through the root conftest)::

    from vit_helpers import hand_forward, timm_vit, torchvision_vit
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def torchvision_vit(seed=0, layers=2, image_size=32, patch=8, heads=2, hidden=32, mlp=64, classes=4):
    """A small torchvision ViT in eval mode; its zero-initialised head is redrawn so that logits differ."""
    from torchvision.models import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(image_size, patch, layers, heads, hidden, mlp, num_classes=classes)
        nn.init.normal_(model.heads.head.weight, std=0.5)
        with torch.no_grad():  # a class token and biases away from their zero initialisation
            model.class_token.normal_(std=0.5)
            for block in model.encoder.layers:
                block.self_attention.in_proj_bias.normal_(std=0.2)
    return model.eval()


def timm_vit(seed=0, layers=2, image_size=32, patch=8, heads=2, hidden=32, mlp_ratio=2.0, classes=4):
    """A small timm ViT (no pretrained weights) in eval mode, with a head whose logits differ."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(
            img_size=image_size, patch_size=patch, embed_dim=hidden, depth=layers, num_heads=heads,
            mlp_ratio=mlp_ratio, num_classes=classes,
        )  # fmt: skip
        nn.init.normal_(model.head.weight, std=0.5)
        with torch.no_grad():
            model.cls_token.normal_(std=0.5)
    return model.eval()


def _heads(t, heads):
    n, length, width = t.shape
    return t.view(n, length, heads, width // heads).transpose(1, 2)


def _attend(q, k, v, heads):
    """Softmax attention of (N, T, D) projections: the output (N, T, D) and the weights (N, heads, T, T)."""
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).flatten(2)
    return out, weights


def hand_forward(model, x):
    """``(logits, [attention (N, heads, T, T) per block])`` of a torchvision or timm ViT, attention by hand.

    The patch embedding, norms and MLPs are the model's own modules; the self-attention is recomputed from the
    projection weights, so the returned weights are nodes of the graph (differentiate the logits with respect to
    them) and independent of how the model computes its attention.
    """
    attention = []
    if hasattr(model, "encoder"):  # torchvision
        h = model.conv_proj(x).flatten(2).transpose(1, 2)
        h = torch.cat([model.class_token.expand(len(x), -1, -1), h], dim=1) + model.encoder.pos_embedding
        for block in model.encoder.layers:
            mha = block.self_attention
            q, k, v = F.linear(block.ln_1(h), mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
            out, weights = _attend(q, k, v, mha.num_heads)
            attention.append(weights)
            h = h + mha.out_proj(out)
            h = h + block.mlp(block.ln_2(h))
        return model.heads(model.encoder.ln(h)[:, 0]), attention
    h = model.patch_embed(x)
    h = torch.cat([model.cls_token.expand(len(x), -1, -1), h], dim=1) + model.pos_embed
    for block in model.blocks:
        q, k, v = block.attn.qkv(block.norm1(h)).chunk(3, dim=-1)
        out, weights = _attend(q, k, v, block.attn.num_heads)
        attention.append(weights)
        h = h + block.attn.proj(out)
        h = h + block.mlp(block.norm2(h))
    return model.head(model.norm(h)[:, 0]), attention


def no_hooks_left(model):
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._forward_hooks_with_kwargs)
        for m in model.modules()
    )
