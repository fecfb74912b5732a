"""Games over regions: patches of a grid, or superpixels, removed in order of their attribution.

* :func:`region_perturbation` (Samek et al. 2017): most relevant regions first (MoRF) or least relevant first
  (LeRF), the area over the perturbation curve (AOPC);
* :func:`selectivity` (Montavon et al. 2018): most relevant patches first, the area under the score curve;
* :func:`irof` (Rieger & Hansen 2020): superpixels by mean relevance, the area over the curve of ``p(x_t) / p(x)``.

Regions are :func:`patch_labels` by default: blocks of ``patch_size`` units along every unit axis (squares of an
image's pixels, runs of consecutive features), so every kind plays. Of token ids, a region is a run of ``patch_size``
consecutive real tokens that are not special (counted in order, so padding and special tokens leave no gap and never
belong to a region); a sentence has its own number of regions, and its curve ends with them. :func:`irof` also takes
``segmentation="slic"`` (superpixels of scikit-image's SLIC, images only; ``pip install lit-attr[segmentation]``) or
a callable returning one label per unit (units that do not count are left out of their region).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, check_int, check_names, check_seed
from lit_attr._memory import MemoryBackoff
from lit_attr._optional import import_optional
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, SubstrateType, auc
from lit_attr.functional.unit_games import Game, batch_fields, game_fill, masked_outputs, prepare_game

__all__ = ["ORDERS", "irof", "patch_labels", "region_perturbation", "segment_labels", "selectivity"]

#: Orders of :func:`region_perturbation`: most relevant first, least relevant first.
ORDERS = ("morf", "lerf")
Segmentation = str | Callable[[Tensor], Tensor]


def patch_labels(shape: Sequence[int], patch_size: int, device: torch.device | str | None = None) -> Tensor:
    """One label per unit of a ``shape`` grid: the index of its block of ``patch_size`` units along every axis.

    Blocks at the far edges are cut short where ``patch_size`` does not divide the side.

    Example:
        >>> patch_labels((3, 4), 2)
        tensor([[0, 0, 1, 1],
                [0, 0, 1, 1],
                [2, 2, 3, 3]])
    """
    check_int("patch_size", patch_size, 1)
    labels = torch.zeros((), dtype=torch.long, device=device)
    for side in shape:
        blocks = torch.arange(side, device=device) // patch_size
        labels = labels[..., None] * math.ceil(side / patch_size) + blocks
    return labels


def segment_labels(segmentation: Segmentation, x: Tensor, unit_shape: tuple[int, ...], patch_size: int) -> Tensor:
    """``(N, *unit_shape)`` labels ``0 .. S_i - 1`` of every sample's regions (``"grid"``, ``"slic"`` or a callable)."""
    n = x.shape[0]
    if callable(segmentation):
        given = segmentation(x)
        if not isinstance(given, Tensor) or tuple(given.shape) != (n, *unit_shape) or given.is_floating_point():
            shape = tuple(given.shape) if isinstance(given, Tensor) else type(given).__name__
            raise ValueError(
                f"A callable `segmentation` must return integer labels of shape (N, *units) = {(n, *unit_shape)}, "
                f"got {shape}."
            )
        labels = given.to(x.device)
    elif check_choice("segmentation", segmentation, ("grid", "slic")) == "grid":
        return patch_labels(unit_shape, patch_size, x.device).expand(n, *unit_shape)
    else:
        labels = _slic(x, unit_shape)
    # Labels 0 .. S_i - 1 per sample, whatever the segmenter numbered.
    return torch.stack([row.unique(return_inverse=True)[1] for row in labels.reshape(n, -1)]).view(n, *unit_shape)


def _slic(x: Tensor, unit_shape: tuple[int, ...]) -> Tensor:
    if x.ndim != 4 or unit_shape != tuple(x.shape[2:]):
        raise ValueError(
            f'`segmentation="slic"` needs images (N, C, H, W) and one map value per pixel, got x of shape '
            f"{tuple(x.shape)}; use the default grid or a callable."
        )
    segmentation = import_optional("skimage.segmentation")
    images = x.detach().double().cpu().movedim(1, -1).numpy()
    labels = [torch.as_tensor(segmentation.slic(image, start_label=0, channel_axis=-1)) for image in images]
    return torch.stack(labels).long().to(x.device)


