"""Attention rollout for Hugging Face text encoders (BERT, RoBERTa, DistilBERT, ...) on token ids.

The encoder's self-attention probabilities are read from its own ``output_attentions=True`` output during one
forward of the unmodified model: a temporary forward pre-hook adds the keyword to the outermost Hugging Face model
that runs, a forward hook takes ``attentions`` from its output (the caller still gets the logits it asked for), and
the models' attention implementation is switched to ``"eager"`` for the pass (fused kernels compute no
probabilities). Hooks are removed and implementations restored on exit, also when the pass raises.

Token ids reach the model through the token kind (:mod:`lit_attr.inputs.embedding`): a sentence runs on its real
tokens alone, or padded under its attention mask where the model ignores right padding. Either way no real token
attends to padding, so padding passes no attention into a real token's row, and the mean row averages the rows of
real tokens only: a sentence's scores do not depend on its batch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice
from lit_attr.inputs.embedding import TokenSpace
from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.rollout import HEAD_FUSIONS, rollout

__all__ = ["ROWS", "TextAttentionRollout", "recorded_text_attention", "text_encoder"]

#: Which row of the rolled-out attention scores the tokens: the first token's ([CLS], ``<s>``), or the mean row.
ROWS = ("first", "mean")


def _hugging_face_models(model: nn.Module) -> list[nn.Module]:
    """The Hugging Face ``PreTrainedModel`` modules of ``model``, outermost first."""
    # Without transformers' modeling code imported, no Hugging Face model can exist: nothing to import for that.
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None or not isinstance(model, nn.Module):
        return []
    return [module for module in model.modules() if isinstance(module, modeling.PreTrainedModel)]


def text_encoder(model: nn.Module) -> nn.Module | None:
    """The outermost Hugging Face model in ``model`` that embeds token ids and attends in both directions, or None.

    It must embed ids with an ``nn.Embedding`` (a text model, not a vision one), and neither its config
    (``is_decoder``, ``is_encoder_decoder``) nor any of its attention modules (``is_causal``) may be causal: the
    rollout reads the first token's row, which a causal model's first token cannot fill.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=8)
        >>> bert = BertForSequenceClassification(config)
        >>> text_encoder(bert) is bert, text_encoder(nn.Linear(2, 2))
        (True, None)
    """
    models = _hugging_face_models(model)
    if not models:
        return None
    encoder = models[0]
    config = getattr(encoder, "config", None)
    if getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        return None
    try:
        embedding = encoder.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    causal = any(getattr(module, "is_causal", False) is True for module in encoder.modules())
    return encoder if isinstance(embedding, nn.Embedding) and not causal else None


@contextmanager
def recorded_text_attention(model: nn.Module) -> Iterator[list[tuple[Tensor, ...]]]:
    """Record the self-attention probabilities of the Hugging Face models that run inside the block.

    Args:
        model: a model holding a Hugging Face text encoder (see :func:`text_encoder`), e.g. a LightningModule that
            wraps one, called as it is.

    Yields:
        The list that every forward of the outermost Hugging Face model appends its attentions to: one tensor
        ``(N, heads, T, T)`` per layer, from the input up.

    Raises:
        ValueError: if ``model`` holds no Hugging Face text encoder.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=8)
        >>> bert = BertModel(config).eval()
        >>> with recorded_text_attention(bert) as records, torch.no_grad():
        ...     _ = bert(torch.tensor([[2, 7, 9, 3]]))
        >>> [tuple(layer.shape) for layer in records[0]]
        [(1, 2, 4, 4), (1, 2, 4, 4)]
    """
    if text_encoder(model) is None:
        raise ValueError(
            f"{type(model).__name__} holds no Hugging Face text encoder (a non-causal transformers model whose input "
            "embedding is an nn.Embedding) whose attentions could be recorded."
        )
    models = _hugging_face_models(model)
    records: list[tuple[Tensor, ...]] = []
    depth = [0]  # nested Hugging Face models (BertForSequenceClassification.bert): record the outermost call

    def ask(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
        depth[0] += 1
        return args, {**kwargs, "output_attentions": True}

    def record(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        depth[0] -= 1
        if depth[0] == 0:
            attentions = getattr(output, "attentions", None)
            if not attentions:
                raise ValueError(
                    f"{type(module).__name__} returned no attentions with output_attentions=True; attention rollout "
                    "needs a model that reports them."
                )
            records.append(tuple(attentions))

    configs = {id(m.config): m.config for m in models if hasattr(m, "config")}
    implementations = {key: getattr(config, "_attn_implementation", None) for key, config in configs.items()}
    handles = []
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        for module in models:
            handles.append(module.register_forward_pre_hook(ask, with_kwargs=True))
            handles.append(module.register_forward_hook(record, with_kwargs=True))
        yield records
    finally:
        for handle in handles:
            handle.remove()
        for key, config in configs.items():
            config._attn_implementation = implementations[key]


class TextAttentionRollout(AttributionMethod):
    """Attention rollout (Abnar & Zuidema, ACL 2020) of a Hugging Face text encoder: one score per token.

    The encoder's attention probabilities of every layer are rolled out as by
    :class:`~lit_attr.methods.AttentionRollout` (heads fused, ``A' = (A + I) / 2`` with rows renormalised, layers
    multiplied from the input up), and a token's score is its entry in the first token's row ([CLS] or ``<s>``,
    which BERT-style classification heads read), or with ``row="mean"`` in the mean of the real tokens' rows
    (mean-pooled heads). Scores are non-negative, do not depend on ``target``, and are exactly 0 on padding and
    special tokens (special tokens still take part in the rollout: they are attended to). Registered as
    ``attention_rollout`` for such models.

    Args:
        model: a classifier holding a Hugging Face text encoder (:func:`text_encoder`): BERT, RoBERTa, DistilBERT
            and other non-causal ``transformers`` models, as they are or wrapped (a LightningModule); not modified.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        row: ``"first"`` (the first token's row) or ``"mean"`` (the mean over the sentence's rows).
        forward_fn: see :class:`~lit_attr.methods.base.AttributionMethod`.
        internal_batch_size: sentences per forward pass.
        token_options: see :class:`~lit_attr.methods.base.AttributionMethod`.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=8, pad_token_id=0)
        >>> bert = BertForSequenceClassification(config).eval()
        >>> ids, mask = torch.tensor([[2, 7, 9, 3], [2, 8, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
        >>> TextAttentionRollout(bert).attribute(ids, attention_mask=mask, special_token_ids=[2, 3]).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        head_fusion: str = "mean",
        row: str = "first",
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        internal_batch_size: int | None = None,
        token_options: TokenOptions | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            model, forward_fn=forward_fn, internal_batch_size=internal_batch_size, token_options=token_options
        )
        if text_encoder(model) is None:
            raise ValueError(
                f"{type(model).__name__} holds no Hugging Face text encoder (BERT, RoBERTa, DistilBERT, ...: a "
                "non-causal transformers model embedding token ids with an nn.Embedding) to roll attention out of."
            )
        self.head_fusion = check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
        self.row = check_choice("row", row, ROWS)

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        space = self.space
        if space.raw:
            raise ValueError(
                f"Attention rollout of a text encoder explains token ids (N, L), got {space.z.dtype} inputs of shape "
                f"{tuple(space.z.shape)}."
            )
        with torch.no_grad(), recorded_text_attention(self.model) as records:
            self.logits(x)
        if not records:
            raise ValueError(
                f"The Hugging Face model in {type(self.model).__name__} did not run in its forward; attention rollout "
                "reads its attentions."
            )
        layers = records[-1]
        tokens = layers[0].shape[-1]
        if tuple(space.feature_shape) != (tokens, 1):
            raise ValueError(
                f"The encoder attended over {tokens} tokens, but the inputs have {space.feature_shape[0]}: attention "
                "rollout needs the model to embed the token ids it is given, one position per token."
            )
        rolled = rollout(layers, self.head_fusion)
        if self.row == "first":
            scores = rolled[:, 0]
        else:  # the rows of real tokens: in a padded segment, padding rows are attended by nothing real
            real = space.attended.to(rolled.dtype) if isinstance(space, TokenSpace) else torch.ones_like(rolled[:, 0])
            scores = (rolled * real[..., None]).sum(dim=1) / real.sum(dim=1, keepdim=True)
        return scores[..., None].to(x.dtype)
