"""Activation deviation of transformer text classifiers along the token insertion and deletion games.

The image metric (:mod:`lit_attr.functional.activation_deviation`) asks whether perturbed inputs keep the model's
computational pathway; here the probes are the encoder layers' hidden states. Along the same schedules as
:func:`~lit_attr.functional.token_games.token_insertion_deletion`, every perturbed input ``x_t`` is compared with
the clean ``x`` at every encoder layer ``l``: ``MSE(h_l(x_t), h_l(x))`` over the real tokens (position by position)
and the hidden size, averaged over the steps t = 0 .. T. Lower means the perturbation stays on the clean pathway.

Removed tokens are masked (``replacement="mask"``): a position-by-position comparison needs the positions to stay
where they were, which dropping tokens would not.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, resolve_target
from lit_attr._hygiene import preserved_model_state
from lit_attr._memory import MemoryBackoff
from lit_attr.functional._transformer import transformer_blocks
from lit_attr.functional.activation_deviation import recorded_outputs, resolve_probe_layers
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE
from lit_attr.functional.token_perturbation import (
    TokenGame,
    clean_logits,
    perturbed_token_rows,
    prepare_token_game,
    token_schedule,
)
from lit_attr.inputs.tokens import call_model

__all__ = ["TokenActivationDeviationResult", "encoder_layers", "token_activation_deviation"]


class TokenActivationDeviationResult(NamedTuple):
    """Per-sample output of :func:`token_activation_deviation`; L = ``len(layers)``.

    Attributes:
        insertion_mse: ``(N, L)`` hidden-state MSE to the clean input, averaged over the insertion steps.
        deletion_mse: ``(N, L)`` the same along the deletion game.
        layers: names of the probed encoder layers, in the order of the columns.
    """

    insertion_mse: Tensor
    deletion_mse: Tensor
    layers: tuple[str, ...]


def encoder_layers(model: nn.Module, layers: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """Names of the encoder layers to probe: every block of the model's first stack of transformer layers.

    With ``layers=None``: the model's transformer blocks (:func:`~lit_attr.functional._transformer.transformer_blocks`:
    Hugging Face ``bert.encoder.layer.i``, ``nn.TransformerEncoder.layers.i``). Explicit names are checked as in
    :func:`~lit_attr.functional.activation_deviation.resolve_probe_layers`.

    Example:
        >>> block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        >>> encoder_layers(nn.TransformerEncoder(block, 2, enable_nested_tensor=False))
        ('layers.0', 'layers.1')
    """
    if layers is not None:
        return resolve_probe_layers(model, layers)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    blocks = transformer_blocks(model)
    if blocks:
        return tuple(blocks)
    raise ValueError(
        "Cannot find the model's encoder layers (a stack of blocks with one attention each); pass `layers` with "
        "the names of the modules whose hidden states to compare."
    )


def _play_rows(
    model: nn.Module,
    game: TokenGame,
    names: Sequence[str],
    store: dict[str, Tensor],
    clean: list[Tensor],
    samples: Tensor,
    counts: Tensor,
    keep_top: bool,
    stats: Tensor,
    start: int,
    stop: int,
) -> None:
    """Fill ``stats[start:stop]``: each probe's masked MSE to the clean states for the rows ``start .. stop - 1``."""
    rows, ids, mask, inputs = perturbed_token_rows(game, samples, counts, keep_top, start, stop)
    call_model(model, ids, mask, **inputs)
    weights = mask.to(stats.dtype)[..., None]
    for j, name in enumerate(names):
        squared = (_hidden(store, name).to(stats.dtype) - clean[j][rows].to(stats.dtype)).square()
        stats[start:stop, j] = (squared * weights).sum(dim=(1, 2)) / (weights.sum(dim=(1, 2)) * squared.shape[-1])


def _hidden(store: dict[str, Tensor], name: str) -> Tensor:
    """A layer's recorded hidden states, checked to be ``(N, L, H)``."""
    hidden = store[name]
    if hidden.ndim != 3:
        raise ValueError(f"Layer {name!r} must output hidden states (N, L, H), got {tuple(hidden.shape)}.")
    return hidden


