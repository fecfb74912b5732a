"""Images ``(N, C, H, W)``: attributed as they are, perturbed pixel by pixel, drawn as heatmap grids.

A pixel is a removal unit (its channels are summed into one score, unless a game asks for per-element units), and
FEI's masks have one value per pixel. The games' substrates are those of every continuous kind plus RISE's blur
and the per-image channel mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

import lit_attr.viz as viz
from lit_attr.inputs.base import GENERIC_SUBSTRATES, ContinuousKind
from lit_attr.inputs.mosaics import ImageTiles
from lit_attr.inputs.space import Rendering

__all__ = ["Images", "blur", "rise_blur_kernel"]

# RISE's blur: scipy's gaussian_filter(sigma=5, mode="reflect") of an 11x11 delta. The reflection folds the
# truncated Gaussian back into the window, so these taps are flatter than a sampled Gaussian and cannot be
# reproduced with torchvision's gaussian_blur; the 2-D kernel is exactly their outer product.
_RISE_HALF_TAPS = (
    0.08795814577727815,
    0.08889611977709484,
    0.09047419654910865,
    0.09219111781938806,
    0.09348938844291409,
    0.09398206326843249,
)
_RISE_TAPS = _RISE_HALF_TAPS + _RISE_HALF_TAPS[-2::-1]


def rise_blur_kernel(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """The 11 one-dimensional taps of RISE's blur; the 2-D kernel is ``torch.outer(taps, taps)``.

    Args:
        dtype: floating dtype of the result (the taps are exact in float64).
        device: device of the result.

    Returns:
        ``(11,)`` symmetric taps that sum to 1.

    Example:
        >>> taps = rise_blur_kernel()
        >>> taps.shape, round(float(taps.sum()), 12)
        (torch.Size([11]), 1.0)
    """
    return torch.tensor(_RISE_TAPS, dtype=torch.float64, device=device).to(dtype)


def blur(x: Tensor) -> Tensor:
    """RISE's blur substrate: the separable 11x11 kernel per channel, with zero padding 5 (same size output).

    Zero padding darkens a 5-pixel border, as in RISE's ``conv2d(..., padding=5)``; it is kept for fidelity.

    Args:
        x: ``(N, C, H, W)`` floating-point images.

    Returns:
        Blurred images with the shape, dtype and device of ``x``.

    Example:
        >>> x = torch.ones(1, 3, 32, 32, dtype=torch.float64)
        >>> round(float(blur(x)[0, 0, 16, 16]), 12)  # a constant stays constant away from the border
        1.0
    """
    check_images("x", x)
    channels = x.shape[1]
    taps = rise_blur_kernel(x.dtype, x.device)
    # Two 1-D depthwise passes instead of one 11x11 pass: 22 instead of 121 multiply-adds per value, and zero
    # padding commutes with separability, so the result equals the 2-D convolution.
    out = F.conv2d(x, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), padding=(5, 0), groups=channels)
    return F.conv2d(out, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), padding=(0, 5), groups=channels)


def check_images(name: str, x: object) -> None:
    """Refuse anything but a non-empty floating-point image batch ``(N, C, H, W)``; ``name`` is the argument."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}.")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty image batch (N, C, H, W), got shape {tuple(x.shape)}.")


