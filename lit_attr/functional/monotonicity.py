"""Monotonicity: does the model's score follow the order (or the size) of the attributions?

* :func:`monotonicity` (Arya et al. 2019): starting from the baseline, put the units back in order of increasing
  attribution; the map passes when the score of the target never falls;
* :func:`monotonicity_correlation` (Nguyen & Martinez 2020): the Spearman correlation between the units' absolute
  attributions and how much the score moves when each is replaced by random values.

Units are the input kind's, taken ``features_per_step`` at a time (one by default, as in both papers).
Both play on every kind: on token ids the units are a sentence's real tokens that are not special, replaced by the
[MASK] id (:func:`monotonicity`) or by random words (:func:`monotonicity_correlation`, the kind's ``"noise"``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_int, check_seed
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, SubstrateType
from lit_attr.functional.similarity import spearman
from lit_attr.functional.unit_games import (
    batch_fields,
    draw_outputs,
    game_fill,
    group_sums,
    kind_substrate,
    masked_outputs,
    own_groups,
    prepare_game,
    rank_groups,
)

__all__ = ["monotonicity", "monotonicity_correlation", "monotonicity_curves"]


def monotonicity_curves(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    features_per_step: int = 1,
    substrate: SubstrateType | None = None,
    substrate_value: object = None,
    output: str = "prob",
    reduce: str = "sum",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``(N, G + 1)`` scores of the target while the ``G`` groups are put back, least attributed first.

    Point ``t`` is the input with the ``t`` least attributed groups taken from ``x`` and the rest from the substrate:
    point 0 is the substrate alone, point ``G`` is ``x``. A sample with fewer groups ``G_i`` (a shorter sentence) has
    NaN after its point ``G_i``. See :func:`monotonicity` for the arguments.

    Example:
        >>> net = nn.Linear(4, 2)
        >>> monotonicity_curves(net, torch.rand(3, 4), torch.rand(3, 4)).shape
        torch.Size([3, 5])
    """
    curves, groups = _curves(
        model, x, attributions, target, features_per_step=features_per_step, substrate=substrate,
        substrate_value=substrate_value, output=output, reduce=reduce, seed=seed,
        internal_batch_size=internal_batch_size, logits=logits,
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs),
    )  # fmt: skip
    points = torch.arange(curves.shape[1], device=curves.device)[None]
    return torch.where(points <= groups[:, None], curves, torch.nan)


def _curves(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType,
    *,
    features_per_step: int,
    substrate: SubstrateType | None,
    substrate_value: object,
    output: str,
    reduce: str,
    seed: int,
    internal_batch_size: int | None,
    logits: Tensor | None,
    fields: Mapping[str, object],
) -> tuple[Tensor, Tensor]:
    """The curves of :func:`monotonicity_curves` (every point played) and every sample's own number of groups."""
    check_int("features_per_step", features_per_step, 1)
    check_seed(seed)
    game = prepare_game(
        model, x, attributions, target, logits, reduce=reduce, output=output, internal_batch_size=internal_batch_size,
        fields=fields, who="monotonicity",
    )  # fmt: skip
    groups, count = rank_groups(game.units, features_per_step, ascending=True, valid=game.valid)
    fill = game_fill(model, game, substrate, x, value=substrate_value, seed=seed)
    curves = masked_outputs(
        model, game, x, fill, lambda samples, rows: groups[samples] >= rows.view(-1, *([1] * (groups.ndim - 1))),
        count + 1, output=output, internal_batch_size=internal_batch_size, who="monotonicity",
    )  # fmt: skip
    return curves, own_groups(game, features_per_step)


