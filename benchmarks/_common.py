"""What several benchmark scripts share (imported by them; running it does nothing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from lit_attr.data import ShapesDataModule
from lit_attr.methods import IG2
from lit_attr.models import DemoClassifier, train_demo_classifier

SEED = 0


def trained_demo(
    checkpoint: Path | None,
    build: Callable[[ShapesDataModule], nn.Module] = lambda data: DemoClassifier(num_classes=data.num_classes),
    train: Callable[..., tuple[nn.Module, ShapesDataModule]] = train_demo_classifier,
) -> tuple[nn.Module, ShapesDataModule]:
    """A demo model (by default the classifier) trained as the test suite trains it, or loaded from ``checkpoint``
    (saved there after training when the file does not exist yet); ``build`` makes the model to load into."""
    if checkpoint is not None and checkpoint.exists():
        datamodule = ShapesDataModule(seed=SEED)
        datamodule.setup()
        model = build(datamodule)
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        return model.eval(), datamodule
    model, datamodule = train(seed=SEED)
    if checkpoint is not None:
        torch.save(model.state_dict(), checkpoint)
    return model.cpu().eval(), datamodule


class BatchedBackwardIG2(IG2):
    """IG2 taking both gradients of a path point in one vmapped backward call (``is_grads_batched=True``).

    Issue #16's candidate variant, kept here to be measured (``ig2_variants.py``, ``gpu.sh``): the library keeps
    the two backward calls unless this one is faster; on the CPU it is not (0.91x on the demo, 0.99x on resnet18).
    """

    def _gradients(self, z: Tensor, score: Tensor, distance: Tensor) -> tuple[Tensor, Tensor]:
        eye = torch.eye(2, dtype=score.dtype, device=score.device)
        (both,) = torch.autograd.grad(torch.stack([score, distance]), z, grad_outputs=eye, is_grads_batched=True)
        return both[0], both[1]
