"""The probe set of the callbacks: a fixed, seeded subset of a validation or test split, read by index.

Nothing here iterates a dataloader or draws from a global random generator: the probe set is read from the
dataset by index with a private :class:`torch.Generator`, so attaching a callback leaves the training run as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from lit_attr._hygiene import preserved_rng_state
from lit_attr.batch import Batch, BatchAdapter, adapt_batch

__all__ = ["ProbeSet", "chunks", "dataset_of", "find_dataset", "load_probe", "select_probe", "shard"]


def find_dataset(
    trainer: Trainer, pl_module: LightningModule, stage: str, dataloader_idx: int | str = 0
) -> tuple[Dataset, Callable[[list], Any]] | None:
    """The map-style dataset and collate function of a validation (``"fit"``/``"validate"``) or test loader.

    Looks at the loaders Lightning already loaded (``trainer.val_dataloaders`` / ``test_dataloaders``), else at the
    datamodule's or the module's own ``*_dataloader()`` (constructed, never iterated), else at the loaders handed
    straight to ``trainer.fit`` (``validate``, ``test``). ``dataloader_idx`` picks one of several (see
    :func:`dataset_of`). Returns None if there is no such data.
    """
    split = "test" if stage == "test" else "val"
    loaders = trainer.test_dataloaders if split == "test" else trainer.val_dataloaders
    if loaders is None:
        hook = f"{split}_dataloader"
        owner = trainer.datamodule if _overrides(trainer.datamodule, hook) else pl_module
        loaders = getattr(owner, hook)() if _overrides(owner, hook) else _given_loaders(trainer, stage)
    return dataset_of(loaders, split, dataloader_idx)


def _given_loaders(trainer: Trainer, stage: str) -> Any:
    """The loaders handed straight to ``trainer.fit``/``validate``/``test``, or None.

    Lightning loads them only when their loop starts (validation may never run: ``limit_val_batches=0``); until then
    it keeps them in the loop's data source, which has no public accessor.
    """
    from lightning.pytorch import LightningDataModule

    loops = {"test": trainer.test_loop, "validate": trainer.validate_loop}
    loop = loops.get(stage) or trainer.fit_loop.epoch_loop.val_loop
    instance = getattr(getattr(loop, "_data_source", None), "instance", None)
    return None if isinstance(instance, (LightningModule, LightningDataModule)) else instance


def dataset_of(
    loader: Any, split: str = "val", dataloader_idx: int | str = 0
) -> tuple[Dataset, Callable[[list], Any]] | None:
    """``(dataset, collate_fn)`` of a loader, or of one of a list/dict of loaders; None for no loader.

    ``dataloader_idx`` is a position among the loaders, numbered as Lightning numbers them (nested lists and
    dicts flattened in order), or a key of a dict of loaders.

    Raises:
        ValueError: if ``dataloader_idx`` names no loader.
    """
    if loader is None:
        return None
    if isinstance(dataloader_idx, str):
        keys = list(loader) if isinstance(loader, Mapping) else None
        if keys is None or dataloader_idx not in keys:
            found = f"its keys are {keys}" if keys is not None else "they are not a dict"
            raise ValueError(f"`dataloader_idx` is {dataloader_idx!r}, but no {split} loader has that key: {found}.")
        loader, dataloader_idx = loader[dataloader_idx], 0
    loaders = _flatten_loaders(loader)
    if not loaders:
        return None
    if dataloader_idx >= len(loaders):
        raise ValueError(
            f"`dataloader_idx` is {dataloader_idx}, but there {'is' if len(loaders) == 1 else 'are'} {len(loaders)} "
            f"{split} loader(s), at positions 0 to {len(loaders) - 1}."
        )
    loader = loaders[dataloader_idx]
    dataset = loader.dataset if isinstance(loader, DataLoader) else loader
    collate = getattr(loader, "collate_fn", None) or default_collate
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"The {split} data must be a map-style dataset (with __len__ and __getitem__) so that a fixed probe set "
            f"can be read by index, got {type(dataset).__name__}."
        )
    return dataset, collate


def _flatten_loaders(loaders: Any) -> list[Any]:
    if isinstance(loaders, Mapping):
        return [leaf for value in loaders.values() for leaf in _flatten_loaders(value)]
    if isinstance(loaders, (list, tuple)):
        return [leaf for value in loaders for leaf in _flatten_loaders(value)]
    return [] if loaders is None else [loaders]


def _overrides(owner: Any, name: str) -> bool:
    """Whether ``owner`` (a datamodule or module) defines its own ``name`` hook rather than Lightning's default."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.core.hooks import DataHooks

    if owner is None:
        return False
    method = getattr(type(owner), name, None)
    return method is not None and method not in (getattr(LightningDataModule, name, None), getattr(DataHooks, name))


