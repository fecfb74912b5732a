"""A game's protocol: the published presets, the resolved options, and the checked inputs, ranks and schedule.

Every game that walks insertion/deletion schedules (insertion/deletion, activation deviation) resolves its options
and checks its inputs here, so they see the same perturbed inputs and refuse the same bad input; the perturbation
toolkit they share is :mod:`lit_attr.functional.perturbation`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice, check_device, check_names, check_optional_int
from lit_attr.functional.perturbation import (
    DEFAULT_N_STEPS,
    GAMES,
    REDUCTIONS,
    SubstrateType,
    check_attributions,
    check_substrate,
    game_kind,
    perturbation_schedule,
    rank_units,
)
from lit_attr.inputs import InputKind

__all__ = ["PRESETS", "Protocol", "check_games", "check_substrate_value", "prepare_games", "resolve_protocol"]

#: Protocol defaults of the published evaluations. A preset only fills the options left as ``None``.
PRESETS: dict[str, dict[str, Any]] = {
    "rise": {"insertion_substrate": "blur", "deletion_substrate": "zero", "n_steps": DEFAULT_N_STEPS},
    "mfaba": {"insertion_substrate": "zero", "deletion_substrate": "zero", "n_steps": DEFAULT_N_STEPS},
    "fei": {"insertion_substrate": "blur", "deletion_substrate": "zero", "n_steps": DEFAULT_N_STEPS},
}


class Protocol(NamedTuple):
    """Resolved options of an insertion/deletion evaluation (see :func:`resolve_protocol`)."""

    insertion_substrate: SubstrateType
    deletion_substrate: SubstrateType
    pixels_per_step: int | None
    n_steps: int | None


# ---------------------------------------------------------------------------------------------- building blocks


def resolve_protocol(
    preset: str | None = None,
    *,
    insertion_substrate: SubstrateType | None = None,
    deletion_substrate: SubstrateType | None = None,
    pixels_per_step: int | None = None,
    n_steps: int | None = None,
) -> Protocol:
    """Combine a preset with explicitly given options; explicit (non-``None``) options win.

    Without a preset the defaults are RISE's: insertion ``"blur"``, deletion ``"zero"``, ``n_steps=28``. An
    explicit ``pixels_per_step`` replaces the preset's ``n_steps``; giving both ``pixels_per_step`` and
    ``n_steps`` explicitly is an error.

    Args:
        preset: ``"rise"``, ``"mfaba"`` (zeros for both games), ``"fei"`` (RISE protocol) or ``None``.
        insertion_substrate: substrate the insertion game starts from (see :func:`make_substrate`).
        deletion_substrate: substrate the deletion game replaces units with.
        pixels_per_step: units changed per step.
        n_steps: number of steps, turned into ``pixels_per_step = ceil(units / n_steps)``.

    Returns:
        The resolved :class:`Protocol`; exactly one of ``pixels_per_step`` and ``n_steps`` is set.

    Raises:
        ValueError: for an unknown preset or substrate name, or both step options given.

    Example:
        >>> resolve_protocol("mfaba", pixels_per_step=16)
        Protocol(insertion_substrate='zero', deletion_substrate='zero', pixels_per_step=16, n_steps=None)
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {tuple(PRESETS)} or None, got {preset!r}.")
    if pixels_per_step is not None and n_steps is not None:
        raise ValueError(
            f"Give at most one of `pixels_per_step` and `n_steps`, got pixels_per_step={pixels_per_step!r} and "
            f"n_steps={n_steps!r}."
        )
    check_optional_int("pixels_per_step", pixels_per_step)
    check_optional_int("n_steps", n_steps)
    defaults = PRESETS[preset or "rise"]
    insertion_substrate = defaults["insertion_substrate"] if insertion_substrate is None else insertion_substrate
    deletion_substrate = defaults["deletion_substrate"] if deletion_substrate is None else deletion_substrate
    check_substrate("insertion_substrate", insertion_substrate)
    check_substrate("deletion_substrate", deletion_substrate)
    if pixels_per_step is None and n_steps is None:
        n_steps = defaults["n_steps"]
    return Protocol(insertion_substrate, deletion_substrate, pixels_per_step, n_steps)


