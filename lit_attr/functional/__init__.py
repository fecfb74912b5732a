"""Pure tensor functions behind every lit-attr metric (no state)."""

from lit_attr.functional.localization import relevance_mass

__all__ = ["relevance_mass"]
