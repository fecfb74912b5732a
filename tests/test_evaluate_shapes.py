"""Shapes are checked where what they must fit is first known: masks per channel, per-channel input bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lit_attr.batch import Batch, adapt_batch
from lit_attr.data import ShapesDataModule
from lit_attr.evaluate import evaluate
from lit_attr.metrics import Localization
from lit_attr.models import DemoClassifier
from lit_attr.runner import AttributionRunner

GENERATOR = torch.Generator().manual_seed(0)
X = torch.rand(2, 3, 8, 8, generator=GENERATOR)
PLANES = torch.rand(2, 3, 8, 8, generator=GENERATOR) > 0.7  # one mask plane per channel


def _union(planes: torch.Tensor) -> torch.Tensor:
    """A pixel is ground truth where any plane marks it: the reference, pixel by pixel."""
    out = torch.zeros(planes.shape[0], *planes.shape[2:], dtype=torch.bool)
    for channel in range(planes.shape[1]):
        out |= planes[:, channel]
    return out


def test_masks_per_channel_or_with_one_channel_are_read_as_one_plane_per_sample():
    labels = torch.tensor([0, 1])
    assert torch.equal(adapt_batch((X, labels, PLANES)).mask, _union(PLANES))
    assert torch.equal(adapt_batch((X, labels, PLANES[:, :1])).mask, PLANES[:, 0])
    with pytest.raises(ValueError, match=r"`masks` must be \(N, H, W\), \(N, 1, H, W\) or \(N, C, H, W\)") as error:
        adapt_batch((X, labels, PLANES[:, :2]))
    assert "(2, 2, 8, 8)" in str(error.value) and "\n" not in str(error.value)


def test_the_localization_metric_scores_per_channel_masks_as_their_union():
    maps = torch.randn(2, 3, 8, 8, generator=GENERATOR)
    got, reference = Localization(), Localization()
    got.update(maps, PLANES)
    reference.update(maps, _union(PLANES))
    assert got.compute() == reference.compute()
    with pytest.raises(ValueError, match="`masks` must have shape"):
        Localization().update(maps, PLANES[:, :2])


def test_per_channel_bounds_that_do_not_fit_the_samples_are_refused_before_any_attribution(tmp_path: Path):
    four = (torch.zeros(4, 1, 1), torch.ones(4, 1, 1))
    with pytest.raises(ValueError, match=r"`input_bounds` must be .* broadcastable to one sample \(3, 32, 32\)"):
        evaluate(DemoClassifier(width=4), ShapesDataModule(num_train=8, num_val=8), tmp_path / "out",
                 methods=["mfaba"], metrics=["localization"], input_bounds=four, progress=False)  # fmt: skip
    assert not any(tmp_path.iterdir())  # refused while the evaluation was being built
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    runner = AttributionRunner(net, ["integrated_gradients"], input_bounds=four)
    with pytest.raises(ValueError, match=r"`input_bounds` of method `integrated_gradients` must be"):
        runner.run(Batch(X))
    three = (torch.zeros(3, 1, 1), torch.ones(3, 1, 1))
    runner = AttributionRunner(net, ["mfaba"], input_bounds=three, method_kwargs={"mfaba": {"max_steps": 3}})
    assert len(runner.run(Batch(X))) == 2