def token_activation_deviation(
    model: nn.Module,
    input_ids: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    special_token_ids: Sequence[int] | None = None,
    layers: str | Sequence[str] | None = None,
    n_steps: int | None = None,
    tokens_per_step: int | None = None,
    max_tokens: int | None = None,
    replacement_id: int | None = None,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> TokenActivationDeviationResult:
    """How far the token insertion and deletion games push the encoder layers' hidden states from the clean ones.

    The perturbed inputs are exactly those of
    :func:`~lit_attr.functional.token_games.token_insertion_deletion` with ``replacement="mask"`` and the same
    options. The model runs in eval mode under ``torch.no_grad()``; its hooks, modes and buffers are as before
    afterwards.

    Args:
        model: a transformer classifier of token ids.
        input_ids: ``(N, L)`` token ids on the model's device.
        attributions: ``(N, L)`` per-token scores; they only rank the tokens.
        target: accepted for the common metric signature and checked against the logits; the result does not
            depend on it.
        attention_mask: ``(N, L)`` 1 on real tokens, 0 on padding.
        special_tokens_mask: ``(N, L)`` 1 on special tokens (never masked).
        special_token_ids: ids that are special wherever they occur; default: the model's ``token_options``.
        layers: probed modules (see :func:`encoder_layers`).
        n_steps: steps per game (see :func:`~lit_attr.functional.token_games.token_schedule`).
        tokens_per_step: tokens per step instead (needs ``max_tokens``).
        max_tokens: the most perturbable tokens of any sample.
        replacement_id: the id of a masked token; default: the model's mask id, else its pad id.
        internal_batch_size: most rows (samples x steps) per forward pass.
        logits: the clean logits ``(N, K)``, used to check ``target`` instead of the clean forward's.
        model_inputs: the batch's other inputs of the model by name (``token_type_ids`` ``(N, L)`` of sentence pairs,
            ...); each per-token input stays with its token in every perturbed row.

    Returns:
        :class:`TokenActivationDeviationResult` with ``(N, L)`` tensors (at least float32).

    Example:
        >>> from lit_attr.models import DemoTextClassifier
        >>> model = DemoTextClassifier(vocab_size=20, num_classes=3).eval()
        >>> ids = torch.tensor([[2, 7, 8, 9, 3]])
        >>> result = token_activation_deviation(model, ids, torch.randn(1, 5), n_steps=3)
        >>> result.layers, result.deletion_mse.shape
        (('bert.bert.encoder.layer.0', 'bert.bert.encoder.layer.1'), torch.Size([1, 2]))
    """
    names = encoder_layers(model, layers)
    game = prepare_token_game(
        model, input_ids, attributions, attention_mask=attention_mask, special_tokens_mask=special_tokens_mask,
        special_token_ids=special_token_ids, replacement="mask", replacement_id=replacement_id,
        internal_batch_size=internal_batch_size, model_inputs=model_inputs,
    )  # fmt: skip
    batch = game.batch
    schedule = token_schedule(game.counts, n_steps, tokens_per_step, max_tokens)
    n, points = schedule.shape
    backoff = MemoryBackoff("token_activation_deviation", internal_batch_size)
    with torch.no_grad(), preserved_model_state(model), recorded_outputs(model, names) as store, backoff:
        clean_states: list[list[Tensor]] = []
        parts: list[Tensor] = []

        def clean_pass(start: int, stop: int) -> None:
            inputs = {key: value[start:stop] for key, value in game.model_inputs.items()}
            parts.append(call_model(model, batch.input_ids[start:stop], batch.attended[start:stop].long(), **inputs))
            clean_states.append([_hidden(store, name) for name in names])

        backoff.chunks(n, clean_pass)
        if target is not None:
            resolve_target(target, torch.cat(parts) if logits is None else clean_logits(model, game, logits))
        clean = [torch.cat(layer) for layer in zip(*clean_states, strict=True)]
        dtype = torch.promote_types(clean[0].dtype, torch.float32)
        results = {}
        samples = torch.arange(n, device=schedule.device).repeat_interleave(points)
        counts = schedule.flatten()
        for game_name, keep_top in (("insertion", True), ("deletion", False)):
            stats = torch.empty(n * points, len(names), dtype=dtype, device=schedule.device)
            play = functools.partial(_play_rows, model, game, names, store, clean, samples, counts, keep_top, stats)
            backoff.chunks(samples.numel(), play)
            results[game_name] = stats.view(n, points, len(names)).mean(dim=1)
    return TokenActivationDeviationResult(results["insertion"], results["deletion"], names)
