"""Attribution of integer token ids in the embedding space of the model's input embedding layer.

``method.attribute(input_ids, target, attention_mask=...)`` lands here (see
:meth:`~lit_attr.methods.base.AttributionMethod.attribute`). The method runs on the token embeddings ``(N, L, E)``,
the output of the model's input embedding layer: a forward hook replaces that output with the embeddings the
method proposes, so any model works with its forward unchanged, and the hook is removed on every exit.

Batch independence across padding: every sample is cut to its real tokens (kept in order and placed from position
0, as right padding does) and samples are grouped by their number of real tokens, so no forward inside a group
sees padding (the model still gets an all-ones ``attention_mask`` where its forward takes one). Padding and
special tokens are never perturbed: the embedding the model sees there is always the clean one, so no gradient
reaches them and every method gives them exactly 0.

The existing float implementations run unchanged on a float variable ``z`` of shape ``(n, l, E + 1)``: the
embeddings, divided by a per-sample scale for the path methods (MFABA's and IG2's steps are then measured in units
of the sample's mean token-embedding norm), plus one last feature holding the row's sample index. No method moves
that feature (its gradient is zero), so the forward knows the token ids, clean embeddings and special positions of
every row however a method repeats, reorders or compacts its rows. Attributions do not depend on the scale: each
path step contributes ``grad_z * dz = grad_E * dE``.

Supported: ``saliency``, ``input_x_gradient``, ``integrated_gradients`` (baseline: the embedding of
``baseline_token_id`` at every perturbable position), ``mfaba``, ``ig2`` (references enter through their
representation only, computed on their own tokens), ``fei`` (one mask value per token). BIG and AGI attack inside
pixel-sized L-inf balls and need images.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice, check_device, resolve_target
from lit_attr._hygiene import preserved_model_state, preserved_rng_state
from lit_attr._memory import MemoryBackoff
from lit_attr.inputs.tokens import (
    TOKEN_KEYWORDS,
    TokenBatch,
    TokenOptions,
    _check_ids,
    call_model,
    check_ids_in_vocabulary,
    check_length,
    check_token_batch,
    check_token_id,
    find_embedding_layer,
    is_token_ids,
    length_groups,
    position_limit,
    real_positions,
    resolve_token_options,
    vocabulary_size,
)

if TYPE_CHECKING:
    from lit_attr.methods.base import AttributionMethod
    from lit_attr.methods.ig2 import IG2

__all__ = [
    "METHOD_TOKEN_DEFAULTS",
    "TOKEN_METHODS",
    "TOKEN_REDUCTIONS",
    "attribute_tokens",
    "check_method_token_options",
    "is_token_call",
]

#: Registered methods that accept token ids.
TOKEN_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "mfaba", "ig2", "fei")
#: How per-element embedding attributions ``(N, L, E)`` become per-token scores.
TOKEN_REDUCTIONS = ("sum", "norm", "none")
#: IG2's default step length on token inputs, in units of the sample's mean token-embedding norm: 201 steps then
#: travel about ten token norms, a few times the distance between sentences of different classes that differ in a
#: handful of tokens.
TOKEN_IG2_ETA = 0.05
#: Info entries whose values have a token axis (at this dimension), scattered back to the padded layout.
_TOKEN_AXES = {"baseline": 2, "masks": 2}


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


def is_token_call(x: Any, kwargs: dict[str, Any]) -> bool:
    """Whether ``attribute(x, **kwargs)`` asks for token attribution: integer ids (N, L), or a token-only keyword.

    Integer inputs of other shapes stay on the float path, which says that it needs floating-point inputs.
    """
    return (is_token_ids(x) and x.ndim == 2) or any(key in kwargs for key in TOKEN_KEYWORDS)


# ----------------------------------------------------------------------------------------------- embedding hook
class _EmbeddingSwap:
    """A forward hook on the embedding layer that records its output, or replaces it while ``replacement`` is set."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.replacement: Tensor | None = None
        self.captured: Tensor | None = None
        self.calls = 0

    @contextmanager
    def installed(self) -> Iterator[_EmbeddingSwap]:
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