def _game_labels(segmentation: Segmentation, x: Tensor, game: Game, patch_size: int) -> Tensor:
    """``(N, *units)`` region labels ``0 .. S_i - 1`` of every sample over its units that count.

    Units that do not count get label 0 and are left out by :func:`_region_curves`. With one unit axis, the grid
    numbers the units that count in order first, so a run of ``patch_size`` of them is a region wherever the padding.
    """
    shape = tuple(game.units.shape[1:])
    if game.valid is None:
        return segment_labels(segmentation, x, shape, patch_size)
    valid = game.valid
    if isinstance(segmentation, str) and segmentation == "grid" and len(shape) == 1:
        check_int("patch_size", patch_size, 1)
        labels = (valid.long().cumsum(dim=1) - 1).clamp(min=0) // patch_size
    else:
        labels = segment_labels(segmentation, x, shape, patch_size)
    n = x.shape[0]
    flat, keep = labels.reshape(n, -1), valid.reshape(n, -1)
    out = torch.zeros_like(flat)
    for row in range(n):  # numbered 0 .. S_i - 1 over the units that count, whatever the segmenter numbered
        out[row, keep[row]] = flat[row, keep[row]].unique(return_inverse=True)[1]
    return out.view_as(labels)


def _region_curves(
    model: nn.Module,
    game: Game,
    x: Tensor,
    fill: Tensor,
    labels: Tensor,
    *,
    steps: int,
    statistic: str,
    descending: bool,
    output: str,
    internal_batch_size: int | None,
    who: str,
    backoff: MemoryBackoff | None = None,
) -> tuple[Tensor, Tensor]:
    """``(curves (N, steps + 1), segments (N,))``: the score after removing the first ``t`` regions in order."""
    n = x.shape[0]
    flat = labels.reshape(n, -1)
    units = game.units.reshape(n, -1).double()
    if game.valid is None:
        segments = flat.amax(dim=1) + 1
        weights = torch.ones_like(units)
    else:
        keep = game.valid.reshape(n, -1)
        segments = torch.where(keep, flat, -1).amax(dim=1) + 1
        weights = keep.to(units.dtype)
        units = units * weights
    count = max(int(segments.max()), 1)
    totals = torch.zeros(n, count, dtype=units.dtype, device=units.device).scatter_add_(1, flat, units)
    if statistic == "mean":
        sizes = torch.zeros_like(totals).scatter_add_(1, flat, weights)
        totals = totals / sizes.clamp(min=1)
    # Regions a sample lacks go last in either order.
    absent = torch.arange(count, device=units.device)[None] >= segments[:, None]
    totals = torch.where(absent, -math.inf if descending else math.inf, totals)
    order = torch.sort(totals, dim=1, descending=descending, stable=True).indices
    place = torch.empty_like(order).scatter_(1, order, torch.arange(count, device=order.device).expand_as(order))
    rank = place.gather(1, flat).view_as(labels)
    curves = masked_outputs(
        model, game, x, fill, lambda samples, rows: rank[samples] < rows.view(-1, *([1] * (rank.ndim - 1))),
        steps + 1, output=output, internal_batch_size=internal_batch_size, who=who, backoff=backoff,
    )  # fmt: skip
    return curves, segments


def _ragged_auc(curves: Tensor, last: Tensor) -> Tensor:
    """The normalised trapezoid of every sample's points ``0 .. last_i`` (its own regions), in float64."""
    curves = curves.double()
    points = torch.arange(curves.shape[1], device=curves.device)[None]
    curves = torch.where(points <= last[:, None], curves, 0.0)
    end = curves.gather(1, last[:, None]).squeeze(1)
    return (curves.sum(dim=1) - (curves[:, 0] + end) / 2) / last.clamp(min=1).double()


