"""The toolkit of the games on token ids: ranks, schedules, perturbed rows, their model inputs and target scores.

The token insertion/deletion game (:mod:`lit_attr.functional.token_games`), the ERASER metrics and token activation
deviation perturb token ids with these; see :mod:`lit_attr.functional.token_games` for what removing a token means
(``replacement="mask"`` or ``"remove"``) and which scores a row tracks (``output``). Every per-token model input
(``token_type_ids`` of sentence pairs, ...) moves with its token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice, check_device, check_finite, check_optional_int
from lit_attr._memory import MemoryBackoff, shared_backoff
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE
from lit_attr.inputs.tokens import (
    TokenBatch,
    TokenOptions,
    call_model,
    check_ids_in_vocabulary,
    check_token_batch,
    check_token_id,
    find_embedding_layer,
    forward_parameters,
    original_position_ids,
    position_padding,
    resolve_token_options,
    split_model_inputs,
    vocabulary_size,
)

__all__ = [
    "DEFAULT_TOKEN_STEPS",
    "REPLACEMENTS",
    "TOKEN_OUTPUTS",
    "TokenGame",
    "check_model_inputs",
    "clean_logits",
    "perturb_tokens",
    "perturbed_token_rows",
    "prepare_token_game",
    "resolve_game_conventions",
    "rows_inputs",
    "score_rows",
    "target_scores",
    "token_ranks",
    "token_schedule",
]

#: Steps of a token game when neither ``n_steps`` nor ``tokens_per_step`` is given.
DEFAULT_TOKEN_STEPS = 20
#: Ways to remove a token (see the module docstring).
REPLACEMENTS = ("mask", "remove")
#: What a token game tracks of the target class (see the module docstring).
TOKEN_OUTPUTS = ("prob", "logit", "prob_ratio", "sigmoid")


class TokenGame(NamedTuple):
    """Checked inputs of a token game (see :func:`prepare_token_game`)."""

    batch: TokenBatch
    ranks: Tensor
    counts: Tensor
    replacement: str
    replacement_id: int
    pad_token_id: int
    chunk: int
    model_inputs: Mapping[str, Tensor] = MappingProxyType({})


# ---------------------------------------------------------------------------------------------- building blocks
def token_ranks(attributions: Tensor, perturbable: Tensor) -> Tensor:
    """Rank of every token by descending score among its sample's perturbable tokens (0 = most important).

    Ties keep the sentence order. Tokens that are not perturbable rank after all perturbable ones, so
    ``ranks < n`` selects the ``n`` most important perturbable tokens for any ``n`` up to their number.

    Example:
        >>> token_ranks(torch.tensor([[0.0, 2.0, 1.0, 2.0]]), torch.tensor([[False, True, True, True]]))
        tensor([[3, 0, 2, 1]])
    """
    scores = torch.where(perturbable, attributions, torch.full_like(attributions, -torch.inf))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def token_schedule(
    counts: Tensor, n_steps: int | None = None, tokens_per_step: int | None = None, max_tokens: int | None = None
) -> Tensor:
    """Tokens removed (or inserted) after each step t = 0 .. T, per sample: ``(N, T + 1)``.

    With ``n_steps`` (default :data:`DEFAULT_TOKEN_STEPS`), ``T = n_steps`` for every sample and step t covers
    ``ceil(t * u / T)`` of a sample's ``u`` perturbable tokens: the curves of samples of any length share the same
    fraction axis. With ``tokens_per_step``, step t covers ``min(t * tokens_per_step, u)`` tokens and
    ``T = ceil(max_tokens / tokens_per_step)``, so ``max_tokens`` (no sample may have more perturbable tokens) must
    be given: a curve's length cannot depend on the other samples of a batch.

    Example:
        >>> token_schedule(torch.tensor([5, 2]), n_steps=4)
        tensor([[0, 2, 3, 4, 5],
                [0, 1, 1, 2, 2]])
    """
    if n_steps is not None and tokens_per_step is not None:
        raise ValueError(
            f"Give at most one of `n_steps` and `tokens_per_step`, got n_steps={n_steps!r} and "
            f"tokens_per_step={tokens_per_step!r}."
        )
    check_optional_int("n_steps", n_steps)
    check_optional_int("tokens_per_step", tokens_per_step)
    check_optional_int("max_tokens", max_tokens)
    counts = counts.long()
    if tokens_per_step is None:
        steps = n_steps or DEFAULT_TOKEN_STEPS
        t = torch.arange(steps + 1, device=counts.device)
        return (t[None] * counts[:, None] + steps - 1) // steps
    if max_tokens is None:
        raise ValueError(
            "`max_tokens` (the most perturbable tokens of any sample) must be given with `tokens_per_step`: it fixes "
            "the number of steps; alternatively pass `n_steps`."
        )
    if counts.numel() and int(counts.max()) > max_tokens:
        raise ValueError(f"A sample has {int(counts.max())} perturbable tokens, more than `max_tokens`={max_tokens}.")
    steps = -(-max_tokens // tokens_per_step)
    t = torch.arange(steps + 1, device=counts.device)
    return torch.minimum(t[None] * tokens_per_step, counts[:, None])


def perturb_tokens(
    input_ids: Tensor,
    attended: Tensor,
    removed: Tensor,
    replacement: str,
    replacement_id: int,
    pad_token_id: int,
) -> tuple[Tensor, Tensor]:
    """Remove the ``removed`` tokens of every row: ``(input_ids, attention_mask)`` of the result.

    Args:
        input_ids: ``(R, L)`` token ids.
        attended: ``(R, L)`` bool, the real tokens.
        removed: ``(R, L)`` bool, the tokens to remove (a subset of ``attended``).
        replacement: ``"mask"`` or ``"remove"`` (see the module docstring).
        replacement_id: id of a masked token (and the lone token of an emptied ``"remove"`` row).
        pad_token_id: fill of the tail of re-packed ``"remove"`` rows.

    Example:
        >>> ids, attended = torch.tensor([[2, 7, 8, 9, 3]]), torch.ones(1, 5, dtype=torch.bool)
        >>> removed = torch.tensor([[False, True, False, True, False]])
        >>> perturb_tokens(ids, attended, removed, "mask", 4, 0)[0].tolist()
        [[2, 4, 8, 4, 3]]
        >>> [t.tolist() for t in perturb_tokens(ids, attended, removed, "remove", 4, 0)]
        [[[2, 8, 3, 0, 0]], [[1, 1, 1, 0, 0]]]
    """
    if replacement == "mask":
        return torch.where(removed, torch.full_like(input_ids, replacement_id), input_ids), attended.long()
    keep = attended & ~removed
    empty = ~keep.any(dim=1)
    width = input_ids.shape[1]
    # Kept tokens go to their rank among the kept ones; everything else to a spare column that is cut off.
    destination = torch.where(keep, keep.long().cumsum(dim=1) - 1, torch.full_like(input_ids, width))
    ids = torch.full((input_ids.shape[0], width + 1), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    ids = ids.scatter(1, destination, input_ids)[:, :width]
    lengths = keep.sum(dim=1)
    ids[empty, 0] = replacement_id
    lengths = torch.where(empty, torch.ones_like(lengths), lengths)
    mask = torch.arange(width, device=input_ids.device)[None] < lengths[:, None]
    return ids, mask.long()


def resolve_game_conventions(
    model: nn.Module,
    replacement: str,
    replacement_id: int | None,
    pad_token_id: int | None,
    special_token_ids: Sequence[int] | None,
    internal_batch_size: int | None,
) -> tuple[TokenOptions, int, int, int]:
    """Check a token game's options and resolve its conventions from the model where left as ``None``.

    Returns:
        ``(options, vocabulary size, replacement id, pad id)``; the pad id defaults to the replacement id.

    Raises:
        TypeError: for a model that is not a module.
        ValueError: for unknown options, no replacement id given or declared, or ids outside the vocabulary.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    check_choice("replacement", replacement, REPLACEMENTS)
    check_optional_int("internal_batch_size", internal_batch_size)
    options = resolve_token_options(
        model, special_token_ids=special_token_ids, mask_token_id=replacement_id, pad_token_id=pad_token_id
    )
    try:
        vocab = vocabulary_size(model, find_embedding_layer(model, options.embedding_layer))
    except ValueError:
        vocab = vocabulary_size(model)
    if options.replacement_id is None:
        raise ValueError(
            "`replacement_id` (the [MASK] or [PAD] id that stands for a removed token) must be given: the model "
            "declares neither."
        )
    chosen = check_token_id("replacement_id", options.replacement_id, vocab)
    pad = check_token_id("pad_token_id", options.pad_token_id if options.pad_token_id is not None else chosen, vocab)
    return options, vocab, chosen, pad


