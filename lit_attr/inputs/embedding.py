"""Token ids attributed in the embedding space of the model's input embedding layer.

A method never sees token ids: it sees the token embeddings ``(n, l, E)`` of a chunk and a forward on them. A forward
hook on the embedding layer replaces its output with the embeddings the method proposes, so any model works with
its forward unchanged, and the hook is removed on every exit.

Batch independence across padding: every sample is cut to its real tokens (kept in order and placed from position
0, as right padding does) and samples are grouped by their number of real tokens, so no forward inside a group
sees padding (the model still gets an all-ones ``attention_mask`` where its forward takes one). Padding and special
tokens are never perturbed: the embedding the model sees there is always the clean one, so no gradient reaches
them and every method gives them exactly 0.

The points ``z`` of the space have shape ``(n, l, E + 1)``: the embeddings (divided by a per-sample scale for
methods whose steps have a length, :attr:`~lit_attr.methods.AttributionMethod.relative_steps`: their steps are
then measured in units of the sample's mean token-embedding norm), plus one last feature holding the row's sample
index, spaced widely enough that noise added by a method cannot blur it. No method moves that feature (its gradient
is zero), so the forward knows the token ids, clean embeddings and special positions of every row however a method
repeats, reorders, perturbs or compacts its rows. Attributions do not depend on the scale: each path step
contributes ``grad_z * dz = grad_E * dE``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._memory import MemoryBackoff
from lit_attr.inputs.space import MethodCall, Space
from lit_attr.inputs.token_calls import call_model, sentence_groups, split_model_inputs
from lit_attr.inputs.tokens import (
    TokenBatch,
    TokenOptions,
    check_ids_in_vocabulary,
    check_length,
    check_token_batch,
    is_token_ids,
)

__all__ = ["EmbeddingSwap", "TokenCall", "TokenSpace", "pads_invariantly"]

#: The model on token ids ``(n, l)`` with an attention mask ``(n, l)`` (``None``: every token is real) and the batch's
#: other model inputs of those rows (``token_type_ids`` ``(n, l)``, ...; ``None``: none).
Caller = Callable[[Tensor, Tensor | None, Mapping[str, Tensor] | None], Tensor]
Fields = Mapping[str, Tensor]

#: Distance between the sample-index values of consecutive rows in the last feature of ``z``: far beyond any noise
#: a method adds (SmoothGrad's 0.15), and exact in float32 for batches of up to 16k samples.
INDEX_SPACING = 1024.0


class EmbeddingSwap:
    """A forward hook on the embedding layer that records its output, or replaces it while ``replacement`` is set."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.replacement: Tensor | None = None
        self.captured: Tensor | None = None
        self.calls = 0

    @contextmanager
    def installed(self) -> Iterator[EmbeddingSwap]:
        """The hook, for the duration of the block."""
        handle = self.layer.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Tensor | None:
        if not isinstance(output, Tensor) or output.ndim != 3:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"The embedding layer must return token embeddings (N, L, E), got {shape}; pass `embedding_layer=` "
                "naming the module that maps token ids to embeddings."
            )
        self.calls += 1
        if self.replacement is None:
            self.captured = output.detach()
            return None
        if output.shape != self.replacement.shape:
            raise ValueError(
                f"The embedding layer returned {tuple(output.shape)} where the method substitutes "
                f"{tuple(self.replacement.shape)}; `embedding_layer` must embed the input_ids (N, L) as (N, L, E)."
            )
        return self.replacement.to(output.dtype)

    def embed(
        self, caller: Caller, ids: Tensor, attended: Tensor | None = None, fields: Fields | None = None
    ) -> Tensor:
        """The layer's output on ``ids`` ``(n, l)``.

        One call of the layer itself where it is an ``nn.Embedding`` (its output depends on the ids alone), else what
        it returns inside a forward of the model.
        """
        if isinstance(self.layer, nn.Embedding):
            with torch.no_grad():
                return self.layer(ids).detach()
        return self.capture(caller, ids, attended, fields)[1]

    def capture(
        self, caller: Caller, ids: Tensor, attended: Tensor | None = None, fields: Fields | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits and the embedding layer's output on ``ids`` (one forward, no gradient)."""
        self.captured = None
        with torch.no_grad():
            logits = caller(ids, attended, fields)
        if self.captured is None:
            raise ValueError("The embedding layer did not run in the model's forward; pass `embedding_layer=`.")
        if tuple(self.captured.shape[:2]) != tuple(ids.shape):
            raise ValueError(
                f"The embedding layer returned {tuple(self.captured.shape)} for input_ids of shape {tuple(ids.shape)}; "
                "`embedding_layer` must embed every token: (N, L) -> (N, L, E)."
            )
        return logits.detach(), self.captured


class TokenSpace(Space):
    """The embedding space of a chunk of one segment (see the module docstring); built by :class:`TokenCall`.

    ``attended`` is ``(n, l)``: all ones for a length group, the attention mask in a padded segment; ``fields`` are
    the rows' other model inputs (``token_type_ids`` cut to the same positions, ...), kept with every row. The
    samples' points are their clean embeddings moved by ``offset`` ``(n, l, E)`` (the model sees the moved ones) and
    by ``shift`` (a constant on every embedding, the baseline's too, that the model takes off again), at perturbable
    positions.
    """

    def __init__(
        self,
        call: TokenCall,
        samples: Tensor,
        ids: Tensor,
        attended: Tensor,
        fields: dict[str, Tensor],
        perturbable: Tensor,
        clean: Tensor,
        logits: Tensor,
        scaled: bool,
        offset: Tensor | None = None,
        shift: float = 0.0,
    ) -> None:
        self.call = call
        self.ids = ids
        self.attended = attended
        self.fields = fields
        self.perturbable = perturbable
        self.clean = clean.to(call.dtype)
        self.dtype = call.dtype
        self.scale = self._scale() if scaled else torch.ones(ids.shape[0], dtype=self.dtype, device=ids.device)
        self._baseline: Tensor | None = None
        self.shift = shift
        moved = self.clean + shift + (0.0 if offset is None else offset.to(self.dtype))
        super().__init__(
            self.to_z(torch.where(perturbable[..., None], moved, self.clean)),
            samples,
            self.logits_of,
            raw=False,
            feature_shape=(ids.shape[1], 1),
            support=perturbable[..., None].to(self.dtype),
            logits=logits,
        )

    @property
    def baseline(self) -> Tensor:
        """The baseline token's embedding ([MASK], else [PAD]) at perturbable positions, the clean one elsewhere."""
        if self._baseline is None:
            ids = torch.where(self.perturbable, torch.full_like(self.ids, self.call.baseline_id), self.ids)
            embedded = self.call.swap.embed(self.call.caller, ids, self.attended, self.fields) + self.shift
            self._baseline = self.to_z(torch.where(self.perturbable[..., None], embedded, self.clean))
        return self._baseline

    def _scale(self) -> Tensor:
        """Each sample's mean token-embedding norm over its perturbable tokens (1 where that is 0)."""
        norms = self.clean.norm(dim=-1)
        weights = self.perturbable.to(self.dtype)
        weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, torch.ones_like(weights))
        scale = (norms * weights).sum(dim=1) / weights.sum(dim=1)
        return torch.where(scale > 0, scale, torch.ones_like(scale))

    def to_z(self, embeddings: Tensor) -> Tensor:
        """Embeddings ``(n, l, E)`` of this chunk's samples as points ``(n, l, E + 1)``."""
        n, length = self.ids.shape
        index = (torch.arange(n, dtype=self.dtype, device=self.ids.device) * INDEX_SPACING).view(n, 1, 1)
        return torch.cat([embeddings.to(self.dtype) / self.scale.view(n, 1, 1), index.expand(n, length, 1)], dim=-1)

    def rows_of(self, z: Tensor) -> Tensor:
        """The sample (row of this chunk) of every point of ``z``."""
        return (z[:, 0, -1].detach() / INDEX_SPACING).round().long()

    def embeddings_of(self, z: Tensor) -> Tensor:
        """The embeddings the model sees for points ``z`` (the clean ones at padding and special positions)."""
        rows = self.rows_of(z)
        moved = z[..., :-1] * self.scale[rows].view(-1, 1, 1) - self.shift
        return torch.where(self.perturbable[rows][..., None], moved, self.clean[rows])

    def logits_of(self, z: Tensor) -> Tensor:
        """Logits of the rows of ``z`` ``(m, l, E + 1)``; each row's last feature names its sample."""
        swap = self.call.swap
        swap.replacement, swap.calls = self.embeddings_of(z), 0
        try:
            rows = self.rows_of(z)
            fields = {key: value[rows] for key, value in self.fields.items()}
            out = self.call.caller(self.ids[rows], self.attended[rows], fields)
        finally:
            swap.replacement = None
        if swap.calls == 0:
            raise ValueError("The embedding layer did not run in the model's forward; pass `embedding_layer=`.")
        return out

    def keys(self) -> list[Tensor]:
        """Each sample's real token ids: its random draws do not depend on its batch or its padding."""
        return [row[real] for row, real in zip(self.ids, self.attended, strict=True)]

    def expand_features(self, maps: Tensor) -> Tensor:
        """Per-token maps are the maps of the input (one value per token id)."""
        return maps

    def check_samples(self, samples: Tensor, name: str) -> None:
        """Other samples must be token ids ``(M, L')`` too (any length)."""
        if not is_token_ids(samples) or samples.ndim != 2:
            raise ValueError(
                f"`{name}` for token inputs must be token ids (M, L'), got {tuple(samples.shape)} of dtype "
                f"{samples.dtype}."
            )

    def run_samples(
        self, samples: Tensor, chunk: int | None = None, attention_mask: Tensor | None = None, **fields: Tensor
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Run the model on other token ids ``(M, L')`` (IG2's references), each on its own real tokens alone.

        Without ``attention_mask``, every token that is not the pad id is real.
        """
        samples = samples.to(self.ids.device)
        pad = self.call.options.pad_token_id
        if attention_mask is None:
            attention_mask = samples != pad if pad is not None else torch.ones_like(samples)
        name = self.call.reference_name
        refs = check_token_batch(samples, attention_mask.to(samples.device), name=name)
        check_ids_in_vocabulary(name, refs.input_ids, self.call.vocab)
        check_length(name, refs.input_ids, refs.attended, self.call.limit)
        for rows, _, ids, _ in sentence_groups(refs.input_ids, refs.attended, {}):
            step = chunk or rows.numel()
            for start in range(0, rows.numel(), step):
                yield rows[start : start + step], self.call.caller(ids[start : start + step], None, None)


class _Group(NamedTuple):
    """A segment: samples run together (one length, or all of them padded), their positions, ids and embeddings."""

    samples: Tensor
    positions: Tensor
    ids: Tensor
    attended: Tensor
    fields: dict[str, Tensor]
    clean: Tensor | None


class TokenCall(MethodCall):
    """One ``attribute`` call on token ids: checks, length groups, spaces, and the scatter back to ``(N, L)``."""

    reference_name = "references"

    def __init__(
        self,
        method: Any,
        batch: TokenBatch,
        kwargs: dict[str, Any],
        *,
        options: TokenOptions,
        layer: nn.Module,
        baseline_id: int,
        vocab: int | None,
        limit: int | None,
        token_reduction: str,
        model_inputs: Fields | None = None,
        offset: Tensor | None = None,
        shift: float = 0.0,
    ) -> None:
        super().__init__(method, batch.input_ids, kwargs)
        self.offset, self.shift = offset, shift
        self.model_inputs = dict(model_inputs or {})
        self.batch = batch
        self.options = options
        self.baseline_id = baseline_id
        self.vocab = vocab
        self.limit = limit
        self.token_reduction = token_reduction
        self.swap = EmbeddingSwap(layer)
        forward = method.forward_fn
        self.caller: Caller = lambda ids, attended=None, fields=None: call_model(
            forward, ids, torch.ones_like(ids) if attended is None else attended.long(), **(fields or {})
        )
        self.dtype = torch.float32
        self.groups: list[_Group] = []
        self._group_of: Tensor | None = None  # (N,) each sample's length group
        self._row_of: Tensor | None = None  # (N,) its row in that group
        self._groups_of_cpu: list[int] = []
        self._scores: Tensor | None = None
        self._info: dict[str, Tensor] = {}

    def installed(self) -> Any:
        """The embedding hook."""
        return self.swap.installed()

    def prepare(self) -> None:
        """Fresh copies of the ids and masks, and the segments: one padded batch, or one group per length."""
        self.batch = TokenBatch(*(t.clone() for t in self.batch))
        self.x = ids = self.batch.input_ids
        attended = self.batch.attended
        self.model_inputs = {key: value.clone() for key, value in self.model_inputs.items()}
        lengths = torch.unique(attended.sum(dim=1)).numel()
        if lengths > 1 and pads_invariantly(self.method, self.caller, ids, attended, self.model_inputs):
            positions = torch.arange(ids.shape[1], device=ids.device).expand(self.n, -1)
            samples = torch.arange(self.n, device=ids.device)
            self.groups = [_Group(samples, positions, ids, attended, dict(self.model_inputs), None)]
        else:
            self.groups = [
                _Group(samples, positions, real, torch.ones_like(real, dtype=torch.bool), fields, None)
                for samples, positions, real, fields in sentence_groups(ids, attended, self.model_inputs)
            ]
        self._group_of = torch.empty(self.n, dtype=torch.long, device=ids.device)
        self._row_of = torch.empty_like(self._group_of)
        for number, group in enumerate(self.groups):
            self._group_of[group.samples] = number
            self._row_of[group.samples] = torch.arange(group.samples.numel(), device=ids.device)
        self._groups_of_cpu = self._group_of.tolist()

    def clean_logits(self, run: Callable[[int, int], Tensor], backoff: MemoryBackoff) -> Tensor:
        """One forward per length group (chunked by ``backoff``), with the clean embeddings; moved with an offset."""
        logits = None
        for number, group in enumerate(self.groups):
            parts: list[Any] = []
            if self.offset is None:
                backoff.chunks(group.ids.shape[0], functools.partial(self._layer_rows, self.swap.capture, group, parts))
                found, clean = (torch.cat(part) for part in zip(*parts, strict=True))
                self.groups[number] = group._replace(clean=clean)
            else:  # the method explains the moved point; the clean embeddings are the layer's output alone
                backoff.chunks(group.ids.shape[0], functools.partial(self._layer_rows, self.swap.embed, group, parts))
                self.groups[number] = group = group._replace(clean=torch.cat(parts))
                parts = []
                backoff.chunks(group.ids.shape[0], functools.partial(self._moved_rows, group, parts))
                found = torch.cat(parts)
            if logits is None:
                logits = found.new_empty(self.n, found.shape[1])
            logits[group.samples] = found
        assert logits is not None  # a batch has a group
        return logits

    def _layer_rows(self, call: Callable[..., Any], group: _Group, parts: list[Any], start: int, stop: int) -> None:
        """``call`` (the swap's ``capture`` or ``embed``) on rows ``start:stop`` of ``group``, kept in ``parts``."""
        fields = {key: value[start:stop] for key, value in group.fields.items()}
        parts.append(call(self.caller, group.ids[start:stop], group.attended[start:stop], fields))

    def _moved_rows(self, group: _Group, parts: list[Tensor], start: int, stop: int) -> None:
        assert self.offset is not None and group.clean is not None  # called for an offset, after the embeddings
        samples, positions = group.samples[start:stop, None], group.positions[start:stop]
        offset = self._offset(samples, positions, group.clean.shape[-1]).to(group.clean)
        self.swap.replacement = group.clean[start:stop] + offset * self.batch.perturbable[samples, positions][..., None]
        try:
            fields = {key: value[start:stop] for key, value in group.fields.items()}
            with torch.no_grad():
                parts.append(self.caller(group.ids[start:stop], group.attended[start:stop], fields).detach())
        finally:
            self.swap.replacement = None

    def segments(self) -> list[Tensor]:
        """The samples of each segment (one padded batch, or the length groups)."""
        return [group.samples for group in self.groups]

    def space(self, samples: Tensor, logits: Tensor) -> TokenSpace:
        """The embedding space of ``samples`` (all of one length group)."""
        number = self._groups_of_cpu[int(samples[0])]
        group = self.groups[number]
        if group.clean is None:  # the caller gave the clean logits: one call of the embedding layer per group
            clean = self.swap.embed(self.caller, group.ids, group.attended, group.fields)
            group = self.groups[number] = group._replace(clean=clean)
        self.dtype = torch.promote_types(group.clean.dtype, torch.float32)
        rows = self._rows(samples)
        perturbable = self.batch.perturbable[samples[:, None], group.positions[rows]]
        scaled = bool(getattr(self.method, "relative_steps", False))
        fields = {key: value[rows] for key, value in group.fields.items()}
        ids, attended, clean = group.ids[rows], group.attended[rows], group.clean[rows]
        offset = None if self.offset is None else self._offset(samples[:, None], group.positions[rows], clean.shape[-1])
        return TokenSpace(
            self, samples, ids, attended, fields, perturbable, clean, logits, scaled, offset=offset, shift=self.shift
        )

    def _offset(self, samples: Tensor, positions: Tensor, width: int) -> Tensor:
        """The ``embedding_offset`` of these samples at these positions, refused unless its width is the layer's."""
        assert self.offset is not None  # asked for an offset only
        if self.offset.shape[-1] != width:
            raise ValueError(
                f"`embedding_offset` must be (N, L, E) with the embedding width E = {width}, got "
                f"{tuple(self.offset.shape)}."
            )
        return self.offset[samples, positions]

    def _rows(self, samples: Tensor) -> Tensor:
        """The rows of ``samples`` in their length group."""
        assert self._row_of is not None  # set by prepare()
        return self._row_of[samples]

    def collect(self, space: Space, result: Any) -> None:
        """Scatter a chunk's maps (and info) back to the padded ``(N, L, ...)`` layout."""
        assert isinstance(space, TokenSpace)
        maps, info = result if isinstance(result, tuple) else (result, None)
        values = self._values(space, maps)
        n, length = self.batch.input_ids.shape
        pos = self.groups[self._groups_of_cpu[int(space.samples[0])]].positions[self._rows(space.samples)]
        if self._scores is None:
            self._scores = values.new_zeros(n, length, *values.shape[2:])
        self._scores[space.samples[:, None], pos] = values.detach()
        for key, value in (info or {}).items():
            self._info[key] = self._scatter(self._info.get(key), space, value.detach(), pos, n, length)

    def _values(self, space: TokenSpace, maps: Tensor) -> Tensor:
        """Embedding attributions ``(n, l, E)`` of a space-shaped map, or the per-token values of a feature map."""
        if maps.shape == space.z.shape:
            return maps[..., :-1]
        return maps.reshape(maps.shape[0], maps.shape[1])

    def _scatter(
        self, full: Tensor | None, space: TokenSpace, value: Tensor, pos: Tensor, n: int, length: int
    ) -> Tensor:
        """Put a chunk's info ``value`` (its samples first) into the whole batch's tensor ``full``."""
        point, feature = tuple(space.z.shape[1:]), tuple(space.feature_shape)
        if value.ndim >= 3 and tuple(value.shape[2:]) in (point, feature):
            k = value.shape[1]
            if tuple(value.shape[2:]) == point:  # points of the space (IG2's counterfactuals): their embeddings
                value = space.embeddings_of(value.flatten(0, 1)).view(value.shape[0], k, *value.shape[2:-1], -1)
            else:
                value = value.flatten(3)[..., 0]
            moved = value.movedim(2, 1)  # (n, l, k, ...)
            if full is None:
                full = moved.new_zeros(n, length, *moved.shape[2:]).movedim(1, 2)
            full.movedim(2, 1)[space.samples[:, None], pos] = moved
            return full
        if full is None:
            full = value.new_zeros(n, *value.shape[1:])
        full[space.samples] = value
        return full

    def result(self) -> Any:
        """The per-token scores of the batch: reduced over the embedding, exactly 0 on padding and specials."""
        scores = self._scores
        assert scores is not None  # every batch has one group with one sample
        scores[~self.batch.perturbable] = 0
        if self.token_reduction == "sum" and scores.ndim == 3:
            scores = scores.sum(dim=-1)
        elif self.token_reduction == "norm" and scores.ndim == 3:
            scores = scores.norm(dim=-1)
        elif self.token_reduction == "none" and scores.ndim == 2:  # one value per token, shown on every feature
            width = next(group.clean.shape[-1] for group in self.groups if group.clean is not None)
            scores = scores[..., None].expand(*scores.shape, width)
        return (scores, self._info) if self._info else scores


#: Whether a model's output for a sentence ignores its padding (under its attention mask), found once per model and
#: side of the padding (right, left or mixed: a model with absolute positions may ignore right padding only).
_INVARIANT: weakref.WeakKeyDictionary[nn.Module, dict[str, bool]] = weakref.WeakKeyDictionary()


def pads_invariantly(
    method: Any, caller: Caller, ids: Tensor, attended: Tensor, model_inputs: Fields | None = None
) -> bool:
    """Whether the model's logits for a sentence do not depend on the padding after it, under its attention mask.

    Checked once per model and side of the padding (when the method runs the model itself) on the most padded
    sentence of the first batch with padding on that side: its logits alone, cut to its real tokens, against its
    logits in the padded layout. Models that ignore the attention mask (a mean over every position, say) fail the
    check, as do models with absolute positions on left padding, and their sentences then run in groups of one
    length, where no forward sees padding.
    """
    model = method.model
    cached = method.forward_fn is model
    steps = attended.long().diff(dim=1)
    side = "right" if bool((steps <= 0).all()) else "left" if bool((steps >= 0).all()) else "mixed"
    if cached and side in _INVARIANT.get(model, {}):
        return _INVARIANT[model][side]
    sample = int(attended.sum(dim=1).argmin())
    real = attended[sample]
    with torch.no_grad():
        per_token, per_sample = split_model_inputs(model_inputs or {}, *ids.shape)
        own = {key: value[sample : sample + 1] for key, value in per_sample.items()}
        cut = {key: value[sample, real][None] for key, value in per_token.items()}
        whole = {key: value[sample : sample + 1] for key, value in per_token.items()}
        alone = caller(ids[sample : sample + 1, real], None, {**own, **cut})
        padded = caller(ids[sample : sample + 1], attended[sample : sample + 1], {**own, **whole})
    scale = float(alone.abs().max().clamp_min(1.0))
    invariant = bool(torch.allclose(alone.float(), padded.float(), rtol=0.0, atol=1e-4 * scale))
    if cached:
        _INVARIANT.setdefault(model, {})[side] = invariant
    return invariant
