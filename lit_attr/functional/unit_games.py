"""The toolkit of the unit games (faithfulness, monotonicity, regions, axioms): checked inputs, masked rows, groups.

Every such game replaces some *units* of an input (pixels, features: the input kind's, see
:meth:`lit_attr.inputs.InputKind.unit_scores`) by a substrate and reads the model's score of the target class. A game
describes its rows by a function ``masks(samples, rows) -> (B, *units)`` bool (True: take the unit from ``fill``);
:func:`masked_outputs` builds the rows chunk by chunk with ``torch.where`` and sends them through the model in at most
``internal_batch_size`` rows, halving the chunk when the device runs out of memory. The masks of a row depend on the
sample's own values and the seed only, so a sample scores the same in any batch, on any process and device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, check_device, check_optional_int, check_seed, resolve_target
from lit_attr._hygiene import preserved_model_state
from lit_attr._memory import MemoryBackoff
from lit_attr.functional.perturbation import (
    REDUCTIONS,
    SubstrateType,
    check_attributions,
    check_clean_logits,
    check_substrate,
    game_kind,
    make_substrate,
    model_logits,
)
from lit_attr.inputs import InputKind

__all__ = [
    "SCORE_OUTPUTS",
    "Game",
    "check_game_options",
    "check_size",
    "draw_outputs",
    "fill_of",
    "group_sums",
    "kind_substrate",
    "masked_outputs",
    "prepare_game",
    "rank_groups",
    "resolve_size",
    "target_scores",
]

#: The scores a game reads of the target class: its logit or its softmax probability.
SCORE_OUTPUTS = ("logit", "prob")


class Game(NamedTuple):
    """A checked game: the inputs' kind, unit scores ``(N, *units)``, targets and clean scores ``(N,)``."""

    kind: InputKind
    units: Tensor
    target: Tensor
    clean: Tensor


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
) -> Game:
    """Check a game's inputs, resolve the targets and read the clean scores (from ``logits`` when given).

    Raises:
        TypeError: for a model that is not a module, or inputs or maps that are not float tensors.
        ValueError: for maps of another shape, inputs of a kind the games cannot blend, another device than the
            model's, NaN or infinite values, bad targets or logits, unknown ``reduce`` or ``output``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    kind = game_kind(x)
    check_device("x", x, model)
    check_attributions(attributions, x, kind)
    check_choice("reduce", reduce, REDUCTIONS)
    check_choice("output", output, SCORE_OUTPUTS)
    check_optional_int("internal_batch_size", internal_batch_size)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("`x` contains NaN or infinite values; the games need finite inputs.")
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError("`attributions` contains NaN or infinite values; it must be finite.")
    if logits is None:
        with torch.no_grad(), preserved_model_state(model):
            logits = model_logits(model, x)
    else:
        check_clean_logits(logits, x)
    logits = logits.detach()
    target = resolve_target(target, logits).to(x.device)
    units = kind.unit_scores(attributions.to(x.device), reduce)
    return Game(kind, units, target, target_scores(logits, target, output))


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
) -> Tensor:
    """The target scores of every row ``(sample, r)``: ``x[sample]`` with the units ``masks`` marks taken from ``fill``.

    Args:
        model: the classifier (eval mode, no gradients; its state restored).
        game: :func:`prepare_game`'s result.
        x: ``(N, ...)`` clean inputs.
        fill: ``(N, ...)`` substrate, the shape of ``x``.
        masks: ``masks(samples, rows)`` for ``(B,)`` sample and row indices -> ``(B, *units)`` bool.
        rows_per_sample: rows of every sample.
        output: ``"logit"`` or ``"prob"``.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        who: the game's name, for the out-of-memory warning.

    Returns:
        ``(N, rows_per_sample)`` scores in at least float32.
    """
    n = x.shape[0]
    out = torch.empty(n * rows_per_sample, device=x.device, dtype=game.clean.dtype)

    def body(start: int, stop: int) -> None:
        rows = torch.arange(start, stop, device=x.device)
        samples, index = rows // rows_per_sample, rows % rows_per_sample
        take = game.kind.unit_view(masks(samples, index).to(x.device), x)
        inputs = torch.where(take, fill[samples], x[samples])
        out[start:stop] = target_scores(model_logits(model, inputs), game.target[samples], output).to(out.dtype)

    with torch.no_grad(), preserved_model_state(model), MemoryBackoff(who, internal_batch_size) as backoff:
        backoff.chunks(n * rows_per_sample, body)
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
        raise ValueError(f"`{name}` must be between 1 and the {units} units of a sample, got {size}.")
    return size


def check_size(name: str, size: object) -> None:
    """Refuse a size that is neither a positive int nor a fraction in ``(0, 1]`` (before the units are known)."""
    resolve_size(name, size, size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 1)


def rank_groups(units: Tensor, per_group: int, *, ascending: bool = False) -> tuple[Tensor, int]:
    """Every unit's group when units are taken by score, ``per_group`` at a time: group 0 the highest scores.

    The sort is stable (ties in index order). ``ascending=True`` takes the lowest scores first.

    Returns:
        ``(N, *units)`` long groups and the number of groups.

    Example:
        >>> rank_groups(torch.tensor([[0.1, 0.9, 0.5]]), 2)
        (tensor([[1, 0, 0]]), 2)
    """
    flat = units.reshape(units.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=not ascending, stable=True).indices
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    groups = -(-flat.shape[1] // per_group)
    return (ranks // per_group).view(units.shape), groups


def group_sums(units: Tensor, groups: Tensor, count: int) -> Tensor:
    """``(N, count)`` the sum of the unit scores in every group."""
    flat = units.reshape(units.shape[0], -1).double()
    return torch.zeros(flat.shape[0], count, dtype=flat.dtype, device=flat.device).scatter_add_(
        1, groups.reshape(flat.shape), flat
    )


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
    for draw in range(n_draws):
        fill = fill_of(substrate, x, value=substrate_value, seed=seed + draw)
        scores.append(
            masked_outputs(
                model, game, x, fill, lambda samples, rows: groups[samples] == _view(rows, groups), count,
                output=output, internal_batch_size=internal_batch_size, who=who,
            )  # fmt: skip
        )
    return torch.stack(scores, dim=2)


def _view(rows: Tensor, like: Tensor) -> Tensor:
    """``(B,)`` row indices viewed to broadcast against ``(B, *units)``."""
    return rows.view(-1, *([1] * (like.ndim - 1)))