def prepare_token_game(
    model: nn.Module,
    input_ids: Any,
    attributions: Any,
    *,
    attention_mask: Any = None,
    special_tokens_mask: Any = None,
    special_token_ids: Sequence[int] | None = None,
    replacement: str = "mask",
    replacement_id: int | None = None,
    pad_token_id: int | None = None,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> TokenGame:
    """Check the inputs of a token game and resolve its token conventions, ranks and chunk size.

    Token conventions left as ``None`` come from the model (its ``token_options``, Hugging Face config or the
    embedding's ``padding_idx``): special ids, ``replacement_id`` (the mask id, else the pad id) and
    ``pad_token_id``.

    Raises:
        TypeError: for a model that is not a module, or ids/attributions of the wrong type.
        ValueError: for shapes that do not match, non-finite attributions, unknown options, or token ids outside
            the vocabulary.
    """
    if isinstance(input_ids, Tensor) and isinstance(model, nn.Module):  # before anything reads the ids: a tensor
        check_device("input_ids", input_ids, model)  # elsewhere cannot be inspected here
    options, vocab, chosen, pad = resolve_game_conventions(
        model, replacement, replacement_id, pad_token_id, special_token_ids, internal_batch_size
    )
    batch = check_token_batch(input_ids, attention_mask, special_tokens_mask, options.special_token_ids)
    if not isinstance(attributions, Tensor) or not attributions.is_floating_point():
        raise TypeError(
            "`attributions` must be a floating-point tensor (N, L) of per-token scores, got "
            f"{attributions.dtype if isinstance(attributions, Tensor) else type(attributions).__name__}."
        )
    if attributions.shape != batch.input_ids.shape:
        raise ValueError(
            f"`attributions` must have the shape of the token ids (N, L) = {tuple(batch.input_ids.shape)}, got "
            f"{tuple(attributions.shape)}; reduce embedding attributions (N, L, E) over E first."
        )
    attributions = attributions.to(batch.input_ids.device)
    if not bool(torch.isfinite(attributions[batch.perturbable]).all()):
        raise ValueError("`attributions` contains NaN or infinite values on perturbable tokens.")
    check_ids_in_vocabulary("input_ids", batch.input_ids, vocab)
    ranks = token_ranks(attributions, batch.perturbable)
    counts = batch.perturbable.sum(dim=1)
    chunk = internal_batch_size or 2**62
    inputs = check_model_inputs(model_inputs, batch.input_ids)
    padding = position_padding(model)
    if replacement == "mask" and chosen == padding and "position_ids" in forward_parameters(model):
        # A RoBERTa-style model would read a token replaced by the pad id as padding: it keeps its position.
        inputs.setdefault("position_ids", original_position_ids(batch.attended, padding))
    return TokenGame(batch, ranks, counts, replacement, chosen, pad, chunk, MappingProxyType(inputs))


def check_model_inputs(model_inputs: Any, input_ids: Tensor) -> dict[str, Tensor]:
    """The extra model inputs of a game, checked: tensors with one row per sample, on the device of the ids."""
    if model_inputs is None:
        return {}
    if not isinstance(model_inputs, Mapping):
        raise TypeError(f"`model_inputs` must be a mapping name -> tensor or None, got {type(model_inputs).__name__}.")
    n = input_ids.shape[0]
    for key, value in model_inputs.items():
        if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != n or value.device != input_ids.device:
            shape = f"{tuple(value.shape)} on {value.device}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"`model_inputs[{key!r}]` must be a tensor (N, ...) with N = {n} on {input_ids.device}, got {shape}."
            )
    return dict(model_inputs)