def region_perturbation(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    patch_size: int = 9,
    regions: int = 100,
    orders: str | Sequence[str] = ("morf",),
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
) -> dict[str, Tensor]:
    """Region perturbation of Samek et al. (2017): AOPC of removing regions in order of relevance, per sample.

    The units are cut into a grid of ``patch_size`` blocks (:func:`patch_labels`; Samek et al. use 9 x 9 pixels,
    Quantus 8 x 8), ranked by their summed attribution; at step ``k`` the first ``k`` regions take the substrate
    (Samek et al. draw uniform noise; the default here is the kind's seeded ``"noise"``, Quantus uses zeros), for
    ``L = min(regions, number of regions)`` steps. ``AOPC = 1/(L + 1) sum_{k=0}^{L} (f(x) - f(x_k))``: higher is
    better most relevant first (``"morf"``), lower least relevant first (``"lerf"``). Cost: ``L + 1`` forwards per
    order.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        patch_size: units per block side.
        regions: most regions removed.
        orders: ``"morf"``, ``"lerf"`` or both.
        substrate: what removed regions become (``None``: the seeded ``"noise"``, or the [MASK] id of token ids).
        substrate_value: the fill of ``"constant"``.
        output: ``"prob"`` (default) or ``"logit"``.
        reduce: ``"sum"`` (default), ``"abs_sum"`` or ``"none"``.
        seed: seed of the noise.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding is never a unit; the rows keep the mask).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (never units; nor the model's special ids).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...), kept with
            every row.

    Returns:
        ``{order: (N,) AOPC, f"{order}_curve": (N, L + 1) scores}`` for every order played.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        >>> result = region_perturbation(net, torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8), patch_size=4)
        >>> result["morf"].shape, result["morf_curve"].shape
        (torch.Size([2]), torch.Size([2, 5]))
    """
    played = check_names("orders", orders, ORDERS, what="order")
    check_int("regions", regions, 1)
    check_seed(seed)
    game = prepare_game(
        model, x, attributions, target, logits, reduce=reduce, output=output, internal_batch_size=internal_batch_size,
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs), who="region_perturbation",
    )  # fmt: skip
    labels = _game_labels("grid", x, game, patch_size)
    fill = game_fill(model, game, substrate, x, value=substrate_value, seed=seed, preferred="noise")
    result: dict[str, Tensor] = {}
    steps = min(regions, int(_segments(labels, game).max()))
    with MemoryBackoff("region_perturbation", internal_batch_size) as backoff:  # one bound for both orders
        for order in ORDERS:
            if order in played:
                curves, segments = _region_curves(
                    model, game, x, fill, labels, steps=steps, statistic="sum", descending=order == "morf",
                    output=output, internal_batch_size=internal_batch_size, who="region_perturbation",
                    backoff=backoff,
                )  # fmt: skip
                # A sample's own L_i + 1 points: a sentence with fewer regions ends its curve (NaN after).
                last = segments.clamp(max=regions)
                reached = torch.arange(steps + 1, device=curves.device)[None] <= last[:, None]
                drops = torch.where(reached, curves[:, :1] - curves, 0.0)
                result[order] = drops.sum(dim=1) / (last + 1).to(drops.dtype)
                result[f"{order}_curve"] = torch.where(reached, curves, torch.nan)
    return result


def _segments(labels: Tensor, game: Game) -> Tensor:
    """``(N,)`` every sample's number of regions (of its units that count)."""
    flat = labels.reshape(labels.shape[0], -1)
    if game.valid is not None:
        flat = torch.where(game.valid.reshape(flat.shape), flat, -1)
    return flat.amax(dim=1) + 1


