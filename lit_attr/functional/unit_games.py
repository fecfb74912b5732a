"""The toolkit of the unit games (faithfulness, monotonicity, regions, axioms): checked inputs, masked rows, groups.

Every such game replaces some *units* of an input (pixels, features, tokens: the input kind's, see
:meth:`lit_attr.inputs.InputKind.unit_scores`) by a substrate and reads the model's score of the target class. The
kind says which units count (:meth:`~lit_attr.inputs.InputKind.game_inputs`: a sample's real tokens that are not
special; every unit of a float input), what each row carries into the model call (a token row keeps its sample's
attention mask and ``token_type_ids``) and what the substrate is (:meth:`~lit_attr.inputs.InputKind.game_substrate`:
zeros or noise of a float input, the [MASK] id of token ids), so no game names a modality. Units that do not count are
never replaced (:func:`masked_outputs` keeps them) nor counted: groups, subsets and regions are over a sample's own
units, whose number may differ between samples (sentences of different lengths). A game
describes its rows by a function ``masks(samples, rows) -> (B, *units)`` bool (True: take the unit from ``fill``);
:func:`masked_outputs` builds the rows chunk by chunk with ``torch.where`` and sends them through the model in at most
``internal_batch_size`` rows, halving the chunk when the device runs out of memory. The masks of a row depend on the
sample's own values and the seed only, so a sample scores the same in any batch, on any process and device.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, check_device, check_optional_int, check_seed, resolve_target
from lit_attr._hygiene import preserved_model_state, row_seed
from lit_attr._memory import MemoryBackoff, shared_backoff
from lit_attr.functional.perturbation import (
    REDUCTIONS,
    SubstrateType,
    check_attributions,
    check_clean_logits,
    check_substrate,
    game_kind,
    make_substrate,
)
from lit_attr.inputs import InputKind, input_kind

__all__ = [
    "SCORE_OUTPUTS",
    "Game",
    "batch_fields",
    "check_game_options",
    "check_size",
    "chunked_logits",
    "counted_units",
    "draw_outputs",
    "fill_of",
    "game_fill",
    "group_sums",
    "index_groups",
    "kind_logits",
    "kind_substrate",
    "masked_outputs",
    "prepare_game",
    "rank_groups",
    "resolve_size",
    "sample_seeds",
    "sample_sizes",
    "target_scores",
]

#: The scores a game reads of the target class: its logit or its softmax probability.
SCORE_OUTPUTS = ("logit", "prob")


class Game(NamedTuple):
    """A checked game: the inputs' kind, unit scores ``(N, *units)``, targets and clean scores ``(N,)``.

    ``valid`` ``(N, *units)`` marks the units that count (``None``: all); ``fields`` are the per-sample inputs every
    row of a sample carries into the model call (:meth:`~lit_attr.inputs.InputKind.game_inputs`).
    """

    kind: InputKind
    units: Tensor
    target: Tensor
    clean: Tensor
    valid: Tensor | None = None
    fields: Mapping[str, Tensor] = MappingProxyType({})


def prepare_game(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType,
    logits: Tensor | None,
    *,
    reduce: str,
    output: str,
    internal_batch_size: int | None,
    fields: Mapping[str, Any] | None = None,
    kinds: Collection[str] | None = None,
    who: str = "game",
) -> Game:
    """Check a game's inputs, resolve the targets and read the clean scores (from ``logits`` when given).

    Args:
        model: the classifier.
        x: the inputs, of any registered kind (``kinds``: only those with one of these tags).
        attributions: their maps.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        logits: the clean logits, if already computed.
        reduce: how a map becomes unit scores.
        output: ``"logit"`` or ``"prob"``.
        internal_batch_size: checked here for the game.
        fields: the batch's other inputs by name (``attention_mask``, ``special_tokens_mask``, ``model_inputs``).
        kinds: the kind tags a game accepts (``{"continuous"}`` for a game that needs a continuous perturbation).
        who: the game's name, for the out-of-memory warning of the clean pass (chunked like the game's rows).

    Raises:
        TypeError: for a model that is not a module, or inputs or maps of the wrong type.
        ValueError: for maps of another shape, inputs of a kind not in ``kinds``, another device than the
            model's, NaN or infinite values, bad targets or logits, unknown ``reduce`` or ``output``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    kind = game_kind(x, kinds) if kinds is not None or _is_float(x) else _unit_kind(x)
    check_device("x", x, model)
    check_attributions(attributions, x, kind)
    check_choice("reduce", reduce, REDUCTIONS)
    check_choice("output", output, SCORE_OUTPUTS)
    check_optional_int("internal_batch_size", internal_batch_size)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("`x` contains NaN or infinite values; the games need finite inputs.")
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError("`attributions` contains NaN or infinite values; it must be finite.")
    given = kind.game_inputs(model, x, fields or {})
    if logits is None:
        logits = chunked_logits(kind, model, x, given.fields, internal_batch_size, who)
    else:
        check_clean_logits(logits, x)
    logits = logits.detach()
    target = resolve_target(target, logits).to(x.device)
    units = kind.unit_scores(attributions.to(x.device), reduce)
    valid = None if given.valid is None else given.valid.to(device=x.device, dtype=torch.bool).view(units.shape)
    clean = target_scores(logits, target, output)
    return Game(kind, units, target, clean, valid, MappingProxyType(dict(given.fields)))


