"""Attribution localisation, top-k intersection and focus: naive loops, the existing localisation functions as
independent references, chance levels of random maps, and mosaics whose right answer is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_attr._hygiene import row_seed
from lit_attr.functional import attribution_localisation, focus, relevance_mass, relevance_rank, top_k_intersection
from lit_attr.functional.focus import focus_mosaics
from lit_attr.methods import get_method
from lit_attr.metrics import AttributionLocalisation, Focus


def _masks(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    masks = torch.rand(n, size, size, generator=torch.Generator().manual_seed(seed)) < 0.3
    masks[:, 0, 0] = True
    return masks


def test_attribution_localisation_equals_a_loop_and_relevance_mass():
    gen = torch.Generator().manual_seed(1)
    maps, masks = torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64), _masks(5)
    heat = maps.sum(dim=1)
    expected, weighted = [], []
    for h, m in zip(heat, masks, strict=True):
        positive = h.clamp(min=0)
        mu = float(positive[m].sum() / positive.sum())
        expected.append(mu)
        weighted.append(mu * m.numel() / int(m.sum()))
    torch.testing.assert_close(attribution_localisation(maps, masks), torch.tensor(expected).double())
    torch.testing.assert_close(attribution_localisation(maps, masks), relevance_mass(maps, masks))
    torch.testing.assert_close(attribution_localisation(maps, masks, weighted=True), torch.tensor(weighted).double())
    absolute = [float(h.abs()[m].sum() / h.abs().sum()) for h, m in zip(heat, masks, strict=True)]
    torch.testing.assert_close(attribution_localisation(maps, masks, relevance="abs"), torch.tensor(absolute).double())
    # Masks larger than max_size are not scored.
    share = masks.flatten(1).float().mean(dim=1)
    limited = attribution_localisation(maps, masks, max_size=float(share.median()))
    assert torch.isnan(limited).tolist() == (share > share.median()).tolist()


def test_top_k_intersection_equals_a_loop_and_relevance_rank():
    gen = torch.Generator().manual_seed(2)
    maps = torch.randn(4, 8, 8, generator=gen)
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 1:7] = True  # 18 pixels in every mask
    for k in (1, 7, 18):
        expected = []
        for h, m in zip(maps, masks, strict=True):
            flat, inside = h.flatten().tolist(), m.flatten().tolist()
            top = sorted(range(64), key=lambda i: -flat[i])[:k]  # sorted() is stable: ties by index
            expected.append(sum(inside[i] for i in top) / k)
        torch.testing.assert_close(top_k_intersection(maps, masks, k=k), torch.tensor(expected))
    # With k = |mask| it is the relevance rank accuracy.
    torch.testing.assert_close(top_k_intersection(maps, masks, k=18), relevance_rank(maps, masks))
    torch.testing.assert_close(
        top_k_intersection(maps, masks, k=7, concept_influence=True), top_k_intersection(maps, masks, k=7) * 64 / 18
    )


def test_random_maps_score_the_mask_share():
    gen = torch.Generator().manual_seed(3)
    maps, masks = torch.rand(400, 16, 16, generator=gen), torch.zeros(400, 16, 16, dtype=torch.bool)
    masks[:, :4, :] = True  # a quarter of the image
    assert float(top_k_intersection(maps, masks, k=32).mean()) == pytest.approx(0.25, abs=0.02)
    assert float(attribution_localisation(maps, masks).mean()) == pytest.approx(0.25, abs=0.01)


def test_token_maps_score_their_valid_tokens_only():
    scores = torch.tensor([[0.0, 2.0, 1.0, -1.0, 0.0], [0.0, 1.0, 3.0, 0.0, 0.0]])
    rationale = torch.tensor([[0, 1, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    special = torch.tensor([[1, 0, 0, 0, 1], [1, 0, 0, 1, 0]])
    valid = attention.bool() & ~special.bool()
    torch.testing.assert_close(attribution_localisation(scores, rationale, valid=valid), torch.tensor([2 / 3, 0.75]))
    torch.testing.assert_close(top_k_intersection(scores, rationale, k=1, valid=valid), torch.tensor([1.0, 1.0]))
    metric = AttributionLocalisation()
    metric.update(scores, rationale, attention, special)
    torch.testing.assert_close(metric.compute()["attribution_localisation"], torch.tensor((2 / 3 + 0.75) / 2))


def test_a_fraction_k_takes_a_share_of_each_sentence_own_tokens():
    """k = 0.5 of a sentence of 3 words is 2 of them, of one of 6 words 3: alone or together, the same values."""
    scores = torch.tensor([[9.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 9.0], [9.0, 1.0, 5.0, 4.0, 3.0, 2.0, 6.0, 9.0]])
    rationale = torch.tensor([[0, 1, 0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[0, 1, 1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    # Sentence 0: words 3, 2, 1 -> the top 2 are positions 1, 2: one in the rationale. Sentence 1: top 3 are
    # positions 6, 2, 3 (scores 6, 5, 4): one in the rationale.
    expected = torch.tensor([1 / 2, 1 / 3])
    torch.testing.assert_close(top_k_intersection(scores, rationale, k=0.5, valid=valid), expected)
    for i in range(2):
        alone = top_k_intersection(scores[i : i + 1], rationale[i : i + 1], k=0.5, valid=valid[i : i + 1])
        torch.testing.assert_close(alone, expected[i : i + 1])


def _class_images(labels: list[int]) -> torch.Tensor:
    """Images whose class is the channel that is on: channel ``c`` is 1 for class ``c``, the others 0."""
    x = torch.zeros(len(labels), 3, 4, 4)
    for i, label in enumerate(labels):
        x[i, label] = 1.0
    return x


def test_mosaics_hold_two_target_tiles_and_two_others():
    labels = [0, 0, 1, 2, 1, 0]
    x = _class_images(labels)
    mosaics = focus_mosaics(x, torch.tensor(labels), seed=3)
    assert mosaics.samples.tolist() == list(range(6))
    assert mosaics.kwargs == {} and mosaics.slots.shape == (6, 8, 8)
    for mosaic, target, quadrants, sample in zip(
        mosaics.inputs, mosaics.target, mosaics.quadrants, mosaics.samples, strict=True
    ):
        tiles = [mosaic[:, :4, :4], mosaic[:, :4, 4:], mosaic[:, 4:, :4], mosaic[:, 4:, 4:]]
        classes = [int(tile.sum(dim=(1, 2)).argmax()) for tile in tiles]
        assert int(target) == labels[sample] and int(quadrants.sum()) == 2
        assert [c == labels[sample] for c in classes] == quadrants.tolist()
    # A batch of one class builds no mosaic; half tiles keep the images' size.
    assert focus_mosaics(x[:2], torch.tensor([0, 0])).samples.numel() == 0
    assert focus_mosaics(x, torch.tensor(labels), tile="half").inputs.shape == (6, 3, 4, 4)


def test_focus_is_one_for_a_map_on_the_class_and_one_half_for_a_blind_one():
    # logit_c = mean of channel c: input x gradient lights exactly the tiles of class c, saliency is flat.
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    labels = [0, 1, 2, 0, 1, 2]
    x = _class_images(labels)
    target = torch.tensor(labels)
    torch.testing.assert_close(focus(get_method("input_x_gradient", model), x, target), torch.ones(6))
    torch.testing.assert_close(focus(get_method("saliency", model), x, target), torch.full((6,), 0.5))
    metric = Focus("input_x_gradient", model, tile="half")
    metric.update(x[:3], target[:3])
    metric.update(x[3:4], target[3:4])  # a batch of one: no other class, no mosaic, not counted
    result = metric.compute()["focus"]
    assert float(result) == 1.0 and float(metric.score_count[0]) == 3
    assert math.isnan(float(Focus("saliency", model).score(x[:1], target[:1])["focus"][0]))


def test_bad_input_names_the_argument():
    maps, masks = torch.randn(2, 8, 8), _masks(2)
    with pytest.raises(ValueError, match="`max_size`"):
        attribution_localisation(maps, masks, max_size=0.0)
    with pytest.raises(ValueError, match="`relevance`"):
        AttributionLocalisation(relevance="negative")
    with pytest.raises(ValueError, match="`k`"):
        top_k_intersection(maps, masks, k=65)
    with pytest.raises(ValueError, match="`masks`"):
        top_k_intersection(maps, torch.zeros(2, 8, 8, dtype=torch.bool), k=3)
    with pytest.raises(ValueError, match="`tile`"):
        Focus("saliency", nn.Linear(4, 2), tile="quarter")
    with pytest.raises(ValueError, match="`x`"):
        focus(get_method("saliency", nn.Linear(4, 2)), torch.rand(3, 4), torch.tensor([0, 1, 0]))
    with pytest.raises(TypeError, match="`model`"):
        Focus("saliency")


def _focus_reference(method, x: torch.Tensor, labels: list[int], seed: int) -> list[float]:
    """Focus of every sample, one mosaic and one attribution at a time (the draws of ``focus_mosaics``' docstring)."""
    n, (_, h, w) = len(labels), x.shape[1:]
    values = []
    for i in range(n):
        others = [j for j in range(n) if labels[j] != labels[i]]
        if not others:
            values.append(math.nan)
            continue
        same = [j for j in range(n) if labels[j] == labels[i] and j != i] or [i]
        generator = torch.Generator().manual_seed(row_seed(seed, x[i]))
        partner = same[int(torch.randint(len(same), (1,), generator=generator))]
        picked = [others[k] for k in torch.randperm(len(others), generator=generator)[:2].tolist()]
        picked = (picked * 2)[:2]  # one image of another class fills both of their tiles
        places = torch.randperm(4, generator=generator).tolist()  # the tiles of the sample, partner and the others
        mosaic = torch.zeros(x.shape[1], 2 * h, 2 * w, dtype=x.dtype)
        for place, image in zip(places, [i, partner, *picked], strict=True):
            row, column = divmod(place, 2)
            mosaic[:, row * h : (row + 1) * h, column * w : (column + 1) * w] = x[image]
        relevance = method.attribute(mosaic[None], torch.tensor([labels[i]]))[0].detach().sum(dim=0)
        positive = [0.0] * 4
        for r in range(2 * h):
            for c in range(2 * w):
                positive[(r // h) * 2 + c // w] += max(float(relevance[r, c]), 0.0)
        values.append((positive[places[0]] + positive[places[1]]) / sum(positive))
    return values


def test_focus_equals_a_per_mosaic_loop_and_the_metric_averages_it_per_batch():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).double().eval()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    labels = [0, 0, 1, 2, 1, 0]
    target = torch.tensor(labels)
    method = get_method("input_x_gradient", model)
    expected = torch.tensor(_focus_reference(method, x, labels, seed=5), dtype=torch.float64)
    assert 0.02 < float(expected.std()) and 0 < float(expected.min()) and float(expected.max()) < 1  # tiles differ
    torch.testing.assert_close(focus(method, x, target, seed=5), expected, rtol=1e-5, atol=1e-8)
    metric = Focus(method, seed=5)
    torch.testing.assert_close(metric.score(x, target)["focus"], expected, rtol=1e-5, atol=1e-8)
    # A mosaic is built from its own batch: the second batch (classes 1 and 0) pairs a sample with itself and fills
    # both other tiles with the one image of the other class.
    shards = [_focus_reference(method, x[rows], labels[rows], seed=5) for rows in (slice(0, 4), slice(4, 6))]
    for rows in (slice(0, 4), slice(4, 6)):
        metric.update(x[rows], target[rows])
    mean = torch.tensor(shards[0] + shards[1], dtype=torch.float64).mean()
    torch.testing.assert_close(metric.compute()["focus"].double(), mean, rtol=1e-5, atol=1e-8)
