"""What the embedded data modules share: seeded splits generated on ``setup`` and their loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

__all__ = ["SyntheticDataModule"]


class SyntheticDataModule(LightningDataModule):
    """Train/val/test splits generated from one base seed, and deterministic loaders over them.

    Subclasses save ``num_train``, ``num_val``, ``num_test``, ``batch_size`` and ``num_workers`` as hyperparameters,
    call :meth:`_seed_splits` in their ``__init__`` and build a split's dataset in :meth:`_make`.
    """

    #: The loaders' ``collate_fn`` (``None``: PyTorch's default).
    collate_fn: Callable[[list], Any] | None = None

    def _seed_splits(self, seed: int) -> None:
        # One seed per split plus one for shuffling, all drawn from the base seed so that neighbouring base seeds
        # do not share splits.
        derived = torch.randint(0, 2**62, (4,), generator=torch.Generator().manual_seed(seed)).tolist()
        self._split_seeds = {"train": derived[0], "val": derived[1], "test": derived[2]}
        self._shuffle_seed = derived[3]
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _make(self, split: str, num_samples: int) -> Dataset:
        raise NotImplementedError

    @override
    def setup(self, stage: str | None = None) -> None:
        """Generate the splits needed for ``stage`` (all of them when ``stage`` is None); idempotent.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None.
        """
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._make("train", self.hparams.num_train)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._make("val", self.hparams.num_val)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._make("test", self.hparams.num_test)

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"the {split} split is not available; call setup() first")
        # Every loader gets a private generator, even unshuffled ones: without it, each new DataLoader iterator
        # draws its worker base seed from the global RNG and would perturb the caller's random stream.
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            collate_fn=type(self).collate_fn,
            generator=torch.Generator().manual_seed(self._shuffle_seed),
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled training loader; every call restarts the same shuffling sequence."""
        return self._loader(self.train_set, "train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        """Validation loader in dataset order."""
        return self._loader(self.val_set, "val", shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        """Test loader in dataset order."""
        return self._loader(self.test_set, "test", shuffle=False)

    @override
    def predict_dataloader(self) -> DataLoader:
        """Loader over the test split in dataset order."""
        return self._loader(self.test_set, "test", shuffle=False)