def chunked_logits(
    kind: InputKind, model: nn.Module, x: Tensor, fields: Mapping[str, Tensor], size: int | None, who: str
) -> Tensor:
    """``kind``'s model call on ``x`` in chunks of at most ``size`` rows, halved when the device runs out of memory.

    Args:
        kind: the inputs' kind.
        model: the classifier (eval mode, no gradients; its state restored).
        x: ``(N, ...)`` rows.
        fields: their other inputs by name (``(N, ...)`` each), sliced with the rows.
        size: the most rows per forward pass; ``None``: all at once.
        who: the caller's name, for the out-of-memory warning.

    Example:
        >>> chunked_logits(input_kind(torch.ones(3, 2)), nn.Linear(2, 4), torch.ones(3, 2), {}, 2, "demo").shape
        torch.Size([3, 4])
    """
    parts: list[Tensor] = []

    def body(start: int, stop: int) -> None:
        rows = {key: value[start:stop] for key, value in fields.items()}
        parts.append(kind_logits(kind, model, x[start:stop], rows))

    with torch.no_grad(), preserved_model_state(model), MemoryBackoff(who, size) as backoff:
        backoff.chunks(x.shape[0], body)
    return torch.cat(parts)


def batch_fields(
    attention_mask: Tensor | None, special_tokens_mask: Tensor | None, model_inputs: Mapping[str, Tensor] | None
) -> dict[str, Any]:
    """The batch's other inputs by name, as :meth:`~lit_attr.inputs.InputKind.game_inputs` reads them.

    Example:
        >>> sorted(batch_fields(None, None, None))
        ['attention_mask', 'model_inputs', 'special_tokens_mask']
    """
    return {"attention_mask": attention_mask, "special_tokens_mask": special_tokens_mask, "model_inputs": model_inputs}


def _is_float(x: object) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point()


