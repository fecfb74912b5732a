"""An ImageFolder data module for real images (ImageNet-style ``root/<split>/<class>/<image>`` trees), no downloads.

Images are resized and centre-cropped but **not** normalised: inputs stay in [0, 1], which is what attribution
methods' ``input_bounds=(0, 1)`` and the metrics' substrates (zeros, blur) assume. Normalise inside the model
(:class:`lit_attr.models.vision.TorchvisionClassifier` does).
"""

from __future__ import annotations

from pathlib import Path

from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

__all__ = ["ImageFolderDataModule"]
from typing_extensions import override


class ImageFolderDataModule(LightningDataModule):
    """Train/val/test splits read with :class:`torchvision.datasets.ImageFolder` from local directories.

    Args:
        root: directory holding one sub-directory per split (``train``, ``val``, ``test``), each with one
            sub-directory per class. A missing split directory means the split is not available.
        image_size: side of the centre crop fed to the model.
        resize: shorter side after resizing, before the crop.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        splits: the directory name of each split, e.g. ``{"val": "validation"}``.

    Raises:
        ValueError: if ``root`` is not a directory.

    Example::

        dm = ImageFolderDataModule("/data/imagenet")
        dm.setup("validate")
        dm.val_set.classes[:2]  # ['n01440764', 'n01443537']
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        resize: int = 256,
        batch_size: int = 32,
        num_workers: int = 4,
        splits: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"`root` must be an existing directory, got {root!r}")
        self.image_size = image_size
        self.resize = resize
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.split_dirs = {"train": "train", "val": "val", "test": "test", **(splits or {})}
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.class_names: list[str] | None = None

    def _make(self, split: str, train: bool) -> Dataset | None:
        from torchvision import datasets, transforms

        directory = self.root / self.split_dirs[split]
        if not directory.is_dir():
            return None
        if train:
            transform = transforms.Compose(
                [
                    transforms.RandomResizedCrop(self.image_size),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                ]
            )
        else:
            transform = transforms.Compose(
                [transforms.Resize(self.resize), transforms.CenterCrop(self.image_size), transforms.ToTensor()]
            )
        dataset = datasets.ImageFolder(str(directory), transform=transform)
        self.class_names = self.class_names or list(dataset.classes)
        return dataset

    @override
    def setup(self, stage: str | None = None) -> None:
        """Index the split directories needed for ``stage`` (those that exist)."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._make("train", train=True)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._make("val", train=False)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._make("test", train=False)

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"no {split!r} split: {self.root / self.split_dirs[split]} is not a directory")
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers, pin_memory=True
        )

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training images."""
        return self._loader(self.train_set, "train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        """Validation images in directory order."""
        return self._loader(self.val_set, "val", shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        """Test images in directory order."""
        return self._loader(self.test_set, "test", shuffle=False)
