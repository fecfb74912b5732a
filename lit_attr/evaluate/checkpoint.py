"""Loading a checkpoint's weights into the configured model, safely unless the file is trusted."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_attr.evaluate.checks import EvaluationError

__all__ = ["load_checkpoint"]


def load_checkpoint(model: nn.Module, ckpt_path: str | os.PathLike, trust_checkpoint: bool = False) -> None:
    """Load the weights of a Lightning checkpoint (or a plain state dict) into ``model``, strictly.

    Checkpoints are unpickled with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain Python
    containers and values, so a malicious file cannot run code. That is enough for a Lightning checkpoint whose
    hyperparameters and callback states are plain values (the demo's, or one written by ``lit_attr fit``). A file
    that needs other Python objects is refused with the names of those objects; load it with
    ``trust_checkpoint=True`` (``--trust_checkpoint true`` on the command line), which unpickles it with
    ``weights_only=False``, only if you trust whoever wrote it. URLs (``https://``, ``s3://``, ...) are refused
    unless trusted, then read with ``fsspec``.

    Args:
        model: the module built from the configuration.
        ckpt_path: a ``.ckpt`` written by Lightning, or a ``torch.save``-d state dict of ``model``.
        trust_checkpoint: unpickle with ``weights_only=False`` and allow URLs: arbitrary code in the file runs.

    Raises:
        EvaluationError: if the file does not exist, is not a PyTorch checkpoint at all, is an untrusted URL, needs
            Python objects that safe loading refuses (named, in the zip and the legacy format), or its weights do
            not match ``model``. The message is one line.

    Example:
        >>> import tempfile
        >>> path = tempfile.mktemp(suffix=".pt"); torch.save(nn.Linear(2, 2).state_dict(), path)
        >>> net = nn.Linear(2, 2)
        >>> load_checkpoint(net, path)
        >>> torch.equal(net.weight, torch.load(path)["weight"])
        True
    """
    source = str(ckpt_path)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", source):
        if not trust_checkpoint:
            raise EvaluationError(
                f"refusing to load checkpoint {source!r}: URLs are only loaded when trusted (--trust_checkpoint true, "
                "trust_checkpoint=True in Python), which unpickles with weights_only=False; or download the file"
            )
        import fsspec

        try:
            with fsspec.open(source, "rb") as stream:
                checkpoint = torch.load(stream, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - a missing backend, a network error or a bad file alike
            raise EvaluationError(f"cannot read checkpoint {source!r}: {_reason(error)}") from error
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise EvaluationError(f"checkpoint not found: {source!r} is not a file")
        if not _is_torch_file(path):  # before unpickling anything, trusted or not
            raise EvaluationError(
                f"{source!r} is not a PyTorch checkpoint (neither the zip archive that torch.save writes nor its "
                "legacy pickle format); check --ckpt_path"
            )
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
        except pickle.UnpicklingError as error:
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except ValueError:  # the legacy format: torch names the first refused global in its message
                unsafe = re.findall(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(error), flags=re.IGNORECASE)[:1]
            if not unsafe:
                raise EvaluationError(f"cannot read checkpoint {source!r}: {_reason(error)}") from error
            raise EvaluationError(
                f"checkpoint {source!r} needs Python objects that safe loading (weights_only=True) refuses: "
                f"{', '.join(unsafe)}; if you trust the file, pass --trust_checkpoint true (trust_checkpoint=True "
                "in Python) to load it with weights_only=False"
            ) from error
        except Exception as error:  # noqa: BLE001 - a damaged checkpoint (truncated, ...)
            raise EvaluationError(f"cannot read checkpoint {source!r}: {_reason(error)}") from error
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise EvaluationError(f"checkpoint {source!r} holds no state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise EvaluationError(
            f"checkpoint {source!r} does not fit {type(model).__name__}: {' '.join(first[:2])}"
        ) from error


class _NoGlobals(pickle.Unpickler):
    """Reads plain pickled values only: a file's first object is inspected without importing anything."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` has the layout of a ``torch.save`` file.

    The zip format holds ``<archive>/data.pkl``; the legacy format starts with a pickle of torch's magic number.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return any(name.split("/")[-1] == "data.pkl" for name in archive.namelist())
        with open(path, "rb") as stream:
            return _NoGlobals(stream).load() == torch.serialization.MAGIC_NUMBER
    except Exception:  # noqa: BLE001 - anything unreadable is not a checkpoint
        return False


def _reason(error: Exception) -> str:
    """The line of an unpickling error that names its cause.

    torch's weights-only errors open with a paragraph suggesting ``weights_only=False``; the cause comes after it.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    boilerplate = ("Weights only load failed", "Check the documentation")
    informative = [line for line in lines if not line.startswith(boilerplate)]
    return (informative or lines)[0]
