"""Reading a transformer's attention during a forward pass, and where a vision transformer's patch tokens are.

:func:`recorded_attention` records the per-head attention probabilities of every self-attention call of the
*unmodified* model:

* ``nn.MultiheadAttention`` (torchvision's ``VisionTransformer``), which its callers run with
  ``need_weights=False``: a temporary forward pre-hook asks for the per-head weights and a forward hook records
  them and hands the caller exactly what it asked for;
* timm-style ``Attention`` modules (an ``attn_drop`` submodule applied to the softmax and a ``fused_attn`` flag):
  ``fused_attn`` is switched off for the pass, so the softmax is computed explicitly, and recorded at ``attn_drop``.

Hooks are removed and flags restored on exit, also when the pass raises. :func:`token_layout` reads the patch size
and the number of prefix tokens of a torchvision or timm ViT; :func:`vit_attention_runs` says from the structure alone
whether the attention maps of :mod:`lit_attr.methods.attention` run on a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionRecord",
    "TokenLayout",
    "attention_modules",
    "recorded_attention",
    "token_layout",
    "vit_attention_runs",
]

# Positional parameters of nn.MultiheadAttention.forward after (query, key, value).
_MHA_OPTIONS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


@dataclasses.dataclass
class AttentionRecord:
    """One self-attention call of a forward pass.

    Attributes:
        weights: ``(N, heads, T, T)`` attention probabilities (rows sum to 1).
        node: a tensor of the autograd graph from which :attr:`to_weights_grad` gets ``d score / d weights``.
        to_weights_grad: maps ``d score / d node`` to ``d score / d weights`` ``(N, heads, T, T)``.
    """

    weights: Tensor
    node: Tensor
    to_weights_grad: Callable[[Tensor], Tensor]


def _is_timm_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "fused_attn", None), bool) and isinstance(
        getattr(module, "attn_drop", None), nn.Module
    )


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules :func:`recorded_attention` can read, in registration order.

    Example:
        >>> from torchvision.models import VisionTransformer
        >>> vit = VisionTransformer(16, 8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=8, num_classes=2)
        >>> len(attention_modules(vit))
        2
    """
    return [m for m in model.modules() if isinstance(m, nn.MultiheadAttention) or _is_timm_attention(m)]


@contextmanager
def recorded_attention(model: nn.Module) -> Iterator[list[AttentionRecord]]:
    """Record every self-attention call of the forward passes run inside the block, in call order.

    The model is left as it was on exit (hooks removed, timm's ``fused_attn`` flags restored), even on errors.
    Its outputs inside the block can differ from a plain forward in the last bits: the attention is computed
    explicitly instead of by a fused kernel.

    Args:
        model: a transformer built from ``nn.MultiheadAttention`` or timm-style ``Attention`` modules.

    Yields:
        The list the records are appended to.

    Raises:
        ValueError: if the model has no such module, or an ``nn.MultiheadAttention`` has extra key/value tokens
            (``add_bias_kv``, ``add_zero_attn``), which make its attention matrix non-square.

    Example:
        >>> import torch
        >>> from torchvision.models import VisionTransformer
        >>> vit = VisionTransformer(16, 8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=8, num_classes=2)
        >>> with recorded_attention(vit) as records, torch.no_grad():
        ...     _ = vit(torch.rand(3, 3, 16, 16))
        >>> [tuple(r.weights.shape) for r in records]
        [(3, 2, 5, 5), (3, 2, 5, 5)]
    """
    modules = attention_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no nn.MultiheadAttention or timm-style Attention module (one with "
            "`fused_attn` and `attn_drop`) whose attention weights could be recorded."
        )
    records: list[AttentionRecord] = []
    handles: list[Any] = []
    flags: list[tuple[nn.Module, bool, bool]] = []
    try:
        for module in modules:
            if isinstance(module, nn.MultiheadAttention):
                if module.bias_k is not None or module.add_zero_attn:
                    raise ValueError(
                        "nn.MultiheadAttention with `add_bias_kv` or `add_zero_attn` attends to extra key tokens; "
                        "its attention matrix is not token x token, so attention maps are not defined for it."
                    )
                handles.extend(_hook_multihead(module, records))
            else:
                flags.append((module, module.fused_attn, "fused_attn" in vars(module)))
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_hook(_record_timm(records)))
        yield records
    finally:
        for handle in handles:
            handle.remove()
        for module, flag, own in flags:
            if own:
                module.fused_attn = flag
            else:  # the flag lived on the class: drop the instance attribute we set
                del module.fused_attn


