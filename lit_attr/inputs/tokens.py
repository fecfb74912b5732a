"""Token inputs shared by token attribution and the token-level metrics: checks, conventions, model calls.

A batch of token ids ``(N, L)`` comes with an ``attention_mask`` (1 = a real token, 0 = padding) and optionally a
``special_tokens_mask`` (1 = [CLS], [SEP], ...), as Hugging Face tokenizers and collators produce them. Padding and
special tokens are never perturbed; the remaining *perturbable* tokens are what attributions rank and what the
metrics remove.

Models are called as ``model(input_ids, attention_mask=...)`` when their forward takes an ``attention_mask``
keyword, else as ``model(input_ids)``; Hugging Face outputs (``SequenceClassifierOutput``) are reduced to their
``logits``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice
from lit_attr.inputs.token_calls import (  # re-exported: their home before the model calls had a module of their own
    call_model,
    forward_parameters,
    split_model_inputs,
)

__all__ = [
    "CONFIG_SPECIALS",
    "METHOD_TOKEN_DEFAULTS",
    "TOKEN_KEYWORDS",
    "TOKEN_REDUCTIONS",
    "TokenBatch",
    "TokenOptions",
    "call_model",
    "check_method_token_options",
    "check_token_batch",
    "check_token_id",
    "find_embedding_layer",
    "forward_parameters",
    "is_token_ids",
    "original_position_ids",
    "position_limit",
    "position_padding",
    "resolve_token_options",
    "split_model_inputs",
    "vocabulary_size",
]


#: Keywords of ``attribute`` that only make sense for token ids; a float input with one of them is an error.
TOKEN_KEYWORDS = (
    "attention_mask",
    "special_tokens_mask",
    "special_token_ids",
    "baseline_token_id",
    "embedding_layer",
    "token_reduction",
    "reference_attention_mask",
    "embedding_offset",
    "embedding_shift",
)


#: The special tokens a Hugging Face config may name (``<name>_token_id``), in the order they are read.
CONFIG_SPECIALS = ("cls", "sep", "bos", "eos", "pad", "mask")


@dataclass(frozen=True)
class TokenOptions:
    """Conventions of a model's tokenizer that token attribution and the token metrics need.

    A model can declare them once as a ``token_options`` attribute (:class:`~lit_attr.models.DemoTextClassifier`
    does); an attribution method's own ``token_options`` and per-call keywords override them.

    Attributes:
        special_token_ids: ids that are never perturbed and always get a score of exactly 0 ([CLS], [SEP], ...).
        mask_token_id: the id that stands for a removed token ([MASK]); ``None`` falls back to ``pad_token_id``.
        pad_token_id: the padding id; ``None`` is read from the model (Hugging Face ``config.pad_token_id`` or the
            embedding's ``padding_idx``).
        embedding_layer: name of the token-embedding module (``dict(model.named_modules())`` key); ``None`` finds
            it (Hugging Face ``get_input_embeddings()``, else the model's only ``nn.Embedding``).

    Example:
        >>> TokenOptions(special_token_ids=(2, 3), mask_token_id=4).replacement_id
        4
    """

    special_token_ids: tuple[int, ...] = ()
    mask_token_id: int | None = None
    pad_token_id: int | None = None
    embedding_layer: str | None = None

    @property
    def replacement_id(self) -> int | None:
        """The id that replaces removed tokens: the mask id, else the pad id."""
        return self.mask_token_id if self.mask_token_id is not None else self.pad_token_id

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, embedding_layer: str | None = None) -> TokenOptions:
        """The conventions of a tokenizer: its special ids, mask id and pad id.

        Args:
            tokenizer: a Hugging Face tokenizer (``all_special_ids``, ``mask_token_id``, ``pad_token_id``), or any
                object with ``special_token_ids`` and those ids (lit-attr's text data modules).
            embedding_layer: see the class.

        Raises:
            TypeError: for an object that declares none of them.

        Example:
            >>> from types import SimpleNamespace
            >>> tokenizer = SimpleNamespace(all_special_ids=[0, 101, 102, 103], mask_token_id=103, pad_token_id=0)
            >>> TokenOptions.from_tokenizer(tokenizer).special_token_ids
            (0, 101, 102, 103)
        """
        special = getattr(tokenizer, "all_special_ids", None)
        special = special if special is not None else getattr(tokenizer, "special_token_ids", None)
        mask, pad = getattr(tokenizer, "mask_token_id", None), getattr(tokenizer, "pad_token_id", None)
        if special is None and mask is None and pad is None:
            raise TypeError(
                f"`tokenizer` must declare its special ids (all_special_ids or special_token_ids), mask_token_id or "
                f"pad_token_id, as Hugging Face tokenizers do; got {type(tokenizer).__name__}."
            )
        ids = tuple(dict.fromkeys(int(i) for i in special or ()))
        return cls(ids, None if mask is None else int(mask), None if pad is None else int(pad), embedding_layer)


class TokenBatch(NamedTuple):
    """Checked token inputs: ids ``(N, L)`` long, and boolean ``attended`` and ``special`` masks ``(N, L)``."""

    input_ids: Tensor
    attended: Tensor
    special: Tensor

    @property
    def perturbable(self) -> Tensor:
        """Attended tokens that are not special: the ones methods perturb and metrics remove."""
        return self.attended & ~self.special


def is_token_ids(x: Any) -> bool:
    """True for an integer tensor (token ids); floats, complex numbers and booleans are not token ids."""
    return isinstance(x, Tensor) and not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


#: How per-element embedding attributions ``(N, L, E)`` become per-token scores.
TOKEN_REDUCTIONS = ("sum", "norm", "none")


#: Per-call keywords of token attribution that a method's ``token_options`` may set besides :class:`TokenOptions`'
#: fields (``special_token_ids``, ``mask_token_id``, ``pad_token_id``, ``embedding_layer``).
METHOD_TOKEN_DEFAULTS = ("baseline_token_id", "token_reduction")


def check_method_token_options(value: Any) -> tuple[TokenOptions | None, dict[str, Any]]:
    """Split a method's ``token_options`` into tokenizer conventions and defaults of per-call keywords.

    Args:
        value: ``None``; a :class:`TokenOptions`; or a mapping (a YAML dict) with keys among ``TokenOptions``'
            fields and :data:`METHOD_TOKEN_DEFAULTS` (``baseline_token_id``, ``token_reduction``).

    Returns:
        ``(options, defaults)``: the conventions as a ``TokenOptions`` (``None`` when none are given), and the
        per-call keywords the mapping sets.

    Raises:
        TypeError: for another type, or a value of the wrong type.
        ValueError: for an unknown key or an invalid value (negative id, unknown reduction).

    Example:
        >>> options, defaults = check_method_token_options({"special_token_ids": [2, 3], "token_reduction": "norm"})
        >>> options.special_token_ids, defaults
        ((2, 3), {'token_reduction': 'norm'})
    """
    if value is None:
        return None, {}
    if isinstance(value, TokenOptions):
        fields, defaults = dict(vars(value)), {}
    elif isinstance(value, Mapping):
        allowed = (*(field.name for field in dataclasses.fields(TokenOptions)), *METHOD_TOKEN_DEFAULTS)
        unknown = sorted(str(key) for key in value if key not in allowed)
        if unknown:
            raise ValueError(f"`token_options` has unknown keys {unknown}; accepted keys: {', '.join(allowed)}.")
        fields = {key: v for key, v in value.items() if key not in METHOD_TOKEN_DEFAULTS}
        defaults = {key: v for key, v in value.items() if key in METHOD_TOKEN_DEFAULTS and v is not None}
    else:
        raise TypeError(
            "`token_options` must be a TokenOptions, a mapping such as {'special_token_ids': [2, 3], "
            f"'baseline_token_id': 4}} or None, got {type(value).__name__}."
        )
    if "special_token_ids" in fields:
        fields["special_token_ids"] = _check_ids("token_options['special_token_ids']", fields["special_token_ids"])
    for key in ("mask_token_id", "pad_token_id"):
        if fields.get(key) is not None:
            check_token_id(f"token_options[{key!r}]", fields[key], None)
    layer = fields.get("embedding_layer")
    if layer is not None and not isinstance(layer, str):
        raise TypeError(
            f"`token_options['embedding_layer']` must be a module name (str) or None, got {type(layer).__name__}."
        )
    if "baseline_token_id" in defaults:
        check_token_id("token_options['baseline_token_id']", defaults["baseline_token_id"], None)
    if "token_reduction" in defaults:
        check_choice("token_options['token_reduction']", defaults["token_reduction"], TOKEN_REDUCTIONS)
    return TokenOptions(**fields) if fields else None, defaults


# ------------------------------------------------------------------------------------------------------ checks
def _check_mask(name: str, mask: Any, shape: torch.Size, device: torch.device) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"`{name}` must be a tensor (N, L) of 0/1 values or None, got {type(mask).__name__}.")
    if mask.shape != shape:
        raise ValueError(f"`{name}` must have the shape of input_ids (N, L) = {tuple(shape)}, got {tuple(mask.shape)}.")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"`{name}` must be boolean or hold only 0 and 1.")
    return mask.to(device=device, dtype=torch.bool)


def check_token_batch(
    input_ids: Any,
    attention_mask: Any = None,
    special_tokens_mask: Any = None,
    special_token_ids: Iterable[int] = (),
    *,
    name: str = "input_ids",
) -> TokenBatch:
    """Check token ids and their masks and return them as a :class:`TokenBatch`.

    Args:
        input_ids: integer tensor ``(N, L)``, N >= 1, L >= 1, no negative ids.
        attention_mask: ``(N, L)`` of 0/1 (or bool); ``None`` means every token is real. Every sample needs at
            least one real token.
        special_tokens_mask: ``(N, L)`` of 0/1, 1 on special tokens; ``None`` means none beyond
            ``special_token_ids``.
        special_token_ids: ids that are special wherever they occur (combined with ``special_tokens_mask``).
        name: the argument named in errors about the ids.

    Raises:
        TypeError: for ids that are not an integer tensor, or masks that are not tensors.
        ValueError: for other shapes, negative ids, masks with values other than 0/1, or samples without tokens.

    Example:
        >>> batch = check_token_batch(torch.tensor([[2, 7, 8, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]]),
        ...                           special_token_ids=(2, 3))
        >>> batch.perturbable.int().tolist()
        [[0, 1, 1, 0, 0]]
    """
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"`{name}` must be a tensor of token ids (N, L), got {type(input_ids).__name__}.")
    if not is_token_ids(input_ids):
        raise TypeError(
            f"`{name}` must hold integer token ids (N, L), got dtype {input_ids.dtype}; token inputs are ids from a "
            "tokenizer (e.g. `batch['input_ids']`), not embeddings."
        )
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"`{name}` must be a non-empty batch of token ids (N, L), got shape {tuple(input_ids.shape)}.")
    if bool((input_ids < 0).any()):
        raise ValueError(f"`{name}` must hold non-negative token ids, got a minimum of {int(input_ids.min())}.")
    shape, device = input_ids.shape, input_ids.device
    attended = torch.ones(shape, dtype=torch.bool, device=device)
    if attention_mask is not None:
        attended = _check_mask("attention_mask", attention_mask, shape, device)
    empty = (~attended.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"`attention_mask` marks no token of samples {empty}; every sample needs one real token.")
    special = torch.zeros(shape, dtype=torch.bool, device=device)
    if special_tokens_mask is not None:
        special = _check_mask("special_tokens_mask", special_tokens_mask, shape, device)
    ids = _check_ids("special_token_ids", special_token_ids)
    if ids:
        special = special | torch.isin(input_ids, torch.tensor(ids, device=device))
    return TokenBatch(input_ids.long(), attended, special & attended)


def _check_ids(name: str, ids: Any) -> tuple[int, ...]:
    if isinstance(ids, Tensor):
        ids = ids.flatten().tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"`{name}` must be a sequence of token ids, got {type(ids).__name__}.")
    ids = tuple(ids)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"`{name}` must hold non-negative int token ids, got {ids!r}.")
    return ids


def check_token_id(name: str, value: Any, vocab_size: int | None) -> int:
    """Return ``value`` if it is a token id inside the vocabulary (``vocab_size`` None: not checked).

    Example:
        >>> check_token_id("mask_token_id", 4, vocab_size=10)
        4
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int token id, got {type(value).__name__}.")
    if value < 0 or (vocab_size is not None and value >= vocab_size):
        limit = f"[0, {vocab_size - 1}]" if vocab_size is not None else ">= 0"
        raise ValueError(f"`{name}` must be a token id in the vocabulary, {limit}, got {value}.")
    return value


def check_ids_in_vocabulary(name: str, input_ids: Tensor, vocab_size: int | None) -> None:
    """Refuse ids at or beyond ``vocab_size`` (an embedding lookup would fail with an opaque index error)."""
    if vocab_size is not None and bool((input_ids >= vocab_size).any()):
        raise ValueError(
            f"`{name}` holds ids up to {int(input_ids.max())}, but the model's vocabulary has {vocab_size} tokens "
            f"(ids 0 .. {vocab_size - 1})."
        )


# ------------------------------------------------------------------------------------------------------ model
def find_embedding_layer(model: nn.Module, name: str | None = None) -> nn.Module:
    """The module whose output are the token embeddings ``(N, L, E)`` of ``model``.

    Args:
        model: the classifier.
        name: a module name as in ``model.named_modules()``; ``None`` takes the first module (the model itself
            first) with a Hugging Face ``get_input_embeddings()``, else the model's only ``nn.Embedding``.

    Raises:
        ValueError: for an unknown name (with close matches), or when no single embedding layer is found.

    Example:
        >>> net = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
        >>> find_embedding_layer(net)
        Embedding(10, 4)
    """
    modules = dict(model.named_modules())
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"`embedding_layer` must be a module name (str) or None, got {type(name).__name__}.")
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise ValueError(f"`embedding_layer` {name!r} is not a module of the model.{hint}")
        return modules[name]
    for module in modules.values():
        getter = getattr(module, "get_input_embeddings", None)
        if callable(getter):
            try:
                layer = getter()
            except NotImplementedError:
                continue
            if isinstance(layer, nn.Module):
                return layer
    embeddings = [n for n, m in modules.items() if isinstance(m, nn.Embedding)]
    if len(embeddings) == 1:
        return modules[embeddings[0]]
    found = f"{len(embeddings)} nn.Embedding modules ({', '.join(embeddings)})" if embeddings else "no nn.Embedding"
    raise ValueError(
        f"Cannot tell which module embeds the tokens: the model has {found} and no `get_input_embeddings()`. Pass "
        "`embedding_layer='<name>'` naming the module that maps token ids to embeddings (N, L, E)."
    )


def _config_value(model: nn.Module, key: str) -> Any:
    for module in model.modules():
        value = getattr(getattr(module, "config", None), key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def vocabulary_size(model: nn.Module, layer: nn.Module | None = None) -> int | None:
    """Number of token ids the model accepts: the embedding's ``num_embeddings`` or ``config.vocab_size``."""
    if isinstance(layer, nn.Embedding):
        return layer.num_embeddings
    return _config_value(model, "vocab_size")


def position_limit(model: nn.Module) -> int | None:
    """Longest sequence the model accepts; None if unknown.

    Hugging Face ``config.max_position_embeddings``, less the positions a RoBERTa-style model keeps for padding (its
    positions start after ``padding_idx``: ``max_position_embeddings - padding_idx - 1``).
    """
    limit = _config_value(model, "max_position_embeddings")
    offset = position_padding(model)
    return limit if limit is None or offset is None else limit - offset - 1


def position_padding(model: nn.Module) -> int | None:
    """The ``padding_idx`` of a RoBERTa-style position embedding (positions count from it; None: plain positions).

    Such models derive the positions from the ids (``padding_idx + 1`` onward, ``padding_idx`` where the id is the pad
    id), so replacing a token by the pad id would move it to the padding position.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.endswith("position_embeddings") and module.padding_idx is not None:
            return module.padding_idx
    return None


def original_position_ids(attended: Tensor, padding_idx: int) -> Tensor:
    """The positions a RoBERTa-style model gives the real tokens of ``attended`` ``(N, L)``, and padding elsewhere.

    Example:
        >>> original_position_ids(torch.tensor([[1, 1, 1, 0]]), padding_idx=1).tolist()
        [[2, 3, 4, 1]]
    """
    real = attended.long()
    return real.cumsum(dim=1) * real + padding_idx


def check_length(name: str, input_ids: Tensor, attended: Tensor, limit: int | None) -> None:
    """Refuse sequences with more real tokens than the model's position limit."""
    if limit is None:
        return
    longest = int(attended.sum(dim=-1).max())
    if longest > limit:
        raise ValueError(
            f"`{name}` has sequences of {longest} tokens, but the model accepts at most {limit} positions "
            "(config.max_position_embeddings); truncate them."
        )


def resolve_token_options(model: nn.Module, *layers: TokenOptions | None, **overrides: Any) -> TokenOptions:
    """The token conventions in effect: the model's ``token_options``, then each of ``layers``, then ``overrides``.

    Where nothing declares special ids, those the model's Hugging Face config names (``cls``, ``sep``, ``bos``,
    ``eos``, ``pad``, ``mask`` token ids; RoBERTa's ``<s>``, ``</s>`` and ``<pad>``) are special, so they are frozen and
    score 0 by default (BERT's config names only its pad id: pass :meth:`TokenOptions.from_tokenizer` there). A
    missing ``mask_token_id`` is read from the config, a missing ``pad_token_id`` from the config or the embedding's
    ``padding_idx``. ``None`` entries of ``overrides`` leave the value as it is.

    Example:
        >>> emb = nn.Embedding(10, 4, padding_idx=0)
        >>> resolve_token_options(emb, TokenOptions(mask_token_id=3)).replacement_id
        3
    """
    options = getattr(model, "token_options", None)
    options = options if isinstance(options, TokenOptions) else TokenOptions()
    for layer in layers:
        if layer is not None:
            if not isinstance(layer, TokenOptions):
                raise TypeError(f"`token_options` must be a TokenOptions or None, got {type(layer).__name__}.")
            options = replace(options, **{k: v for k, v in vars(layer).items() if v not in (None, ())})
    options = replace(options, **{k: v for k, v in overrides.items() if v is not None})
    if not options.special_token_ids:  # nothing declared: the ids the model's config names are special
        found = (_config_value(model, f"{name}_token_id") for name in CONFIG_SPECIALS)
        options = replace(options, special_token_ids=tuple(dict.fromkeys(i for i in found if i is not None)))
    if options.mask_token_id is None:
        options = replace(options, mask_token_id=_config_value(model, "mask_token_id"))
    if options.pad_token_id is None:
        pad = _config_value(model, "pad_token_id")
        if pad is None:
            pad = next(
                (m.padding_idx for m in model.modules() if isinstance(m, nn.Embedding) and m.padding_idx is not None),
                None,
            )
        options = replace(options, pad_token_id=pad)
    return replace(options, special_token_ids=_check_ids("special_token_ids", options.special_token_ids))