def _unit_kind(x: object) -> InputKind:
    """The kind of a game's non-float inputs (token ids): a non-empty batch that a registered kind accepts."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim < 2 or 0 in x.shape:
        raise ValueError(f"`x` must be a non-empty batch (N, ...), got shape {tuple(x.shape)}.")
    return input_kind(x)


def kind_logits(kind: InputKind, model: nn.Module, x: Tensor, fields: Mapping[str, Tensor]) -> Tensor:
    """``model`` on rows ``x`` as ``kind`` calls it (``fields``: their other inputs); refused unless logits (N, K)."""
    out = kind.model_logits(model, x, fields)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"`model` must return logits of shape (N, K) = ({x.shape[0]}, K), got {shape}.")
    return out


def check_game_options(
    *,
    substrate: object = "zero",
    substrate_value: object = None,
    output: str = "prob",
    reduce: str = "sum",
    seed: object = 0,
    internal_batch_size: object = None,
) -> None:
    """Refuse the options every game of this module shares, naming the one that is wrong (at a metric's construction).

    Example:
        >>> check_game_options(substrate="noise", output="logit")
    """
    if substrate is not None:
        check_substrate("substrate", substrate)
    if substrate == "constant" and substrate_value is None:
        raise ValueError('`substrate_value` must be given when `substrate` is "constant", got None.')
    check_choice("output", output, SCORE_OUTPUTS)
    check_choice("reduce", reduce, REDUCTIONS)
    check_seed(seed)
    check_optional_int("internal_batch_size", internal_batch_size)


def target_scores(logits: Tensor, target: Tensor, output: str) -> Tensor:
    """``(B,)`` the target's logit or probability of every row, in at least float32."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    scores = logits if output == "logit" else logits.softmax(dim=1)
    return scores.gather(1, target[:, None]).squeeze(1)


def fill_of(
    substrate: SubstrateType, x: Tensor, *, value: object = None, seed: int = 0, name: str = "substrate"
) -> Tensor:
    """The substrate ``x``'s kind builds, broadcast to ``x``'s shape (see :func:`make_substrate`)."""
    return torch.broadcast_to(make_substrate(substrate, x, substrate_value=value, seed=seed, name=name), x.shape)


def game_fill(
    model: nn.Module,
    game: Game,
    substrate: SubstrateType | None,
    x: Tensor,
    *,
    value: object = None,
    seed: int = 0,
    preferred: str = "zero",
) -> Tensor:
    """The substrate of ``game``'s kind for ``model``, broadcast to ``x``'s shape.

    ``None`` is ``preferred`` where the kind offers it, else the kind's default (:func:`kind_substrate`: zeros of a
    float input, the [MASK] id of token ids).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> game = prepare_game(net, torch.ones(1, 3), torch.ones(1, 3), None, None, reduce="sum", output="logit",
        ...                     internal_batch_size=None)
        >>> game_fill(net, game, "constant", torch.ones(1, 3), value=0.5)
        tensor([[0.5000, 0.5000, 0.5000]])
    """
    chosen = kind_substrate(game.kind, substrate, preferred)
    check_substrate("substrate", chosen)
    fill = game.kind.game_substrate(model, chosen, x, value=value, seed=seed, argument="substrate")
    return torch.broadcast_to(fill, x.shape)


def kind_substrate(kind: InputKind, given: SubstrateType | None, preferred: str) -> SubstrateType:
    """The substrate a game uses: the one given, else the paper's where the kind offers it, else the kind's default."""
    if given is not None:
        return given
    return preferred if preferred in kind.substrates else kind.default_substrate


def masked_outputs(
    model: nn.Module,
    game: Game,
    x: Tensor,
    fill: Tensor,
    masks: Callable[[Tensor, Tensor], Tensor],
    rows_per_sample: int,
    *,
    output: str,
    internal_batch_size: int | None,
    who: str,
    backoff: MemoryBackoff | None = None,
) -> Tensor:
    """The target scores of every row ``(sample, r)``: ``x[sample]`` with the units ``masks`` marks taken from ``fill``.

    Args:
        model: the classifier (eval mode, no gradients; its state restored).
        game: :func:`prepare_game`'s result.
        x: ``(N, ...)`` clean inputs.
        fill: ``(N, ...)`` substrate, the shape of ``x``.
        masks: ``masks(samples, rows)`` for ``(B,)`` sample and row indices -> ``(B, *units)`` bool (units that do
            not count are kept whatever it says).
        rows_per_sample: rows of every sample.
        output: ``"logit"`` or ``"prob"``.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        who: the game's name, for the out-of-memory warning.
        backoff: the bound of a game that plays several passes (its caller's block warns once); ``None``: this
            pass's own, from ``internal_batch_size``.

    Returns:
        ``(N, rows_per_sample)`` scores in at least float32.
    """
    n = x.shape[0]
    out = torch.empty(n * rows_per_sample, device=x.device, dtype=game.clean.dtype)

    def body(start: int, stop: int) -> None:
        rows = torch.arange(start, stop, device=x.device)
        samples, index = rows // rows_per_sample, rows % rows_per_sample
        take = masks(samples, index).to(x.device)
        if game.valid is not None:  # the units that do not count (padding, special tokens) are never replaced
            take = take & game.valid[samples]
        inputs = torch.where(game.kind.unit_view(take, x), fill[samples], x[samples])
        logits = kind_logits(game.kind, model, inputs, {key: value[samples] for key, value in game.fields.items()})
        out[start:stop] = target_scores(logits, game.target[samples], output).to(out.dtype)

    with torch.no_grad(), preserved_model_state(model), shared_backoff(backoff, who, internal_batch_size) as bound:
        bound.chunks(n * rows_per_sample, body)
    return out.view(n, rows_per_sample)


def resolve_size(name: str, size: object, units: int) -> int:
    """A number of units: an int in ``[1, units]`` or a fraction in ``(0, 1]`` of them (at least one unit).

    Example:
        >>> resolve_size("subset_size", 0.25, 64), resolve_size("subset_size", 5, 64)
        (16, 5)
    """
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise TypeError(f"`{name}` must be an int (units) or a float fraction in (0, 1], got {size!r}.")
    if isinstance(size, float):
        if not 0 < size <= 1:
            raise ValueError(f"`{name}` as a fraction must lie in (0, 1], got {size!r}.")
        return max(1, round(size * units))
    if not 1 <= size <= units:
        raise ValueError(
            f"`{name}` must be between 1 and the {units} units of a sample, got {size} (a float in (0, 1] takes that "
            "share of every sample's own units: short sentences included)."
        )
    return size


def check_size(name: str, size: object) -> None:
    """Refuse a size that is neither a positive int nor a fraction in ``(0, 1]`` (before the units are known)."""
    resolve_size(name, size, size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 1)


def rank_groups(
    units: Tensor, per_group: int, *, ascending: bool = False, valid: Tensor | None = None
) -> tuple[Tensor, int]:
    """Every unit's group when units are taken by score, ``per_group`` at a time: group 0 the highest scores.

    The sort is stable (ties in index order). ``ascending=True`` takes the lowest scores first. With ``valid``
    ``(N, *units)``, only the units that count are grouped; the others are in group ``count``, which no row takes.

    Returns:
        ``(N, *units)`` long groups and the number of groups (of the sample with the most units).

    Example:
        >>> rank_groups(torch.tensor([[0.1, 0.9, 0.5]]), 2)
        (tensor([[1, 0, 0]]), 2)
        >>> rank_groups(torch.tensor([[0.1, 0.9, 0.5]]), 1, valid=torch.tensor([[True, False, True]]))
        (tensor([[1, 2, 0]]), 2)
    """
    flat = units.reshape(units.shape[0], -1)
    if valid is not None:
        last = torch.full_like(flat, torch.inf if ascending else -torch.inf)
        flat = torch.where(valid.reshape(flat.shape), flat, last)
    order = torch.sort(flat, dim=1, descending=not ascending, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    most = flat.shape[1] if valid is None else int(valid.reshape(flat.shape).sum(dim=1).max())
    groups = -(-most // per_group)
    if valid is None:
        return (ranks // per_group).view(units.shape), groups
    return torch.where(valid.reshape(flat.shape), ranks // per_group, groups).view(units.shape), groups


def index_groups(game: Game, per_group: int) -> tuple[Tensor, int, Tensor]:
    """The units that count in index order, ``per_group`` at a time: ``(groups (N, *units), count, (N,) counts)``.

    Units that do not count are in group ``count``, which no row takes; ``counts`` are every sample's own groups.

    Example:
        >>> game = Game(None, torch.zeros(1, 4), None, None, torch.tensor([[False, True, True, True]]))
        >>> index_groups(game, 2)
        (tensor([[2, 0, 0, 1]]), 2, tensor([2]))
    """
    valid = counted_units(game).reshape(game.units.shape[0], -1)
    position = valid.long().cumsum(dim=1) - 1
    counts = own_groups(game, per_group)
    count = int(counts.max())
    return torch.where(valid, position // per_group, count).view(game.units.shape), count, counts


def own_groups(game: Game, per_group: int) -> Tensor:
    """``(N,)`` the groups of ``per_group`` units that every sample's own counted units make (the last may be short).

    Example:
        >>> valid = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
        >>> own_groups(Game(None, torch.zeros(2, 5), None, None, valid), 2)
        tensor([3, 1])
    """
    return -(-counted_units(game).reshape(game.units.shape[0], -1).sum(dim=1) // per_group)


def counted_units(game: Game) -> Tensor:
    """``(N, *units)`` bool: the units of ``game`` that count (all of them unless the kind says otherwise)."""
    return torch.ones_like(game.units, dtype=torch.bool) if game.valid is None else game.valid


def group_sums(units: Tensor, groups: Tensor, count: int) -> Tensor:
    """``(N, count)`` the sum of the unit scores in every group (units in group ``count`` left out)."""
    flat = units.reshape(units.shape[0], -1).double()
    return torch.zeros(flat.shape[0], count + 1, dtype=flat.dtype, device=flat.device).scatter_add_(
        1, groups.reshape(flat.shape), flat
    )[:, :count]


def sample_seeds(game: Game, x: Tensor, seed: int) -> list[int]:
    """A seed per sample from ``seed`` and the values of its units that count (padding moved or added: the same)."""
    if game.valid is None:
        return [row_seed(seed, row) for row in x]
    take = torch.broadcast_to(game.kind.unit_view(game.valid, x), x.shape)
    return [row_seed(seed, row[keep]) for row, keep in zip(x, take, strict=True)]


def sample_sizes(name: str, size: object, counts: Tensor) -> Tensor:
    """``(N,)`` units per subset of every sample with ``counts`` units: :func:`resolve_size` of its own units.

    An int larger than a sample's units is all of them (it must fit the sample with the most units).

    Example:
        >>> counts = torch.tensor([4, 10])
        >>> sample_sizes("subset_size", 0.5, counts), sample_sizes("subset_size", 6, counts)
        (tensor([2, 5]), tensor([4, 6]))
    """
    resolve_size(name, size, max(int(counts.max()), 1))
    if isinstance(size, int):
        return counts.clamp(max=size).long()
    return torch.tensor([min(resolve_size(name, size, max(units, 1)), units) for units in counts.tolist()])


def draw_outputs(
    model: nn.Module,
    game: Game,
    x: Tensor,
    groups: Tensor,
    count: int,
    *,
    substrate: SubstrateType,
    substrate_value: object,
    n_draws: int,
    seed: int,
    output: str,
    internal_batch_size: int | None,
    who: str,
) -> Tensor:
    """``(N, count, n_draws)``: the target score with one group replaced by draw ``j`` of the substrate.

    Draw ``j`` is the substrate built with seed ``seed + j`` (a ``"noise"`` substrate differs per draw; a fixed one
    repeats).
    """
    scores = []
    with MemoryBackoff(who, internal_batch_size) as backoff:
        for draw in range(n_draws):
            fill = game_fill(model, game, substrate, x, value=substrate_value, seed=seed + draw)
            scores.append(
                masked_outputs(
                    model, game, x, fill, lambda samples, rows: groups[samples] == _view(rows, groups), count,
                    output=output, internal_batch_size=internal_batch_size, who=who, backoff=backoff,
                )  # fmt: skip
            )
    return torch.stack(scores, dim=2)


def _view(rows: Tensor, like: Tensor) -> Tensor:
    """``(B,)`` row indices viewed to broadcast against ``(B, *units)``."""
    return rows.view(-1, *([1] * (like.ndim - 1)))