def monotonicity(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    features_per_step: int = 1,
    substrate: SubstrateType | None = None,
    substrate_value: object = None,
    output: str = "prob",
    reduce: str = "sum",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Monotonicity of Arya et al. (2019) per sample: 1.0 when the score never falls, else 0.0; higher is better.

    From the baseline, the units are put back in order of increasing (signed) attribution, as Arya et al.'s AIX360
    ranks the importances, ``features_per_step`` at a time; the probability of the target must not decrease from one
    point to the next (:func:`monotonicity_curves`). Quantus orders by absolute values (``reduce="abs_sum"``). Cost:
    ``G + 1`` forwards for ``G`` groups.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        features_per_step: units put back per step.
        substrate: the baseline the game starts from (``None``: zeros, or the [MASK] id of token ids).
        substrate_value: the fill of ``"constant"``.
        output: ``"prob"`` (default, the paper's) or ``"logit"``.
        reduce: ``"sum"`` (signed channel sum, default), ``"abs_sum"`` (Quantus) or ``"none"``.
        seed: seed of a ``"noise"`` substrate.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding is never a unit; the rows keep the mask).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (never units; nor the model's special ids).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...), kept with
            every row.

    Returns:
        ``(N,)`` 1.0 (monotonic) or 0.0.

    Example:
        >>> net = nn.Linear(4, 2)
        >>> _ = net.weight.data.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]))
        >>> x = torch.rand(3, 4)
        >>> a = x * net.weight[1].detach()  # every unit adds to the target's logit: putting one back never hurts
        >>> monotonicity(net, x, a, target=1), monotonicity(net, x, -a, target=1, reduce="abs_sum")
        (tensor([1., 1., 1.]), tensor([1., 1., 1.]))
    """
    curves, groups = _curves(
        model, x, attributions, target, features_per_step=features_per_step, substrate=substrate,
        substrate_value=substrate_value, output=output, reduce=reduce, seed=seed,
        internal_batch_size=internal_batch_size, logits=logits,
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs),
    )  # fmt: skip
    # A sample's own steps only: after its last group (a shorter sentence) its rows replaced nothing.
    steps = torch.arange(1, curves.shape[1], device=curves.device)[None] <= groups[:, None]
    return torch.all((curves.diff(dim=1) >= 0) | ~steps, dim=1).to(curves.dtype)


def monotonicity_correlation(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    features_per_step: int = 1,
    n_samples: int = 10,
    substrate: SubstrateType | None = None,
    substrate_value: object = None,
    output: str = "prob",
    reduce: str = "abs_sum",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Monotonicity correlation of Nguyen & Martinez (2020) per sample: higher is better, 1 at best.

    For every group of ``features_per_step`` units, the expected squared change of the target's score when it alone
    takes random values, ``E_j[(f(x) - f(x_[group = draw j]))^2]`` over ``n_samples`` draws; the score is the Spearman
    correlation between the groups' absolute attributions and these expectations, over the sample's own groups. The
    draws are the kind's ``"noise"`` substrate, one seed per draw: seeded N(0, 1) values of continuous inputs
    (Quantus draws uniform values, 100 of them), random words of token ids (a table per draw that gives every id a
    word). Cost: ``G x n_samples`` forwards for ``G`` groups.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        features_per_step: units per group.
        n_samples: random draws per group.
        substrate: the draws: ``None`` (``"noise"``), another substrate of the kind (drawn with seed ``seed + j``),
            or a callable.
        substrate_value: the fill of ``"constant"``.
        output: ``"prob"`` (default) or ``"logit"``.
        reduce: ``"abs_sum"`` (default: the paper's absolute attributions), ``"sum"`` or ``"none"``.
        seed: seed of the draws.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding is never a unit; the rows keep the mask).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (never units; nor the model's special ids).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...), kept with
            every row.

    Returns:
        ``(N,)`` correlations in [-1, 1].

    Example:
        >>> net = nn.Linear(5, 2)
        >>> monotonicity_correlation(net, torch.rand(3, 5), torch.rand(3, 5), n_samples=4).shape
        torch.Size([3])
    """
    check_int("features_per_step", features_per_step, 1)
    check_int("n_samples", n_samples, 1)
    check_seed(seed)
    game = prepare_game(
        model, x, attributions, target, logits, reduce=reduce, output=output, internal_batch_size=internal_batch_size,
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs), who="monotonicity_correlation",
    )  # fmt: skip
    groups, count = rank_groups(game.units, features_per_step, valid=game.valid)
    scores = draw_outputs(
        model, game, x, groups, count, substrate=kind_substrate(game.kind, substrate, "noise"),
        substrate_value=substrate_value, n_draws=n_samples, seed=seed, output=output,
        internal_batch_size=internal_batch_size, who="monotonicity_correlation",
    )  # fmt: skip
    effects = (game.clean[:, None, None].double() - scores.double()).square().mean(dim=2)
    sums = group_sums(game.units.abs(), groups, count)
    if game.valid is None:
        return spearman(sums, effects).to(game.clean.dtype)
    # A sample's own groups only, which come first (group 0 holds its highest scores): a shorter sentence has fewer.
    own = own_groups(game, features_per_step)
    result = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for size in own.unique().tolist():
        rows = own == size
        if size > 1:
            result[rows] = spearman(sums[rows, :size], effects[rows, :size]).double()
    return result.to(game.clean.dtype)

