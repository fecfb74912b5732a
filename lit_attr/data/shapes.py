"""Synthetic "shapes" images with a known class-defining object, generated locally and deterministically.

Every image holds exactly one class object (square, disc, triangle or cross) drawn on top of a textured
background and a few distractor objects (rings and thin bars) that carry no class information. Because the
pixels of the class object are known exactly (:attr:`ShapesDataset.masks`), attribution maps can be scored
against ground truth without downloading anything.

Generation is fully vectorised over samples and draws only from a private :class:`torch.Generator`, so the
global random state of the caller is never touched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from lit_attr._checks import check_int
from lit_attr.data._synthetic import SyntheticDataModule

__all__ = ["CLASS_NAMES", "ShapesDataModule", "ShapesDataset"]

CLASS_NAMES: tuple[str, ...] = ("square", "disc", "triangle", "cross")
"""Names of the classes, indexed by label."""

_MIN_IMAGE_SIZE = 16
# Geometry is specified relative to the image side so that every image size yields the same task.
_OBJECT_HALF_SIZE = (0.16, 0.28)
_RING_RADIUS = (0.10, 0.16)
_RING_THICKNESS = 1.3 / 32
_BAR_HALF_LENGTH = (0.12, 0.28)
_BAR_HALF_THICKNESS = 0.6 / 32
# The background stays dim (at most about 0.5) while objects always have one channel at 1.0, which keeps every
# object visibly distinct from the background without making colour alone informative of the class.
_BACKGROUND_BASE_MAX = 0.3
_BACKGROUND_NOISE_AMPLITUDE = 0.2


def _uniform(n: int, low: float | Tensor, high: float | Tensor, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _bright_colours(n: int, generator: torch.Generator) -> Tensor:
    """Random saturated colours: one random channel at 1.0, the others uniform in [0.05, 0.95]."""
    colours = _uniform(3 * n, 0.05, 0.95, generator).view(n, 3)
    dominant = torch.randint(0, 3, (n,), generator=generator)
    colours[torch.arange(n), dominant] = 1.0
    return colours


def _background(n: int, size: int, generator: torch.Generator) -> Tensor:
    base = _uniform(3 * n, 0.0, _BACKGROUND_BASE_MAX, generator).view(n, 3, 1, 1)
    coarse = max(2, size // 8)
    noise = torch.rand(n, 3, coarse, coarse, generator=generator) - 0.5
    # Bilinear upsampling of a coarse grid gives smooth, low-frequency texture with no edges that could be
    # mistaken for an object. Bilinear interpolation is separable, so it is applied as two small matrix products
    # (several times faster than ``F.interpolate`` on many tiny images, and numerically the same).
    rows = F.interpolate(torch.eye(coarse).unsqueeze(0), size=size, mode="linear", align_corners=False)[0]
    smooth = rows.T @ noise @ rows
    return (base + 2 * _BACKGROUND_NOISE_AMPLITUDE * smooth).clamp(0.0, 1.0)


class _Canvas:
    """Pixel-centre coordinates of an image, broadcastable against per-sample parameters of shape (N,)."""

    def __init__(self, size: int) -> None:
        centres = torch.arange(size, dtype=torch.float32) + 0.5
        self.size = size
        self.ys = centres.view(1, size, 1)
        self.xs = centres.view(1, 1, size)

    def offsets(self, cx: Tensor, cy: Tensor) -> tuple[Tensor, Tensor]:
        return self.xs - cx.view(-1, 1, 1), self.ys - cy.view(-1, 1, 1)


def _class_object_masks(canvas: _Canvas, labels: Tensor, generator: torch.Generator) -> Tensor:
    n, size = labels.shape[0], canvas.size
    half = _uniform(n, _OBJECT_HALF_SIZE[0] * size, _OBJECT_HALF_SIZE[1] * size, generator)
    # A one pixel margin keeps the whole object strictly inside the image.
    cx = _uniform(n, half + 1.0, size - 1.0 - half, generator)
    cy = _uniform(n, half + 1.0, size - 1.0 - half, generator)
    dx, dy = canvas.offsets(cx, cy)
    s = half.view(-1, 1, 1)
    adx, ady = dx.abs(), dy.abs()

    square = (adx <= s) & (ady <= s)
    disc = dx * dx + dy * dy <= s * s
    # Apex at the top, base of width 2s at the bottom.
    triangle = (dy >= -s) & (dy <= s) & (adx <= (dy + s) / 2)
    arm = (0.3 * s).clamp(min=0.5)
    cross = ((adx <= s) & (ady <= arm)) | ((ady <= s) & (adx <= arm))

    shapes = torch.stack([square, disc, triangle, cross], dim=1)
    return shapes[torch.arange(n), labels]


def _distractor_mask(canvas: _Canvas, n: int, generator: torch.Generator) -> Tensor:
    size = canvas.size
    # Parameters of both kinds are always drawn so that the stream of random numbers does not depend on which
    # kind was picked; positions are drawn independently of the label.
    is_ring = torch.rand(n, generator=generator) < 0.5
    cx = _uniform(n, 2.0, size - 2.0, generator)
    cy = _uniform(n, 2.0, size - 2.0, generator)
    radius = _uniform(n, _RING_RADIUS[0] * size, _RING_RADIUS[1] * size, generator).view(-1, 1, 1)
    half_length = _uniform(n, _BAR_HALF_LENGTH[0] * size, _BAR_HALF_LENGTH[1] * size, generator).view(-1, 1, 1)
    angle = _uniform(n, 0.0, math.pi, generator).view(-1, 1, 1)

    dx, dy = canvas.offsets(cx, cy)
    distance = torch.sqrt(dx * dx + dy * dy)
    ring = (distance <= radius) & (distance > radius - _RING_THICKNESS * size)
    along = dx * torch.cos(angle) + dy * torch.sin(angle)
    across = -dx * torch.sin(angle) + dy * torch.cos(angle)
    bar = (along.abs() <= half_length) & (across.abs() <= _BAR_HALF_THICKNESS * size)
    return torch.where(is_ring.view(-1, 1, 1), ring, bar)


def _paint(images: Tensor, mask: Tensor, colours: Tensor) -> Tensor:
    return torch.where(mask.unsqueeze(1), colours.view(-1, 3, 1, 1), images)


def generate_shapes(
    num_samples: int, image_size: int, num_distractors: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Generate a batch of shapes images in one vectorised pass.

    Args:
        num_samples: number of images.
        image_size: side length in pixels.
        num_distractors: number of label-independent distractor objects per image.
        generator: the only source of randomness used.

    Returns:
        ``(images, labels, masks)`` with shapes ``(N, 3, H, W)`` (float32 in [0, 1]), ``(N,)`` (int64) and
        ``(N, H, W)`` (bool, the class object's pixels).

    Example:
        >>> images, labels, masks = generate_shapes(8, 32, 2, torch.Generator().manual_seed(0))
        >>> tuple(images.shape), tuple(masks.shape)
        ((8, 3, 32, 32), (8, 32, 32))
    """
    n = num_samples
    labels = (torch.arange(n) % len(CLASS_NAMES))[torch.randperm(n, generator=generator)]
    canvas = _Canvas(image_size)
    images = _background(n, image_size, generator)
    for _ in range(num_distractors):
        mask = _distractor_mask(canvas, n, generator)
        images = _paint(images, mask, _bright_colours(n, generator))
    # Painted last so that the class object is never occluded and its mask is exactly what is visible.
    masks = _class_object_masks(canvas, labels, generator)
    images = _paint(images, masks, _bright_colours(n, generator))
    return images.contiguous(), labels, masks.contiguous()


