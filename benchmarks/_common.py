"""What several benchmark scripts share (imported by them; running it does nothing)."""

from __future__ import annotations

from pathlib import Path

import torch

from lit_attr.data import ShapesDataModule
from lit_attr.models import DemoClassifier, train_demo_classifier

SEED = 0


def trained_demo(checkpoint: Path | None) -> tuple[DemoClassifier, ShapesDataModule]:
    """The demo classifier trained as the test suite trains it, or loaded from ``checkpoint`` (saved there after
    training when the file does not exist yet)."""
    if checkpoint is not None and checkpoint.exists():
        datamodule = ShapesDataModule(seed=SEED)
        datamodule.setup()
        model = DemoClassifier(num_classes=datamodule.num_classes)
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        return model.eval(), datamodule
    model, datamodule = train_demo_classifier(seed=SEED)
    if checkpoint is not None:
        torch.save(model.state_dict(), checkpoint)
    return model.cpu().eval(), datamodule
