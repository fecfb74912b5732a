import pytest
import torch

from lit_attr.functional import relevance_mass


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