class Images(ContinuousKind):
    """Float image batches ``(N, C, H, W)``.

    Example:
        >>> kind = Images()
        >>> kind.accepts(torch.zeros(2, 3, 8, 8)), kind.unit_scores(torch.ones(2, 3, 8, 8), "sum").shape
        (True, torch.Size([2, 8, 8]))
    """

    name = "images"
    substrates: ClassVar[tuple[str, ...]] = (*GENERIC_SUBSTRATES, "blur", "mean")

    @classmethod
    def accepts(cls, x: Tensor) -> bool:
        """Floating-point tensors with four dimensions."""
        return x.is_floating_point() and x.ndim == 4

    def feature_shape(self, x: Tensor) -> tuple[int, ...]:
        """One mask value per pixel: ``(1, H, W)``."""
        return (1, *x.shape[2:])

    def mosaic_tiles(self, method: Any, x: Tensor, fields: Mapping[str, Any], tile: str) -> ImageTiles:
        """The images as tiles of 2x2 mosaics: as they are (``"full"``) or halved (``"half"``)."""
        check_images("x", x)
        return ImageTiles(x, tile)

    def ground_truth(self, mask: Tensor, x: Tensor) -> Tensor:
        """Masks ``(N, H, W)``, ``(N, 1, H, W)`` or per channel ``(N, C, H, W)`` as one ``(H, W)`` plane per sample.

        A pixel of a per-channel mask is ground truth where any channel marks it.
        """
        n, channels, height, width = x.shape
        if mask.ndim == 4 and mask.shape[1] in (1, channels):
            mask = mask.any(dim=1) if mask.dtype == torch.bool else mask.amax(dim=1)
        if tuple(mask.shape) != (n, height, width):
            raise ValueError(
                f"`masks` must be (N, H, W), (N, 1, H, W) or (N, C, H, W) for images of shape {tuple(x.shape)}, "
                f"got {tuple(mask.shape)}."
            )
        return mask

    def check_game_inputs(self, x: Tensor, attributions: Tensor) -> None:
        """Maps have the shape of ``x`` or one value per pixel ``(N, H, W)``."""
        check_images("x", x)
        per_pixel = (x.shape[0], *x.shape[2:])
        if attributions.shape != x.shape and attributions.shape != per_pixel:
            raise ValueError(
                f"`attributions` must have the shape of x {tuple(x.shape)} or (N, H, W) = {per_pixel}, got "
                f"{tuple(attributions.shape)}."
            )

    def unit_scores(self, attributions: Tensor, reduce: str) -> Tensor:
        """``(N, H, W)`` pixel scores: channels summed (absolute values for ``"abs_sum"``); ``"none"`` keeps them."""
        scores = attributions.abs() if reduce == "abs_sum" else attributions
        return scores.sum(dim=1) if scores.ndim == 4 and reduce != "none" else scores

    def unit_view(self, ranks: Tensor, x: Tensor) -> Tensor:
        """Pixel ranks ``(N, H, W)`` as ``(N, 1, H, W)``."""
        return ranks.unsqueeze(1) if ranks.ndim == 3 else ranks

    def constant(self, x: Tensor, fill: Tensor) -> Tensor:
        """A constant image: a scalar, ``C`` per-channel values, or values broadcastable to ``(C, H, W)``."""
        if fill.ndim == 1 and fill.numel() == x.shape[1]:
            fill = fill.view(-1, 1, 1)
        try:
            return torch.broadcast_to(fill, x.shape)
        except RuntimeError as err:
            raise ValueError(
                f"`substrate_value` must be a scalar, {x.shape[1]} per-channel values or broadcastable to "
                f"{tuple(x.shape[1:])}, got shape {tuple(fill.shape)}."
            ) from err

    def own_substrate(self, substrate: str, x: Tensor) -> Tensor:
        """``"blur"`` (:func:`blur`) or ``"mean"`` (each image's channel means)."""
        if substrate == "blur":
            return blur(x)
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)

    def render(
        self,
        samples: Sequence[Tensor],
        maps: Sequence[Tensor],
        *,
        captions: Sequence[str] | None = None,
        titles: Sequence[str] | None = None,
        title: str = "",
        decode: Callable[[Tensor], list[str]] | None = None,
        truths: Sequence[Tensor] | None = None,
    ) -> Rendering | None:
        """A grid of the images, their ground-truth masks (if any) and their maps on one colour scale.

        See :func:`lit_attr.viz.attribution_grid` (``scale="row"``).
        """
        if not samples:
            return None
        stacked = torch.stack(list(maps))
        masks = torch.stack(list(truths)) if truths is not None else None
        figure = viz.attribution_grid(
            torch.stack(list(samples)), stacked, captions=captions, titles=titles, title=title, masks=masks,
            scale="row",
        )  # fmt: skip
        bound = viz.row_scale(viz.heatmaps(stacked))
        signed = bool((viz.heatmaps(stacked) < 0).any())
        legend = (
            f"One colour scale for the row: {f'-{bound:.3g} to +{bound:.3g}' if signed else f'0 to {bound:.3g}'} "
            f"(channel sums; the 99.5th percentile of |attribution| over its {len(samples)} maps, values beyond it "
            "at the end colours). Each row has its own scale: compare colours within a row, not between rows."
        )
        return Rendering(figure, legend=legend)
