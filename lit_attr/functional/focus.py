"""Focus of Arias-Duart et al. (2022): how much positive relevance falls on the target's tiles of a mosaic?

A mosaic holds four images, two of them of the target class.

The mosaics are built from the batch (:func:`focus_mosaics`): for every sample, a second image of its target class
(itself when the batch has no other) and two images of other classes, in positions drawn from a generator seeded by
``seed`` and the sample's values. The method explains every mosaic for the sample's target, so focus measures the
method on inputs where only half of the evidence belongs to the class: 0.5 is what a map that ignores the content
scores, 1 is perfect.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from lit_attr._checks import TargetType, check_batch, check_choice, check_seed
from lit_attr._hygiene import row_seed
from lit_attr.functional.infidelity import Explainer
from lit_attr.inputs.images import check_images

__all__ = ["TILES", "Mosaics", "focus", "focus_mosaics", "focus_of_maps"]

#: Tile sizes: the images as they are (the paper's: a mosaic twice as high and wide) or halved (the model's size).
TILES = ("full", "half")


class Mosaics(NamedTuple):
    """Mosaics built from a batch.

    Attributes:
        images: ``(M, C, 2H, 2W)`` (``tile="full"``) or ``(M, C, H, W)`` (``"half"``).
        target: ``(M,)`` the class each mosaic is explained for.
        quadrants: ``(M, 4)`` bool: the tiles of that class (top-left, top-right, bottom-left, bottom-right).
        samples: ``(M,)`` the sample of the batch each mosaic belongs to.
    """

    images: Tensor
    target: Tensor
    quadrants: Tensor
    samples: Tensor


def focus_mosaics(x: Tensor, target: Tensor, *, tile: str = "full", seed: int = 0) -> Mosaics:
    """One mosaic per sample that has images of another class in its batch (the others get none).

    A sample's generator (``seed`` and the sample's values) draws, in this order: its partner, uniformly among the
    other images of its class (itself if there is none); two images of other classes, the first two of a random
    permutation of them (the one there is, twice, if only one); the tiles of the sample, the partner and the two
    others, a random permutation of the four (top-left, top-right, bottom-left, bottom-right).

    Args:
        x: ``(N, C, H, W)`` images.
        target: ``(N,)`` their classes.
        tile: ``"full"`` or ``"half"`` (each image average-pooled to ``H/2 x W/2``; H and W even).
        seed: seed of the choices of partners and positions.

    Example:
        >>> mosaics = focus_mosaics(torch.rand(3, 1, 4, 4), torch.tensor([0, 0, 1]))
        >>> mosaics.images.shape, mosaics.quadrants.sum(dim=1).tolist()
        (torch.Size([3, 1, 8, 8]), [2, 2, 2])
    """
    check_images("x", x)
    check_choice("tile", tile, TILES)
    check_seed(seed)
    if tile == "half":
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f'`tile="half"` needs an even height and width, got images of {tuple(x.shape[2:])}.')
        x = F.avg_pool2d(x, 2)
    labels = target.tolist()
    tiles, targets, quadrants, samples = [], [], [], []
    for i, row in enumerate(x):
        others = [j for j, label in enumerate(labels) if label != labels[i]]
        if not others:
            continue
        same = [j for j, label in enumerate(labels) if label == labels[i] and j != i] or [i]
        generator = torch.Generator().manual_seed(row_seed(seed, row))
        partner = same[int(torch.randint(len(same), (1,), generator=generator))]
        picked = [others[int(k)] for k in torch.randperm(len(others), generator=generator)[:2]]
        chosen = [i, partner, *(picked * 2)[:2]]
        positions = torch.randperm(4, generator=generator).tolist()
        grid = [0, 0, 0, 0]
        for place, index in zip(positions, chosen, strict=True):
            grid[place] = index
        top, bottom = torch.cat([x[grid[0]], x[grid[1]]], dim=2), torch.cat([x[grid[2]], x[grid[3]]], dim=2)
        tiles.append(torch.cat([top, bottom], dim=1))
        targets.append(labels[i])
        quadrants.append([place in positions[:2] for place in range(4)])
        samples.append(i)
    device = x.device
    images = torch.stack(tiles) if tiles else x.new_empty(0, x.shape[1], 2 * x.shape[2], 2 * x.shape[3])
    return Mosaics(
        images,
        torch.tensor(targets, dtype=torch.long, device=device),
        torch.tensor(quadrants, dtype=torch.bool, device=device).view(-1, 4),
        torch.tensor(samples, dtype=torch.long, device=device),
    )


def focus_of_maps(maps: Tensor, quadrants: Tensor) -> Tensor:
    """``(M,)`` the share of the positive (channel-summed) relevance of mosaic maps in their ``quadrants``.

    Example:
        >>> maps = torch.tensor([[[1.0, 3.0], [0.0, -5.0]]])  # one 2x2 mosaic map: a pixel per tile
        >>> focus_of_maps(maps, torch.tensor([[True, False, False, True]]))
        tensor([0.2500])
    """
    heat = (maps.sum(dim=1) if maps.ndim == 4 else maps).double().clamp(min=0)
    h, w = heat.shape[1] // 2, heat.shape[2] // 2
    corners = (heat[:, :h, :w], heat[:, :h, w:], heat[:, h:, :w], heat[:, h:, w:])
    tiles = torch.stack([corner.sum(dim=(1, 2)) for corner in corners], dim=1)
    total = tiles.sum(dim=1)
    inside = (tiles * quadrants).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0).to(
        torch.promote_types(maps.dtype, torch.float32)
    )


def focus(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    tile: str = "full",
    seed: int = 0,
    logits: Tensor | None = None,
    **attribute_kwargs: Any,
) -> Tensor:
    """Focus (Arias-Duart et al. 2022) of an attribution method on mosaics of the batch, per sample: higher is better.

    Every sample's mosaic (:func:`focus_mosaics`) is explained for the sample's target and scored by
    :func:`focus_of_maps`. A sample whose batch holds no image of another class has no mosaic and no value (NaN).
    Quantus takes mosaics the user built; here they come from the batch. The paper's mosaics keep the images'
    resolution (``tile="full"``: the model must take ``2H x 2W`` inputs, as CNNs with global pooling do);
    ``tile="half"`` halves every tile so the mosaic has the model's input size. Cost: one attribution per sample.

    Args:
        method: the attribution method (its ``attribute`` runs on the mosaics).
        x: ``(N, C, H, W)`` images on the model's device.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        tile: ``"full"`` or ``"half"``.
        seed: seed of the mosaics' partners and positions.
        logits: the model's logits for ``x`` if already computed (resolves ``target``).
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
    if not all(callable(getattr(method, name, None)) for name in ("attribute", "resolve_target")):
        raise TypeError(
            f"`method` must be an attribution method (lit_attr.methods.get_method(...)), got {type(method).__name__}."
        )
    check_batch("x", x, method.model)
    check_images("x", x)
    target = method.resolve_target(x, target, logits)
    mosaics = focus_mosaics(x, target, tile=tile, seed=seed)
    out = torch.full((x.shape[0],), float("nan"), dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    if mosaics.samples.numel():
        result = method.attribute(mosaics.images, mosaics.target, **attribute_kwargs)
        maps = result[0] if isinstance(result, tuple) else result
        out[mosaics.samples] = focus_of_maps(maps, mosaics.quadrants).to(out.dtype)
    return out
