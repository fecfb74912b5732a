"""The one key scheme of every scalar lit-attr logs: ``attr/<method>/<metric>/<score>``.

The monitor, ``lit_attr evaluate``, ``AttributionQuality`` and ``RandomizationCheck`` log every metric's headline
numbers (the names its registry summary gives them, e.g. ``insertion``) under :func:`scalar_key`, a sanity check's
verdict as ``attr/<method>/<metric>/passed`` (1 or 0), and the monitor its cumulative time as ``attr/overhead``.

Keys of the former schemes (``attr/<method>/<score>``, ``attr/<method>/<metric>_passed``,
``evaluate/<method>/<metric>/<score>``, ``randomization/<method>/<similarity>``, ``<method>/<score>``) are listed
in the README with their current form; :func:`former_key_matches` finds the current key of a former monitor key.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["OVERHEAD", "PREFIX", "VERDICT", "former_key_matches", "is_former_key", "scalar_key", "split_key"]

#: The first part of every key.
PREFIX = "attr"
#: The score name of a sanity check's verdict.
VERDICT = "passed"
#: The monitor's cumulative overhead (a fraction of the fit's time).
OVERHEAD = f"{PREFIX}/overhead"


def scalar_key(method: str, metric: str, score: str) -> str:
    """The key of one headline number: ``attr/<method>/<metric>/<score>``.

    Example:
        >>> scalar_key("mfaba", "insertion_deletion", "insertion")
        'attr/mfaba/insertion_deletion/insertion'
    """
    return f"{PREFIX}/{method}/{metric}/{score}"


def split_key(key: str) -> tuple[str, str, str] | None:
    """``(method, metric, score)`` of a key of the scheme, or None for any other key.

    Example:
        >>> split_key("attr/mfaba/randomization/passed"), split_key("attr/overhead")
        (('mfaba', 'randomization', 'passed'), None)
    """
    parts = key.split("/", 3)
    if len(parts) != 4 or parts[0] != PREFIX or not all(parts[1:]):
        return None
    return parts[1], parts[2], parts[3]


def is_former_key(key: str) -> bool:
    """Whether ``key`` has the monitor's former form ``attr/<method>/<score>`` (or ``.../<metric>_passed``).

    Example:
        >>> is_former_key("attr/mfaba/insertion"), is_former_key("attr/overhead")
        (True, False)
    """
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == PREFIX and all(parts[1:])


def former_key_matches(key: str, current: Iterable[str]) -> list[str]:
    """The keys among ``current`` that a former monitor key ``attr/<method>/<score>`` stands for.

    ``attr/<method>/<score>`` matches ``attr/<method>/<any metric>/<score>``, and ``attr/<method>/<metric>_passed``
    matches ``attr/<method>/<metric>/passed``: one match is the key's current form, several make it ambiguous.

    Example:
        >>> keys = ["attr/mfaba/insertion_deletion/insertion", "attr/mfaba/randomization/passed"]
        >>> former_key_matches("attr/mfaba/insertion", keys)
        ['attr/mfaba/insertion_deletion/insertion']
        >>> former_key_matches("attr/mfaba/randomization_passed", keys)
        ['attr/mfaba/randomization/passed']
    """
    if not is_former_key(key):
        return []
    _, method, old = key.split("/")
    matches = []
    for candidate in dict.fromkeys(current):
        parts = split_key(candidate)
        if parts is None or parts[0] != method:
            continue
        _, metric, score = parts
        if score == old or (score == VERDICT and old == f"{metric}_{VERDICT}"):
            matches.append(candidate)
    return matches
