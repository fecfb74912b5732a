import pytest
import torch

from lit_attr.functional.localization import localization_auroc, pointing_game, relevance_mass, relevance_rank


def test_relevance_mass_hand_computed():
    a = torch.tensor([[[1.0, 3.0], [-2.0, 0.0]], [[0.0, 0.0], [2.0, 2.0]]])
    masks = torch.tensor([[[False, True], [True, False]], [[True, False], [False, True]]])
    # sample 0: positive relevance 1 + 3 = 4, of which 3 inside; sample 1: 2 of 4 inside
    torch.testing.assert_close(relevance_mass(a, masks), torch.tensor([0.75, 0.5]))


def test_relevance_mass_sums_channels_and_handles_no_positive_relevance():
    a = torch.zeros(1, 3, 2, 2)
    a[0, 0, 0, 0], a[0, 1, 0, 0], a[0, 2, 1, 1] = 2.0, -1.0, 1.0  # channel sum: +1 at (0,0), +1 at (1,1)
    mask = torch.tensor([[[1, 0], [0, 0]]])
    torch.testing.assert_close(relevance_mass(a, mask), torch.tensor([0.5]))
    assert relevance_mass(-torch.ones(1, 2, 2), mask).item() == 0.0


def test_relevance_mass_errors():
    with pytest.raises(ValueError, match=r"`masks` must have shape \(N, H, W\) = \(1, 2, 2\), got \(1, 3, 3\)"):
        relevance_mass(torch.ones(1, 2, 2), torch.ones(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean or contain only 0 and 1"):
        relevance_mass(torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="at least one pixel"):
        relevance_mass(torch.ones(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))


def test_pointing_game_hand_made_maps_and_channel_sum():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    a = torch.zeros(3, 4, 4)
    a[0, 2, 2] = 1.0  # inside
    a[1, 0, 3] = 1.0  # outside, chessboard distance 1 from the mask
    a[2, 1, 1] = a[2, 0, 0] = 5.0  # tie: (1, 1) is inside, (0, 0) outside, so half a hit
    torch.testing.assert_close(pointing_game(a, masks), torch.tensor([1.0, 0.0, 0.5]))
    torch.testing.assert_close(pointing_game(a, masks, tolerance=1), torch.tensor([1.0, 1.0, 1.0]))
    # channels are summed before the argmax: channel 0 alone points outside, the sum points inside
    image = torch.zeros(1, 2, 4, 4)
    image[0, 0, 0, 0], image[0, 0, 1, 1], image[0, 1, 1, 1] = 3.0, 2.0, 2.0
    assert pointing_game(image, masks[:1]).item() == 1.0


def test_pointing_game_tolerance_is_chessboard_distance_and_clipped_at_borders():
    mask = torch.zeros(1, 7, 7, dtype=torch.bool)
    mask[0, 0, 0] = True
    for (row, col), distance in {(0, 6): 6, (3, 2): 3, (6, 6): 6, (1, 1): 1}.items():
        a = torch.zeros(1, 7, 7)
        a[0, row, col] = 1.0
        for tolerance in range(8):
            expected = float(distance <= tolerance)
            assert pointing_game(a, mask, tolerance=tolerance).item() == expected, (row, col, tolerance)


def test_relevance_rank_hand_made_maps_with_stable_ties():
    a = torch.tensor([[[4.0, 3.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, 5.0], [5.0, 0.0]]])
    masks = torch.tensor([[[True, False], [True, False]], [[False, True], [True, True]], [[True, True], [True, True]]])
    # 0: top-2 {4, 3}, one inside. 1: all tied, raster order gives top-3 = first three pixels, two inside.
    # 2: the mask is the whole image, so K = 4 and every pixel counts.
    torch.testing.assert_close(relevance_rank(a, masks), torch.tensor([0.5, 2 / 3, 1.0]))


def test_relevance_rank_matches_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-3, 4, (6, 2, 5, 5), generator=gen).float()  # plateaus everywhere
    masks = torch.rand(6, 5, 5, generator=gen) < 0.3
    masks[:, 0, 0] = True
    heat = a.sum(dim=1).flatten(1)
    expected = []
    for row, mask in zip(heat.tolist(), masks.flatten(1).tolist(), strict=True):
        ranked = sorted(range(len(row)), key=lambda i: (-row[i], i))  # descending, ties in raster order
        k = sum(mask)
        expected.append(sum(mask[i] for i in ranked[:k]) / k)
    torch.testing.assert_close(relevance_rank(a, masks), torch.tensor(expected))


def _auroc_by_pair_counting(scores: list[float], labels: list[bool]) -> float:
    positives = [s for s, inside in zip(scores, labels, strict=True) if inside]
    negatives = [s for s, inside in zip(scores, labels, strict=True) if not inside]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_localization_auroc_matches_pair_counting_with_ties():
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (8, 3, 6, 6), generator=gen).double()
    masks = torch.rand(8, 6, 6, generator=gen) < 0.4
    masks[:, 0, 0], masks[:, 5, 5] = True, False
    heat = a.sum(dim=1).flatten(1)
    expected = [_auroc_by_pair_counting(s, m) for s, m in zip(heat.tolist(), masks.flatten(1).tolist(), strict=True)]
    torch.testing.assert_close(localization_auroc(a, masks), torch.tensor(expected, dtype=torch.float64))


