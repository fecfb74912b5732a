"""Loading a checkpoint's weights into the configured model, safely unless the file is trusted."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

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
        EvaluationError: if the file does not exist, is an untrusted URL, needs Python objects that safe loading
            refuses, or its weights do not match ``model``. The message is one line.

    Example:
        >>> import tempfile
        >>> path = tempfile.mktemp(suffix=".pt"); torch.save(nn.Linear(2, 2).state_dict(), path)
        >>> net = nn.Linear(2, 2)
        >>> load_checkpoint(net, path)
        >>> torch.equal(net.weight, torch.load(path)["weight"])
        True
    """

    def reason(error: Exception) -> str:
        # torch's weights_only errors span several lines; the one naming the cause starts "WeightsUnpickler error".
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        return next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0])

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
            raise EvaluationError(f"cannot read checkpoint {source!r}: {reason(error)}") from error
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise EvaluationError(f"checkpoint not found: {source!r} is not a file")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
        except pickle.UnpicklingError as error:
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except ValueError:  # not a zip checkpoint: the legacy format names the first refused global only
                unsafe = re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))
            if not unsafe:
                raise EvaluationError(f"cannot read checkpoint {source!r}: {reason(error)}") from error
            raise EvaluationError(
                f"checkpoint {source!r} needs Python objects that safe loading (weights_only=True) refuses: "
                f"{', '.join(unsafe)}; if you trust the file, pass --trust_checkpoint true (trust_checkpoint=True "
                "in Python) to load it with weights_only=False"
            ) from error
        except Exception as error:  # noqa: BLE001 - any other unpickling failure means "not a checkpoint"
            raise EvaluationError(f"cannot read checkpoint {source!r}: {reason(error)}") from error
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
