"""A small vision transformer for the synthetic shapes data, the transformer counterpart of the demo CNN.

The network is torchvision's ``VisionTransformer`` (held as ``net``), so everything lit-attr knows about
torchvision ViTs applies to it: attention maps, FEI's GELU gates, the transformer-aware randomisation check and
activation-deviation probes. Inputs are in [0, 1] and normalised inside the model; the output is raw logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning import LightningDataModule
from torch import Tensor
from torchvision.models import VisionTransformer

from lit_attr.attribution_quality import AttributionQuality
from lit_attr.models.demo_classifier import _SHAPES_MEAN, _SHAPES_STD, ShapesClassifierBase, _fit_quietly

__all__ = ["DEMO_VIT_EPOCHS", "DEMO_VIT_TRAIN_SIZE", "DemoViT", "train_demo_vit"]

DEMO_VIT_EPOCHS: int = 5
"""Recommended number of epochs on ``ShapesDataModule(num_train=DEMO_VIT_TRAIN_SIZE)``.

With this budget :func:`train_demo_vit` reaches 0.959 validation accuracy (seed 0, 512 images) in 38 s of CPU time
with one thread (``OMP_NUM_THREADS=1``), measured on a 2-core CPU VM by timing ``train_demo_vit()`` with
``time.process_time``.
"""

DEMO_VIT_TRAIN_SIZE: int = 8000
"""Training images of :func:`train_demo_vit`'s default data: a ViT overfits the CNN's 4000 (about 92% at best)."""


class DemoViT(ShapesClassifierBase):
    """Small vision transformer that classifies :class:`~lit_attr.data.ShapesDataset` images.

    Architecture: torchvision's ``VisionTransformer`` with ``patch_size`` x ``patch_size`` patches (a 4 x 4 grid of
    32 x 32 images by default), a class token, ``num_layers`` pre-norm encoder blocks of ``num_heads`` heads, width
    ``hidden_dim`` and MLP width ``mlp_dim`` (GELU), and a linear head on the class token. Training, evaluation, the
    optimiser (AdamW with a per-step OneCycle or cosine schedule) and ``attribution_quality`` are those of
    :class:`~lit_attr.models.DemoClassifier`. :data:`DEMO_VIT_EPOCHS` on :data:`DEMO_VIT_TRAIN_SIZE` images is the
    recommended budget.

    Args:
        num_classes: number of output logits (>= 2).
        image_size: side of the square input images; a multiple of ``patch_size``.
        patch_size: side of a patch in pixels.
        num_layers: encoder blocks.
        num_heads: attention heads per block; must divide ``hidden_dim``.
        hidden_dim: token width.
        mlp_dim: hidden width of each block's MLP.
        lr: peak learning rate of AdamW.
        weight_decay: decoupled weight decay of AdamW.
        schedule: ``"onecycle"`` (default), ``"cosine"`` or ``"none"``.
        mean: per-channel mean used to normalise inputs.
        std: per-channel standard deviation used to normalise inputs.
        attribution_quality: options of :class:`~lit_attr.metrics.AttributionQuality`, as for
            :class:`~lit_attr.models.DemoClassifier`.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> model = DemoViT().eval()
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        num_classes: int = 4,
        image_size: int = 32,
        patch_size: int = 8,
        num_layers: int = 4,
        num_heads: int = 4,
        hidden_dim: int = 64,
        mlp_dim: int = 128,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        schedule: str = "onecycle",
        mean: Sequence[float] = _SHAPES_MEAN,
        std: Sequence[float] = _SHAPES_STD,
        attribution_quality: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._check_options(num_classes, lr, weight_decay, schedule, mean, std)
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("hidden_dim", hidden_dim),
            ("mlp_dim", mlp_dim),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if image_size % patch_size:
            raise ValueError(f"image_size must be a multiple of patch_size, got {image_size} and {patch_size}")
        if hidden_dim % num_heads:
            raise ValueError(f"num_heads must divide hidden_dim, got {num_heads} and {hidden_dim}")
        self.save_hyperparameters()

        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.net = VisionTransformer(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=mlp_dim,
            num_classes=num_classes,
        )
        self.attribution_quality = None
        if attribution_quality is not None:
            self.attribution_quality = AttributionQuality(self, **attribution_quality)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(N, num_classes)`` for images ``x`` of shape ``(N, 3, H, W)`` in [0, 1]."""
        return self.net((x - self.mean) / self.std)


def train_demo_vit(
    datamodule: LightningDataModule | None = None, *, seed: int = 0, epochs: int = DEMO_VIT_EPOCHS, **options: Any
) -> tuple[DemoViT, LightningDataModule]:
    """Train :class:`DemoViT` quietly on CPU and return it in eval mode with its (set-up) data module.

    Initialisation and training are seeded by ``seed`` and deterministic, yet the caller's global RNG and the
    process-wide determinism switches that ``Trainer(deterministic=True)`` flips are left as they were.

    Args:
        datamodule: the data (default: ``ShapesDataModule(num_train=DEMO_VIT_TRAIN_SIZE, seed=seed)``);
            ``setup()`` is called on it.
        seed: seed of weight initialisation and training.
        epochs: training epochs.
        **options: constructor arguments of :class:`DemoViT` (e.g. a smaller ``num_layers`` for tests).

    Example:
        >>> from lit_attr.data import ShapesDataModule
        >>> model, data = train_demo_vit(ShapesDataModule(num_train=32, num_val=16), epochs=1, num_layers=1)
        >>> model.training
        False
    """
    from lit_attr.data import ShapesDataModule

    datamodule = datamodule if datamodule is not None else ShapesDataModule(num_train=DEMO_VIT_TRAIN_SIZE, seed=seed)
    model = _fit_quietly(lambda: DemoViT(num_classes=datamodule.num_classes, **options), datamodule, seed, epochs)
    return model, datamodule
