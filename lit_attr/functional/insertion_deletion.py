"""Insertion and deletion games (Petsiuk et al. 2018, RISE), batched (specs/metrics.md, "Insertion / deletion").

The attribution map ranks the input units (pixels after a channel reduction, or single elements). The deletion
game replaces the most important units first by a *substrate* and tracks the score of the target class; the
insertion game starts from the substrate and puts the most important units back first. A faithful map makes the
deletion curve fall fast (low AUC) and the insertion curve rise fast (high AUC).

Every perturbed input is built at once with ``torch.where(rank < n_t, ...)`` on a per-unit rank map, and the
(sample x step) rows of a batch go through the model together, in chunks of at most ``internal_batch_size``
rows.

Tabular inputs ``(N, D)`` play the same games with the D features as units (substrates ``"zero"``, ``"constant"``,
e.g. a training mean per feature, ``"noise"`` or a callable), and ``games=`` plays one game alone.

The building blocks (substrates, ranks, schedules, perturbed rows) live in :mod:`lit_attr.functional.perturbation`,
which every game shares.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, check_scorable, resolve_target
from lit_attr._hygiene import preserved_model_state
from lit_attr._memory import MemoryBackoff
from lit_attr.functional import perturbation, protocol
from lit_attr.functional.perturbation import (
    DEFAULT_INTERNAL_BATCH_SIZE,
    GAMES,
    OUTPUTS,
    SubstrateType,
    auc,
    check_clean_logits,
    make_substrate,
    model_logits,
    perturbed_rows,
)
from lit_attr.functional.protocol import check_games, prepare_games

__all__ = ["InsertionDeletionResult", "insertion_deletion"]

#: Names that moved to :mod:`lit_attr.functional.perturbation` or ``.protocol``; importing them from here still works,
#: with a warning.
_MOVED = {
    "DEFAULT_INTERNAL_BATCH_SIZE": "perturbation",
    "DEFAULT_N_STEPS": "perturbation",
    "GAMES": "perturbation",
    "OUTPUTS": "perturbation",
    "PRESETS": "protocol",
    "REDUCTIONS": "perturbation",
    "SUBSTRATES": "perturbation",
    "Protocol": "protocol",
    "auc": "perturbation",
    "blur": "perturbation",
    "check_games": "protocol",
    "iter_perturbed_batches": "perturbation",
    "make_substrate": "perturbation",
    "perturbation_schedule": "perturbation",
    "perturbed_rows": "perturbation",
    "rank_map": "perturbation",
    "resolve_protocol": "protocol",
    "rise_blur_kernel": "perturbation",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module = _MOVED[name]
        warnings.warn(
            f"lit_attr.functional.insertion_deletion.{name} moved to lit_attr.functional.{module}.{name} "
            "(also exported by lit_attr.functional).",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(perturbation if module == "perturbation" else protocol, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class InsertionDeletionResult(NamedTuple):
    """Per-sample output of :func:`insertion_deletion`.

    A game that was not played (``games=``) has ``None`` for its curve and AUC.

    Attributes:
        insertion_curve: ``(N, T + 1)`` scores while inserting units, from the substrate (t = 0) to ``x`` (t = T).
        deletion_curve: ``(N, T + 1)`` scores while deleting units, from ``x`` (t = 0) to the substrate (t = T).
        insertion_auc: ``(N,)`` normalised area under the insertion curve (higher is better).
        deletion_auc: ``(N,)`` normalised area under the deletion curve (lower is better).
        target: ``(N,)`` class whose score was tracked.
    """

    insertion_curve: Tensor | None
    deletion_curve: Tensor | None
    insertion_auc: Tensor | None
    deletion_auc: Tensor | None
    target: Tensor



def insertion_deletion(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    pixels_per_step: int | None = None,
    n_steps: int | None = None,
    insertion_substrate: SubstrateType | None = None,
    deletion_substrate: SubstrateType | None = None,
    output: str = "prob",
    reduce: str = "sum",
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    preset: str | None = None,
    substrate_value: float | Sequence[float] | Tensor | None = None,
    seed: int = 0,
    logits: Tensor | None = None,
    games: str | Sequence[str] = GAMES,
) -> InsertionDeletionResult:
    """Insertion and deletion curves and AUCs of attribution maps (RISE's causal metrics, batched).

    Units are ranked by :func:`rank_map` (stable descending sort: ties in raster order). At step t the first
    ``n_t`` units (:func:`perturbation_schedule`) are deleted (replaced by the deletion substrate) or inserted
    (taken from ``x`` into the insertion substrate), and the target score of the result is recorded. The model
    runs in eval mode under ``torch.no_grad()``; its modes, flags and buffers are restored afterwards.

    Options left as ``None`` come from ``preset`` (default ``"rise"``: insertion ``"blur"``, deletion ``"zero"``,
    ``n_steps=28``); explicit options override the preset.

    **Single games.** ``games="deletion"`` (or ``"insertion"``) plays that game alone: the other game's substrate
    is not built and its ``N * (T + 1)`` forward rows are not run; its fields of the result are ``None``.

    **Every continuous input kind** (:mod:`lit_attr.inputs`) plays: its kind says what a unit is and which substrates
    exist. ``x`` may be ``(N, D)`` features with ``(N, D)`` attributions: the units are the features (ranked by
    ``|A|`` with ``reduce="abs_sum"``, by the signed values otherwise) and ``pixels_per_step`` counts features;
    substrates ``"zero"``, ``"constant"`` with a scalar or ``D`` per-feature values (e.g. the training mean),
    ``"noise"`` or a callable; a substrate left ``None`` is ``"zero"`` for features, whatever the preset (RISE's blur
    needs images). A kind registered by a user plays with its own units and substrates.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, C, H, W)`` inputs in the model's input space, on the model's device, ``(N, D)`` features, or a
            batch of another continuous input kind.
        attributions: ``(N, C, H, W)`` (same shape as ``x``) or ``(N, H, W)`` maps; ``(N, D)`` for features.
        target: tracked class: ``None`` (clean top-1 prediction), an int, or ``N`` ints.
        pixels_per_step: units changed per step.
        n_steps: number of steps (``pixels_per_step = ceil(units / n_steps)``); not together with
            ``pixels_per_step``.
        insertion_substrate: what the insertion game starts from (see :func:`make_substrate`).
        deletion_substrate: what deleted units are replaced by.
        output: score per point: ``"prob"`` (softmax probability), ``"logit"``, or ``"prob_ratio"``
            (``p(x_t) / p(x)``).
        reduce: channel reduction of the map: ``"sum"``, ``"abs_sum"`` or ``"none"`` (per-element units; then
            ``pixels_per_step`` counts elements).
        internal_batch_size: most rows (samples x steps) per forward pass (default
            :data:`DEFAULT_INTERNAL_BATCH_SIZE`); ``None`` runs all ``N * (T + 1)`` rows of a game in one pass.
        preset: ``"rise"``, ``"mfaba"``, ``"fei"`` or ``None`` (see :data:`PRESETS`).
        substrate_value: the fill of a ``"constant"`` substrate.
        seed: seed of a ``"noise"`` substrate.
        logits: the model's logits ``(N, K)`` for ``x`` if the caller already has them (the runner computes them
            once per batch); they resolve the target and the clean probability instead of a forward pass.
        games: the games to play: ``("insertion", "deletion")`` (default), or one of them.

    Returns:
        :class:`InsertionDeletionResult` with ``(N, T + 1)`` curves, ``(N,)`` AUCs and the tracked targets, in
        the dtype of the model's output, at least float32 (a bf16 model gets float32 scores); ``None`` for a game
        not played.

    Raises:
        TypeError: for a model that is not a module, non-tensor or integer inputs, or non-integer targets.
        ValueError: for mismatched shapes or devices, unknown option or game names, both step options, bad
            targets, image substrates for features, or model outputs that are not ``(N, K)`` logits.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> result = insertion_deletion(net, x, torch.randn(2, 8, 8), n_steps=4)
        >>> result.insertion_curve.shape, result.deletion_auc.shape
        (torch.Size([2, 5]), torch.Size([2]))
        >>> deletion_only = insertion_deletion(net, x, torch.randn(2, 8, 8), n_steps=4, games="deletion")
        >>> deletion_only.insertion_auc is None, deletion_only.deletion_auc.shape
        (True, torch.Size([2]))
        >>> features = insertion_deletion(nn.Linear(6, 3), torch.rand(4, 6), torch.randn(4, 6), n_steps=3)
        >>> features.deletion_curve.shape
        torch.Size([4, 4])
    """
    check_choice("output", output, OUTPUTS)
    played = check_games(games)
    protocol, ranks, schedule, chunk = prepare_games(
        model,
        x,
        attributions,
        preset=preset,
        insertion_substrate=insertion_substrate,
        deletion_substrate=deletion_substrate,
        pixels_per_step=pixels_per_step,
        n_steps=n_steps,
        reduce=reduce,
        internal_batch_size=internal_batch_size,
        substrate_value=substrate_value,
    )
    n, points = x.shape[0], schedule.numel()

    with torch.no_grad(), preserved_model_state(model), MemoryBackoff("insertion_deletion", chunk) as backoff:
        # Scores in at least float32: a bf16/fp16 model's curves and AUCs would otherwise be rounded to 3 digits.
        if logits is None:
            parts: list[Tensor] = []
            backoff.chunks(n, lambda start, stop: parts.append(model_logits(model, x[start:stop])))
            clean = torch.cat(parts)
        else:
            check_clean_logits(logits, x)
            clean = logits.detach()
        clean = clean.to(torch.promote_types(clean.dtype, torch.float32))
        if output != "logit":  # a softmax over one logit, or over probabilities, tracks nothing honest
            check_scorable(clean)
        target = resolve_target(target, clean)
        clean_prob = clean.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        curves: dict[str, Tensor | None] = {game: None for game in GAMES}
        for game in played:
            substrate = make_substrate(
                getattr(protocol, f"{game}_substrate"), x, substrate_value=substrate_value, seed=seed,
                name=f"{game}_substrate",
            )  # fmt: skip
            curve = clean.new_empty(n, points)
            play = functools.partial(
                _play_rows, model, x, substrate, ranks, schedule, game, target, clean_prob, output, curve
            )
            backoff.chunks(n * points, play)
            curves[game] = curve
    aucs = {game: None if curve is None else auc(curve) for game, curve in curves.items()}
    return InsertionDeletionResult(
        curves["insertion"], curves["deletion"], aucs["insertion"], aucs["deletion"], target
    )


def _play_rows(
    model: nn.Module,
    x: Tensor,
    substrate: Tensor,
    ranks: Tensor,
    schedule: Tensor,
    game: str,
    target: Tensor,
    clean_prob: Tensor,
    output: str,
    curve: Tensor,
    start: int,
    stop: int,
) -> None:
    """Score the rows ``start .. stop - 1`` of one game into ``curve`` (N, T + 1)."""
    samples, steps, inputs = perturbed_rows(x, substrate, ranks, schedule, game, start, stop)
    scores = model_logits(model, inputs).to(curve.dtype)
    if output != "logit":
        scores = scores.softmax(dim=1)
    score = scores.gather(1, target[samples, None]).squeeze(1)
    if output == "prob_ratio":
        score = score / clean_prob[samples]
    curve[samples, steps] = score

