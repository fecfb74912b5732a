import pytest
import torch

from lit_attr.functional.localization import localization_auroc, pointing_game, relevance_mass, relevance_rank
from lit_attr.metrics.localization import Localization


def _batch(seed: int, n: int = 5):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 3, 8, 8, generator=gen)
    masks = torch.rand(n, 8, 8, generator=gen) < 0.3
    masks[:, 2, 2], masks[:, 7, 7] = True, False
    return a, masks


def test_localization_means_over_batches_equal_functional_means():
    batches = [_batch(0), _batch(1, n=3)]
    metric = Localization(tolerance=1)
    for a, masks in batches:
        metric.update(a, masks)
    result = metric.compute()
    a = torch.cat([b[0] for b in batches])
    masks = torch.cat([b[1] for b in batches])
    expected = {
        "pointing_game": pointing_game(a, masks, tolerance=1).mean(),
        "relevance_mass": relevance_mass(a, masks).mean(),
        "relevance_rank": relevance_rank(a, masks).mean(),
        "auroc": localization_auroc(a, masks).mean(),
    }
    assert list(result) == list(expected)
    for name, value in expected.items():
        torch.testing.assert_close(result[name], value, msg=name)


def test_localization_subset_single_name_and_reset():
    metric = Localization(metrics="auroc")
    a, masks = _batch(2)
    metric.update(a.sum(dim=1), masks)  # (N, H, W) maps are fine too
    assert list(metric.compute()) == ["auroc"]
    metric.reset()
    metric.update(torch.ones(1, 4, 4), torch.eye(4, dtype=torch.bool).unsqueeze(0))
    assert metric.compute()["auroc"].item() == 0.5
    assert Localization.higher_is_better is True
    assert Localization.full_state_update is False


def test_localization_errors():
    with pytest.raises(ValueError, match=r"drawn from .* got unknown \['iou'\]"):
        Localization(metrics=("auroc", "iou"))
    with pytest.raises(ValueError, match="`metrics` must name at least one localization metric"):
        Localization(metrics=())
    with pytest.raises(ValueError, match="must not repeat"):
        Localization(metrics=("auroc", "auroc"))
    with pytest.raises(ValueError, match="`tolerance` must be >= 0"):
        Localization(tolerance=-2)
    metric = Localization()
    with pytest.raises(ValueError, match=r"`masks` must have shape \(N, H, W\) = \(2, 8, 8\), got \(2, 4, 4\)"):
        metric.update(torch.ones(2, 3, 8, 8), torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean or contain only 0 and 1"):
        metric.update(torch.ones(1, 4, 4), torch.full((1, 4, 4), 0.5))
    empty_second = torch.ones(3, 4, 4, dtype=torch.bool)
    empty_second[1] = False
    empty_second[:, 0, 0] = empty_second[1, 0, 0] = False
    with pytest.raises(ValueError, match=r"`masks` must contain at least one pixel; empty for samples \[1\]"):
        metric.update(torch.rand(3, 4, 4), empty_second)
    with pytest.raises(ValueError, match="`attributions` contain NaN or infinite values"):
        metric.update(torch.full((1, 4, 4), float("nan")), torch.eye(4, dtype=torch.bool).unsqueeze(0))
    with pytest.raises(ValueError, match="cover the whole image"):
        metric.update(torch.ones(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="`attributions` must be a torch.Tensor, got list"):
        metric.update([[1.0]], torch.ones(1, 1, 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="`masks` must be a torch.Tensor, got list"):
        metric.update(torch.ones(1, 1, 1), [[True]])
    assert metric.total.item() == 0  # nothing was accumulated by the failed updates


def test_score_returns_the_batch_per_sample_values_and_update_accepts_them():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 6, 6, generator=generator)
    masks = torch.zeros(3, 6, 6, dtype=torch.bool)
    masks[:, 1:4, 2:5] = True
    first = torch.randn(2, 6, 6, generator=generator)
    metric = Localization()
    metric.update(first, masks[:2])
    scores = metric.score(a, masks)
    heatmap = a.sum(dim=1)
    expected = {
        "pointing_game": pointing_game(heatmap, masks),
        "relevance_mass": relevance_mass(heatmap, masks),
        "relevance_rank": relevance_rank(heatmap, masks),
        "auroc": localization_auroc(heatmap, masks),
    }
    assert list(scores) == list(expected)
    for name, values in expected.items():
        torch.testing.assert_close(scores[name], values, msg=name)
    assert metric.total.item() == 2  # score() leaves the states alone
    metric.update(a, masks, scores=scores)
    reference = Localization()
    reference.update(first, masks[:2])
    reference.update(a, masks)
    for name, value in reference.compute().items():
        torch.testing.assert_close(metric.compute()[name], value, msg=name)


def test_plot_draws_the_computed_means_without_pyplot():
    import matplotlib.pyplot as plt

    figures = plt.get_fignums()
    metric = Localization(metrics=("relevance_mass", "auroc"))
    a = torch.tensor([[[0.0, 3.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, 1.0]]])
    masks = torch.tensor([[[False, True], [False, False]], [[False, True], [True, False]]])
    metric.update(a, masks)
    fig, ax = metric.plot()
    # The bars are compute()'s values; the relevance mass, by hand, is the mean of 3/4 and 0/3.
    expected = metric.compute()
    assert [bar.get_height() for bar in ax.patches] == pytest.approx([float(v) for v in expected.values()])
    assert float(expected["relevance_mass"]) == pytest.approx((0.75 + 0.0) / 2)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["relevance_mass", "auroc"]
    assert fig is ax.get_figure() and plt.get_fignums() == figures
