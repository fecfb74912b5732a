import pytest
import scipy.stats
import torch

from lit_attr.functional.similarity import _double_ranks, spearman, ssim_maps


def _scipy_spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.tensor(
        [scipy.stats.spearmanr(x.ravel().numpy(), y.ravel().numpy()).statistic for x, y in zip(a, b, strict=True)],
        dtype=torch.float64,
    )


def test_double_ranks_match_scipy_rankdata_with_ties():
    x = torch.randint(0, 4, (5, 37), generator=torch.Generator().manual_seed(0)).double()
    expected = torch.tensor(scipy.stats.rankdata(x.numpy(), axis=1, method="average"))
    torch.testing.assert_close(_double_ranks(x).double() / 2, expected, rtol=0, atol=0)


@pytest.mark.parametrize("levels", [None, 3, 7])
def test_spearman_matches_scipy_including_ties(levels):
    gen = torch.Generator().manual_seed(levels or 0)
    if levels is None:  # continuous values: no ties
        a, b = torch.randn(6, 3, 5, 5, generator=gen, dtype=torch.float64), torch.randn(6, 3, 5, 5, generator=gen)
        b = b.double() + 0.5 * a
    else:  # few distinct values: many ties in both maps
        a = torch.randint(0, levels, (6, 3, 5, 5), generator=gen).double()
        b = (a + torch.randint(0, 2, (6, 3, 5, 5), generator=gen)).double()
    torch.testing.assert_close(spearman(a, b), _scipy_spearman(a, b), rtol=0, atol=1e-12)


def test_spearman_monotone_maps_constant_maps_and_dtype():
    a = torch.rand(3, 40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(spearman(a, a.exp()), torch.ones(3))  # exactly 1, not 1 - 1 ulp
    assert torch.equal(spearman(a, -a), -torch.ones(3))
    constant = torch.zeros(3, 40)
    assert torch.equal(spearman(a, constant), torch.zeros(3))  # scipy would return NaN
    assert spearman(a, a).dtype == torch.float32
    assert spearman(a.double(), a).dtype == torch.float64
    assert spearman(torch.arange(6).view(2, 3), torch.arange(6).view(2, 3)).dtype == torch.get_default_dtype()


def test_spearman_is_per_sample():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 30, generator=gen), torch.randn(4, 30, generator=gen)
    whole = spearman(a, b)
    parts = torch.cat([spearman(a[i : i + 1], b[i : i + 1]) for i in range(4)])
    assert torch.equal(whole, parts)


def test_spearman_errors():
    with pytest.raises(TypeError, match="must be tensors"):
        spearman([1.0, 2.0], torch.ones(2))
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(2, 4\)"):
        spearman(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="must be finite"):
        spearman(torch.tensor([[1.0, float("nan")]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="non-empty batches"):
        spearman(torch.ones(0, 3), torch.ones(0, 3))


def test_ssim_maps_identity_invariance_and_constant_maps():
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(2, 12, 12, generator=gen)
    assert torch.equal(ssim_maps(a, a), torch.ones(2))
    # min-max normalisation: a positive affine change of one map does not change the score
    torch.testing.assert_close(ssim_maps(a, 5 * a + 2), torch.ones(2))
    b = torch.rand(2, 1, 12, 12, generator=gen)
    assert bool((ssim_maps(a.unsqueeze(1), b) < 0.5).all())
    # constant maps normalise to zeros: two of them are identical, one against a structured map scores low
    const = torch.full((2, 12, 12), 3.0)
    assert torch.equal(ssim_maps(const, const + 1), torch.ones(2))
    assert bool((ssim_maps(const, a) < 0.1).all())


def test_ssim_maps_equals_torchmetrics_on_normalised_maps():
    from torchmetrics.functional.image import structural_similarity_index_measure

    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 16, 16, generator=gen), torch.randn(3, 16, 16, generator=gen)

    def norm(m):
        low = m.amin(dim=(1, 2), keepdim=True)
        return ((m - low) / (m.amax(dim=(1, 2), keepdim=True) - low)).unsqueeze(1)

    expected = torch.stack(
        [structural_similarity_index_measure(norm(a)[i : i + 1], norm(b)[i : i + 1], data_range=1.0) for i in range(3)]
    )
    torch.testing.assert_close(ssim_maps(a, b), expected)


def test_ssim_maps_errors():
    with pytest.raises(ValueError, match=r"single-channel heatmaps .* got shape \(1, 3, 8, 8\)"):
        ssim_maps(torch.ones(1, 3, 8, 8), torch.ones(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"at least 6x6 pixels, got \(5, 8\)"):
        ssim_maps(torch.ones(1, 5, 8), torch.ones(1, 5, 8))
    with pytest.raises(ValueError, match=r"heatmaps \(N, H, W\) or \(N, 1, H, W\), got shape \(1, 8\)"):
        ssim_maps(torch.ones(1, 8), torch.ones(1, 8))
