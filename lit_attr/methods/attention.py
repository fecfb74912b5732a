"""Attention baselines for vision transformers: attention rollout and generic attention explainability.

Both read the attention matrices of every self-attention layer during one forward pass of the *unmodified*
model, and turn the class token's row into patch scores that are upsampled to pixels:

* ``nn.MultiheadAttention`` (torchvision's ``VisionTransformer``), which its callers run with
  ``need_weights=False``: a temporary forward pre-hook asks for the per-head weights and a forward hook records
  them and hands the caller exactly what it asked for;
* timm-style ``Attention`` modules (an ``attn_drop`` submodule applied to the softmax and a ``fused_attn`` flag):
  ``fused_attn`` is switched off for the pass, so the softmax is computed explicitly, and recorded at ``attn_drop``.

Hooks are removed and flags restored on exit, also when the pass raises. The registered ``attention_rollout`` gives
one score per token on Hugging Face text encoders (:mod:`lit_attr.methods.text_attention`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_attr._checks import check_choice
from lit_attr.methods._common import SCORES
from lit_attr.methods.base import AttributionMethod, BoundsType
from lit_attr.methods.registry import register_method
from lit_attr.methods.rollout import HEAD_FUSIONS, rollout
from lit_attr.methods.text_attention import TextAttentionRollout, text_encoder

UPSAMPLING = ("bilinear", "nearest")
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
    found: tuple[Any, int] | None = None
    for module in model.modules():
        if hasattr(module, "num_prefix_tokens") and hasattr(getattr(module, "patch_embed", None), "patch_size"):
            found = (module.patch_embed.patch_size, int(module.num_prefix_tokens))
            break
        if isinstance(getattr(module, "patch_size", None), int) and isinstance(
            getattr(module, "class_token", None), Tensor
        ):
            found = (module.patch_size, 1)
            break
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


# --------------------------------------------------------------------------------------------------- methods
class _AttentionMap(AttributionMethod):
    """Shared machinery: record attention, turn per-token relevance into a pixel map."""

    raw_inputs_only = "it maps a vision transformer's patch tokens back to pixels"

    def __init__(
        self,
        model: nn.Module,
        *,
        patch_size: int | tuple[int, int] | None = None,
        prefix_tokens: int | None = None,
        upsample: str = "bilinear",
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        input_bounds: BoundsType = None,
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(
            model, forward_fn=forward_fn, input_bounds=input_bounds, internal_batch_size=internal_batch_size
        )
        self.layout = token_layout(model, patch_size, prefix_tokens)
        self.upsample = check_choice("upsample", upsample, UPSAMPLING)
        if not attention_modules(model):
            raise ValueError(
                f"{type(model).__name__} has no nn.MultiheadAttention or timm-style Attention module (one with "
                "`fused_attn` and `attn_drop`); attention maps need one."
            )

    def _record(self, x: Tensor) -> tuple[Tensor, list[AttentionRecord]]:
        """The logits of ``x`` and the attention of every layer, checked against the token layout."""
        with recorded_attention(self.model) as records:
            logits = self.logits(x)
        if not records:
            raise ValueError("The forward pass called no attention module; attention maps need at least one.")
        tokens = records[0].weights.shape[-1]
        expected = self.layout.prefix_tokens + self._grid(x)[0] * self._grid(x)[1]
        if any(r.weights.shape[-2:] != (tokens, tokens) for r in records) or tokens != expected:
            raise ValueError(
                f"The attention matrices are {tuple(records[0].weights.shape[-2:])}, but an input of "
                f"{tuple(x.shape[-2:])} pixels in {self.layout.patch_size} patches with "
                f"{self.layout.prefix_tokens} prefix tokens has {expected} tokens; check `patch_size` and "
                "`prefix_tokens`."
            )
        return logits, records

    def _grid(self, x: Tensor) -> tuple[int, int]:
        if x.ndim != 4:
            raise ValueError(f"Attention maps need images (N, C, H, W), got shape {tuple(x.shape)}.")
        return x.shape[-2] // self.layout.patch_size[0], x.shape[-1] // self.layout.patch_size[1]

    def _to_pixels(self, relevance: Tensor, x: Tensor) -> Tensor:
        """``(N, T, T)`` token relevance -> ``(N, C, H, W)`` map of the class token's row over the patches."""
        prefix = self.layout.prefix_tokens
        # Without a class token (average-pooled models) every token feeds the output equally.
        row = relevance[:, 0] if prefix > 0 else relevance.mean(dim=1)
        gh, gw = self._grid(x)
        patches = row[:, prefix:].reshape(-1, 1, gh, gw)
        ph, pw = self.layout.patch_size
        options = {"align_corners": False} if self.upsample == "bilinear" else {}
        pixels = F.interpolate(patches, size=(gh * ph, gw * pw), mode=self.upsample, **options)
        # Pixels beyond the last full patch are not seen by the patch embedding: they get no relevance.
        pixels = F.pad(pixels, (0, x.shape[-1] - gw * pw, 0, x.shape[-2] - gh * ph))
        return pixels.expand_as(x).contiguous()