def _record_timm(records: list[AttentionRecord]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        # attn_drop's output is what multiplies the values, so it is the node of the graph itself.
        records.append(AttentionRecord(output, output, lambda grad: grad))

    return hook


def _hook_multihead(module: nn.MultiheadAttention, records: list[AttentionRecord]) -> list[Any]:
    asked: dict[str, bool] = {}
    inputs: dict[str, Tensor] = {}

    def pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
        kwargs = {**dict(zip(_MHA_OPTIONS, args[3:], strict=False)), **kwargs}
        asked["need"] = kwargs.get("need_weights", True)
        asked["average"] = kwargs.get("average_attn_weights", True)
        inputs["value"] = args[2] if len(args) > 2 else kwargs["value"]
        return args[:3], {**kwargs, "need_weights": True, "average_attn_weights": False}

    def hook(mod: nn.Module, args: Any, kwargs: Any, output: tuple[Tensor, Tensor]) -> tuple[Tensor, Any]:
        out, weights = output
        value = inputs.pop("value")
        records.append(AttentionRecord(weights, out, lambda grad: _multihead_weights_grad(mod, value, grad)))
        if not asked["need"]:
            return out, None
        return out, weights.mean(dim=1) if asked["average"] else weights

    return [
        module.register_forward_pre_hook(pre_hook, with_kwargs=True),
        module.register_forward_hook(hook, with_kwargs=True),
    ]


def _multihead_weights_grad(module: nn.MultiheadAttention, value: Tensor, out_grad: Tensor) -> Tensor:
    """``d score / d A`` of every head from the gradient at the module's output.

    The weights torch returns are a view that nothing downstream uses, so autograd cannot differentiate with
    respect to them; the chain rule gives the gradient instead: in eval mode the output is
    ``concat_h(A_h V_h) W_o^T + b_o``, hence ``dA_h = (dY W_o)_h V_h^T`` with ``V = value W_v^T + b_v``.
    """
    if not module.batch_first:
        value, out_grad = value.transpose(0, 1), out_grad.transpose(0, 1)
    n, s, _ = value.shape
    length, heads = out_grad.shape[1], module.num_heads
    head_dim = module.embed_dim // heads
    embed = module.embed_dim
    w_v = module.v_proj_weight if module.in_proj_weight is None else module.in_proj_weight[2 * embed :]
    b_v = None if module.in_proj_bias is None else module.in_proj_bias[2 * embed :]
    v = F.linear(value, w_v, b_v).view(n, s, heads, head_dim).permute(0, 2, 3, 1)  # (N, H, d, S)
    per_head = (out_grad @ module.out_proj.weight).view(n, length, heads, head_dim).transpose(1, 2)  # (N, H, L, d)
    return per_head @ v


# --------------------------------------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where the patch tokens are: ``prefix_tokens`` (class and register tokens) come first, then the patches.

    Attributes:
        patch_size: ``(height, width)`` of a patch in pixels.
        prefix_tokens: tokens before the patch tokens; the first is the class token when there is one.
    """

    patch_size: tuple[int, int]
    prefix_tokens: int


def token_layout(model: nn.Module, patch_size: int | tuple[int, int] | None, prefix_tokens: int | None) -> TokenLayout:
    """The patch size and number of prefix tokens: the given values, else read from a torchvision or timm ViT.

    The model (or a submodule, e.g. the network wrapped by a LightningModule) must be torchvision's
    ``VisionTransformer`` (``patch_size``, one class token) or timm-like (``patch_embed.patch_size`` and
    ``num_prefix_tokens``) for values left as ``None``.

    Example:
        >>> from torchvision.models import VisionTransformer
        >>> token_layout(VisionTransformer(32, 8, 1, 2, 8, 8), None, None)
        TokenLayout(patch_size=(8, 8), prefix_tokens=1)
    """
    vit = _find_vit(model)
    found = None if vit is None else _vit_layout(vit)
    if (patch_size is None or prefix_tokens is None) and found is None:
        raise ValueError(
            f"Cannot find a torchvision or timm vision transformer in {type(model).__name__} to read its patch "
            "layout from; pass `patch_size=` and `prefix_tokens=` (tokens before the patch tokens, e.g. 1 for a "
            "class token)."
        )
    size = found[0] if patch_size is None else patch_size
    size = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    prefix = found[1] if prefix_tokens is None else prefix_tokens
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`patch_size` must be a positive int or a pair of them, got {patch_size!r}.")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"`prefix_tokens` must be an int >= 0, got {prefix_tokens!r}.")
    return TokenLayout(size, prefix)


def _find_vit(model: nn.Module) -> nn.Module | None:
    """The first torchvision ``VisionTransformer`` or timm-like ViT among the modules of ``model``, or None.

    timm-like: a module with ``num_prefix_tokens`` and ``patch_embed.patch_size``.
    """
    for module in model.modules():
        if hasattr(module, "num_prefix_tokens") and hasattr(getattr(module, "patch_embed", None), "patch_size"):
            return module
        if isinstance(getattr(module, "patch_size", None), int) and isinstance(
            getattr(module, "class_token", None), Tensor
        ):
            return module
    return None


def _vit_layout(vit: nn.Module) -> tuple[Any, int]:
    if hasattr(vit, "num_prefix_tokens"):
        return vit.patch_embed.patch_size, int(vit.num_prefix_tokens)
    return vit.patch_size, 1  # torchvision: one class token


#: timm attention classes (by ``module.qualname``, subclasses included) whose attention is token x token over a plain
#: ViT's prefix and patch tokens, verified to run: ViT, DeiT (also distilled), DeiT III, ViTs with registers, BEiT,
#: EVA, the relative-position ViT. Class attention (CaiT, XCiT), channel attention (XCiT), windowed (Swin) and pooled
#: attention (MViT, PVT) are not: their matrices are not token x token over the same tokens in every layer.
TOKEN_ATTENTION_CLASSES = frozenset(
    {
        "timm.layers.attention.Attention",
        "timm.models.vision_transformer.Attention",  # its home before timm 1.0.20
        "timm.models.beit.Attention",
        "timm.models.eva.EvaAttention",
        "timm.models.vision_transformer_relpos.RelPosAttention",
    }
)


def vit_attention_runs(model: nn.Module) -> bool:
    """Whether the attention maps (rollout, generic attention) run on ``model`` with the patch layout read from it.

    Judged from the structure, without a forward pass: the model holds a torchvision or timm ViT whose layout
    :func:`token_layout` reads, every attention module :func:`recorded_attention` would record lies inside it, and
    each attends over all of its tokens in every layer: ``nn.MultiheadAttention`` in torchvision's ViT, or one of
    :data:`TOKEN_ATTENTION_CLASSES`. Windowed and hierarchical models (Swin, MaxViT, PVT, MViT) and class or channel
    attention (CaiT, XCiT) are not supported.

    Example:
        >>> from torchvision.models import VisionTransformer
        >>> vit_attention_runs(VisionTransformer(16, 8, 1, 2, 8, 8)), vit_attention_runs(nn.Linear(2, 2))
        (True, False)
    """
    vit = _find_vit(model)
    modules = attention_modules(model)
    if vit is None or not modules:
        return False
    inside = {id(m) for m in vit.modules()}
    return all(id(m) in inside and _attends_over_all_tokens(m) for m in modules)


def _attends_over_all_tokens(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return module.bias_k is None and not module.add_zero_attn
    return any(f"{cls.__module__}.{cls.__qualname__}" in TOKEN_ATTENTION_CLASSES for cls in type(module).__mro__)