class _Space:
    """One chunk of equal-length samples, and the model as a function of their embeddings (see module docstring).

    Attributes:
        ids: ``(n, l)`` real token ids.
        perturbable: ``(n, l)`` bool, False on special tokens.
        clean: ``(n, l, E)`` clean embeddings (the layer's output on ``ids``).
        scale: ``(n,)`` divisor of the embeddings in ``z`` (1 except for the path methods).
    """

    def __init__(
        self,
        caller: Callable[[Tensor], Tensor],
        swap: _EmbeddingSwap,
        ids: Tensor,
        perturbable: Tensor,
        clean: Tensor,
        baseline_id: int,
        dtype: torch.dtype,
    ) -> None:
        self.caller = caller
        self.swap = swap
        self.ids = ids
        self.perturbable = perturbable
        self.clean = clean.to(dtype)
        self.baseline_id = baseline_id
        self.dtype = dtype
        self.scale = torch.ones(ids.shape[0], dtype=dtype, device=ids.device)
        self._baseline: Tensor | None = None

    def scaled(self) -> _Space:
        """Measure ``z`` in units of each sample's mean token-embedding norm over its perturbable tokens."""
        norms = self.clean.norm(dim=-1)
        weights = self.perturbable.to(self.dtype)
        weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, torch.ones_like(weights))
        scale = (norms * weights).sum(dim=1) / weights.sum(dim=1)
        self.scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return self

    @property
    def baseline(self) -> Tensor:
        """``(n, l, E)``: the embedding of the baseline token at perturbable positions, the clean one elsewhere."""
        if self._baseline is None:
            ids = torch.where(self.perturbable, torch.full_like(self.ids, self.baseline_id), self.ids)
            embedded = capture(self.caller, self.swap, ids)[1]
            self._baseline = torch.where(self.perturbable[..., None], embedded, self.clean)
        return self._baseline

    def to_z(self, embeddings: Tensor) -> Tensor:
        n, length = self.ids.shape
        index = torch.arange(n, dtype=self.dtype, device=self.ids.device).view(n, 1, 1).expand(n, length, 1)
        return torch.cat([embeddings.to(self.dtype) / self.scale.view(n, 1, 1), index], dim=-1)

    def from_z(self, z: Tensor, rows: Tensor | None = None) -> Tensor:
        rows = torch.arange(z.shape[0], device=z.device) if rows is None else rows
        return z[..., :-1] * self.scale[rows].view(-1, 1, 1)

    def logits(self, z: Tensor) -> Tensor:
        """Logits of the rows of ``z`` ``(m, l, E + 1)``; each row's last feature names its sample."""
        rows = z[:, 0, -1].detach().round().long()
        embeddings = torch.where(self.perturbable[rows][..., None], self.from_z(z, rows), self.clean[rows])
        self.swap.replacement, self.swap.calls = embeddings, 0
        try:
            out = self.caller(self.ids[rows])
        finally:
            self.swap.replacement = None
        if self.swap.calls == 0:
            raise ValueError("The embedding layer did not run in the model's forward; pass `embedding_layer=`.")
        return out


