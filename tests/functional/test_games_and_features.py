"""Insertion/deletion with a single game (costs only that game's forward passes) and on tabular features."""

import numpy as np
import pytest
import torch
from torch import nn

from lit_attr.functional.insertion_deletion import insertion_deletion
from lit_attr.functional.perturbation import auc
from lit_attr.metrics.insertion_deletion import InsertionDeletion


class RowCounter(nn.Module):
    """Wraps a model and counts the rows (samples) of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.model(x)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    ).double().eval()  # fmt: skip


# ------------------------------------------------------------------------------------------------- single games
def test_a_single_game_equals_its_half_of_both_games_and_runs_only_its_rows():
    model = RowCounter(small_cnn())
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=generator, dtype=torch.float64)
    attributions = torch.randn(3, 8, 8, generator=generator, dtype=torch.float64)
    options = {"n_steps": 8, "internal_batch_size": 7}  # 8x8 pixels, 8 steps: T = 8, 9 points per game
    model.rows = 0
    both = insertion_deletion(model, x, attributions, **options)
    assert model.rows == 3 + 2 * 3 * 9  # the clean pass, then 9 rows per sample and game
    for game in ("insertion", "deletion"):
        model.rows = 0
        single = insertion_deletion(model, x, attributions, games=game, **options)
        assert model.rows == 3 + 3 * 9
        torch.testing.assert_close(getattr(single, f"{game}_curve"), getattr(both, f"{game}_curve"), rtol=0, atol=0)
        torch.testing.assert_close(getattr(single, f"{game}_auc"), getattr(both, f"{game}_auc"), rtol=0, atol=0)
        other = "deletion" if game == "insertion" else "insertion"
        assert getattr(single, f"{other}_curve") is None and getattr(single, f"{other}_auc") is None
    # Given logits, a deletion-only evaluation costs exactly the deletion rows.
    model.rows = 0
    insertion_deletion(model, x, attributions, games=("deletion",), logits=model.model(x), **options)
    assert model.rows == 3 * 9


def test_the_metric_with_one_game_keeps_that_game_only():
    model = small_cnn()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 8, 8, generator=generator, dtype=torch.float64)
    attributions = torch.randn(4, 3, 8, 8, generator=generator, dtype=torch.float64)
    both, deletion = InsertionDeletion(model, n_steps=6), InsertionDeletion(model, n_steps=6, games="deletion")
    for metric in (both, deletion):
        metric.update(x[:3], attributions[:3])
        metric.update(x[3:], attributions[3:])
    assert set(deletion.score(x, attributions)) == {"deletion", "deletion_curve"}
    result, expected = deletion.compute(), both.compute()
    assert set(result) == {"deletion", "deletion_curve"}
    for key in result:
        torch.testing.assert_close(result[key], expected[key])
    with pytest.raises(ValueError, match="games"):
        InsertionDeletion(model, games=("deletion", "blur"))
    with pytest.raises(ValueError, match="games"):
        InsertionDeletion(model, games=())


# ------------------------------------------------------------------------------------------------ tabular games
def linear_closed_form(weights, bias, x, substrate, attributions, target, n_steps):
    """Logit curves of the linear model z -> W z + b, written out.

    Units sorted by descending attribution (ties by index); after k units, deletion has removed
    sum_{top k} W_tj (x_j - s_j) from the clean logit and insertion has added it to the substrate's logit.
    """
    n, d = x.shape
    per_step = -(-d // n_steps)  # ceil
    counts = [min(t * per_step, d) for t in range(-(-d // per_step) + 1)]
    deletion, insertion = np.zeros((n, len(counts))), np.zeros((n, len(counts)))
    for i in range(n):
        w, t = weights[target[i]], target[i]
        order = sorted(range(d), key=lambda j: (-attributions[i, j], j))
        gains = np.array([w[j] * (x[i, j] - substrate[i, j]) for j in order])
        for step, k in enumerate(counts):
            deletion[i, step] = w @ x[i] + bias[t] - gains[:k].sum()
            insertion[i, step] = w @ substrate[i] + bias[t] + gains[:k].sum()
    return insertion, deletion


@pytest.mark.parametrize("substrate", ["zero", "training_mean", "callable"])
def test_tabular_games_of_a_linear_model_follow_the_closed_form(substrate):
    generator = torch.Generator().manual_seed(2)
    model = nn.Linear(7, 3).double()
    x = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    attributions = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    attributions[0, 2:5] = 0.0  # ties: ranked by feature index
    target = torch.tensor([0, 1, 2, 1, 0])
    mean = torch.randn(7, generator=generator, dtype=torch.float64)  # stands for a training mean
    options = {
        "zero": {},
        "training_mean": {"insertion_substrate": "constant", "deletion_substrate": "constant", "substrate_value": mean},
        "callable": {"insertion_substrate": lambda z: z / 2, "deletion_substrate": lambda z: z / 2},
    }[substrate]
    fill = {"zero": torch.zeros_like(x), "training_mean": mean.expand_as(x), "callable": x / 2}[substrate]
    result = insertion_deletion(model, x, attributions, target, n_steps=3, output="logit", **options)
    with torch.no_grad():
        insertion, deletion = linear_closed_form(
            model.weight.numpy(), model.bias.numpy(), x.numpy(), fill.numpy(), attributions.numpy(), target.numpy(), 3
        )
    assert result.insertion_curve.shape == (5, 4)  # 7 features, 3 per step: 0, 3, 6, 7
    np.testing.assert_allclose(result.insertion_curve.numpy(), insertion, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.deletion_curve.numpy(), deletion, rtol=0, atol=1e-12)
    # The Metric takes the same features, one value per feature for the constant substrate.
    metric = InsertionDeletion(model, pixels_per_step=3, num_units=7, output="logit", **options)
    metric.update(x, attributions, target)
    computed = metric.compute()
    torch.testing.assert_close(computed["deletion"], auc(torch.from_numpy(deletion)).mean().float())
    torch.testing.assert_close(computed["insertion_curve"], torch.from_numpy(insertion).mean(dim=0).float())


def test_tabular_inputs_refuse_image_substrates_and_mismatched_maps():
    model = nn.Linear(4, 2)
    x = torch.rand(3, 4)
    with pytest.raises(ValueError, match="needs images"):
        insertion_deletion(model, x, torch.rand(3, 4), insertion_substrate="blur")
    with pytest.raises(ValueError, match="needs images"):
        insertion_deletion(model, x, torch.rand(3, 4), deletion_substrate="mean")
    with pytest.raises(ValueError, match="shape of x"):
        insertion_deletion(model, x, torch.rand(3, 5))
    with pytest.raises(ValueError, match="per-feature"):
        insertion_deletion(model, x, torch.rand(3, 4), deletion_substrate="constant", substrate_value=[1.0, 2.0])