def selectivity(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    patch_size: int = 8,
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
    """Selectivity of Montavon et al. (2018) per sample: lower is better (the score should fall fast).

    The area under the score curve while the patches are removed most relevant first.

    Every patch (:func:`patch_labels`, 8 units a side as Quantus) is removed in order of its summed attribution,
    until none is left; the area is the normalised trapezoid (:func:`~lit_attr.functional.perturbation.auc`) of the
    ``S + 1`` scores. Quantus integrates with ``np.trapz`` over unit steps, an area ``S`` times larger. Cost: ``S + 1``
    forwards for ``S`` patches.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        patch_size: units per block side.
        substrate: what removed patches become (``None``: zeros, or the [MASK] id of token ids).
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
        ``(N,)`` areas.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        >>> selectivity(net, torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8), patch_size=4).shape
        torch.Size([2])
    """
    check_seed(seed)
    game = prepare_game(
        model, x, attributions, target, logits, reduce=reduce, output=output, internal_batch_size=internal_batch_size,
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs), who="selectivity",
    )  # fmt: skip
    labels = _game_labels("grid", x, game, patch_size)
    fill = game_fill(model, game, substrate, x, value=substrate_value, seed=seed)
    curves, segments = _region_curves(
        model, game, x, fill, labels, steps=int(_segments(labels, game).max()), statistic="sum", descending=True,
        output=output, internal_batch_size=internal_batch_size, who="selectivity",
    )  # fmt: skip
    if game.valid is None:
        return auc(curves)
    return _ragged_auc(curves, segments).to(curves.dtype)  # a sentence's own S_i + 1 points


def irof(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    segmentation: Segmentation = "grid",
    patch_size: int = 8,
    substrate: SubstrateType | None = None,
    substrate_value: object = None,
    reduce: str = "sum",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Iterative removal of features (IROF, Rieger & Hansen 2020) per sample: higher is better.

    The regions (a grid of ``patch_size`` blocks by default; ``"slic"`` superpixels, the paper's, or a callable's
    labels) are ranked by their mean attribution and removed most relevant first; the curve is the target's
    probability relative to the clean one, ``p(x_t) / p(x)``, over the ``S + 1`` points of a sample's ``S`` regions,
    and IROF is the area over it, ``1 - auc`` (normalised: 0 to 1 for a probability that only falls; Quantus reports
    the unnormalised area ``S`` times larger). Removed regions take the image's channel mean (the paper's), or the
    kind's default substrate (zeros) for inputs without one. Cost: ``S + 1`` forwards.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        segmentation: ``"grid"``, ``"slic"`` (images, needs scikit-image) or ``callable(x) -> (N, *units)`` labels.
        patch_size: units per block side of the grid.
        substrate: what removed regions become (``None``: ``"mean"`` where the kind has it, else its default: zeros,
            the [MASK] id of token ids).
        substrate_value: the fill of ``"constant"``.
        reduce: ``"sum"`` (default), ``"abs_sum"`` or ``"none"``.
        seed: seed of a ``"noise"`` substrate.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding is never a unit; the rows keep the mask).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (never units; nor the model's special ids).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...), kept with
            every row.

    Returns:
        ``(N,)`` areas over the curve.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        >>> irof(net, torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8), patch_size=4).shape
        torch.Size([2])
    """
    check_seed(seed)
    if not (callable(segmentation) or isinstance(segmentation, str)):
        raise TypeError(f"`segmentation` must be 'grid', 'slic' or a callable, got {type(segmentation).__name__}.")
    game = prepare_game(
        model, x, attributions, target, logits, reduce=reduce, output="prob", internal_batch_size=internal_batch_size,
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs), who="irof",
    )  # fmt: skip
    labels = _game_labels(segmentation, x, game, patch_size)
    fill = game_fill(model, game, substrate, x, value=substrate_value, seed=seed, preferred="mean")
    curves, segments = _region_curves(
        model, game, x, fill, labels, steps=int(_segments(labels, game).max()), statistic="mean", descending=True,
        output="prob", internal_batch_size=internal_batch_size, who="irof",
    )  # fmt: skip
    # Each sample's own S points: regions it lacks add no step.
    area = _ragged_auc(curves.double() / game.clean[:, None].double(), segments)
    return (1 - area).to(game.clean.dtype)
