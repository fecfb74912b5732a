"""Imports of optional dependencies that name the extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

#: Optional extra of each optional top-level package.
EXTRAS = {"transformers": "text", "tokenizers": "text", "skimage.segmentation": "segmentation"}


def import_optional(name: str) -> ModuleType:
    """Import the optional package ``name``, or raise an ImportError that says which extra provides it.

    Args:
        name: a key of :data:`EXTRAS`.

    Raises:
        ImportError: when the package is not installed.

    Example:
        >>> import_optional("tokenizers").__name__
        'tokenizers'
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        extra = EXTRAS[name]
        raise ImportError(
            f"`{name}` is needed for this feature of lit-attr but is not installed; install the optional extra "
            f"with `pip install lit-attr[{extra}]`."
        ) from err