def test_localization_auroc_hand_computed_extremes():
    masks = torch.tensor([[[True, False], [False, False]]]).expand(3, 2, 2)
    a = torch.tensor([[[9.0, 1.0], [2.0, 3.0]], [[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]])
    torch.testing.assert_close(localization_auroc(a, masks), torch.tensor([1.0, 0.0, 0.5]))


def test_new_localization_errors():
    with pytest.raises(ValueError, match=r"masks of samples \[1\] cover the whole image"):
        localization_auroc(torch.ones(2, 2, 2), torch.tensor([[[1, 0], [0, 0]], [[1, 1], [1, 1]]]))
    with pytest.raises(ValueError, match="`tolerance` must be >= 0 pixels, got -1"):
        pointing_game(torch.ones(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool), tolerance=-1)
    with pytest.raises(TypeError, match="`tolerance` must be an int"):
        pointing_game(torch.ones(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool), tolerance=1.5)
    for function in (pointing_game, relevance_rank, localization_auroc):
        with pytest.raises(ValueError, match="at least one pixel"):
            function(torch.ones(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
        with pytest.raises(ValueError, match="boolean or contain only 0 and 1"):
            function(torch.ones(1, 2, 2), torch.full((1, 2, 2), 2))


def test_pointing_game_counts_a_plateau_as_the_expected_hit_of_a_random_maximal_pixel():
    masks = torch.zeros(4, 5, 5, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True  # a 2x2 object
    a = torch.zeros(4, 5, 5)
    a[0, 0:2, 0:3] = 2.0  # 6 maximal pixels, 2 of them ((1, 1), (1, 2)) in the mask
    a[1] = 1.0  # a constant map: all 25 pixels are maximal, 4 in the mask
    a[2, 4, :] = 3.0  # a plateau on the bottom row, 2 rows away from the mask
    a[2, 2, 2] = 2.9  # a near tie does not count
    a[3, 1:3, 1:3] = 7.0  # the plateau is the mask
    torch.testing.assert_close(pointing_game(a, masks), torch.tensor([2 / 6, 4 / 25, 0.0, 1.0]))
    # Tolerance applies pixel by pixel: within 1 pixel of the mask are rows and columns 0..3.
    torch.testing.assert_close(pointing_game(a, masks, tolerance=1), torch.tensor([1.0, 16 / 25, 0.0, 1.0]))
    # ...and within 2 pixels, the whole 5x5 image.
    torch.testing.assert_close(pointing_game(a, masks, tolerance=2), torch.ones(4))
