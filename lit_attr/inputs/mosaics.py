"""Mosaics of a batch (focus, Arias-Duart et al. 2022): four samples tiled into one input the model takes.

Focus explains a mosaic of four samples for one class and measures the share of relevance on that class's tiles.
What a tile is and how four make an input belong to the input kind (:meth:`~lit_attr.inputs.InputKind.mosaic_tiles`
returns the batch's :class:`Tiles`): images tile a 2x2 grid (:class:`ImageTiles`); token ids put the words of four
sentences one after another between the explained sample's own special tokens
(:mod:`lit_attr.inputs.token_mosaics`). A kind without tiles (features: a model of D features takes no input made of
four samples) has no mosaics, and focus refuses it.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["SLOTS", "TILES", "ImageTiles", "Mosaic", "Tiles", "quadrant_slots"]

#: Tiles in a mosaic; a mosaic's slots are numbered 0 .. 3 (images: top-left, top-right, bottom-left, bottom-right).
SLOTS = 4
#: Tile sizes: the samples as they are (the paper's: an image mosaic twice as high and wide) or halved (images: the
#: model's size). Sentences are whole: ``"full"`` alone.
TILES = ("full", "half")


class Mosaic(NamedTuple):
    """Mosaics assembled from samples of a batch.

    Attributes:
        inputs: ``(M, ...)`` the mosaics as the method and the model take them.
        kwargs: ``attribute``'s keywords for them (token ids: their masks and the model's other inputs).
        slots: ``(M, *units)`` long: the slot (0 .. 3) of every unit of a mosaic's map (a pixel, a token); -1 on units
            of no tile (special tokens, padding).
    """

    inputs: Tensor
    kwargs: dict[str, Any]
    slots: Tensor


class Tiles(abc.ABC):
    """The samples of a batch as tiles: what a sample's draws are keyed by and how four tiles make a mosaic."""

    @abc.abstractmethod
    def key(self, row: int) -> Tensor:
        """The values sample ``row``'s random choices are keyed by: its tile alone, not its batch or its padding."""

    def misfit(self, owner: int, grid: list[int]) -> str | None:
        """Why the mosaic of ``grid`` (samples in slot order) for ``owner`` is no input of the model, or ``None``.

        Such a sample has no mosaic (a sentence mosaic longer than the model's positions); by default all fit.
        """
        return None

    @abc.abstractmethod
    def assemble(self, owners: Tensor, grids: Tensor) -> Mosaic:
        """The mosaics of ``grids`` ``(M, 4)`` (samples in slot order), mosaic ``m`` explaining sample ``owners[m]``.

        The owner frames its mosaic where a kind has a frame (a sentence's [CLS] and [SEP]).
        """


class ImageTiles(Tiles):
    """Images ``(N, C, H, W)`` as the tiles of a 2x2 grid: as they are (``"full"``) or average-pooled (``"half"``).

    Args:
        x: the images.
        tile: ``"full"`` (mosaics of ``2H x 2W``) or ``"half"`` (each tile ``H/2 x W/2``: the images' size; H and W
            even).

    Example:
        >>> tiles = ImageTiles(torch.rand(3, 1, 4, 4), "full")
        >>> mosaic = tiles.assemble(torch.tensor([0]), torch.tensor([[0, 1, 2, 2]]))
        >>> mosaic.inputs.shape, mosaic.slots[0, :, 0].tolist()
        (torch.Size([1, 1, 8, 8]), [0, 0, 0, 0, 2, 2, 2, 2])
    """

    def __init__(self, x: Tensor, tile: str) -> None:
        if tile == "half":
            if x.shape[2] % 2 or x.shape[3] % 2:
                raise ValueError(f'`tile="half"` needs an even height and width, got images of {tuple(x.shape[2:])}.')
            x = F.avg_pool2d(x, 2)
        self.x = x

    def key(self, row: int) -> Tensor:
        """The tile's pixels."""
        return self.x[row]

    def assemble(self, owners: Tensor, grids: Tensor) -> Mosaic:
        """``(M, C, 2h, 2w)`` grids of the tiles; the slots are the four quadrants."""
        x, grids = self.x, grids.to(self.x.device)
        top = torch.cat([x[grids[:, 0]], x[grids[:, 1]]], dim=3)
        bottom = torch.cat([x[grids[:, 2]], x[grids[:, 3]]], dim=3)
        slots = quadrant_slots(grids.shape[0], 2 * x.shape[2], 2 * x.shape[3], x.device)
        return Mosaic(torch.cat([top, bottom], dim=2), {}, slots)


def quadrant_slots(m: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
    """``(m, height, width)`` the quadrant of every pixel of a 2x2 mosaic (0 top-left .. 3 bottom-right).

    An odd side gives its middle row or column to the second half.

    Example:
        >>> quadrant_slots(1, 2, 4)[0].tolist()
        [[0, 0, 1, 1], [2, 2, 3, 3]]
    """
    rows = (torch.arange(height, device=device) >= height // 2).long()
    columns = (torch.arange(width, device=device) >= width // 2).long()
    return (2 * rows[:, None] + columns[None, :]).expand(m, height, width)
