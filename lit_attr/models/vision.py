"""A torchvision classifier (ResNet-50 by default) as a LightningModule that takes [0, 1] images and returns logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning import LightningModule
from torch import Tensor
from torch.nn import functional as F
from typing_extensions import override

__all__ = ["TorchvisionClassifier"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionClassifier(LightningModule):
    """Any ``torchvision.models`` classifier, normalising its [0, 1] inputs inside ``forward``.

    Normalising inside the model keeps attribution in pixel space: ``input_bounds=(0, 1)`` and the metrics'
    substrates (zeros, blur) mean what they say. Nothing is downloaded: load pretrained weights from a local file
    (``weights_path``: a ``state_dict`` of the torchvision model, e.g. saved once with
    ``torch.save(resnet50(weights="IMAGENET1K_V2").state_dict(), "resnet50.pth")``), or through ``--ckpt_path``.

    Args:
        arch: a ``torchvision.models`` builder name (``"resnet50"``, ``"vgg16"``, ...).
        num_classes: output logits.
        weights_path: local torchvision state dict to start from.
        lr: SGD learning rate (fine-tuning).
        mean: per-channel input mean.
        std: per-channel input standard deviation.

    Example:
        >>> model = TorchvisionClassifier("resnet18", num_classes=10).eval()
        >>> model(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 1000,
        weights_path: str | None = None,
        lr: float = 0.01,
        mean: Sequence[float] = _IMAGENET_MEAN,
        std: Sequence[float] = _IMAGENET_STD,
    ) -> None:
        super().__init__()
        from torchvision import models

        self.save_hyperparameters()
        self.net = models.get_model(arch, weights=None, num_classes=num_classes)
        if weights_path is not None:
            self.net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, 3, H, W)`` in [0, 1]."""
        return self.net((x - self.mean) / self.std)

    @override
    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on ``(x, y)``."""
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        """Logs ``val_loss`` and ``val_acc``."""
        logits = self(batch[0])
        self.log("val_loss", F.cross_entropy(logits, batch[1]), sync_dist=True)
        self.log("val_acc", (logits.argmax(1) == batch[1]).float().mean(), sync_dist=True)

    @override
    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        """Logs ``test_acc``."""
        self.log("test_acc", (self(batch[0]).argmax(1) == batch[1]).float().mean(), sync_dist=True)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD with momentum."""
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=1e-4)