class AttentionRollout(_AttentionMap):
    """Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

    Per layer the heads are fused (``head_fusion``, the mean in the paper), the residual connection is modelled by
    adding the identity, ``A' = (A + I) / 2``, rows are renormalised to sum to 1, and the layers are multiplied
    from the input up: ``R = A'_L ... A'_1``. The class token's row of ``R`` over the patch tokens is the patch
    score (the mean row when the model has no class token), upsampled to pixels and broadcast over channels.

    The map is non-negative, sums over the patches to at most 1 per sample, and does not depend on ``target``:
    rollout explains where the class token attends, not a class.

    Args:
        model: a vision transformer with ``nn.MultiheadAttention`` (torchvision) or timm-style attention; it is
            not modified.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        patch_size: patch size in pixels; ``None`` reads it from the torchvision/timm model.
        prefix_tokens: tokens before the patch tokens (class and register tokens); ``None`` reads it likewise.
        upsample: ``"bilinear"`` (smooth, as in the authors' figures) or ``"nearest"`` (one value per patch).
        forward_fn: see :class:`~lit_attr.methods.base.AttributionMethod`.
        input_bounds: see :class:`~lit_attr.methods.base.AttributionMethod`.
        internal_batch_size: samples per forward pass.

    Example:
        >>> from torchvision.models import VisionTransformer
        >>> vit = VisionTransformer(16, 8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=8, num_classes=2)
        >>> AttentionRollout(vit).attribute(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, model: nn.Module, *, head_fusion: str = "mean", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.head_fusion = check_choice("head_fusion", head_fusion, HEAD_FUSIONS)

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            _, records = self._record(x)
            rolled = rollout([record.weights for record in records], self.head_fusion)
        return self._to_pixels(rolled, x)


class GenericAttention(_AttentionMap):
    """Generic attention-model explainability (Chefer, Gur & Wolf, ICCV 2021), for self-attention encoders.

    With ``A_l`` the per-head attention of layer ``l`` and ``dA_l`` the gradient of the target's logit with respect
    to it, the relevance starts as ``R = I`` and every layer, from the input up, adds
    ``R <- R + mean_heads((dA_l * A_l)^+) @ R``. The class token's row of ``R`` over the patch tokens (the mean row
    without a class token) is upsampled to pixels and broadcast over channels.

    The map is non-negative and class-specific (through the gradients).

    Args:
        model: a vision transformer with ``nn.MultiheadAttention`` (torchvision) or timm-style attention; it is
            not modified.
        patch_size: patch size in pixels; ``None`` reads it from the torchvision/timm model.
        prefix_tokens: tokens before the patch tokens (class and register tokens); ``None`` reads it likewise.
        upsample: ``"bilinear"`` (as in the authors' code) or ``"nearest"`` (one value per patch).
        forward_fn: see :class:`~lit_attr.methods.base.AttributionMethod`.
        input_bounds: see :class:`~lit_attr.methods.base.AttributionMethod`.
        internal_batch_size: samples per forward pass.

    Example:
        >>> from torchvision.models import VisionTransformer
        >>> vit = VisionTransformer(16, 8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=8, num_classes=2)
        >>> GenericAttention(vit).attribute(torch.rand(2, 3, 16, 16), target=1).shape
        torch.Size([2, 3, 16, 16])
    """

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        # The input must require grad for the forward pass to build a graph through the attention at all.
        logits, records = self._record(x.detach().requires_grad_(True))
        score = SCORES["logit"](logits, target).sum()
        grads = torch.autograd.grad(score, [r.node for r in records], allow_unused=True)
        tokens = records[0].weights.shape[-1]
        relevance = torch.eye(tokens, dtype=records[0].weights.dtype, device=x.device).expand(x.shape[0], -1, -1)
        for record, grad in zip(records, grads, strict=True):
            weights = record.weights.detach()
            grad_weights = torch.zeros_like(weights) if grad is None else record.to_weights_grad(grad).detach()
            relevance = relevance + (grad_weights * weights).clamp(min=0).mean(dim=1) @ relevance
        return self._to_pixels(relevance, x)


def _has_attention(model: nn.Module) -> bool:
    return bool(attention_modules(model))


def _rolls_out(model: nn.Module) -> bool:
    return _has_attention(model) or text_encoder(model) is not None


@register_method("attention_rollout", applies_to=_rolls_out)
def attention_rollout(model: nn.Module, **kwargs: Any) -> AttentionRollout | TextAttentionRollout:
    """Attention rollout with the paper's choices (head mean, ``(A + I) / 2``).

    On a vision transformer, patch scores upsampled to pixels (:class:`AttentionRollout`, bilinear); on a Hugging
    Face BERT-family text encoder (BERT, RoBERTa, DistilBERT, ...), one score per token of token ids
    (:class:`~lit_attr.methods.text_attention.TextAttentionRollout`).
    """
    if text_encoder(model) is not None:
        return TextAttentionRollout(model, **kwargs)
    return AttentionRollout(model, **kwargs)


@register_method("generic_attention", applies_to=_has_attention)
def generic_attention(model: nn.Module, **kwargs: Any) -> GenericAttention:
    """Chefer et al.'s gradient-weighted attention relevance of the target logit, bilinear upsampling."""
    return GenericAttention(model, **kwargs)
