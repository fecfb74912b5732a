"""Attention baselines for vision transformers: attention rollout and generic attention explainability.

Both read the attention matrices of every self-attention layer during one forward pass of the *unmodified* model
(:func:`~lit_attr.methods.attention_capture.recorded_attention`: torchvision's ``nn.MultiheadAttention``, timm-style
``Attention`` modules), and turn the class token's row into patch scores that are upsampled to pixels. The registered
``attention_rollout`` gives one score per token on Hugging Face text encoders
(:mod:`lit_attr.methods.text_attention`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_attr._checks import check_choice
from lit_attr.methods._common import SCORES
from lit_attr.methods.attention_capture import (  # noqa: F401  (re-exported: their former home)
    AttentionRecord,
    TokenLayout,
    attention_modules,
    recorded_attention,
    token_layout,
    vit_attention_runs,
)
from lit_attr.methods.base import AttributionMethod, BoundsType
from lit_attr.methods.registry import register_method
from lit_attr.methods.rollout import HEAD_FUSIONS, check_discard_ratio, rollout
from lit_attr.methods.text_attention import TextAttentionRollout, text_encoder

UPSAMPLING = ("bilinear", "nearest")


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
        discard_ratio: fraction of each layer's fused attention entries to zero, smallest first (Gildenblat's
            ``vit-explain`` option, 0.9 there; see :func:`~lit_attr.methods.rollout.rollout`). The default 0 is the
            paper's rollout: discarding sharpens the map, but which entries go depends on the ratio alone.
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

    def __init__(
        self, model: nn.Module, *, head_fusion: str = "mean", discard_ratio: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.head_fusion = check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
        self.discard_ratio = check_discard_ratio(discard_ratio)

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            _, records = self._record(x)
            rolled = rollout([record.weights for record in records], self.head_fusion, self.discard_ratio)
        return self._to_pixels(rolled, x)


class GenericAttention(_AttentionMap):
    """Generic attention-model explainability (Chefer, Gur & Wolf, ICCV 2021), for self-attention encoders.

    With ``A_l`` the per-head attention of layer ``l`` and ``dA_l`` the gradient of the target's logit with respect
    to it, the relevance starts as ``R = I`` and every layer from ``start_layer`` up adds
    ``R <- R + mean_heads((dA_l * A_l)^+) @ R``. The class token's row of ``R`` over the patch tokens (the mean row
    without a class token) is upsampled to pixels and broadcast over channels.

    The map is non-negative and class-specific (through the gradients).

    Args:
        model: a vision transformer with ``nn.MultiheadAttention`` (torchvision) or timm-style attention; it is
            not modified.
        start_layer: the first layer (0-based, from the input) that contributes; the layers below it are skipped,
            as with ``start_layer`` of Chefer et al.'s code (Transformer-Explainability, ``generate_LRP`` and
            ``compute_rollout_attention``). 0 (default) uses every layer, as the generic-attention paper does.
        patch_size: patch size in pixels; ``None`` reads it from the torchvision/timm model.
        prefix_tokens: tokens before the patch tokens (class and register tokens); ``None`` reads it likewise.
        upsample: ``"bilinear"`` (as in the authors' code) or ``"nearest"`` (one value per patch).
        forward_fn: see :class:`~lit_attr.methods.base.AttributionMethod`.
        input_bounds: see :class:`~lit_attr.methods.base.AttributionMethod`.
        internal_batch_size: samples per forward pass.

    Example:
        >>> from torchvision.models import VisionTransformer
        >>> vit = VisionTransformer(16, 8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=8, num_classes=2)
        >>> _ = torch.nn.init.normal_(vit.heads.head.weight)  # built without weights, the head is zero
        >>> GenericAttention(vit).attribute(torch.rand(2, 3, 16, 16), target=1).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, model: nn.Module, *, start_layer: int = 0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if isinstance(start_layer, bool) or not isinstance(start_layer, int) or start_layer < 0:
            raise ValueError(f"`start_layer` must be an int >= 0, got {start_layer!r}.")
        self.start_layer = start_layer

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        # The input must require grad for the forward pass to build a graph through the attention at all.
        logits, records = self._record(x.detach().requires_grad_(True))
        if self.start_layer >= len(records):
            raise ValueError(
                f"`start_layer` must be below the number of attention layers ({len(records)}), got {self.start_layer}."
            )
        records = records[self.start_layer :]
        score = SCORES["logit"](logits, target).sum()
        grads = torch.autograd.grad(score, [r.node for r in records], allow_unused=True)
        tokens = records[0].weights.shape[-1]
        relevance = torch.eye(tokens, dtype=records[0].weights.dtype, device=x.device).expand(x.shape[0], -1, -1)
        for record, grad in zip(records, grads, strict=True):
            weights = record.weights.detach()
            grad_weights = torch.zeros_like(weights) if grad is None else record.to_weights_grad(grad).detach()
            relevance = relevance + (grad_weights * weights).clamp(min=0).mean(dim=1) @ relevance
        return self._to_pixels(relevance, x)


def _rolls_out(model: nn.Module) -> bool:
    return text_encoder(model) is not None or vit_attention_runs(model)


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


@register_method("generic_attention", applies_to=vit_attention_runs)
def generic_attention(model: nn.Module, **kwargs: Any) -> GenericAttention:
    """Chefer et al.'s gradient-weighted attention relevance of the target logit, bilinear upsampling."""
    return GenericAttention(model, **kwargs)
