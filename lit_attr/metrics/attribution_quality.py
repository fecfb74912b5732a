"""Deprecated home of :class:`~lit_attr.attribution_quality.AttributionQuality` (it uses the runner, a layer above).

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     from lit_attr.metrics.attribution_quality import AttributionQuality
    >>> AttributionQuality.__module__, caught[0].category.__name__
    ('lit_attr.attribution_quality', 'DeprecationWarning')
"""

from __future__ import annotations

import warnings
from typing import Any

MOVED = {"AttributionQuality": "lit_attr.attribution_quality"}


def moved(module: str, name: str) -> Any:
    """The object ``name`` of a module that moved it, with a ``DeprecationWarning`` naming its new home."""
    if name not in MOVED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(
        f"{module}.{name} moved to {MOVED[name]}.{name} (it runs the attribution runner, a layer above the "
        f"metrics); import it from there.",
        DeprecationWarning,
        stacklevel=3,
    )
    import lit_attr.attribution_quality as home

    return getattr(home, name)


def __getattr__(name: str) -> Any:
    return moved(__name__, name)
