"""Focus of Arias-Duart et al. (2022): how much positive relevance falls on the target's tiles of a mosaic?

A mosaic holds four samples, two of them of the target class: images in a 2x2 grid, or the words of four sentences
one after another between the explained sentence's [CLS] and [SEP] (the input kind's tiles,
:meth:`~lit_attr.inputs.InputKind.mosaic_tiles`; features have none).

The mosaics are built from the batch (:func:`focus_mosaics`): for every sample, a second sample of its target class
(itself when the batch has no other) and two samples of other classes, in slots drawn from a generator seeded by
``seed`` and the sample's values (a sentence's real token ids). The method explains every mosaic for the sample's
target, so focus measures the method on inputs where only half of the evidence belongs to the class: 0.5 is what a
map that ignores the content scores, 1 is perfect.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lit_attr._checks import TargetType, check_choice, check_seed
from lit_attr._hygiene import preserved_model_state, row_seed
from lit_attr.functional.infidelity import Explainer
from lit_attr.functional.robustness import _maps, check_given, check_method, checked_kind
from lit_attr.functional.unit_games import batch_fields
from lit_attr.inputs import InputKind, input_kind
from lit_attr.inputs.mosaics import SLOTS, TILES, Tiles, quadrant_slots

__all__ = ["TILES", "Mosaics", "focus", "focus_mosaics", "focus_of_maps", "tile_shares"]


class Mosaics(NamedTuple):
    """Mosaics built from a batch.

    Attributes:
        inputs: ``(M, ...)`` the mosaics: images ``(M, C, 2H, 2W)`` (``tile="full"``) or ``(M, C, H, W)``
            (``"half"``); token ids ``(M, L')``.
        kwargs: ``attribute``'s keywords for them (token ids: ``attention_mask``, ``special_tokens_mask``, the
            model's other inputs; images: none).
        target: ``(M,)`` the class each mosaic is explained for.
        quadrants: ``(M, 4)`` bool: the slots of that class (images: top-left, top-right, bottom-left, bottom-right;
            sentences: first to fourth).
        samples: ``(M,)`` the sample of the batch each mosaic belongs to.
        slots: ``(M, *units)`` the slot of every unit of a mosaic's map (pixel, token), -1 outside every tile.
    """

    inputs: Tensor
    kwargs: dict[str, Any]
    target: Tensor
    quadrants: Tensor
    samples: Tensor
    slots: Tensor


def focus_mosaics(
    x: Tensor,
    target: Tensor,
    *,
    tile: str = "full",
    seed: int = 0,
    method: Explainer | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Mosaics:
    """One mosaic per sample that has samples of another class in its batch (the others get none).

    A sample whose mosaic is no input of the model (a sentence mosaic longer than its positions) gets none either,
    with a warning naming the samples.

    A sample's generator (``seed`` and the sample's values: an image's pixels, a sentence's real token ids) draws,
    in this order: its partner, uniformly among the other samples of its class (itself if there is none); two
    samples of other classes, the first two of a random permutation of them (the one there is, twice, if only one);
    the slots of the sample, the partner and the two others, a random permutation of the four.

    Args:
        x: ``(N, C, H, W)`` images or ``(N, L)`` token ids.
        target: ``(N,)`` their classes.
        tile: ``"full"`` or ``"half"`` (images: each average-pooled to ``H/2 x W/2``; H and W even).
        seed: seed of the choices of partners and slots.
        method: the attribution method; token ids need it (its model's special ids, pad id and position limit).
        attention_mask: token ids: ``(N, L)`` 1 on real tokens.
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens.
        model_inputs: token ids: the model's other inputs per token (``token_type_ids``), carried with their tokens.

    Example:
        >>> mosaics = focus_mosaics(torch.rand(3, 1, 4, 4), torch.tensor([0, 0, 1]))
        >>> mosaics.inputs.shape, mosaics.quadrants.sum(dim=1).tolist()
        (torch.Size([3, 1, 8, 8]), [2, 2, 2])
    """
    kind = input_kind(x)
    if method is None and not kind.continuous:
        raise ValueError(f"`method` is needed for {kind.name} inputs: their mosaics follow its model's conventions.")
    fields = batch_fields(attention_mask, special_tokens_mask, model_inputs)
    return _mosaics(_tiles(kind, method, x, fields, tile, seed), target, seed, x.device)


def _tiles(kind: InputKind, method: Any, x: Tensor, fields: Mapping[str, Any], tile: str, seed: int) -> Tiles:
    """The batch's tiles, its options and inputs checked (before the model runs on them)."""
    check_choice("tile", tile, TILES)
    check_seed(seed)
    return kind.mosaic_tiles(method, x, fields, tile)


def _mosaics(tiles: Tiles, target: Tensor, seed: int, device: torch.device) -> Mosaics:
    """The draws of :func:`focus_mosaics` and the mosaics they make."""
    labels = target.tolist()
    owners, grids, quadrants, misfits = [], [], [], {}
    for i in range(len(labels)):
        others = [j for j, label in enumerate(labels) if label != labels[i]]
        if not others:
            continue
        same = [j for j, label in enumerate(labels) if label == labels[i] and j != i] or [i]
        generator = torch.Generator().manual_seed(row_seed(seed, tiles.key(i)))
        partner = same[int(torch.randint(len(same), (1,), generator=generator))]
        picked = [others[int(k)] for k in torch.randperm(len(others), generator=generator)[:2]]
        positions = torch.randperm(SLOTS, generator=generator).tolist()
        grid = [0] * SLOTS
        for place, index in zip(positions, [i, partner, *(picked * 2)[:2]], strict=True):
            grid[place] = index
        reason = tiles.misfit(i, grid)
        if reason is not None:
            misfits.setdefault(reason, []).append(i)
            continue
        owners.append(i)
        grids.append(grid)
        quadrants.append([place in positions[:2] for place in range(SLOTS)])
    for reason, rows in misfits.items():
        warnings.warn(
            f"focus: the mosaics of samples {rows} are {reason}; those samples have no value (NaN) and the metric's "
            "mean leaves them out.",
            stacklevel=3,  # the caller of focus() or focus_mosaics()
        )
    samples = torch.tensor(owners, dtype=torch.long, device=device)
    mosaic = tiles.assemble(samples, torch.tensor(grids, dtype=torch.long, device=device).view(-1, SLOTS))
    return Mosaics(
        mosaic.inputs,
        mosaic.kwargs,
        torch.tensor([labels[i] for i in owners], dtype=torch.long, device=device),
        torch.tensor(quadrants, dtype=torch.bool, device=device).view(-1, SLOTS),
        samples,
        mosaic.slots,
    )


def tile_shares(heat: Tensor, slots: Tensor, quadrants: Tensor) -> Tensor:
    """``(M,)`` the share of the positive part of ``heat`` in the slots marked by ``quadrants``, among all tiles'.

    Args:
        heat: ``(M, *units)`` one relevance per unit of every mosaic (channels summed).
        slots: ``(M, *units)`` the slot of every unit (0 .. 3), -1 outside every tile.
        quadrants: ``(M, 4)`` bool: the target's slots.

    Returns:
        The shares in [0, 1] (0 for a map without positive relevance in the tiles), in ``heat``'s float dtype.

    Example:
        >>> heat = torch.tensor([[2.0, -1.0, 1.0, 5.0, 0.0, 1.0]])  # [CLS], a word of each sentence, [SEP]
        >>> tile_shares(heat, torch.tensor([[-1, 0, 1, 2, 3, -1]]), torch.tensor([[True, True, False, False]]))
        tensor([0.1667])
    """
    positive = heat.double().clamp(min=0).flatten(1)
    index = slots.flatten(1).to(positive.device)
    inside_tiles = index >= 0
    per_slot = positive.new_zeros(positive.shape[0], SLOTS).scatter_add_(
        1, index.clamp(min=0), torch.where(inside_tiles, positive, 0.0)
    )
    total = per_slot.sum(dim=1)
    share = (per_slot * quadrants.to(per_slot.device)).sum(dim=1)
    return torch.where(total > 0, share / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0).to(
        torch.promote_types(heat.dtype, torch.float32)
    )


def focus_of_maps(maps: Tensor, quadrants: Tensor) -> Tensor:
    """``(M,)`` the share of the positive (channel-summed) relevance of 2x2 image mosaic maps in their ``quadrants``.

    Example:
        >>> maps = torch.tensor([[[1.0, 3.0], [0.0, -5.0]]])  # one 2x2 mosaic map: a pixel per tile
        >>> focus_of_maps(maps, torch.tensor([[True, False, False, True]]))
        tensor([0.2500])
    """
    heat = maps.sum(dim=1) if maps.ndim == 4 else maps
    return tile_shares(heat, quadrant_slots(*heat.shape, device=heat.device), quadrants)


def focus(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    tile: str = "full",
    seed: int = 0,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
    **attribute_kwargs: Any,
) -> Tensor:
    """Focus (Arias-Duart et al. 2022) of an attribution method on mosaics of the batch, per sample: higher is better.

    Every sample's mosaic (:func:`focus_mosaics`) is explained for the sample's target and scored by
    :func:`tile_shares` on its per-unit map (pixels with channels summed, tokens). A sample whose batch holds no
    sample of another class, or whose mosaic the model cannot take, has no mosaic and no value (NaN). Quantus takes
    mosaics the user built; here they come from the batch. The paper's image mosaics keep the images' resolution
    (``tile="full"``: the model must take ``2H x 2W`` inputs, as CNNs with global pooling do); ``tile="half"`` halves
    every tile so the mosaic has the model's input size. A sentence mosaic is four sentences' words between the
    sample's [CLS] and [SEP]; one longer than the model's positions is no input of it, and its sample has no value
    (with a warning; :mod:`lit_attr.inputs.token_mosaics`). Cost: one attribution per sample.

    Args:
        method: the attribution method (its ``attribute`` runs on the mosaics).
        x: ``(N, C, H, W)`` images or ``(N, L)`` token ids on the model's device.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        tile: ``"full"`` or ``"half"`` (images only).
        seed: seed of the mosaics' partners and slots.
        logits: the model's logits for ``x`` if already computed (resolves ``target``).
        attention_mask: token ids: ``(N, L)`` 1 on real tokens.
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens.
        model_inputs: token ids: the model's other inputs per token (``token_type_ids``), carried with their tokens.
        **attribute_kwargs: per-call options of ``method.attribute``.

    Returns:
        ``(N,)`` shares in [0, 1], NaN for samples without a mosaic.

    Example:
        >>> from torch import nn
        >>> from lit_attr.methods import get_method
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
        >>> focus(get_method("saliency", net), torch.rand(4, 3, 8, 8), torch.tensor([0, 0, 1, 2])).shape
        torch.Size([4])
    """
    method = check_method(method)
    kind = checked_kind(method, x)
    check_given(x, None, logits)
    tiles = _tiles(kind, method, x, batch_fields(attention_mask, special_tokens_mask, model_inputs), tile, seed)
    if logits is None and not kind.continuous:  # the method's own check runs the model on float inputs only
        with torch.no_grad(), preserved_model_state(method.model):
            forward = getattr(method, "forward_fn", method.model)
            logits = kind.model_logits(forward, x, {"attention_mask": attention_mask, **(model_inputs or {})})
    target = method.resolve_target(x, target, logits)
    mosaics = _mosaics(tiles, target, seed, x.device)
    dtype = x.dtype if kind.continuous or logits is None else logits.dtype  # token ids: the model's float dtype
    out = torch.full((x.shape[0],), float("nan"), dtype=torch.promote_types(dtype, torch.float32), device=x.device)
    if mosaics.samples.numel():
        maps = _maps(method.attribute(mosaics.inputs, mosaics.target, **mosaics.kwargs, **attribute_kwargs))
        heat = kind.unit_scores(maps, "sum")
        out[mosaics.samples] = tile_shares(heat, mosaics.slots, mosaics.quadrants).to(out.dtype)
    return out
