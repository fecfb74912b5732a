"""Sentence mosaics of token ids: the words of four sentences one after another, framed as one sentence.

A sentence's tile is its words: its real tokens that are not special. A mosaic is the explained sample's leading
special tokens ([CLS]), the four tiles in slot order and the sample's trailing special tokens ([SEP]), then padding to
the longest mosaic; the model's other per-token inputs (``token_type_ids``) travel with their tokens. Focus on text
(Arias-Duart et al.'s mosaics, read as a text of four sentences) then asks how much of the relevance for the class
falls on the words of its two sentences.

Refused: sentence pairs (a special token between a sample's words: two segments have no single tile), per-sample
model inputs and ``position_ids`` (a mosaic has its own positions). A mosaic longer than the model's positions is no
input of the model (:meth:`SentenceTiles.misfit`): its sample gets no value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from lit_attr.inputs.mosaics import Mosaic, Tiles
from lit_attr.inputs.tokens import check_token_batch, position_limit, resolve_token_options

__all__ = ["SentenceTiles"]


class SentenceTiles(Tiles):
    """Token ids ``(N, L)`` as sentence tiles: each sample's words, and its special tokens before and after them.

    Args:
        method: the attribution method (its model's special ids, pad id and position limit; its ``token_options``).
        x: ``(N, L)`` token ids.
        fields: the batch's ``attention_mask``, ``special_tokens_mask`` and ``model_inputs`` (each ``None`` if absent).

    Raises:
        ValueError: for a sample without words, a sentence pair, or model inputs a mosaic cannot carry.

    Example:
        >>> from types import SimpleNamespace
        >>> from torch import nn
        >>> from lit_attr.inputs import TokenOptions
        >>> net = nn.Embedding(10, 2)
        >>> net.token_options = TokenOptions(special_token_ids=(1, 2), pad_token_id=0)
        >>> tiles = SentenceTiles(SimpleNamespace(model=net, token_options=None), torch.tensor([[1, 5, 2], [1, 6, 7]]),
        ...                       {"attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])})
        >>> tiles.assemble(torch.tensor([0]), torch.tensor([[0, 1, 0, 1]])).inputs.tolist()  # [CLS] 5 6 5 6 [SEP]
        [[1, 5, 6, 5, 6, 2]]
    """

    def __init__(self, method: Any, x: Tensor, fields: Mapping[str, Any]) -> None:
        options = resolve_token_options(method.model, method.token_options)
        self.batch = check_token_batch(
            x, fields.get("attention_mask"), fields.get("special_tokens_mask"), options.special_token_ids
        )
        self.pad = options.pad_token_id if options.pad_token_id is not None else 0
        self.limit = position_limit(method.model)
        self.model_inputs = _per_token_inputs(fields.get("model_inputs"), x.shape)
        self.dtype = x.dtype
        perturbable, attended = self.batch.perturbable, self.batch.attended
        empty = (~perturbable.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"`x`: samples {empty} have no word (a real token that is not special) to make a tile of.")
        positions = torch.arange(x.shape[1], device=x.device).expand_as(perturbable)
        first = torch.where(perturbable, positions, x.shape[1]).amin(dim=1, keepdim=True)
        last = torch.where(perturbable, positions, -1).amax(dim=1, keepdim=True)
        pairs = (self.batch.special & (positions > first) & (positions < last)).any(dim=1).nonzero().flatten().tolist()
        if pairs:
            raise ValueError(
                f"`x`: samples {pairs} have a special token between their words (sentence pairs); focus tiles single "
                "sentences, and the segments of a pair make no one tile."
            )
        self.words = [row.nonzero().flatten() for row in perturbable]
        self.lead = [row.nonzero().flatten() for row in attended & (positions < first)]
        self.trail = [row.nonzero().flatten() for row in attended & (positions > last)]

    def key(self, row: int) -> Tensor:
        """The sentence's real token ids (its padding left out)."""
        return self.batch.input_ids[row][self.batch.attended[row]].cpu()

    def misfit(self, owner: int, grid: list[int]) -> str | None:
        """Whether the mosaic is longer than the model's positions (``config.max_position_embeddings``)."""
        length = self.lead[owner].numel() + sum(self.words[sample].numel() for sample in grid)
        length += self.trail[owner].numel()
        if self.limit is None or length <= self.limit:
            return None
        return f"longer than the model's {self.limit} positions"

    def assemble(self, owners: Tensor, grids: Tensor) -> Mosaic:
        """``(M, L')`` ids: the owner's leading specials, four sentences' words, its trailing specials, padding."""
        ids, device = self.batch.input_ids, self.batch.input_ids.device
        rows, positions, slots = [], [], []
        for owner, grid in zip(owners.tolist(), grids.tolist(), strict=True):
            words = [(sample, self.words[sample], slot) for slot, sample in enumerate(grid)]
            parts = [(owner, self.lead[owner], -1), *words, (owner, self.trail[owner], -1)]
            rows.append(torch.cat([torch.full_like(where, sample) for sample, where, _ in parts]))
            positions.append(torch.cat([where for _, where, _ in parts]))
            slots.append(torch.cat([torch.full_like(where, slot) for _, where, slot in parts]))
        if not rows:
            empty = ids.new_zeros(0, 1)
            return Mosaic(empty.to(self.dtype), {"attention_mask": empty, "special_tokens_mask": empty}, empty - 1)
        source_rows, source_positions = pad_sequence(rows, batch_first=True), pad_sequence(positions, batch_first=True)
        slot_of = pad_sequence(slots, batch_first=True, padding_value=-1)
        attended = pad_sequence([torch.ones_like(row) for row in rows], batch_first=True).bool()
        out = torch.where(attended, ids[source_rows, source_positions], self.pad).to(self.dtype)
        inputs = {}
        for key, value in self.model_inputs.items():
            carried = value.to(device)[source_rows, source_positions]
            inputs[key] = torch.where(attended.view(*attended.shape, *[1] * (carried.ndim - 2)), carried, 0)
        masks = {"attention_mask": attended.long(), "special_tokens_mask": (attended & (slot_of < 0)).long()}
        return Mosaic(out, {**masks, **inputs}, slot_of)


def _per_token_inputs(given: Any, shape: torch.Size) -> dict[str, Tensor]:
    """The model's other inputs, each per token ``(N, L, ...)``: they travel with their tokens into the mosaics."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TypeError(f"`model_inputs` must be a mapping name -> tensor or None, got {type(given).__name__}.")
    for key, value in given.items():
        if key == "position_ids":
            raise ValueError(
                "`model_inputs['position_ids']`: a sentence mosaic has positions of its own; leave them to the model."
            )
        if not isinstance(value, Tensor) or value.ndim < 2 or tuple(value.shape[:2]) != tuple(shape):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"`model_inputs[{key!r}]` must be per token, (N, L, ...) with (N, L) = {tuple(shape)}, to travel with "
                f"its tokens into focus's sentence mosaics; got {got}."
            )
    return dict(given)
