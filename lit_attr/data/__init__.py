"""Synthetic datasets with ground truth: shapes with object masks, sentences with rationale masks."""

from lit_attr.data.shapes import CLASS_NAMES, ShapesDataModule, ShapesDataset
from lit_attr.data.text import TEXT_CLASS_NAMES, SyntheticTextDataModule, TextDataset

__all__ = [
    "CLASS_NAMES",
    "TEXT_CLASS_NAMES",
    "ShapesDataModule",
    "ShapesDataset",
    "SyntheticTextDataModule",
    "TextDataset",
]
