"""Token ids ``(N, L)`` of text classifiers: attributed in the embedding space, scored per token, highlighted.

The batch's ``attention_mask`` (1 = a real token) and ``special_tokens_mask`` travel with the ids; the model is
called with the attention mask where its forward takes one (a Hugging Face ``SequenceClassifierOutput`` is reduced
to its logits); records keep a sample's real tokens only; maps are drawn as per-token highlighting. The token games
(:mod:`lit_attr.functional.token_games`) remove tokens by id rather than by blending, so this kind is not
``"continuous"``. The unit games (:mod:`lit_attr.functional.unit_games`) replace tokens by an id: a sample's real
tokens that are not special are its units, the substrate is the model's [MASK] id (else its [PAD] id: ``"mask"``), a
given id (``"constant"``) or random words (``"noise"``), and every row keeps its sample's attention mask and other
model inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import lit_attr.viz as viz
from lit_attr._checks import check_choice, check_device, check_number, check_seed
from lit_attr.inputs.base import GameInputs, InputKind, SubstrateType
from lit_attr.inputs.embedding import TokenCall
from lit_attr.inputs.space import MethodCall, Rendering
from lit_attr.inputs.token_mosaics import SentenceTiles
from lit_attr.inputs.token_neighbourhood import TokenNeighbourhood
from lit_attr.inputs.tokens import (
    CONFIG_SPECIALS,
    METHOD_TOKEN_DEFAULTS,
    TOKEN_KEYWORDS,
    TOKEN_REDUCTIONS,
    _config_value,
    call_model,
    check_ids_in_vocabulary,
    check_length,
    check_token_batch,
    check_token_id,
    find_embedding_layer,
    forward_parameters,
    is_token_ids,
    original_position_ids,
    position_limit,
    position_padding,
    resolve_token_options,
    vocabulary_size,
)

__all__ = ["Tokens"]

#: Keywords of ``attribute`` that the token kind takes for itself (the rest go to the method).
_OWN_KEYWORDS = (
    "attention_mask",
    "special_tokens_mask",
    "special_token_ids",
    "baseline_token_id",
    "embedding_layer",
    "token_reduction",
    "embedding_offset",
    "embedding_shift",
)


class Tokens(InputKind):
    """Integer token ids ``(N, L)`` with their ``attention_mask`` and ``special_tokens_mask``.

    Example:
        >>> import torch
        >>> Tokens.accepts(torch.tensor([[101, 7, 102]])), sorted(Tokens().tags)
        (True, ['tokens'])
    """

    name = "tokens"
    continuous = False
    space_name = "the embedding space of the model's input embedding layer"
    keywords: ClassVar[tuple[str, ...]] = TOKEN_KEYWORDS
    media_name = "tokens"
    #: ``"mask"``: the model's [MASK] id, else its [PAD] id; ``"constant"``: the id given as ``substrate_value``;
    #: ``"noise"``: random words (the random values of a token, for the games that draw them).
    substrates: ClassVar[tuple[str, ...]] = ("mask", "constant", "noise")
    default_substrate: ClassVar[str] = "mask"

    @classmethod
    def accepts(cls, x: Tensor) -> bool:
        """Integer tensors ``(N, L)``."""
        return is_token_ids(x) and x.ndim == 2

    def model_logits(self, model: Callable[..., Any], x: Tensor, fields: Mapping[str, Tensor | None]) -> Tensor:
        """The model on the ids, with the attention mask and the other model inputs (``token_type_ids``, ...).

        Each goes in where the forward names it (a batch may carry others, such as a dataset index); a Hugging Face
        output is reduced to its logits.
        """
        names = forward_parameters(model)
        extra = {key: value for key, value in fields.items() if key in names and key not in _MASKS}
        return call_model(model, x, fields.get("attention_mask"), **extra)

    def game_inputs(self, model: nn.Module, x: Tensor, fields: Mapping[str, Any]) -> GameInputs:
        """Units: the real tokens that are not special; a row carries its sample's attention mask and model inputs.

        Special tokens are the batch's ``special_tokens_mask`` and the model's declared special ids; the model inputs
        (``token_type_ids``, ...) must be ones its forward names.
        """
        if not any(isinstance(m, _EMBEDDINGS) or hasattr(m, "get_input_embeddings") for m in model.modules()):
            raise TypeError(
                f"`x` holds integers {tuple(x.shape)}, read as token ids, but the model embeds no tokens (no "
                "nn.Embedding); pass float inputs (`x.float()`) to a model of features."
            )
        options = resolve_token_options(model)
        batch = check_token_batch(
            x, fields.get("attention_mask"), fields.get("special_tokens_mask"), options.special_token_ids
        )
        given = fields.get("model_inputs") or {}
        if not isinstance(given, Mapping):
            raise TypeError(f"`model_inputs` must be a mapping name -> tensor or None, got {type(given).__name__}.")
        names = forward_parameters(model)
        for key, value in given.items():
            if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != x.shape[0]:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"`model_inputs[{key!r}]` must be a tensor (N, ...) with N = {x.shape[0]}, got {shape}."
                )
            if key not in names:
                raise ValueError(
                    f"`model_inputs[{key!r}]` is not an input of the model's forward (it names {sorted(names)})."
                )
        rows = {"attention_mask": batch.attended.long(), **{key: value.to(x.device) for key, value in given.items()}}
        padding = position_padding(model)
        if options.replacement_id == padding and "position_ids" in names:
            # A RoBERTa-style model would read a token replaced by the pad id as padding: it keeps its position.
            rows.setdefault("position_ids", original_position_ids(batch.attended, padding))
        return GameInputs(batch.perturbable, rows)

    def game_substrate(
        self,
        model: nn.Module,
        substrate: SubstrateType,
        x: Tensor,
        *,
        value: Any = None,
        seed: int = 0,
        argument: str = "substrate",
    ) -> Tensor:
        """The ids that replace tokens: the model's [MASK] (else [PAD]) id, ``value`` for ``"constant"``, or words.

        ``"noise"`` replaces every id by a word drawn for that id from a table seeded by ``seed`` (uniform over the
        vocabulary without the model's special, pad and mask ids): a token's random value depends on the token and
        the seed alone, not on its position, its padding or its batch, and another seed draws other words.
        """
        if callable(substrate) or substrate not in self.substrates:
            return self.substrate(substrate, x, value=value, seed=seed, argument=argument)
        options = resolve_token_options(model)
        try:
            vocab = vocabulary_size(model, find_embedding_layer(model, options.embedding_layer))
        except ValueError:
            vocab = vocabulary_size(model)
        if substrate == "noise":
            return _random_words(model, x, vocab, options, seed, argument)
        if substrate == "constant":
            if value is None:
                raise ValueError(f'`substrate_value` (a token id) must be given when `{argument}` is "constant".')
            token = check_token_id("substrate_value", value, vocab)
        else:
            token = resolve_token_options(model).replacement_id
            if token is None:
                raise ValueError(
                    f"`{argument}` 'mask' is the model's [MASK] (else [PAD]) id and the model declares neither; "
                    "declare its `token_options` or pass substrate='constant' with the id as `substrate_value`."
                )
            token = check_token_id("the model's mask id", token, vocab)
        return torch.full_like(x, token)

    def own_substrate(self, substrate: str, x: Tensor) -> Tensor:
        """Refused: the ``"mask"`` id is the model's (:meth:`game_substrate` knows the model)."""
        raise ValueError(f"The {substrate!r} substrate of token ids is the model's id: build it with game_substrate().")

    def neighbourhood(self, method: Any, x: Tensor, fields: Mapping[str, Any]) -> TokenNeighbourhood:
        """The token embeddings, moved at a sentence's real tokens that are not special (the embedding space)."""
        return TokenNeighbourhood(method, x, fields)

    def mosaic_tiles(self, method: Any, x: Tensor, fields: Mapping[str, Any], tile: str) -> SentenceTiles:
        """Sentences as tiles: a mosaic is four sentences' words between the explained sample's special tokens."""
        if tile != "full":
            raise ValueError(f'`tile` {tile!r} does not apply to token ids: a sentence tile is all its words ("full").')
        check_device("x", x, method.model)
        return SentenceTiles(method, x, fields)

    def kept_sample(self, x: Tensor, fields: Mapping[str, Tensor | None]) -> Tensor:
        """The sample's real token ids (padding dropped)."""
        return x[_real(x, fields)].detach().cpu()

    def kept_map(self, attributions: Tensor, fields: Mapping[str, Tensor | None]) -> Tensor:
        """The scores of the sample's real tokens."""
        return attributions.detach().float().cpu()[_real(attributions, fields).cpu()]

    def method_call(self, method: Any, x: Tensor, kwargs: dict[str, Any]) -> MethodCall:
        """Check the ids and their masks against the model's conventions; attribute in its embedding space."""
        given = {key: value for key, value in kwargs.items() if not (key in METHOD_TOKEN_DEFAULTS and value is None)}
        kwargs = {**method.token_defaults, **given}
        own = {key: kwargs.pop(key) for key in _OWN_KEYWORDS if key in kwargs}
        model = method.model
        check_device("input_ids", x, model)  # first: ids on another device cannot even be inspected here
        model_inputs = _model_inputs(method.forward_fn, x, kwargs)
        options = resolve_token_options(
            model,
            method.token_options,
            special_token_ids=own.get("special_token_ids"),
            embedding_layer=own.get("embedding_layer"),
        )
        batch = check_token_batch(
            x, own.get("attention_mask"), own.get("special_tokens_mask"), options.special_token_ids
        )
        reduction = own.get("token_reduction", getattr(method, "reduction", "sum"))
        check_choice("token_reduction", reduction, TOKEN_REDUCTIONS)
        layer = find_embedding_layer(model, options.embedding_layer)
        vocab = vocabulary_size(model, layer)
        check_ids_in_vocabulary("input_ids", batch.input_ids, vocab)
        baseline_id = own.get("baseline_token_id")
        baseline_id = baseline_id if baseline_id is not None else options.replacement_id
        if baseline_id is None:
            raise ValueError(
                "`baseline_token_id` is needed for token inputs and the model declares neither a mask nor a pad id; "
                "pass the [MASK] (or [PAD]) id as `baseline_token_id=`."
            )
        check_token_id("baseline_token_id", baseline_id, vocab)
        limit = position_limit(model)
        check_length("input_ids", batch.input_ids, batch.attended, limit)
        offset = own.get("embedding_offset")
        if offset is not None and (
            not isinstance(offset, Tensor) or offset.ndim != 3 or offset.shape[:2] != x.shape
            or not offset.is_floating_point() or not bool(torch.isfinite(offset).all())
        ):  # fmt: skip
            shape = tuple(offset.shape) if isinstance(offset, Tensor) else type(offset).__name__
            raise ValueError(
                f"`embedding_offset` must be finite floats (N, L, E) with (N, L) = {tuple(x.shape)}, got {shape}."
            )
        return TokenCall(
            method,
            batch,
            kwargs,
            options=options,
            layer=layer,
            baseline_id=baseline_id,
            vocab=vocab,
            limit=limit,
            token_reduction=reduction,
            model_inputs=model_inputs,
            offset=None if offset is None else offset.to(x.device),
            shift=check_number("embedding_shift", own.get("embedding_shift", 0.0)),
        )

    def render(
        self,
        samples: Sequence[Tensor],
        maps: Sequence[Tensor],
        *,
        captions: Sequence[str] | None = None,
        titles: Sequence[str] | None = None,
        title: str = "",
        decode: Callable[[Tensor], list[str]] | None = None,
        truths: Sequence[Tensor] | None = None,
    ) -> Rendering | None:
        """Per-token highlighting on one scale, the rationale underlined (:func:`lit_attr.viz.token_highlights_html`).

        The row's scale is its largest ``|score|``.
        """
        if not samples:
            return None
        decode = decode or viz.token_decoder(None)
        words = [decode(sample) for sample in samples]
        scale = max(float(m.abs().max()) if m.numel() else 0.0 for m in maps)
        options = {"captions": captions, "title": title, "rationales": truths, "scale": scale}
        html = viz.token_highlights_html(words, list(maps), **options)
        figure = viz.token_highlights_figure(words, list(maps), **options)
        legend = (
            f"One colour scale for the row: -{scale:.3g} to +{scale:.3g} (its largest |score|). Each row has its own "
            "scale: compare colours within a row, not between rows."
        )
        if truths is not None:
            legend += " Underlined tokens are the rationale (the ground truth)."
        return Rendering(figure, html, legend)

    def render_cell(
        self, sample: Tensor, attributions: Tensor, decode: Callable[[Tensor], list[str]] | None = None
    ) -> str | None:
        """One sample's highlighting, for a table cell."""
        decode = decode or viz.token_decoder(None)
        return viz.token_highlights_html([decode(sample)], [attributions])


def _random_words(model: nn.Module, x: Tensor, vocab: int | None, options: Any, seed: int, argument: str) -> Tensor:
    """Every id of ``x`` replaced by its word in a random table seeded by ``seed`` (drawn on the CPU).

    The words are the vocabulary without the special, pad and mask ids the model declares (its ``token_options``,
    and the special and unknown-token ids its Hugging Face config names).
    """
    check_seed(seed)
    if vocab is None:
        raise ValueError(
            f"`{argument}` 'noise' draws words from the vocabulary and the model's is unknown; declare its "
            "`token_options.embedding_layer` (an nn.Embedding) or pass another substrate."
        )
    reserved = {*options.special_token_ids, options.pad_token_id, options.mask_token_id}
    reserved |= {_config_value(model, f"{name}_token_id") for name in (*CONFIG_SPECIALS, "unk")}  # no words either
    keep = torch.ones(vocab, dtype=torch.bool)
    keep[[token for token in reserved if token is not None and 0 <= token < vocab]] = False
    words = keep.nonzero().flatten()
    if words.numel() == 0:
        raise ValueError(f"`{argument}` 'noise' found no word in the vocabulary of {vocab} ids beside special ones.")
    generator = torch.Generator().manual_seed(seed)
    table = words[torch.randint(words.numel(), (vocab,), generator=generator)]
    return table.to(x.device)[x.clamp(0, vocab - 1)].to(x.dtype)


def _real(x: Tensor, fields: Mapping[str, Tensor | None]) -> Tensor:
    """The real (attended) positions of one sample."""
    mask = fields.get("attention_mask")
    return mask.bool().to(x.device) if mask is not None else x.new_ones(x.shape[0], dtype=bool)


#: Modules that read token ids: a model without one cannot take them.
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)

#: The batch fields that are not inputs of the model itself (the attention mask goes in as itself).
_MASKS = ("attention_mask", "special_tokens_mask")


def _model_inputs(forward: Callable[..., Any], input_ids: Tensor, kwargs: dict[str, Any]) -> dict[str, Tensor]:
    """Take the keywords that the model's forward names (``token_type_ids``, ``position_ids``, ...) out of ``kwargs``.

    Each is a tensor with one row per sample: ``(N, L, ...)`` per token (kept with its token through every layout the
    methods and games use) or ``(N, ...)`` per sample.
    """
    names = forward_parameters(forward) - {"input_ids", *_MASKS}
    taken = {key: kwargs.pop(key) for key in list(kwargs) if key in names}
    for key, value in taken.items():
        if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != input_ids.shape[0]:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"`{key}` (an input of the model) must be a tensor with one row per sample, (N, ...) with "
                f"N = {input_ids.shape[0]}, got {shape}."
            )
        if value.device != input_ids.device:
            raise ValueError(f"`{key}` is on {value.device} but `input_ids` on {input_ids.device}; move them together.")
    return taken
