"""Checks of an evaluation's set-up, before anything runs: the split, its collate function, the model's output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning import LightningDataModule
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from lit_attr._checks import check_scorable
from lit_attr.batch import Batch

__all__ = ["STAGES", "EvaluationError", "check_logits", "split_collate", "split_dataset"]

#: The splits an evaluation reads, and the ``LightningDataModule.setup`` stage of each.
STAGES = {"val": "validate", "test": "test"}


class EvaluationError(RuntimeError):
    """A problem with the user's setup (checkpoint, model output, split) that the CLI reports in one line."""


def split_dataset(datamodule: LightningDataModule, split: str) -> Dataset:
    """The dataset behind ``split`` (``"val"`` or ``"test"``) of a data module, after ``setup``.

    Looks for ``<split>_set``/``<split>_dataset`` attributes (``val_dataset``, ``test_set``, ...) and falls back to
    the ``dataset`` of ``<split>_dataloader()``.

    Raises:
        EvaluationError: if the data module has no such split.

    Example:
        >>> from lit_attr.data import ShapesDataModule
        >>> len(split_dataset(ShapesDataModule(num_train=8, num_val=8, num_test=4), "test"))
        4
    """
    if split not in STAGES:
        raise EvaluationError(f"split must be one of {tuple(STAGES)}, got {split!r}")
    datamodule.setup(STAGES[split])
    names = (f"{split}_set", f"{split}_dataset", *(("validation_set", "valid_set") if split == "val" else ()))
    for name in names:
        dataset = getattr(datamodule, name, None)
        if isinstance(dataset, Dataset):
            return dataset
    hook = getattr(type(datamodule), f"{split}_dataloader", None)
    if hook is None or hook is getattr(LightningDataModule, f"{split}_dataloader", None):
        raise EvaluationError(f"the data module {type(datamodule).__name__} has no {split!r} split")
    try:
        loader = getattr(datamodule, f"{split}_dataloader")()
    except Exception as error:  # noqa: BLE001 - e.g. a RuntimeError("split not available") from the module
        raise EvaluationError(f"the data module {type(datamodule).__name__} has no {split!r} split: {error}") from error
    dataset = getattr(loader, "dataset", None)
    if not isinstance(dataset, Dataset):
        raise EvaluationError(f"the {split!r} dataloader of {type(datamodule).__name__} has no map-style dataset")
    return dataset


def split_collate(datamodule: LightningDataModule, split: str) -> Callable[[list], Any]:
    """The ``collate_fn`` of the split's dataloader (a text collator pads token ids), else ``default_collate``.

    Example:
        >>> from lit_attr.data import ShapesDataModule
        >>> split_collate(ShapesDataModule(num_train=8, num_val=8), "val") is default_collate
        True
    """
    hook = getattr(type(datamodule), f"{split}_dataloader", None)
    if hook is None or hook is getattr(LightningDataModule, f"{split}_dataloader", None):
        return default_collate
    try:
        collate = getattr(getattr(datamodule, f"{split}_dataloader")(), "collate_fn", None)
    except Exception:  # noqa: BLE001 - a split the module cannot load is reported by split_dataset
        return default_collate
    return collate or default_collate


def check_logits(
    model: nn.Module, x: Tensor, attention_mask: Tensor | None = None, model_output: str = "logits"
) -> int:
    """Check that ``model`` maps a batch ``x`` to outputs that can be scored honestly; return the number of classes.

    Token ids ``x`` go in as the methods pass them (:meth:`lit_attr.batch.Batch.logits`): with ``attention_mask``
    where the forward takes one, a Hugging Face output reduced to its ``logits``. What can be scored is decided by
    :func:`lit_attr._checks.check_scorable`: raw logits ``(N, K >= 2)``, or with ``model_output="sigmoid"`` a binary
    classifier's single logit ``(N, 1)`` (2 classes).

    Raises:
        EvaluationError: for outputs that are not a 2-D float tensor with one row per sample, a single output
            without ``model_output="sigmoid"``, or outputs that look like probabilities (rows in [0, 1] summing to 1).

    Example:
        >>> check_logits(nn.Linear(3, 4), torch.rand(2, 3))
        4
        >>> check_logits(nn.Linear(3, 1), torch.rand(2, 3), model_output="sigmoid")
        2
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = Batch(x, attention_mask=attention_mask).logits(model)
    except ValueError as error:  # a token model's output without logits
        raise EvaluationError(str(error)) from error
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor):
        raise EvaluationError(
            f"the model must return a logits tensor (N, num_classes), got {type(out).__name__}; wrap it in a module "
            "whose forward returns the logits"
        )
    if out.ndim != 2 or out.shape[0] != x.shape[0] or not out.is_floating_point():
        raise EvaluationError(
            f"the model must return logits of shape (N, num_classes) for inputs of shape {tuple(x.shape)}, "
            f"got a {out.dtype} tensor of shape {tuple(out.shape)}"
        )
    try:
        return check_scorable(out, model_output)
    except ValueError as error:
        raise EvaluationError(str(error)) from error
