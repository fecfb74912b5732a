"""Finding the encoder blocks of a transformer from its structure (no forward pass), for probes and randomisation."""

from __future__ import annotations

from torch import nn


def is_attention(module: nn.Module) -> bool:
    """``nn.MultiheadAttention``, or a module whose class name says it is attention (timm, Hugging Face)."""
    return isinstance(module, nn.MultiheadAttention) or "Attention" in type(module).__name__


def _outermost_attention(module: nn.Module) -> int:
    if is_attention(module):
        return 1
    return sum(_outermost_attention(child) for child in module.children())


def transformer_blocks(model: nn.Module) -> list[str]:
    """Names of the transformer blocks: children of an ``nn.Sequential``/``nn.ModuleList`` that each hold one attention.

    A block is a child of a container whose every child contains exactly one attention module (attention nested in
    another attention counts once) without being one: torchvision's ``encoder.layers.encoder_layer_i``, timm's
    ``blocks.i``, ``nn.TransformerEncoder``'s ``layers.i``, Hugging Face BERT's ``encoder.layer.i``. Containers are
    searched from the outside in, so a stack of stages (Swin) yields the blocks inside each stage. Returns the
    names in registration order, ``[]`` when there is no such container.

    Example:
        >>> encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, batch_first=True), num_layers=2)
        >>> transformer_blocks(nn.Sequential(encoder))
        ['0.layers.0', '0.layers.1']
    """

    def search(module: nn.Module, prefix: str) -> list[str]:
        children = list(module.named_children())
        if (
            isinstance(module, (nn.Sequential, nn.ModuleList))
            and children
            and all(_outermost_attention(child) == 1 and not is_attention(child) for _, child in children)
        ):
            return [prefix + name for name, _ in children]
        found = []
        for name, child in children:
            if not is_attention(child):
                found.extend(search(child, f"{prefix}{name}."))
        return found

    return search(model, "")
