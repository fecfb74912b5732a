"""The perturbation toolkit every game shares: substrates, unit ranks, step schedules, perturbed rows, clean logits.

Insertion/deletion (:mod:`lit_attr.functional.insertion_deletion`), activation deviation, ROAD, infidelity and the
token games perturb inputs along the same schedules; this module holds what they share, so each game is its math
alone. A map ranks the input units (pixels after a channel reduction, or single elements, or the features of
tabular inputs); at step ``t`` the first ``n_t`` units are taken from a *substrate* (deletion) or from the input
(insertion), built at once with ``torch.where(rank < n_t, ...)`` and sent through the model in chunks of at most
``internal_batch_size`` (samples x steps) rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice, check_finite, check_optional_int
from lit_attr.inputs import CONTINUOUS, InputKind, available_substrates, input_kind
from lit_attr.inputs.images import blur, check_images, rise_blur_kernel

__all__ = [
    "DEFAULT_INTERNAL_BATCH_SIZE",
    "DEFAULT_N_STEPS",
    "GAMES",
    "OUTPUTS",
    "REDUCTIONS",
    "SUBSTRATES",
    "auc",
    "blur",
    "check_attributions",
    "check_clean_logits",
    "check_images",
    "check_substrate",
    "iter_perturbed_batches",
    "make_substrate",
    "model_logits",
    "perturbation_schedule",
    "perturbed_rows",
    "game_kind",
    "rank_units",
    "rank_map",
    "rise_blur_kernel",
]

SubstrateType = str | Callable[[Tensor], Tensor]

#: Number of steps when neither ``pixels_per_step`` nor ``n_steps`` is given (1792 px per step at 224x224).
DEFAULT_N_STEPS = 28

#: Rows (samples x steps) per forward pass unless the caller says otherwise. All rows at once is ~3x slower on a
#: CPU (caches) and, at 224x224, runs a GPU out of memory; 128 rows keep a GPU busy (benchmarks/).
DEFAULT_INTERNAL_BATCH_SIZE = 128

#: Substrate names of the built-in input kinds (a callable is accepted too; a kind a user registers may add its own:
#: :func:`lit_attr.inputs.available_substrates`).
SUBSTRATES = ("zero", "blur", "mean", "noise", "constant")
#: Scores a curve can track.
OUTPUTS = ("prob", "logit", "prob_ratio")
#: Channel reductions that turn a map into units.
REDUCTIONS = ("sum", "abs_sum", "none")
#: The two games, in the order they are played.
GAMES = ("insertion", "deletion")

def make_substrate(
    substrate: SubstrateType,
    x: Tensor,
    *,
    substrate_value: float | Sequence[float] | Tensor | None = None,
    seed: int = 0,
    name: str = "substrate",
) -> Tensor:
    """The inputs that perturbed units are taken from, one per sample, as the inputs' kind builds them.

    Every continuous kind (:mod:`lit_attr.inputs`) offers ``"zero"``, ``"noise"``, ``"constant"`` and callables;
    images add ``"blur"`` and ``"mean"``. Tabular inputs ``(N, D)`` take a scalar or ``D`` per-feature values (e.g.
    the training mean) as ``"constant"``.

    Args:
        substrate: ``"zero"`` (zeros in the model's input space: the dataset mean colour when the model expects
            normalised inputs), ``"blur"`` (:func:`blur`), ``"mean"`` (per-image channel mean), ``"noise"``
            (N(0, 1) from a ``torch.Generator`` seeded with ``seed``; one draw shared by all samples, so a
            sample's result does not depend on its batch), ``"constant"`` (``substrate_value``), or a callable
            mapping ``x`` to a tensor broadcastable to ``x``.
        x: ``(N, C, H, W)`` floating-point images, ``(N, D)`` features, or a batch of another continuous kind.
        substrate_value: for ``"constant"``: a scalar, ``C`` per-channel values, or a tensor broadcastable to
            ``(C, H, W)``; for features, a scalar or ``D`` values.
        seed: seed of the ``"noise"`` substrate; the global random state is never used.
        name: the argument named in error messages (e.g. ``"deletion_substrate"``).

    Returns:
        A tensor with the shape, dtype and device of ``x`` (possibly an expanded view).

    Raises:
        ValueError: for an unknown name, a missing ``substrate_value``, or a callable returning the wrong shape.
        TypeError: for a substrate that is neither a name nor a callable.

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> make_substrate("mean", x).flatten().tolist()
        [1.5, 1.5, 1.5, 1.5]
    """
    check_substrate(name, substrate)
    kind = game_kind(x)
    return kind.substrate(substrate, x, value=substrate_value, seed=seed, argument=name)


def rank_map(attributions: Tensor, reduce: str = "sum") -> Tensor:
    """Rank of every unit by descending attribution: 0 is the most important unit.

    The sort is stable, so tied units (plateaus, common in FEI maps; an all-zero map) are ranked in raster
    order: row by row, left to right (channel-major for ``reduce="none"``); features of a 2-D map in index order.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)``, or ``(N, D)`` for features (each feature is a unit).
        reduce: how channels become units: ``"sum"`` (signed channel sum), ``"abs_sum"`` (sum of absolute
            values) or ``"none"`` (every element is a unit). A 3-D map already has one value per pixel.

    Returns:
        ``(N, H, W)`` long ranks, ``(N, C, H, W)`` for ``reduce="none"`` on a 4-D map, ``(N, D)`` for a 2-D map.

    Raises:
        ValueError: for an unknown ``reduce``, a map that is not 2-D/3-D/4-D, or non-finite values.

    Example:
        >>> rank_map(torch.tensor([[[0.5, 2.0], [0.5, -1.0]]]))
        tensor([[[1, 0],
                 [2, 3]]])
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`attributions` must be a torch.Tensor, got {type(attributions).__name__}.")
    check_choice("reduce", reduce, REDUCTIONS)
    if attributions.ndim not in (2, 3, 4) or attributions.shape[0] == 0:
        raise ValueError(
            f"`attributions` must be a non-empty (N, C, H, W), (N, H, W) or (N, D) tensor, got shape "
            f"{tuple(attributions.shape)}."
        )
    if attributions.is_floating_point() and not bool(torch.isfinite(attributions).all()):
        raise ValueError("`attributions` contains NaN or infinite values; ranking needs finite values.")
    scores = attributions.abs() if reduce == "abs_sum" else attributions
    if attributions.ndim == 4 and reduce != "none":
        scores = scores.sum(dim=1)
    return rank_units(scores)