def capture(caller: Callable[[Tensor], Tensor], swap: _EmbeddingSwap, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and the embedding layer's output on ``ids`` (no gradient)."""
    swap.captured = None
    with torch.no_grad():
        logits = caller(ids)
    if swap.captured is None:
        raise ValueError("The embedding layer did not run in the model's forward; pass `embedding_layer=`.")
    if tuple(swap.captured.shape[:2]) != tuple(ids.shape):
        raise ValueError(
            f"The embedding layer returned {tuple(swap.captured.shape)} for input_ids of shape {tuple(ids.shape)}; "
            "`embedding_layer` must embed every token: (N, L) -> (N, L, E)."
        )
    return logits.detach(), swap.captured


@contextmanager
def _in_space(method: AttributionMethod, space: _Space) -> Iterator[None]:
    """Point the method's forward at ``space`` (no input bounds in embedding space) for the duration."""
    forward_fn, bounds = method.forward_fn, method.input_bounds
    method.forward_fn, method.input_bounds = space.logits, None
    try:
        yield
    finally:
        method.forward_fn, method.input_bounds = forward_fn, bounds


# ----------------------------------------------------------------------------------------------------- drivers
Result = tuple[Tensor, dict[str, Tensor] | None]


def _captum_driver(method: Any, space: _Space, target: Tensor, extra: dict[str, Tensor], **kwargs: Any) -> Result:
    import captum.attr as ca

    if "baselines" in kwargs:
        raise ValueError(
            "`baselines` does not apply to token inputs: integrated gradients starts from the embedding of "
            "`baseline_token_id` at every perturbable position."
        )
    if isinstance(method.captum, ca.IntegratedGradients):
        kwargs["baselines"] = space.to_z(space.baseline)
    with _in_space(method, space):
        return method._attribute(space.to_z(space.clean), target, **kwargs)[..., :-1], None


def _mfaba_driver(method: Any, space: _Space, target: Tensor, extra: dict[str, Tensor], **kwargs: Any) -> Result:
    space.scaled()
    with _in_space(method, space):
        out = method._attribute(space.to_z(space.clean), target, **kwargs)
    attributions, info = out if isinstance(out, tuple) else (out, None)
    return attributions[..., :-1], info


def _ig2_driver(
    method: IG2, space: _Space, target: Tensor, extra: dict[str, Tensor], return_baseline: bool | None = None
) -> Result:
    space.scaled()
    ref_rep = extra["reference_rep"]
    n, b = ref_rep.shape[:2]
    eta = method.eta if method.eta is not None else TOKEN_IG2_ETA
    z = space.to_z(space.clean)
    rows_z, rows_c = z.repeat_interleave(b, dim=0), target.repeat_interleave(b)
    rows_rep = ref_rep.reshape(n * b, -1)
    chunk = method.internal_batch_size or n * b
    sums, ends = [], []
    with _in_space(method, space):
        with torch.no_grad():
            rep = method._forward(z[:1])[1]
        if rep.shape[1] != rows_rep.shape[1]:
            raise ValueError(
                f"IG2 matches the representation of its `layer`, which on token inputs must not depend on the "
                f"sequence length (e.g. pooled features): it has {rep.shape[1]} values for an input of "
                f"{z.shape[1]} tokens and {rows_rep.shape[1]} for its references."
            )
        for start in range(0, n * b, chunk):
            part = slice(start, start + chunk)
            acc, end = method._path_rows(rows_z[part], rows_c[part], rows_rep[part], eta)
            sums.append(acc)
            ends.append(end)
    attributions = torch.cat(sums).view(n, b, *z.shape[1:]).mean(dim=1)[..., :-1]
    if not (method.return_baseline if return_baseline is None else return_baseline):
        return attributions, None
    z_end = torch.cat(ends)
    moved = space.perturbable.repeat_interleave(b, dim=0)[..., None]
    end = space.from_z(z_end, z_end[:, 0, -1].round().long())
    end = torch.where(moved, end, space.clean.repeat_interleave(b, dim=0))
    return attributions, {"baseline": end.view(n, b, *end.shape[1:])}


def _fei_driver(
    method: Any, space: _Space, target: Tensor, extra: dict[str, Tensor], return_masks: bool = False
) -> Result:
    from lit_attr.methods.fei import ActivationGates

    clean, baseline = space.to_z(space.clean), space.to_z(space.baseline)
    support = space.perturbable.to(space.dtype)

    def blend(m: Tensor, step: int, preserve: bool) -> Tensor:
        # Both ends hold the same index feature, so every blend keeps it exactly.
        m = m[..., None]
        return baseline + m * (clean - baseline) if preserve else clean + m * (baseline - clean)

    with _in_space(method, space):
        modules = method.gated_modules(clean, whole_model=True) if method.gate != "none" else []
        gates = ActivationGates(modules, method.gate)
        masks = method._nested_masks(clean, blend, target, tuple(support.shape), support.sum(dim=1), gates, support)
    heatmap = torch.stack(masks).mean(dim=0)
    return heatmap, ({"masks": torch.stack(masks, dim=1)} if return_masks else None)


def _driver(method: AttributionMethod) -> Callable[..., Result]:
    import captum.attr as ca

    from lit_attr.methods.agi import AGI
    from lit_attr.methods.big import BIG
    from lit_attr.methods.captum import CaptumMethod
    from lit_attr.methods.fei import FEI
    from lit_attr.methods.ig2 import IG2
    from lit_attr.methods.mfaba import MFABA

    name = method.name or type(method).__name__
    supported = ", ".join(TOKEN_METHODS)
    if isinstance(method, (BIG, AGI)):
        raise ValueError(
            f"{name} needs image inputs: it attacks inside L-inf balls whose radii are pixel intensities, which have "
            f"no meaning for token embeddings. Methods that take token ids: {supported}."
        )
    if isinstance(method, CaptumMethod):
        if type(method.captum) in (ca.Saliency, ca.InputXGradient, ca.IntegratedGradients):
            return _captum_driver
    elif isinstance(method, MFABA):
        return _mfaba_driver
    elif isinstance(method, IG2):
        return _ig2_driver
    elif isinstance(method, FEI):
        return _fei_driver
    raise ValueError(f"{name} does not take token ids; methods that do: {supported}.")


# ------------------------------------------------------------------------------------------------ entry point
def attribute_tokens(
    method: AttributionMethod,
    input_ids: Tensor,
    target: Any = None,
    *,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    special_token_ids: Any = None,
    baseline_token_id: int | None = None,
    embedding_layer: str | None = None,
    token_reduction: str = "sum",
    references: Tensor | None = None,
    reference_attention_mask: Tensor | None = None,
    backoff: MemoryBackoff | None = None,
    **kwargs: Any,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Per-token attributions of ``input_ids`` (see the module docstring and ``AttributionMethod.attribute``).

    Args:
        method: the attribution method (one of :data:`TOKEN_METHODS`).
        input_ids: ``(N, L)`` integer token ids on the model's device.
        target: ``None`` (the prediction), an int, or ``N`` class indices.
        attention_mask: ``(N, L)`` 1 on real tokens, 0 on padding; ``None``: no padding.
        special_tokens_mask: ``(N, L)`` 1 on special tokens, which are never perturbed and score exactly 0.
        special_token_ids: ids that are special wherever they occur; default from the ``token_options`` of the
            method or the model.
        baseline_token_id: the id whose embedding is the baseline (integrated gradients) and the substrate (FEI),
            normally [MASK] or [PAD]; default: the options' mask id, else the pad id.
        embedding_layer: name of the token-embedding module; default: found automatically.
        token_reduction: ``"sum"`` over the embedding dimension (signed), ``"norm"`` (its L2 norm), or ``"none"``
            for the ``(N, L, E)`` embedding attributions.
        references: IG2 only: ``(N, B, L_r)`` token ids of per-sample references (default: the sampler).
        reference_attention_mask: IG2 only: ``(N, B, L_r)`` attention masks of ``references``; default: every
            token that is not the pad id.
        backoff: the chunk bound of ``attribute``, halved when a chunk runs out of memory
            (:class:`~lit_attr._memory.MemoryBackoff`); ``None``: a bound of this call alone.
        **kwargs: per-call options of the method (``return_info``, ``return_baseline``, ``return_masks``, Captum
            keywords such as ``n_steps``).

    Returns:
        ``(N, L)`` float scores (``(N, L, E)`` for ``token_reduction="none"``), exactly 0 on padding and special
        tokens; with a method's info option, ``(scores, info)`` with per-sample info tensors.
    """
    driver = _driver(method)
    model = method.model
    check_device("input_ids", input_ids, model)  # first: ids on another device cannot even be inspected here
    options = resolve_token_options(
        model,
        getattr(method, "token_options", None),
        special_token_ids=special_token_ids,
        embedding_layer=embedding_layer,
    )
    batch = check_token_batch(input_ids, attention_mask, special_tokens_mask, options.special_token_ids)
    check_choice("token_reduction", token_reduction, TOKEN_REDUCTIONS)
    if driver is not _ig2_driver and (references is not None or reference_attention_mask is not None):
        raise ValueError(f"`references` apply to IG2 only, not to {method.name or type(method).__name__}.")
    layer = find_embedding_layer(model, options.embedding_layer)
    vocab = vocabulary_size(model, layer)
    check_ids_in_vocabulary("input_ids", batch.input_ids, vocab)
    baseline_id = baseline_token_id if baseline_token_id is not None else options.replacement_id
    if baseline_id is None:
        raise ValueError(
            "`baseline_token_id` is needed for token inputs and the model declares neither a mask nor a pad id; pass "
            "the [MASK] (or [PAD]) id as `baseline_token_id=`."
        )
    check_token_id("baseline_token_id", baseline_id, vocab)
    limit = position_limit(model)
    check_length("input_ids", batch.input_ids, batch.attended, limit)
    user_forward = method.forward_fn

    def caller(ids: Tensor) -> Tensor:
        return call_model(user_forward, ids, torch.ones_like(ids))

    swap = _EmbeddingSwap(layer)
    backoff = backoff or MemoryBackoff(method.name or type(method).__name__, method.internal_batch_size)
    with preserved_model_state(model), preserved_rng_state(), swap.installed():
        with torch.inference_mode(False), torch.enable_grad():
            batch = TokenBatch(*(t.clone() for t in batch))
            groups = _clean_pass(caller, swap, batch, backoff)
            logits = groups[0].logits.new_empty(batch.input_ids.shape[0], groups[0].logits.shape[1])
            for group in groups:
                logits[group.samples] = group.logits
            target = resolve_target(target, logits)
            extra: dict[str, Tensor] = {}
            if driver is _ig2_driver:
                extra["reference_rep"] = _reference_representations(
                    method, caller, batch, logits, target, references, reference_attention_mask, options, vocab, limit,
                    backoff,
                )  # fmt: skip
            dtype = torch.promote_types(groups[0].clean.dtype, torch.float32)
            out = _run_groups(
                method, driver, caller, swap, batch, groups, target, extra, baseline_id, dtype, kwargs, backoff
            )
    scores, info = out
    if token_reduction == "sum" and scores.ndim == 3:
        scores = scores.sum(dim=-1)
    elif token_reduction == "norm" and scores.ndim == 3:
        scores = scores.norm(dim=-1)
    elif token_reduction == "none" and scores.ndim == 2:  # FEI: one value per token, shown on every feature
        scores = scores[..., None].expand(*scores.shape, groups[0].clean.shape[-1])
    return (scores, info) if info is not None else scores


class _Group(NamedTuple):
    """Samples with the same number of real tokens: their indices, real positions, ids, logits and embeddings."""

    samples: Tensor
    positions: Tensor
    ids: Tensor
    logits: Tensor
    clean: Tensor


def _clean_pass(caller: Callable, swap: _EmbeddingSwap, batch: TokenBatch, backoff: MemoryBackoff) -> list[_Group]:
    """One clean forward per length group, in chunks of the method's ``internal_batch_size`` (see ``backoff``)."""
    groups = []
    for length, samples in length_groups(batch.attended):
        positions = real_positions(batch.attended, samples, length)
        ids = batch.input_ids[samples[:, None], positions]
        parts: list[tuple[Tensor, Tensor]] = []
        backoff.chunks(ids.shape[0], functools.partial(_capture_rows, caller, swap, ids, parts))
        logits, clean = (torch.cat(part) for part in zip(*parts, strict=True))
        groups.append(_Group(samples, positions, ids, logits, clean))
    return groups


def _capture_rows(
    caller: Callable, swap: _EmbeddingSwap, ids: Tensor, parts: list[tuple[Tensor, Tensor]], start: int, stop: int
) -> None:
    parts.append(capture(caller, swap, ids[start:stop]))


def _run_groups(
    method: AttributionMethod,
    driver: Callable[..., Result],
    caller: Callable,
    swap: _EmbeddingSwap,
    batch: TokenBatch,
    groups: list[_Group],
    target: Tensor,
    extra: dict[str, Tensor],
    baseline_id: int,
    dtype: torch.dtype,
    kwargs: dict[str, Any],
    backoff: MemoryBackoff,
) -> tuple[Tensor, dict[str, Tensor] | None]:
    """Run ``driver`` chunk by chunk and scatter its results back to the padded ``(N, L, ...)`` layout.

    The chunks are bounded like those of float inputs: ``internal_batch_size`` rows, halved by ``backoff`` when one
    runs out of memory (the drivers' own row loops read the halved bound from the method).
    """
    n, length = batch.input_ids.shape
    perturbable = batch.perturbable
    found: dict[str, Any] = {"scores": None, "info": None}

    def step(group: _Group, start: int, size: int | None) -> int:
        method.internal_batch_size = size
        part = slice(start, start + method._samples_per_chunk(**kwargs))
        rows, pos = group.samples[part], group.positions[part]
        on = perturbable[rows[:, None], pos]
        space = _Space(caller, swap, group.ids[part], on, group.clean[part], baseline_id, dtype)
        chunk_extra = {key: value[rows] for key, value in extra.items()}
        values, chunk_info = driver(method, space, target[rows], chunk_extra, **kwargs)
        if found["scores"] is None:
            found["scores"] = values.new_zeros(n, length, *values.shape[2:])
        found["scores"][rows[:, None], pos] = values.detach()
        if chunk_info is not None:
            info = found["info"] = {} if found["info"] is None else found["info"]
            for key, value in chunk_info.items():
                info[key] = _scatter(info.get(key), key, value.detach(), rows, pos, n, length)
        return start + rows.numel()

    rows_per_sample = max(1, method.rows_per_sample(**kwargs))
    for group in groups:
        total = group.samples.numel()
        backoff.run(total, functools.partial(step, group), unbounded=total * rows_per_sample)
    scores = found["scores"]
    assert scores is not None  # every batch has one group with one sample
    scores[~perturbable] = 0
    return scores, found["info"]


def _scatter(full: Tensor | None, key: str, value: Tensor, rows: Tensor, pos: Tensor, n: int, length: int) -> Tensor:
    """Put a chunk's info ``value`` (its samples first) into the whole batch's tensor ``full``."""
    axis = _TOKEN_AXES.get(key)
    if axis is None:
        if full is None:
            full = value.new_zeros(n, *value.shape[1:])
        full[rows] = value
        return full
    moved = value.movedim(axis, 1)  # (n, l, ...)
    if full is None:
        full = moved.new_zeros(n, length, *moved.shape[2:]).movedim(1, axis)
    view = full.movedim(axis, 1)
    view[rows[:, None], pos] = moved
    return full


# ------------------------------------------------------------------------------------------------------- IG2
def _represent(
    method: IG2, ids: Tensor, rows: Tensor, total: int, found: dict[str, Tensor], start: int, stop: int
) -> None:
    """IG2's representation of the references ``rows[start:stop]`` (token ids ``ids``, one length), into ``found``."""
    with torch.no_grad():
        rep = method._forward(ids[start:stop])[1]
    if "reps" not in found:
        found["reps"] = rep.new_zeros(total, rep.shape[1])
    elif rep.shape[1] != found["reps"].shape[1]:
        raise ValueError(
            "IG2 matches the representation of its `layer`, which on token inputs must not depend on the sequence "
            f"length (e.g. pooled features); references of different lengths gave {found['reps'].shape[1]} and "
            f"{rep.shape[1]} values."
        )
    found["reps"][rows[start:stop]] = rep


def _reference_representations(
    method: IG2,
    caller: Callable,
    batch: TokenBatch,
    logits: Tensor,
    target: Tensor,
    references: Tensor | None,
    reference_attention_mask: Tensor | None,
    options: Any,
    vocab: int | None,
    limit: int | None,
    backoff: MemoryBackoff,
) -> Tensor:
    """``(N, B, H)``: the representation of every reference, each computed on its own real tokens alone."""
    if references is None:
        references, reference_attention_mask = _sample_token_references(method, batch, logits, target, options)
    if not is_token_ids(references) or references.ndim != 3 or references.shape[0] != batch.input_ids.shape[0]:
        shape = tuple(references.shape) if isinstance(references, Tensor) else type(references).__name__
        raise ValueError(
            f"`references` for token inputs must be token ids (N, B, L_r) with N = {batch.input_ids.shape[0]}, "
            f"got {shape}."
        )
    n, b, ref_length = references.shape
    if b == 0:
        raise ValueError(f"`references` must hold B >= 1 references per sample, got {tuple(references.shape)}.")
    flat = references.reshape(n * b, ref_length).to(batch.input_ids.device)
    if reference_attention_mask is None:
        mask = flat != options.pad_token_id if options.pad_token_id is not None else torch.ones_like(flat)
    else:
        if not isinstance(reference_attention_mask, Tensor) or reference_attention_mask.shape != references.shape:
            shape = getattr(reference_attention_mask, "shape", type(reference_attention_mask).__name__)
            raise ValueError(
                f"`reference_attention_mask` must have the shape of references {tuple(references.shape)}, "
                f"got {tuple(shape) if isinstance(shape, torch.Size) else shape}."
            )
        mask = reference_attention_mask.reshape(n * b, ref_length)
    refs = check_token_batch(flat, mask, name="references")
    check_ids_in_vocabulary("references", refs.input_ids, vocab)
    check_length("references", refs.input_ids, refs.attended, limit)
    found: dict[str, Tensor] = {}
    forward_fn = method.forward_fn
    method.forward_fn = caller  # IG2's representation hook around a plain forward on token ids
    try:
        for length, rows in length_groups(refs.attended):
            ids = refs.input_ids[rows[:, None], real_positions(refs.attended, rows, length)]
            backoff.chunks(rows.numel(), functools.partial(_represent, method, ids, rows, n * b, found))
    finally:
        method.forward_fn = forward_fn
    reps = found["reps"]
    return reps.view(n, b, -1)


def _sample_token_references(
    method: IG2, batch: TokenBatch, logits: Tensor, target: Tensor, options: Any
) -> tuple[Tensor, Tensor]:
    """``(N, B, L')`` ids and attention masks drawn from the method's ``reference_pool`` of token ids."""
    pool = method.pool
    if pool is None:
        raise ValueError(
            f"`references={method.references!r}` draws from `reference_pool`; pass reference_pool=(input_ids, labels) "
            "of token ids (padding = the pad id) or references=(N, B, L_r) token ids per call."
        )
    pool_ids, pool_y = (t.to(batch.input_ids.device) for t in pool)
    if not is_token_ids(pool_ids) or pool_ids.ndim != 2:
        raise ValueError(
            f"`reference_pool` inputs for token inputs must be token ids (M, L'), got {tuple(pool_ids.shape)} of "
            f"dtype {pool_ids.dtype}."
        )
    # Seeds from each sample's real tokens alone, so draws do not depend on the batch or its padding.
    seeds = [row[mask] for row, mask in zip(batch.input_ids, batch.attended, strict=True)]
    index = method.reference_indices(seeds, target, pool_y, logits)
    ids = pool_ids[index]
    pad = options.pad_token_id
    return ids, (ids != pad) if pad is not None else torch.ones_like(ids, dtype=torch.bool)

