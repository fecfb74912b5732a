"""Synthetic datasets with ground-truth object masks."""

from lit_attr.data.shapes import CLASS_NAMES, ShapesDataModule, ShapesDataset

__all__ = ["CLASS_NAMES", "ShapesDataModule", "ShapesDataset"]