def clean_logits(
    model: nn.Module, game: TokenGame, logits: Tensor | None = None, backoff: MemoryBackoff | None = None
) -> Tensor:
    """Logits of the unperturbed batch in at least float32 (``logits`` given: checked and used instead).

    ``backoff`` shares the chunk size (halved on out-of-memory errors) with the game's other passes.
    """
    n = game.batch.input_ids.shape[0]
    if logits is None:
        ids, mask = game.batch.input_ids, game.batch.attended.long()
        parts: list[Tensor] = []
        with shared_backoff(backoff, "token game", game.chunk) as chunks:
            chunks.chunks(
                n,
                lambda start, stop: parts.append(
                    call_model(model, ids[start:stop], mask[start:stop], **_rows_of(game.model_inputs, start, stop))
                ),
            )
        logits = torch.cat(parts)
    elif not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"`logits` must be the clean logits (N, K) = ({n}, K), got {shape}.")
    check_finite("logits", logits)
    logits = logits.detach()
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def perturbed_token_rows(
    game: TokenGame, samples: Tensor, counts: Tensor, keep_top: bool, start: int, stop: int
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """Rows ``start .. stop - 1`` of a game: ``(their samples, token ids, attention masks, other model inputs)``.

    Row r removes its sample's ``counts[r]`` most important tokens (``keep_top=False``) or keeps only them and
    removes the other perturbable tokens (``keep_top=True``).
    """
    batch, rows = game.batch, samples[start:stop]
    top = game.ranks[rows] < counts[start:stop, None]
    removed = batch.perturbable[rows] & ~top if keep_top else top
    ids, mask = perturb_tokens(
        batch.input_ids[rows], batch.attended[rows], removed, game.replacement, game.replacement_id, game.pad_token_id
    )
    return rows, ids, mask, rows_inputs(game, rows, batch.attended[rows], removed)


def rows_inputs(game: TokenGame, rows: Tensor, attended: Tensor, removed: Tensor) -> dict[str, Tensor]:
    """The model inputs of perturbed rows: each per-token input moves with its token (re-packed by ``"remove"``).

    Example:
        >>> batch = check_token_batch(torch.tensor([[2, 7, 8, 3]]))
        >>> game = TokenGame(batch, torch.zeros(1, 4), torch.ones(1), "remove", 4, 0, 8,
        ...                  {"token_type_ids": torch.tensor([[0, 0, 1, 1]])})
        >>> removed = torch.tensor([[False, True, False, False]])
        >>> rows_inputs(game, torch.tensor([0]), batch.attended, removed)["token_type_ids"].tolist()
        [[0, 1, 1, 0]]
    """
    per_token, per_sample = split_model_inputs(game.model_inputs, *game.batch.input_ids.shape)
    inputs = {key: value[rows] for key, value in per_sample.items()}
    for key, value in per_token.items():
        moved = value[rows]
        if game.replacement == "remove":
            keep = attended & ~removed
            width = moved.shape[1]
            spare = torch.full_like(keep, width, dtype=torch.long)  # removed tokens go to a column that is cut off
            destination = torch.where(keep, keep.long().cumsum(dim=1) - 1, spare)
            packed = moved.new_zeros(moved.shape[0], width + 1, *moved.shape[2:])
            index = destination.view(*destination.shape, *([1] * (moved.ndim - 2))).expand_as(moved)
            moved = packed.scatter(1, index, moved)[:, :width]
        inputs[key] = moved
    return inputs


def target_scores(logits: Tensor, target: Tensor, output: str) -> Tensor:
    """The tracked score of each row's target class: ``(R,)`` from logits ``(R, K)`` and targets ``(R,)``.

    ``"prob"`` (and ``"prob_ratio"``, whose division by the clean score is the caller's) is the softmax probability,
    ``"logit"`` the logit, ``"sigmoid"`` the sigmoid of the target's logit alone (multi-label heads).

    Example:
        >>> logits, target = torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([1])
        >>> [round(float(target_scores(logits, target, o)), 4) for o in ("prob", "logit", "sigmoid")]
        [0.787, 2.0, 0.8808]
    """
    if output in ("prob", "prob_ratio"):
        return logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
    chosen = logits.gather(1, target[:, None]).squeeze(1)
    return chosen.sigmoid() if output == "sigmoid" else chosen


def score_rows(
    model: nn.Module,
    game: TokenGame,
    samples: Tensor,
    counts: Tensor,
    keep_top: bool,
    target: Tensor,
    clean: Tensor,
    output: str = "prob",
    backoff: MemoryBackoff | None = None,
) -> Tensor:
    """Target scores of perturbed rows: row r takes sample ``samples[r]`` and removes tokens by rank.

    Row r removes its sample's ``counts[r]`` most important tokens (``keep_top=False``) or keeps only them and
    removes the other perturbable tokens (``keep_top=True``). Rows run in chunks of ``game.chunk`` (halved on
    out-of-memory errors, see :class:`~lit_attr._memory.MemoryBackoff`; ``backoff`` shares that size between passes).
    ``output`` is one of :data:`TOKEN_OUTPUTS` (see :func:`target_scores`).

    Returns:
        ``(R,)`` scores in the dtype of ``clean``, the clean logits ``(N, K)`` (``output="prob_ratio"`` divides by
        their probability).
    """
    check_choice("output", output, TOKEN_OUTPUTS)
    out: list[Tensor] = []
    clean_probability = target_scores(clean, target, "prob") if output == "prob_ratio" else None

    def score(start: int, stop: int) -> None:
        rows, ids, mask, inputs = perturbed_token_rows(game, samples, counts, keep_top, start, stop)
        width = int(mask.nonzero()[:, 1].max()) + 1  # the chunk's longest row: padding beyond it changes nothing
        per_token, per_sample = split_model_inputs(inputs, *ids.shape)
        inputs = {**per_sample, **{key: value[:, :width] for key, value in per_token.items()}}
        logits = call_model(model, ids[:, :width], mask[:, :width], **inputs).to(clean.dtype)
        score = target_scores(logits, target[rows], output)
        if clean_probability is not None:
            score = score / clean_probability[rows]
        out.append(score)

    with shared_backoff(backoff, "token game", game.chunk) as chunks:
        chunks.chunks(samples.numel(), score)
    return torch.cat(out)


def _rows_of(inputs: Mapping[str, Tensor], start: int, stop: int) -> dict[str, Tensor]:
    return {key: value[start:stop] for key, value in inputs.items()}


# ------------------------------------------------------------------------------------------------------ metric
