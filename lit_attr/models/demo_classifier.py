"""A small ResNet-style classifier for the synthetic shapes data, fast enough to train on a laptop CPU.

The network is written with attribution methods in mind: inputs are in [0, 1] and normalised inside the model,
every ReLU is its own ``nn.ReLU`` module (hook-based methods such as DeepLift or guided backpropagation attach
to module instances, and a shared instance would be hooked several times per forward), and the output is raw
logits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from lightning import LightningDataModule, LightningModule, Trainer
from torch import Tensor, nn
from torch.nn import functional as F
from typing_extensions import override

from lit_attr.attribution_quality import AttributionQuality

__all__ = ["DEMO_EPOCHS", "DemoClassifier"]

DEMO_EPOCHS: int = 6
"""Recommended number of epochs on the default :class:`~lit_attr.data.ShapesDataModule`.

With this budget the model reaches well above 95% validation accuracy in 39 s of CPU time with one thread
(``OMP_NUM_THREADS=1``), measured on a 2-core CPU VM by timing ``train_demo_classifier()`` with ``time.process_time``.
"""

# Per-channel statistics of the default shapes data (measured on 10k images); they only need to be roughly right.
_SHAPES_MEAN = (0.245, 0.245, 0.245)
_SHAPES_STD = (0.255, 0.255, 0.255)
_SCHEDULES = ("onecycle", "cosine", "none")


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a (projected when needed) identity shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ShapesClassifierBase(LightningModule):
    """Training, evaluation and optimiser of the demo models; subclasses build the network and ``forward``.

    Subclasses call :meth:`_check_options` and ``save_hyperparameters()`` (``lr``, ``weight_decay`` and
    ``schedule`` are read from ``hparams``), register ``mean``/``std`` buffers, and set ``attribution_quality``.
    """

    attribution_quality: AttributionQuality | None

    @staticmethod
    def _check_options(
        num_classes: int, lr: float, weight_decay: float, schedule: str, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std must have 3 entries, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")

    @staticmethod
    def _unpack(batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        if len(batch) not in (2, 3):
            raise ValueError(f"batch must be (x, y) or (x, y, mask), got {len(batch)} elements")
        return batch[0], batch[1]

    def _loss_and_accuracy(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, int]:
        x, y = self._unpack(batch)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        return loss, accuracy, y.shape[0]

    @override
    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on one batch; logs ``train_loss``."""
        loss, _, batch_size = self._loss_and_accuracy(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    @override
    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        """Logs epoch-level ``val_loss`` and ``val_acc``."""
        loss, accuracy, batch_size = self._loss_and_accuracy(batch)
        self.log("val_loss", loss, on_epoch=True, batch_size=batch_size)
        self.log("val_acc", accuracy, on_epoch=True, prog_bar=True, batch_size=batch_size)
        if self.attribution_quality is not None:
            self.attribution_quality.update(batch[0], masks=batch[2] if len(batch) == 3 else None)

    @override
    def on_validation_epoch_end(self) -> None:
        """Log the attribution scores of the epoch (``compute`` has already synchronised them across ranks)."""
        if self.attribution_quality is not None:
            self.log_dict(self.attribution_quality.compute())
            self.attribution_quality.reset()

    @override
    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        """Logs epoch-level ``test_loss`` and ``test_acc``."""
        loss, accuracy, batch_size = self._loss_and_accuracy(batch)
        self.log("test_loss", loss, on_epoch=True, batch_size=batch_size)
        self.log("test_acc", accuracy, on_epoch=True, batch_size=batch_size)

    @override
    def predict_step(self, batch: Sequence[Tensor] | Tensor, batch_idx: int) -> Tensor:
        """Logits for a batch (a bare tensor or a tuple whose first element is the images)."""
        x = batch if isinstance(batch, Tensor) else batch[0]
        return self(x)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """AdamW, with a per-step OneCycle or cosine schedule spanning the trainer's total number of steps.

        Without an attached trainer, or when the trainer has no finite step budget or fewer than 8 steps, only the
        optimizer is returned.
        """
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.schedule == "none" or self._trainer is None:
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        # Unbounded training (max_epochs=-1 without max_steps) has no horizon for a schedule to span, and OneCycle
        # divides by its warm-up length, which is zero for a handful of steps.
        if not math.isfinite(total_steps) or total_steps < 8:
            return optimizer
        total_steps = int(total_steps)
        if hp.schedule == "onecycle":
            scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=total_steps, pct_start=0.25
            )
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DemoClassifier(ShapesClassifierBase):
    """Small residual CNN that classifies :class:`~lit_attr.data.ShapesDataset` images.

    Architecture: 3x3 conv stem (``width`` channels) + BatchNorm + ReLU, two basic residual blocks with
    ``2 * width`` and ``4 * width`` channels that each downsample by 2, global average pooling and a single
    linear layer that returns logits. Inputs are expected in [0, 1]; normalisation with the
    ``mean``/``std`` buffers happens inside :meth:`forward`.

    Batches may be ``(x, y, mask)`` (as produced by :class:`~lit_attr.data.ShapesDataModule`; the mask is
    ignored) or ``(x, y)``. The number of training epochs is not a hyperparameter: the learning-rate schedule
    reads the total number of steps from the attached trainer. :data:`DEMO_EPOCHS` is the recommended budget.

    Args:
        num_classes: number of output logits (>= 2).
        width: channels of the stem; the blocks use ``2 * width`` and ``4 * width``.
        lr: peak learning rate of AdamW.
        weight_decay: decoupled weight decay of AdamW.
        schedule: ``"onecycle"`` (default), ``"cosine"`` or ``"none"``.
        mean: per-channel mean used to normalise inputs.
        std: per-channel standard deviation used to normalise inputs.
        attribution_quality: options of :class:`~lit_attr.metrics.AttributionQuality` (e.g.
            ``{"method": "saliency", "metrics": ["insertion_deletion", "localization"]}``). When given, every
            validation batch is also attributed and scored (masks from ``(x, y, mask)`` batches), and the scores
            are logged as ``<method>/<value>`` at the end of each validation epoch. This is the pattern for users
            who log from their own ``validation_step`` instead of attaching a callback.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> model = DemoClassifier().eval()
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        num_classes: int = 4,
        width: int = 16,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        schedule: str = "onecycle",
        mean: Sequence[float] = _SHAPES_MEAN,
        std: Sequence[float] = _SHAPES_STD,
        attribution_quality: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._check_options(num_classes, lr, weight_decay, schedule, mean, std)
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.save_hyperparameters()

        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        # Both blocks downsample: full-resolution blocks would double the training cost for no accuracy gain on
        # 32x32 inputs, and two stride-2 stages already give a receptive field larger than any class object.
        self.layer1 = _BasicBlock(width, 2 * width, stride=2)
        self.layer2 = _BasicBlock(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        self.attribution_quality = None
        if attribution_quality is not None:
            self.attribution_quality = AttributionQuality(self, **attribution_quality)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(N, num_classes)`` for images ``x`` of shape ``(N, 3, H, W)`` in [0, 1]."""
        x = (x - self.mean) / self.std
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def train_demo_classifier(
    datamodule: LightningDataModule | None = None, *, seed: int = 0, epochs: int = DEMO_EPOCHS
) -> tuple[DemoClassifier, LightningDataModule]:
    """Train :class:`DemoClassifier` quietly on CPU and return it in eval mode with its (set-up) data module.

    Initialisation and training are seeded by ``seed`` and deterministic, yet the caller's global RNG and the
    process-wide determinism switches that ``Trainer(deterministic=True)`` flips are left as they were.

    Args:
        datamodule: the data (default: ``ShapesDataModule(seed=seed)``); ``setup()`` is called on it.
        seed: seed of weight initialisation and training.
        epochs: training epochs.

    Example:
        >>> from lit_attr.data import ShapesDataModule
        >>> model, data = train_demo_classifier(ShapesDataModule(num_train=64, num_val=16), epochs=1)
        >>> model.training
        False
    """
    from lit_attr.data import ShapesDataModule

    datamodule = datamodule if datamodule is not None else ShapesDataModule(seed=seed)
    model = _fit_quietly(lambda: DemoClassifier(num_classes=datamodule.num_classes), datamodule, seed, epochs)
    return model, datamodule


def _fit_quietly(
    build: Callable[[], LightningModule], datamodule: LightningDataModule, seed: int, epochs: int
) -> LightningModule:
    """Build a model with ``build()`` and train it quietly and deterministically on CPU; return it in eval mode.

    ``setup()`` is called on ``datamodule``. Initialisation and training are seeded by ``seed``, yet the caller's
    global RNG and the process-wide determinism switches that ``Trainer(deterministic=True)`` flips are left as
    they were.
    """
    datamodule.setup()
    with torch.random.fork_rng(devices=[]), _restored_determinism_flags():
        torch.manual_seed(seed)
        model = build()
        trainer = Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=True,
        )
        trainer.fit(model, datamodule=datamodule)
    return model.cpu().eval()


@contextmanager
def _restored_determinism_flags() -> Iterator[None]:
    # Trainer(deterministic=True) flips process-wide switches and never flips them back.
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
