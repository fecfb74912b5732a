"""Faithfulness as correlations between attributions and the output drops of removing what they score.

* :func:`faithfulness_correlation` (Bhatt et al. 2020): over random subsets ``S`` of ``|S|`` units, the Pearson
  correlation between ``sum_{i in S} a_i`` and ``f(x) - f(x_[S = baseline])``;
* :func:`sensitivity_n` (Ancona et al. 2018): the same correlation for every subset size ``n`` of a list;
* :func:`faithfulness_estimate` (Alvarez-Melis & Jaakkola 2018): the correlation between the attribution of every
  unit (or group of ``features_per_step`` units, taken in order of attribution) and the drop when it alone is removed.

Units are the input kind's (an image's pixels, channels summed; features; a sentence's real tokens that are not
special), so every kind plays; removed units take the kind's substrate (zeros of float inputs by default, the
[MASK] id of token ids), and a token row keeps its sample's attention mask and ``token_type_ids``. For a linear
model and integrated gradients from a zero baseline every drop equals the summed attributions, and all three
correlations are 1 (in logits). Random subsets are drawn per sample from a CPU generator seeded with ``seed`` and the
values of the sample's units (padding moved or added draws the same subsets): the same subsets in any batch, on any
process and device, and the global random state is never used. A subset size given as an int larger than a
sentence's tokens is all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_int, check_seed
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, SubstrateType
from lit_attr.functional.unit_games import (
    batch_fields,
    check_size,
    counted_units,
    game_fill,
    group_sums,
    masked_outputs,
    own_groups,
    prepare_game,
    rank_groups,
    sample_seeds,
    sample_sizes,
)
from lit_attr.functional.units import pearson_rows

__all__ = ["DEFAULT_SENSITIVITY_N_SIZES", "faithfulness_correlation", "faithfulness_estimate", "sensitivity_n"]

#: Subset sizes of :func:`sensitivity_n` as fractions of the units: log-spaced up to Ancona et al.'s 80%.
DEFAULT_SENSITIVITY_N_SIZES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


class _Subsets:
    """Random unit subsets of every sample, one generator per sample seeded by ``seed`` and its values.

    Row ``r`` of sample ``i`` holds the ``sizes[i, r // n_subsets]`` first units of a random order drawn for that row
    over the sample's units that count (``valid``); the others come last and are never taken.
    """

    def __init__(self, seeds: list[int], valid: Tensor, sizes: Tensor, n_subsets: int) -> None:
        self.seeds = seeds
        self.valid = valid.reshape(valid.shape[0], -1).cpu()
        self.units = self.valid.shape[1]
        self.size_of_row = sizes.repeat_interleave(n_subsets, dim=1)
        self._cached: tuple[int, Tensor] | None = None

    def ranks(self, sample: int) -> Tensor:
        """``(rows, units)`` every unit's place in the row's random order (drawn on the CPU)."""
        if self._cached is None or self._cached[0] != sample:
            generator = torch.Generator().manual_seed(self.seeds[sample])
            valid = self.valid[sample]
            rows = self.size_of_row.shape[1]
            # Keys for the sample's own units in order, so that padding moved or added draws the same subsets.
            keys = torch.full((rows, self.units), 2.0)
            keys[:, valid] = torch.rand((rows, int(valid.sum())), generator=generator)
            order = keys.argsort(dim=1)
            ranks = torch.empty_like(order).scatter_(1, order, torch.arange(self.units).expand_as(order))
            self._cached = (sample, ranks)
        return self._cached[1]

    def chosen(self, sample: int) -> Tensor:
        """``(rows, units)`` bool: the units of every row's subset."""
        return self.ranks(sample) < self.size_of_row[sample][:, None]

    def masks(self, samples: Tensor, rows: Tensor, shape: tuple[int, ...]) -> Tensor:
        """``(B, *shape)`` the subsets of the rows ``(samples[b], rows[b])``."""
        out = torch.empty(samples.numel(), self.units, dtype=torch.bool)
        samples, rows = samples.cpu(), rows.cpu()
        for sample in samples.unique().tolist():
            here = samples == sample
            out[here] = self.chosen(sample)[rows[here]]
        return out.view(-1, *shape)


def _subset_correlations(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType,
    logits: Tensor | None,
    sizes: Sequence[object],
    name: str,
    *,
    n_subsets: int,
    substrate: SubstrateType,
    substrate_value: object,
    output: str,
    reduce: str,
    seed: int,
    internal_batch_size: int | None,
    who: str,
    fields: Mapping[str, object],
) -> Tensor:
    """``(N, len(sizes))``: per size, the Pearson correlation over ``n_subsets`` random subsets of that size."""
    check_int("n_subsets", n_subsets, 2)
    check_seed(seed)
    for size in sizes:
        check_size(name, size)
    game = prepare_game(
        model, x, attributions, target, logits, reduce=reduce, output=output, internal_batch_size=internal_batch_size,
        fields=fields, who=who,
    )  # fmt: skip
    shape = tuple(game.units.shape[1:])
    valid = counted_units(game)
    units = valid.reshape(x.shape[0], -1).sum(dim=1).cpu()
    counts = torch.stack([sample_sizes(name, size, units) for size in sizes], dim=1)
    subsets = _Subsets(sample_seeds(game, x, seed), valid, counts, n_subsets)
    flat = game.units.reshape(x.shape[0], -1).double().cpu()
    sums = torch.stack([subsets.chosen(i).double() @ flat[i] for i in range(x.shape[0])]).to(x.device)
    fill = game_fill(model, game, substrate, x, value=substrate_value, seed=seed)
    scores = masked_outputs(
        model, game, x, fill, lambda samples, rows: subsets.masks(samples, rows, shape), len(sizes) * n_subsets,
        output=output, internal_batch_size=internal_batch_size, who=who,
    )  # fmt: skip
    drops = game.clean[:, None].double() - scores.double()
    n, k = x.shape[0], len(sizes)
    rho = pearson_rows(sums.view(n * k, n_subsets), drops.view(n * k, n_subsets)).view(n, k)
    return rho.to(game.clean.dtype)


def faithfulness_correlation(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    subset_size: int | float = 224,
    n_subsets: int = 100,
    substrate: SubstrateType | None = None,
    substrate_value: object = None,
    output: str = "logit",
    reduce: str = "sum",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Faithfulness correlation of Bhatt et al. (2020), per sample: higher is better, 1 at best.

    ``rho(sum_{i in S} a_i, f(x) - f(x_[S = baseline]))`` over ``n_subsets`` random subsets ``S`` of
    ``subset_size`` units. Bhatt et al. leave ``|S|`` open; the default 224 units is Quantus's (about 0.4% of a
    224 x 224 image); a float is a fraction of the units. Quantus draws the subsets from NumPy's global random state;
    here every sample has its own seeded generator. A sample whose attribution sums (or output drops) do not vary
    over the subsets has no correlation and scores 0.

    Args:
        model: classifier returning logits ``(N, K)``; run in eval mode, its state restored.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        subset_size: units per subset: an int, or a float fraction of the units.
        n_subsets: subsets per sample (at least 2; Quantus's default 100).
        substrate: what removed units become (the kind's substrates: ``"zero"``, ``"noise"``, ``"constant"``, image
            ``"blur"``/``"mean"``, token ``"mask"``, or a callable); ``None``: zeros, or the [MASK] id of token ids
            (else the [PAD] id; ``"constant"`` with ``substrate_value`` another id).
        substrate_value: the fill of ``"constant"``.
        output: the score ``f``: ``"logit"`` (default, as Quantus) or ``"prob"``.
        reduce: how a map becomes unit scores: ``"sum"`` (signed channel sum, default), ``"abs_sum"`` or ``"none"``.
        seed: seed of the subsets (and of a ``"noise"`` substrate).
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding is never a unit; the rows keep the mask).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (never units; nor the model's special ids).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...), kept with
            every row.

    Returns:
        ``(N,)`` correlations in [-1, 1], in the model's output dtype (at least float32).

    Example:
        >>> net = nn.Linear(6, 3)
        >>> x = torch.rand(2, 6)
        >>> a = x * net.weight[net(x).argmax(dim=1)].detach()  # IG from zero of a linear model
        >>> faithfulness_correlation(net, x, a, subset_size=2, n_subsets=10, output="logit")
        tensor([1., 1.])
    """
    return _subset_correlations(
        model, x, attributions, target, logits, (subset_size,), "subset_size", n_subsets=n_subsets,
        substrate=substrate, substrate_value=substrate_value, output=output, reduce=reduce, seed=seed,
        internal_batch_size=internal_batch_size, who="faithfulness_correlation",
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs),
    )[:, 0]  # fmt: skip


def sensitivity_n(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    sizes: Sequence[int | float] = DEFAULT_SENSITIVITY_N_SIZES,
    n_subsets: int = 100,
    substrate: SubstrateType | None = None,
    substrate_value: object = None,
    output: str = "logit",
    reduce: str = "sum",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Sensitivity-n of Ancona et al. (2018) per sample and subset size ``n``: higher is better, 1 at best.

    A map is sensitive-n when ``sum_{i in S} a_i = f(x) - f(x_[S = 0])`` for every subset of ``n`` units; Ancona et
    al. measure how close it comes by the Pearson correlation of the two over random subsets of ``n`` units, for ``n``
    from one unit to 80% of them. Quantus takes every ``features_in_step``-th ``n`` up to 80% in order of attribution;
    here the subsets are random, as in the paper, ``n_subsets`` per size. A float size is a fraction of the units.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        sizes: the subset sizes ``n`` (ints, or float fractions of the units).
        n_subsets: subsets per size and sample (at least 2).
        substrate: what removed units become (``None``: zeros, as the paper, or the [MASK] id of token ids).
        substrate_value: the fill of ``"constant"``.
        output: ``"logit"`` (default) or ``"prob"``.
        reduce: ``"sum"`` (default), ``"abs_sum"`` or ``"none"``.
        seed: seed of the subsets.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding is never a unit; the rows keep the mask).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (never units; nor the model's special ids).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...), kept with
            every row.

    Returns:
        ``(N, len(sizes))`` correlations in [-1, 1].

    Example:
        >>> net = nn.Linear(8, 2)
        >>> x = torch.rand(3, 8)
        >>> a = x * net.weight[net(x).argmax(dim=1)].detach()
        >>> sensitivity_n(net, x, a, sizes=(1, 4), n_subsets=8).shape
        torch.Size([3, 2])
    """
    if isinstance(sizes, (str, int, float)) or not isinstance(sizes, Sequence) or not sizes:
        raise TypeError(f"`sizes` must be a non-empty sequence of ints or float fractions, got {sizes!r}.")
    return _subset_correlations(
        model, x, attributions, target, logits, tuple(sizes), "sizes", n_subsets=n_subsets, substrate=substrate,
        substrate_value=substrate_value, output=output, reduce=reduce, seed=seed,
        internal_batch_size=internal_batch_size, who="sensitivity_n",
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs),
    )  # fmt: skip


def faithfulness_estimate(
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
    """Faithfulness estimate of Alvarez-Melis & Jaakkola (2018) per sample: higher is better, 1 at best.

    The units are taken in order of attribution, ``features_per_step`` at a time (one unit each by default, the
    paper's per-feature form; larger groups cost fewer forwards); every group is removed alone, and the score is the
    Pearson correlation between the groups' summed attributions and the drops ``f(x) - f(x_[group = baseline])``.
    The paper tracks the predicted class's probability (``output="prob"``); the drops of a linear model's logits
    equal the summed integrated gradients from zero, where the estimate is 1 (``output="logit"``). Cost: one forward
    per group.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        features_per_step: units per group.
        substrate: what removed units become (``None``: zeros, or the [MASK] id of token ids).
        substrate_value: the fill of ``"constant"``.
        output: ``"prob"`` (default) or ``"logit"``.
        reduce: ``"sum"`` (default), ``"abs_sum"`` or ``"none"``.
        seed: seed of a ``"noise"`` substrate.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding is never a unit; the rows keep the mask).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (never units; nor the model's special ids).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...), kept with
            every row.

    Returns:
        ``(N,)`` correlations in [-1, 1].

    Example:
        >>> net = nn.Linear(6, 3)
        >>> x = torch.rand(2, 6)
        >>> a = x * net.weight[net(x).argmax(dim=1)].detach()
        >>> faithfulness_estimate(net, x, a, output="logit")
        tensor([1., 1.])
    """
    check_int("features_per_step", features_per_step, 1)
    check_seed(seed)
    game = prepare_game(
        model, x, attributions, target, logits, reduce=reduce, output=output, internal_batch_size=internal_batch_size,
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs), who="faithfulness_estimate",
    )  # fmt: skip
    groups, count = rank_groups(game.units, features_per_step, valid=game.valid)
    fill = game_fill(model, game, substrate, x, value=substrate_value, seed=seed)
    scores = masked_outputs(
        model, game, x, fill, lambda samples, rows: groups[samples] == rows.view(-1, *([1] * (groups.ndim - 1))),
        count, output=output, internal_batch_size=internal_batch_size, who="faithfulness_estimate",
    )  # fmt: skip
    drops = game.clean[:, None].double() - scores.double()
    sums = group_sums(game.units, groups, count)
    if game.valid is None:
        return pearson_rows(sums, drops).to(game.clean.dtype)
    # A sample's own groups only: a shorter sentence has fewer (its other rows removed nothing).
    own = own_groups(game, features_per_step)
    present = torch.arange(count, device=own.device)[None] < own[:, None]
    return pearson_rows(sums, drops, present).to(game.clean.dtype)