class ShapesDataset(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """Synthetic RGB images of four shape classes with ground-truth object masks.

    Each image has a dim, smoothly textured background, ``num_distractors`` distractor objects (rings and thin
    bars whose colours and positions are independent of the label) and exactly one class-defining object
    (see :data:`CLASS_NAMES`) with a random position fully inside the image, a random size and a random bright
    colour. The class object is drawn last, so it is fully visible and :attr:`masks` marks exactly its pixels.
    Labels are exactly balanced. The whole dataset is generated eagerly from ``seed`` using a private
    generator, so it is reproducible and leaves the global random state alone.

    Args:
        num_samples: number of images (>= 1).
        image_size: side length of the square images in pixels (>= 16).
        seed: seed of the private random generator (>= 0).
        num_distractors: distractor objects per image (>= 0).

    Attributes:
        images: ``(N, 3, H, W)`` float32 tensor with values in [0, 1].
        labels: ``(N,)`` int64 tensor of class indices.
        masks: ``(N, H, W)`` bool tensor, True on the class object's pixels.

    Raises:
        ValueError: if an argument is not an int or is out of range.

    Example:
        >>> ds = ShapesDataset(8, image_size=32, seed=1)
        >>> image, label, mask = ds[0]
        >>> tuple(image.shape), CLASS_NAMES[label] in CLASS_NAMES, bool(mask.any())
        ((3, 32, 32), True, True)
    """

    def __init__(self, num_samples: int, image_size: int = 32, seed: int = 0, num_distractors: int = 2) -> None:
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.image_size = check_int("image_size", image_size, _MIN_IMAGE_SIZE)
        self.seed = check_int("seed", seed, 0)
        self.num_distractors = check_int("num_distractors", num_distractors, 0)
        generator = torch.Generator().manual_seed(seed)
        self.images, self.labels, self.masks = generate_shapes(num_samples, image_size, num_distractors, generator)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.images[index], self.labels[index], self.masks[index]


class ShapesDataModule(SyntheticDataModule):
    """Train, validation and test splits of :class:`ShapesDataset` for Lightning.

    The splits are generated in :meth:`setup` from distinct seeds derived from ``seed``. The training loader
    shuffles with a generator of its own (seeded from ``seed``), so shuffling is reproducible and independent
    of the global random state; the other loaders keep the dataset order. No loader draws from the global RNG.

    Args:
        num_train: training images.
        num_val: validation images.
        num_test: test images (also used by :meth:`predict_dataloader`).
        image_size: side length of the images in pixels (>= 16).
        batch_size: samples per batch (>= 1).
        num_distractors: distractor objects per image (>= 0).
        seed: base seed (>= 0) from which split and shuffling seeds are derived.
        num_workers: DataLoader worker processes (>= 0); the data lives in memory, so 0 is usually fastest.

    Raises:
        ValueError: if an argument is not an int or is out of range.

    Example:
        >>> dm = ShapesDataModule(num_train=64, num_val=16, num_test=16, batch_size=8)
        >>> dm.setup("fit")
        >>> x, y, mask = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), dm.num_classes
        ((8, 3, 32, 32), 4)
    """

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 512,
        num_test: int = 512,
        image_size: int = 32,
        batch_size: int = 64,
        num_distractors: int = 2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("num_train", num_train, 1),
            ("num_val", num_val, 1),
            ("num_test", num_test, 1),
            ("image_size", image_size, _MIN_IMAGE_SIZE),
            ("batch_size", batch_size, 1),
            ("num_distractors", num_distractors, 0),
            ("seed", seed, 0),
            ("num_workers", num_workers, 0),
        ):
            check_int(name, value, minimum)
        self.save_hyperparameters()
        self._seed_splits(seed)

    @property
    def num_classes(self) -> int:
        """Number of classes (always ``len(CLASS_NAMES)``)."""
        return len(CLASS_NAMES)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names indexed by label."""
        return CLASS_NAMES

    def _make(self, split: str, num_samples: int) -> ShapesDataset:
        return ShapesDataset(
            num_samples,
            image_size=self.hparams.image_size,
            seed=self._split_seeds[split],
            num_distractors=self.hparams.num_distractors,
        )