def select_probe(dataset_size: int, num_samples: int, seed: int, owner: str) -> list[int]:
    """``num_samples`` dataset indices drawn without replacement by a generator seeded with ``seed``.

    The draw depends on nothing but its arguments, so every rank and every epoch gets the same probe set.
    """
    from lightning.pytorch.utilities import rank_zero_warn

    if dataset_size < num_samples:
        rank_zero_warn(
            f"{owner}: the validation set has {dataset_size} samples, fewer than `num_samples={num_samples}`; "
            f"using all {dataset_size}."
        )
        num_samples = dataset_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(dataset_size, generator=generator)[:num_samples].tolist()


def load_probe(
    dataset: Dataset,
    indices: Sequence[int],
    adapter: BatchAdapter | None,
    collate_fn: Callable[[list], Any] = default_collate,
) -> Batch:
    """Read ``dataset[i]`` for every index, collate them with the loader's ``collate_fn`` and adapt the batch."""
    # A dataset with random transforms would draw from the global generators; the training run must not notice.
    with preserved_rng_state():
        batch = collate_fn([dataset[i] for i in indices])
    return adapt_batch(batch, adapter)


@dataclass
class ProbeSet:
    """A fixed, seeded subset of one split: where it is read from, which indices, and the samples once read."""

    num_samples: int
    seed: int
    owner: str
    split: str = "val"
    dataloader_idx: int | str = 0
    dataset: Dataset | None = None
    collate_fn: Callable[[list], Any] = default_collate
    indices: list[int] | None = None
    batch: Batch | None = field(default=None, repr=False)

    def attach(self, found: tuple[Dataset, Callable[[list], Any]] | None) -> None:
        """Use ``found`` (from :func:`find_dataset`) and draw the indices if they are missing or do not fit."""
        if found is None:
            return
        self.dataset, self.collate_fn = found
        size = len(self.dataset)  # type: ignore[arg-type]
        if self.indices is not None and (not self.indices or max(self.indices) >= size):
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"{self.owner}: the saved probe indices do not fit {size} samples; drawing a new probe set.")
            self.indices = None
        if self.indices is None:
            self.indices = select_probe(size, self.num_samples, self.seed, self.owner)
            self.batch = None

    def restore(self, indices: Sequence[int] | None) -> None:
        """Take indices from a checkpoint (they win over the seed, so a resumed history stays comparable)."""
        if indices is not None and list(indices) != self.indices:
            self.indices = [int(i) for i in indices]
            self.batch = None
            if self.dataset is not None:  # restored after the dataset was attached: check them against it now
                self.attach((self.dataset, self.collate_fn))

    def load(self, trainer: Trainer, adapter: BatchAdapter | None) -> Batch:
        """The probe samples, read on first use (and after the indices changed)."""
        if self.batch is not None:
            return self.batch
        if self.dataset is None:
            # The loaders were handed straight to the trainer's entry point: they are known only now.
            loaders = trainer.test_dataloaders if self.split == "test" else trainer.val_dataloaders
            self.attach(dataset_of(loaders, self.split, self.dataloader_idx))
        if self.dataset is None or self.indices is None:
            raise RuntimeError(f"{self.owner} could not find the {self.split} dataset to draw the probe set from.")
        self.batch = load_probe(self.dataset, self.indices, adapter, self.collate_fn)
        return self.batch


def shard(num: int, rank: int, world_size: int) -> list[int]:
    """The probe positions this rank works on: every ``world_size``-th from ``rank``."""
    return list(range(rank, num, world_size))


def chunks(positions: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive pieces of at most ``size`` positions."""
    return [list(positions[i : i + size]) for i in range(0, len(positions), size)]
