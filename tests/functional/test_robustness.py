"""Local Lipschitz, avg-sensitivity, continuity and relative stability: Captum's max-sensitivity on the same copies,
closed forms of linear models, and per-sample loops over the documented copies."""

from __future__ import annotations

import pytest
import torch
from breadth_helpers import linear_model
from torch import nn

from lit_attr._hygiene import row_seed
from lit_attr.functional import avg_sensitivity, continuity, local_lipschitz, relative_stability
from lit_attr.functional.infidelity import sensitivity
from lit_attr.functional.robustness import neighbour_maps
from lit_attr.methods import get_method
from lit_attr.metrics import AvgSensitivity, LocalLipschitz, RelativeStability


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()


def _copies(x: torch.Tensor, n: int, seed: int, noise: float, gaussian: bool) -> torch.Tensor:
    """The documented copies: per sample, one float64 draw (n, *shape) from a generator seeded row_seed(seed, x)."""
    out = []
    for row in x:
        generator = torch.Generator().manual_seed(row_seed(seed, row))
        if gaussian:
            out.append(row + noise * torch.randn((n, *row.shape), generator=generator, dtype=torch.float64))
        else:
            out.append(row + noise * (2 * torch.rand((n, *row.shape), generator=generator, dtype=torch.float64) - 1))
    return torch.stack(out)


def test_the_maximum_over_the_copies_is_captums_max_sensitivity():
    model = _mlp()
    method = get_method("saliency", model)
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = model(x).argmax(dim=1)
    own = method.attribute(x, target)
    ratios = []
    for block in neighbour_maps(method, x, target, n_perturb=4, noise=0.05, distribution="uniform", seed=2,
                                internal_batch_size=8):  # fmt: skip
        change = (block.maps - own[block.rows, None]).flatten(2).norm(dim=2)
        ratios.append(change / own[block.rows].norm(dim=1, keepdim=True))
    expected = sensitivity(method, x, n_perturb_samples=4, perturb_radius=0.05, seed=2)
    torch.testing.assert_close(torch.cat(ratios).amax(dim=1), expected)
    average = avg_sensitivity(method, x, n_perturb_samples=4, noise=0.05, seed=2, normalize="attributions")
    torch.testing.assert_close(average, torch.cat(ratios).mean(dim=1))
    assert bool((average <= expected).all()) and bool((average > 0).all())


def test_linear_models_and_per_sample_loops():
    model = linear_model(6)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # Saliency of a linear model does not move: every score is 0.
    for function in (local_lipschitz, avg_sensitivity, continuity):
        scores = function(get_method("saliency", model), x, n_perturb_samples=3)
        torch.testing.assert_close(scores, torch.zeros(4).double())
    # Input x gradient moves by (x' - x) * w_target: the loops below over the same copies.
    method = get_method("input_x_gradient", model)
    w = model.weight[model(x).argmax(dim=1)].detach()
    gaussian, uniform = _copies(x, 5, 7, 0.1, True), _copies(x, 5, 7, 0.02, False)
    moved = gaussian - x[:, None]
    lipschitz = ((moved * w[:, None]).norm(dim=2) / moved.norm(dim=2)).amax(dim=1)
    torch.testing.assert_close(local_lipschitz(method, x, n_perturb_samples=5, seed=7), lipschitz)
    moved = uniform - x[:, None]
    smooth = ((moved * w[:, None]).abs().sum(dim=2) / moved.norm(dim=2)).amax(dim=1)
    torch.testing.assert_close(continuity(method, x, n_perturb_samples=5, seed=7), smooth)
    average = (moved * w[:, None]).norm(dim=2).mean(dim=1)
    torch.testing.assert_close(avg_sensitivity(method, x, n_perturb_samples=5, seed=7), average)