def prepare_games(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    *,
    preset: str | None,
    insertion_substrate: SubstrateType | None,
    deletion_substrate: SubstrateType | None,
    pixels_per_step: int | None,
    n_steps: int | None,
    reduce: str,
    internal_batch_size: int | None,
    substrate_value: object = None,
    kinds: Collection[str] | None = None,
) -> tuple[Protocol, Tensor, Tensor, int]:
    """Validate the inputs of a perturbation game and resolve its protocol, unit ranks, schedule and chunk size.

    Shared by every metric that plays the insertion/deletion games (insertion/deletion, activation deviation), so
    they see the same perturbed inputs and reject the same bad input. The inputs' kind (:mod:`lit_attr.inputs`)
    says what a unit is (a pixel of an image, a feature, an element) and which substrates exist; a substrate left
    ``None`` is the preset's where the kind offers it, else the kind's default (zeros for features).

    Args:
        model: the classifier.
        x: the clean inputs ``(N, ...)``.
        attributions: their maps (the shape of ``x``, or one value per unit: ``(N, H, W)`` for images).
        preset: see :func:`resolve_protocol`.
        insertion_substrate: see :func:`make_substrate`; ``None``: as said above.
        deletion_substrate: likewise.
        pixels_per_step: units changed per step.
        n_steps: number of steps instead of ``pixels_per_step``.
        reduce: how a map becomes unit scores (``"sum"``, ``"abs_sum"`` over channels, ``"none"``).
        internal_batch_size: most rows per forward pass (``None``: all rows of a game at once).
        substrate_value: the fill of a ``"constant"`` substrate.
        kinds: the kind tags the game accepts (e.g. ``{"images"}``); ``None``: every continuous kind.

    Returns:
        ``(protocol, ranks, schedule, chunk)``: the resolved :class:`Protocol`, per-unit ranks viewed to broadcast
        against ``x``, units changed at each step from :func:`perturbation_schedule`, and the most rows per forward
        pass.
    """
    kind = game_kind(x, kinds)
    insertion_substrate, deletion_substrate = (
        _kind_substrate(kind, preset, game, given)
        for game, given in (("insertion", insertion_substrate), ("deletion", deletion_substrate))
    )
    protocol = resolve_protocol(
        preset,
        insertion_substrate=insertion_substrate,
        deletion_substrate=deletion_substrate,
        pixels_per_step=pixels_per_step,
        n_steps=n_steps,
    )
    check_substrate_value(protocol, substrate_value)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    check_attributions(attributions, x, kind)
    check_choice("reduce", reduce, REDUCTIONS)
    check_optional_int("internal_batch_size", internal_batch_size)
    check_device("x", x, model)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("`x` contains NaN or infinite values; the games need finite inputs.")
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError("`attributions` contains NaN or infinite values; ranking needs finite values.")
    ranks = kind.unit_view(rank_units(kind.unit_scores(attributions.to(x.device), reduce)), x)
    schedule = perturbation_schedule(ranks[0].numel(), protocol.pixels_per_step, protocol.n_steps, device=x.device)
    return protocol, ranks, schedule, internal_batch_size or x.shape[0] * schedule.numel()


def _kind_substrate(kind: InputKind, preset: str | None, game: str, given: SubstrateType | None) -> SubstrateType:
    """The substrate a game uses: the one given, else the preset's where the kind offers it, else the kind's."""
    if given is not None:
        return given
    chosen = PRESETS[preset or "rise"][f"{game}_substrate"] if preset in (None, *PRESETS) else None
    return chosen if chosen in kind.substrates else kind.default_substrate


def check_games(games: object) -> tuple[str, ...]:
    """The games to play, in the order of :data:`GAMES`: ``"insertion"``, ``"deletion"`` or both.

    Example:
        >>> check_games(["deletion", "insertion"])
        ('insertion', 'deletion')
    """
    names = check_names("games", games, GAMES, what="game")
    return tuple(game for game in GAMES if game in names)


def check_substrate_value(protocol: Protocol, substrate_value: object) -> None:
    """Refuse a ``"constant"`` substrate without ``substrate_value`` (at construction, not at the first update)."""
    games = [g for g in GAMES if getattr(protocol, f"{g}_substrate") == "constant"]
    if games and substrate_value is None:
        raise ValueError(
            f'`substrate_value` must be given when a substrate is "constant" ({", ".join(games)}), got None.'
        )
