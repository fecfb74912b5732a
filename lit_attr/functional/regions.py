"""Games over regions: patches of a grid, or superpixels, removed in order of their attribution.

* :func:`region_perturbation` (Samek et al. 2017): most relevant regions first (MoRF) or least relevant first
  (LeRF), the area over the perturbation curve (AOPC);
* :func:`selectivity` (Montavon et al. 2018): most relevant patches first, the area under the score curve;
* :func:`irof` (Rieger & Hansen 2020): superpixels by mean relevance, the area over the curve of ``p(x_t) / p(x)``.

Regions are :func:`patch_labels` by default: blocks of ``patch_size`` units along every unit axis (squares of an
image's pixels, runs of consecutive features), so every continuous kind plays. :func:`irof` also takes
``segmentation="slic"`` (superpixels of scikit-image's SLIC, images only; ``pip install lit-attr[segmentation]``) or
a callable returning one label per unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_choice, check_int, check_names, check_seed
from lit_attr._optional import import_optional
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, SubstrateType, auc
from lit_attr.functional.unit_games import Game, fill_of, kind_substrate, masked_outputs, prepare_game

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
) -> tuple[Tensor, Tensor]:
    """``(curves (N, steps + 1), segments (N,))``: the score after removing the first ``t`` regions in order."""
    n = x.shape[0]
    flat = labels.reshape(n, -1)
    segments = flat.amax(dim=1) + 1
    count = int(segments.max())
    units = game.units.reshape(n, -1).double()
    totals = torch.zeros(n, count, dtype=units.dtype, device=units.device).scatter_add_(1, flat, units)
    if statistic == "mean":
        sizes = torch.zeros_like(totals).scatter_add_(1, flat, torch.ones_like(units))
        totals = totals / sizes.clamp(min=1)
    # Regions a sample lacks go last in either order.
    absent = torch.arange(count, device=units.device)[None] >= segments[:, None]
    totals = torch.where(absent, -math.inf if descending else math.inf, totals)
    order = torch.sort(totals, dim=1, descending=descending, stable=True).indices
    place = torch.empty_like(order).scatter_(1, order, torch.arange(count, device=order.device).expand_as(order))
    rank = place.gather(1, flat).view_as(labels)
    curves = masked_outputs(
        model, game, x, fill, lambda samples, rows: rank[samples] < rows.view(-1, *([1] * (rank.ndim - 1))),
        steps + 1, output=output, internal_batch_size=internal_batch_size, who=who,
    )  # fmt: skip
    return curves, segments


def region_perturbation(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    patch_size: int = 9,
    regions: int = 100,
    orders: str | Sequence[str] = ("morf",),
    substrate: SubstrateType = "noise",
    substrate_value: object = None,
    output: str = "prob",
    reduce: str = "sum",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
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
        x: ``(N, ...)`` inputs of a continuous kind on the model's device.
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        patch_size: units per block side.
        regions: most regions removed.
        orders: ``"morf"``, ``"lerf"`` or both.
        substrate: what removed regions become.
        substrate_value: the fill of ``"constant"``.
        output: ``"prob"`` (default) or ``"logit"``.
        reduce: ``"sum"`` (default), ``"abs_sum"`` or ``"none"``.
        seed: seed of the noise.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.

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
        model, x, attributions, target, logits, reduce=reduce, output=output, internal_batch_size=internal_batch_size
    )
    labels = segment_labels("grid", x, tuple(game.units.shape[1:]), patch_size)
    steps = min(regions, int(labels.amax()) + 1)
    fill = fill_of(substrate, x, value=substrate_value, seed=seed, name="substrate")
    result: dict[str, Tensor] = {}
    for order in ORDERS:
        if order in played:
            curves, _ = _region_curves(
                model, game, x, fill, labels, steps=steps, statistic="sum", descending=order == "morf",
                output=output, internal_batch_size=internal_batch_size, who="region_perturbation",
            )  # fmt: skip
            result[order] = (curves[:, :1] - curves).mean(dim=1)
            result[f"{order}_curve"] = curves
    return result


def selectivity(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    patch_size: int = 8,
    substrate: SubstrateType = "zero",
    substrate_value: object = None,
    output: str = "prob",
    reduce: str = "sum",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
) -> Tensor:
    """Selectivity of Montavon et al. (2018) per sample: lower is better (the score should fall fast).

    The area under the score curve while the patches are removed most relevant first.

    Every patch (:func:`patch_labels`, 8 units a side as Quantus) is removed in order of its summed attribution,
    until none is left; the area is the normalised trapezoid (:func:`~lit_attr.functional.perturbation.auc`) of the
    ``S + 1`` scores. Quantus integrates with ``np.trapz`` over unit steps, an area ``S`` times larger. Cost: ``S + 1``
    forwards for ``S`` patches.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs of a continuous kind on the model's device.
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        patch_size: units per block side.
        substrate: what removed patches become (zeros by default).
        substrate_value: the fill of ``"constant"``.
        output: ``"prob"`` (default) or ``"logit"``.
        reduce: ``"sum"`` (default), ``"abs_sum"`` or ``"none"``.
        seed: seed of a ``"noise"`` substrate.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.

    Returns:
        ``(N,)`` areas.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        >>> selectivity(net, torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8), patch_size=4).shape
        torch.Size([2])
    """
    check_seed(seed)
    game = prepare_game(
        model, x, attributions, target, logits, reduce=reduce, output=output, internal_batch_size=internal_batch_size
    )
    labels = segment_labels("grid", x, tuple(game.units.shape[1:]), patch_size)
    fill = fill_of(substrate, x, value=substrate_value, seed=seed, name="substrate")
    curves, _ = _region_curves(
        model, game, x, fill, labels, steps=int(labels.amax()) + 1, statistic="sum", descending=True,
        output=output, internal_batch_size=internal_batch_size, who="selectivity",
    )  # fmt: skip
    return auc(curves)


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
        x: ``(N, ...)`` inputs of a continuous kind on the model's device.
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        segmentation: ``"grid"``, ``"slic"`` (images, needs scikit-image) or ``callable(x) -> (N, *units)`` labels.
        patch_size: units per block side of the grid.
        substrate: what removed regions become (``None``: ``"mean"`` where the kind has it, else its default).
        substrate_value: the fill of ``"constant"``.
        reduce: ``"sum"`` (default), ``"abs_sum"`` or ``"none"``.
        seed: seed of a ``"noise"`` substrate.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.

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
        model, x, attributions, target, logits, reduce=reduce, output="prob", internal_batch_size=internal_batch_size
    )
    labels = segment_labels(segmentation, x, tuple(game.units.shape[1:]), patch_size)
    chosen = kind_substrate(game.kind, substrate, "mean")
    fill = fill_of(chosen, x, value=substrate_value, seed=seed, name="substrate")
    curves, segments = _region_curves(
        model, game, x, fill, labels, steps=int(labels.amax()) + 1, statistic="mean", descending=True,
        output="prob", internal_batch_size=internal_batch_size, who="irof",
    )  # fmt: skip
    ratio = curves.double() / game.clean[:, None].double()
    # Each sample's own S points: regions it lacks add no step.
    points = torch.arange(ratio.shape[1], device=ratio.device)[None]
    ratio = torch.where(points <= segments[:, None], ratio, 0.0)
    last = ratio.gather(1, segments[:, None]).squeeze(1)
    area = (ratio.sum(dim=1) - (ratio[:, 0] + last) / 2) / segments.double()
    return (1 - area).to(game.clean.dtype)