@torch.no_grad()
def test_relative_stability_equals_a_loop_over_the_copies_that_keep_the_prediction():
    model, seed, noise, eps = _mlp(4), 5, 0.3, 1e-6
    method = get_method("saliency", model)
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    got = relative_stability(method, x, n_perturb_samples=6, noise=noise, seed=seed)
    copies = _copies(x, 6, seed, noise, True)
    head = model[2]
    dropped = 0
    for i, row in enumerate(x):
        logits, label = model(row[None])[0], int(model(row[None]).argmax())
        own = method.attribute(row[None], label)[0]
        hidden = model[1](model[0](row))
        best = {"input": [], "output": [], "representation": []}
        for copy in copies[i]:
            moved_logits = model(copy[None])[0]
            if int(moved_logits.argmax()) != label:
                dropped += 1
                continue
            maps = method.attribute(copy[None], label)[0]
            e = ((own - maps) / torch.where(own == 0, eps, own)).norm()
            moved_hidden = model[1](model[0](copy))
            best["input"].append(e / max(float(((row - copy) / torch.where(row == 0, eps, row)).norm()), eps))
            best["output"].append(e / max(float((logits - moved_logits).norm()), eps))
            change = (hidden - moved_hidden) / torch.where(hidden == 0, eps, hidden)
            best["representation"].append(e / max(float(change.norm()), eps))
        for variant, values in best.items():
            expected = max(float(v) for v in values) if values else float("nan")
            assert float(got[variant][i]) == pytest.approx(expected, rel=1e-6, nan_ok=True), (variant, i)
    assert dropped > 0 and head is model[-1]  # the neighbourhood filter was exercised, on the head's input
    only = relative_stability(method, x, variants="output", layer="2", n_perturb_samples=6, noise=noise, seed=seed)
    assert list(only) == ["output"]
    torch.testing.assert_close(only["output"], got["output"], equal_nan=True)


def test_metrics_report_the_attributions_they_computed():
    model = _mlp()
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    metric = LocalLipschitz("saliency", model, n_perturb_samples=4)
    assert metric.score(x)["local_lipschitz_method_calls"].tolist() == [5.0] * 3
    given = get_method("saliency", model).attribute(x)
    assert metric.score(x, attributions=given)["local_lipschitz_method_calls"].tolist() == [4.0] * 3
    with_maps = metric.score(x, attributions=given)["local_lipschitz"]
    torch.testing.assert_close(metric.score(x)["local_lipschitz"], with_maps)
    stability = RelativeStability("saliency", model, n_perturb_samples=2, noise=0.01)
    stability.update(x)
    assert sorted(stability.compute()) == [
        "relative_input_stability",
        "relative_output_stability",
        "relative_representation_stability",
        "relative_stability_method_calls",
    ]


def test_bad_input_names_the_argument():
    model = linear_model(4, dtype=torch.float32)
    x = torch.rand(2, 4)
    with pytest.raises(ValueError, match="`noise`"):
        LocalLipschitz("saliency", model, noise=0.0)
    with pytest.raises(ValueError, match="`distribution`"):
        continuity(get_method("saliency", model), x, distribution="laplace")
    with pytest.raises(ValueError, match="`normalize`"):
        AvgSensitivity("saliency", model, normalize="inputs")
    with pytest.raises(ValueError, match="`variants`"):
        RelativeStability("saliency", model, variants="gradient")
    with pytest.raises(ValueError, match="`layer`"):
        relative_stability(get_method("saliency", model), x, layer="missing")
    with pytest.raises(ValueError, match="`layer`"):
        relative_stability(get_method("saliency", nn.Sequential(nn.Flatten())), x.view(2, 2, 2), n_perturb_samples=1)
    with pytest.raises(ValueError, match="`attributions`"):
        local_lipschitz(get_method("saliency", model), x, attributions=torch.rand(2, 3))
    with pytest.raises(ValueError, match="`n_perturb_samples`"):
        avg_sensitivity(get_method("saliency", model), x, n_perturb_samples=0)