def rank_units(scores: Tensor) -> Tensor:
    """Rank of every unit of ``scores`` ``(N, *units)`` by descending score, 0 the first; ties in index order.

    Example:
        >>> rank_units(torch.tensor([[0.5, 2.0, 0.5]]))
        tensor([[1, 0, 2]])
    """
    flat = scores.reshape(scores.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions).view(scores.shape)


def perturbation_schedule(
    num_units: int,
    pixels_per_step: int | None = None,
    n_steps: int | None = None,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Number of perturbed units after each step: ``n_t = min(t * pixels_per_step, num_units)``, t = 0..T.

    ``T = ceil(num_units / pixels_per_step)``. With ``n_steps``, ``pixels_per_step = ceil(num_units / n_steps)``,
    so T can be smaller than ``n_steps`` on small inputs (28 steps at 224x224 or 32x32, 26 at 16x16, 22 at
    8x8); T never exceeds ``n_steps``. With neither, ``n_steps=28``.

    Args:
        num_units: units in one sample (H*W pixels, or C*H*W elements for ``reduce="none"``).
        pixels_per_step: units changed per step.
        n_steps: number of steps instead of ``pixels_per_step``.
        device: device of the result.

    Returns:
        ``(T + 1,)`` long tensor from 0 to ``num_units``.

    Raises:
        ValueError: for non-positive values or both step options given.

    Example:
        >>> perturbation_schedule(10, pixels_per_step=4)
        tensor([ 0,  4,  8, 10])
    """
    check_optional_int("num_units", num_units)
    check_optional_int("pixels_per_step", pixels_per_step)
    check_optional_int("n_steps", n_steps)
    if pixels_per_step is not None and n_steps is not None:
        raise ValueError(
            f"Give at most one of `pixels_per_step` and `n_steps`, got pixels_per_step={pixels_per_step!r} and "
            f"n_steps={n_steps!r}."
        )
    if pixels_per_step is None:
        pixels_per_step = math.ceil(num_units / (n_steps or DEFAULT_N_STEPS))
    num_steps = math.ceil(num_units / pixels_per_step)
    return (torch.arange(num_steps + 1, device=device) * pixels_per_step).clamp(max=num_units)


def iter_perturbed_batches(
    x: Tensor,
    substrate: Tensor,
    ranks: Tensor,
    schedule: Tensor,
    game: str,
    chunk_size: int | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield the perturbed inputs of one game for all (sample, step) rows, ``chunk_size`` rows at a time.

    Rows are ordered sample-major (all steps of sample 0, then sample 1, ...). A row (i, t) is
    ``where(ranks[i] < schedule[t], substrate[i], x[i])`` for deletion and
    ``where(ranks[i] < schedule[t], x[i], substrate[i])`` for insertion.

    Args:
        x: ``(N, C, H, W)`` clean inputs, or ``(N, D)`` features.
        substrate: tensor broadcastable to ``x`` (see :func:`make_substrate`).
        ranks: ``(N, H, W)`` or ``(N, C, H, W)`` unit ranks from :func:`rank_map` (``(N, D)`` for features).
        schedule: ``(T + 1,)`` units perturbed per step from :func:`perturbation_schedule`.
        game: ``"insertion"`` or ``"deletion"``.
        chunk_size: most rows per yielded batch; ``None`` yields all ``N * (T + 1)`` rows at once.

    Yields:
        ``(samples, steps, inputs)``: the sample and step index of every row (long ``(R,)``) and the
        ``(R, ...)`` perturbed inputs.

    Example:
        >>> x = torch.ones(1, 1, 2, 2)
        >>> ranks = rank_map(torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]))
        >>> _, steps, rows = next(iter_perturbed_batches(x, torch.zeros_like(x), ranks, torch.tensor([0, 2, 4]),
        ...                                              "deletion"))
        >>> rows.flatten(1).tolist()
        [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    """
    check_choice("game", game, GAMES)
    total = x.shape[0] * schedule.numel()
    chunk_size = total if chunk_size is None else chunk_size
    for start in range(0, total, chunk_size):
        yield perturbed_rows(x, substrate, ranks, schedule, game, start, min(start + chunk_size, total))


def perturbed_rows(
    x: Tensor, substrate: Tensor, ranks: Tensor, schedule: Tensor, game: str, start: int, stop: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The rows ``start .. stop - 1`` of :func:`iter_perturbed_batches` (same arguments, same order of rows).

    The games call it from :class:`~lit_attr._memory.MemoryBackoff`, which may shrink the chunks mid-game.

    Example:
        >>> x = torch.ones(1, 1, 2, 2)
        >>> ranks = rank_map(torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]))
        >>> _, steps, rows = perturbed_rows(x, torch.zeros_like(x), ranks, torch.tensor([0, 2, 4]), "deletion", 1, 3)
        >>> steps.tolist(), rows.flatten(1).tolist()
        ([1, 2], [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    """
    substrate = torch.broadcast_to(substrate, x.shape)
    if ranks.ndim == 3 and x.ndim == 4:
        ranks = ranks.unsqueeze(1)
    points = schedule.numel()
    head, tail = (x, substrate) if game == "insertion" else (substrate, x)
    rows = torch.arange(start, stop, device=x.device)
    samples, steps = rows // points, rows % points
    keep_head = ranks[samples] < schedule.to(x.device)[steps].view(-1, *([1] * (x.ndim - 1)))
    return samples, steps, torch.where(keep_head, head[samples], tail[samples])


def auc(curve: Tensor) -> Tensor:
    """Normalised trapezoidal area under curves sampled at T + 1 equally spaced points.

    ``auc = (sum_t s_t - s_0 / 2 - s_T / 2) / T``, i.e. the trapezoid rule on [0, 1].

    Args:
        curve: ``(..., T + 1)`` with T >= 1.

    Returns:
        ``(...)`` areas.

    Raises:
        ValueError: for curves with fewer than two points.

    Example:
        >>> auc(torch.tensor([1.0, 0.5, 0.0]))
        tensor(0.5000)
    """
    if not isinstance(curve, Tensor) or curve.ndim == 0 or curve.shape[-1] < 2:
        shape = tuple(curve.shape) if isinstance(curve, Tensor) else type(curve).__name__
        raise ValueError(f"`curve` must be a tensor (..., T + 1) with at least 2 points, got {shape}.")
    steps = curve.shape[-1] - 1
    return (curve.sum(dim=-1) - (curve[..., 0] + curve[..., -1]) / 2) / steps


def check_attributions(attributions: object, x: Tensor, kind: InputKind | None = None) -> None:
    """Refuse maps that are not floats of a shape the games take for ``x`` (``kind``: ``x``'s, found if ``None``).

    Example:
        >>> check_attributions(torch.zeros(2, 8, 8), torch.zeros(2, 3, 8, 8))  # one value per pixel
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`attributions` must be a torch.Tensor, got {type(attributions).__name__}.")
    if not attributions.is_floating_point():
        raise TypeError(f"`attributions` must be a floating-point tensor, got dtype {attributions.dtype}.")
    (kind or game_kind(x)).check_game_inputs(x, attributions)


def game_kind(x: object, kinds: Collection[str] | None = None, name: str = "x") -> InputKind:
    """The kind of a game's inputs: a non-empty float batch of a continuous kind (the games blend it).

    Args:
        x: the inputs.
        kinds: the kind tags accepted (``None``: every continuous kind).
        name: the argument named in errors.

    Example:
        >>> game_kind(torch.zeros(2, 6)).name
        'tabular'
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor, got dtype {x.dtype}: this game needs inputs of a continuous "
            "kind (token ids play the token games and the unit games that replace tokens by an id)."
        )
    if x.ndim < 2 or 0 in x.shape:
        raise ValueError(f"`{name}` must be a non-empty batch (N, ...), got shape {tuple(x.shape)}.")
    kind = input_kind(x)
    accepted = {CONTINUOUS} if kinds is None else set(kinds)
    if accepted.isdisjoint(kind.tags):
        wanted = (
            "a non-empty image batch (N, C, H, W), features (N, D) or a batch of a registered continuous input kind"
            if CONTINUOUS in accepted
            else " or ".join(f"a batch of {tag}" for tag in sorted(accepted))
            + (" (N, C, H, W)" if accepted == {"images"} else "")
        )
        raise ValueError(f"`{name}` must be {wanted}, got {kind.name} inputs of shape {tuple(x.shape)}.")
    return kind


# ------------------------------------------------------------------------------------------------- validation
def check_substrate(name: str, value: object) -> None:
    """Refuse a substrate that no registered input kind offers and that is not a callable; ``name`` is the argument.

    Which substrates fit which inputs is the inputs' kind's to say, when the game runs (:func:`make_substrate`).
    """
    if callable(value):
        return
    known = available_substrates()
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be one of {known} or a callable, got {type(value).__name__}.")
    if value not in known:
        raise ValueError(f"`{name}` must be one of {known} or a callable, got {value!r}.")


def check_clean_logits(logits: object, x: Tensor) -> None:
    """Refuse ``logits`` that are not finite ``(N, K)`` logits of the batch ``x`` (the runner's clean forward)."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"`logits` must be the model's logits (N, K) = ({x.shape[0]}, K) for `x`, got {shape}.")
    check_finite("logits", logits)


def model_logits(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)``, refused unless it is logits ``(N, K)`` for the ``N`` rows of ``x``."""
    out = model(x)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"`model` must return logits of shape (N, K) = ({x.shape[0]}, K), got {shape}.")
    return out
