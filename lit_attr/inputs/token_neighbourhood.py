"""Token ids in their neighbourhood: the token embeddings every method attributes in, moved and shifted.

Token ids have no continuous change of their own; their points are the embeddings of the model's input embedding
layer (:mod:`lit_attr.inputs.embedding`). A sample moves by an ``embedding_offset`` of its real tokens that are not
special, which the method's ``attribute`` takes (the model sees the moved embeddings, padding and special tokens keep
theirs), and the layer's output shifts by ``embedding_shift`` (the [MASK] baseline's too), which the model takes off
again: the token form of Kindermans et al.'s shifted input. Noise is measured in units of the sample's root mean
square embedding value, so one ``noise`` suits any embedding scale; a sample's draws cover its real tokens alone,
keyed by their ids, so they do not depend on its batch or its padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from lit_attr._checks import check_number
from lit_attr._hygiene import preserved_model_state, row_seed
from lit_attr.inputs.embedding import EmbeddingSwap
from lit_attr.inputs.neighbourhood import Moved, Neighbourhood, Sampler
from lit_attr.inputs.token_calls import call_model, sentence_groups
from lit_attr.inputs.tokens import check_token_batch, find_embedding_layer, resolve_token_options

__all__ = ["TokenNeighbourhood"]


class TokenNeighbourhood(Neighbourhood):
    """Token ids as points of the embedding space: the embeddings ``(N, L, E)``, moved at perturbable positions.

    Args:
        method: the attribution method (its model, ``forward_fn`` and ``token_options``).
        x: ``(N, L)`` token ids.
        fields: the batch's ``attention_mask``, ``special_tokens_mask`` and ``model_inputs`` (each ``None`` if absent).
    """

    def __init__(self, method: Any, x: Tensor, fields: Mapping[str, Any]) -> None:
        super().__init__(method, x)
        options = resolve_token_options(method.model, method.token_options)
        masks = ("attention_mask", "special_tokens_mask")
        self.masks = {key: fields[key] for key in masks if fields.get(key) is not None}
        self.batch = check_token_batch(
            x, fields.get("attention_mask"), fields.get("special_tokens_mask"), options.special_token_ids
        )
        self.model_inputs = dict(fields.get("model_inputs") or {})
        self.layer = find_embedding_layer(method.model, options.embedding_layer)
        self.swap = EmbeddingSwap(self.layer)
        rows = torch.arange(x.shape[0], device=x.device)
        embeddings: Tensor | None = None
        with preserved_model_state(method.model), self.swap.installed():
            for group, positions, ids, fields_of in self._groups(x, rows):
                found = self.swap.embed(self._caller, ids, torch.ones_like(ids), fields_of)
                if embeddings is None:
                    embeddings = found.new_zeros(*x.shape, found.shape[-1])
                embeddings[group[:, None], positions] = found
        assert embeddings is not None  # a batch has a group
        self.embeddings = embeddings
        self.support = self.batch.perturbable[..., None].to(embeddings.dtype)
        self.points = embeddings * self.support
        count = (self.support.sum(dim=(1, 2)) * embeddings.shape[-1]).clamp(min=1)
        rms = (self.points.square().sum(dim=(1, 2)) / count).sqrt()
        self.scale = torch.where(rms > 0, rms, torch.ones_like(rms))

    def _caller(self, ids: Tensor, attended: Tensor | None, fields: Mapping[str, Tensor] | None) -> Tensor:
        return call_model(self.method.forward_fn, ids, attended, **(fields or {}))

    def _groups(self, ids: Tensor, rows: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]]:
        """``ids`` (the batch's ``rows``) in the layout the methods run sentences in: cut to their real tokens."""
        given = {key: value[rows] for key, value in self.model_inputs.items()}
        return sentence_groups(ids, self.batch.attended[rows], given)

    def fields(self, rows: Tensor) -> dict[str, Any]:
        """The rows' ``attention_mask``, ``special_tokens_mask`` and other model inputs, by ``attribute``'s names."""
        masks = {key: value[rows] for key, value in self.masks.items()}
        return {**masks, **{key: value[rows] for key, value in self.model_inputs.items()}}

    def draws(self, rows: Tensor, n: int, seed: int, sampler: Sampler) -> Tensor:
        """Draws for a sample's real tokens alone (placed at their positions), keyed by its real token ids."""
        out = torch.zeros(rows.numel() * n, *self.points.shape[1:], dtype=torch.float64)
        attended, ids = self.batch.attended[rows].cpu(), self.batch.input_ids[rows].cpu()  # one copy, not one a row
        for k, (real, row_ids) in enumerate(zip(attended, ids, strict=True)):
            generator = torch.Generator().manual_seed(row_seed(seed, row_ids[real]))
            out[k * n : (k + 1) * n, real] = sampler((n, int(real.sum()), self.points.shape[-1]), generator)
        return out.to(self.points.device)

    def move(self, rows: Tensor, offsets: Tensor) -> Moved:
        """The same ids, with their perturbable tokens' embeddings moved by ``offsets`` ``(rows, L, E)``."""
        offsets = offsets.to(self.points) * self.support[rows]
        kwargs = {"embedding_offset": offsets, **self.fields(rows)}
        return Moved(self.x[rows], kwargs, self.points[rows] + offsets, rows)

    def logits(self, moved: Moved, record: Callable[[Tensor], None] | None = None) -> Tensor:
        """The model's logits with the moved embeddings, sentence by sentence's real tokens (one forward per length).

        The moved embeddings replace the layer's output (the clean ones elsewhere), as the methods see them.
        """
        offsets = moved.kwargs.get("embedding_offset")
        out: Tensor | None = None
        with torch.no_grad(), preserved_model_state(self.method.model), self.swap.installed():
            for group, positions, ids, fields in self._groups(moved.inputs, moved.rows):
                if offsets is not None:
                    clean = self.embeddings[moved.rows[group][:, None], positions]
                    self.swap.replacement = clean + offsets[group[:, None], positions]
                try:
                    logits = self._caller(ids, torch.ones_like(ids), fields)
                finally:
                    self.swap.replacement = None
                if record is not None:
                    record(group)
                if out is None:
                    out = logits.new_empty(moved.inputs.shape[0], logits.shape[1])
                out[group] = logits
        assert out is not None  # moves have a group
        return out

    def shifted(self, shift: float) -> tuple[Any, Tensor, dict[str, Any]]:
        """The method itself on the same ids, with every embedding shifted by ``shift`` (taken off by the model)."""
        rows = torch.arange(self.x.shape[0], device=self.x.device)
        return self.method, self.x, {"embedding_shift": check_number("shift", shift), **self.fields(rows)}
