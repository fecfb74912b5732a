"""Sufficiency and consistency of Dasgupta et al. (2022) against a naive pairwise loop and hand-computed batches."""

from __future__ import annotations

import math

import pytest
import torch

from lit_attr.functional import consistency, sufficiency_dasgupta
from lit_attr.metrics import Consistency, SufficiencyDasgupta


def _share(i: int, neighbours: list[int], predictions: list[int]) -> float:
    return sum(predictions[j] == predictions[i] for j in neighbours) / len(neighbours) if neighbours else math.nan


def test_sufficiency_equals_a_pairwise_loop_for_both_distances():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(7, 2, 3, 3, generator=gen, dtype=torch.float64)
    logits = torch.randn(7, 3, generator=gen)
    predictions = logits.argmax(dim=1).tolist()
    pixels = maps.abs().sum(dim=1).flatten(1)
    unit = pixels / pixels.norm(dim=1, keepdim=True)  # normalize="l2"
    for threshold in (0.2, 0.35):
        expected = []
        for i in range(7):
            near = [j for j in range(7) if j != i and float((unit[i] - unit[j]).norm()) <= threshold]
            expected.append(_share(i, near, predictions))
        got = sufficiency_dasgupta(maps, logits, threshold=threshold)
        torch.testing.assert_close(got.double(), torch.tensor(expected).double(), equal_nan=True)
    # Quantus's form: maps scaled by their maximum, the Euclidean distance standardised by the batch's variances.
    scaled = pixels / pixels.amax(dim=1, keepdim=True)
    variance = scaled.var(dim=0)
    expected = []
    for i in range(7):
        near = [j for j in range(7) if j != i and float(((scaled[i] - scaled[j]) ** 2 / variance).sum().sqrt()) <= 4.0]
        expected.append(_share(i, near, predictions))
    got = sufficiency_dasgupta(maps, logits, threshold=4.0, distance="seuclidean", normalize="max")
    torch.testing.assert_close(got.double(), torch.tensor(expected).double(), equal_nan=True)


def test_consistency_by_hand():
    # Top-2 unit sets: {0, 1}, {0, 1}, {0, 1}, {2, 3}; predictions 0, 0, 1, 1.
    maps = torch.tensor([[4.0, 3.0, 0.0, 0.0], [3.0, 4.0, 1.0, 0.0], [5.0, 1.0, 0.5, 0.0], [0.0, 0.0, 2.0, 1.0]])
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    expected = torch.tensor([0.5, 0.5, 0.0, math.nan])
    torch.testing.assert_close(consistency(maps, logits, top_k=2), expected, equal_nan=True)
    metric = Consistency(top_k=2)
    metric.update(maps[:3], logits[:3])  # the first three share their explanation
    metric.update(maps[3:], logits[3:])  # a batch of one: no other sample, no value
    torch.testing.assert_close(metric.compute()["consistency"], torch.tensor(1 / 3))


def test_a_random_map_sufficiency_is_the_batch_agreement_rate():
    # With every pair within reach, a sample's sufficiency is the share of the others predicted like it: for two
    # classes in equal numbers n / 2 each, (n / 2 - 1) / (n - 1).
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(10, 6, generator=gen)
    logits = torch.zeros(10, 2)
    logits[:5, 0] = logits[5:, 1] = 1.0
    metric = SufficiencyDasgupta(threshold=2.0)
    metric.update(maps, logits)
    assert float(metric.compute()["sufficiency_dasgupta"]) == pytest.approx(4 / 9)


def test_bad_input_names_the_argument():
    maps, logits = torch.rand(3, 4), torch.randn(3, 2)
    with pytest.raises(ValueError, match="`threshold`"):
        SufficiencyDasgupta(threshold=-1.0)
    with pytest.raises(ValueError, match="`distance`"):
        sufficiency_dasgupta(maps, logits, distance="cosine")
    with pytest.raises(ValueError, match="`normalize`"):
        SufficiencyDasgupta(normalize="sum")
    with pytest.raises(ValueError, match="`logits`"):
        sufficiency_dasgupta(maps, torch.randn(2, 2))
    with pytest.raises(ValueError, match="`top_k`"):
        consistency(maps, logits, top_k=5)
    with pytest.raises(ValueError, match="`top_k`"):
        Consistency(top_k=0)
