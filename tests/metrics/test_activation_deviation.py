"""ActivationDeviation: updates against the functional, state_dict, model hygiene, and 2-process DDP."""

import copy
import functools

import pytest
import torch
from ddp_helpers import assert_nested_close, compute_on_all, compute_on_shards, run_ddp
from torch import nn

from lit_attr.functional.activation_deviation import activation_deviation
from lit_attr.metrics.activation_deviation import ActivationDeviation


def tiny_cnn(seed: int = 0) -> nn.Module:
    # Torch modules only, so that the model pickles into the spawned DDP processes.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        net[1].running_mean.copy_(torch.randn(4, generator=generator) * 0.1)
    return net.eval()


def data(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=generator, dtype=dtype)
    return x, torch.randn(n, 3, 8, 8, generator=generator, dtype=dtype)


def test_two_updates_equal_the_functional_result_on_the_concatenation():
    model = tiny_cnn().double()
    (x1, a1), (x2, a2) = data(3, seed=1, dtype=torch.float64), data(2, seed=2, dtype=torch.float64)
    options = {"n_steps": 6, "insertion_substrate": "mean", "deletion_substrate": "blur", "layers": ["1", "4"]}
    metric = ActivationDeviation(model, **options).set_dtype(torch.float64)
    metric.update(x1, a1)
    metric.update(x2, a2, target=torch.tensor([0, 2]))
    result = metric.compute()
    expected = activation_deviation(model, torch.cat([x1, x2]), torch.cat([a1, a2]), **options)
    assert result["layers"] == ("1", "4") == expected.layers
    for key in ("insertion_mse", "deletion_mse", "insertion_overlap", "deletion_overlap"):
        torch.testing.assert_close(result[key], getattr(expected, key).mean(0), rtol=0, atol=1e-12)
    mean_mse = torch.cat([expected.insertion_mse, expected.deletion_mse], dim=1).mean()
    torch.testing.assert_close(result["mean_mse"], mean_mse, rtol=0, atol=1e-12)
    assert result["mean_mse"].shape == () and result["insertion_mse"].shape == (2,)


def test_layers_are_resolved_at_init_without_a_forward_pass():
    from lit_attr.models import DemoClassifier

    model = DemoClassifier()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    metric = ActivationDeviation(model, preset="fei")
    assert metric.layers == ("stem.2", "layer1.relu2", "layer2.relu2") and not calls
    assert metric.insertion_mse_sum.shape == (3,) and metric.higher_is_better is False
    with pytest.raises(ValueError, match="did you mean"):
        ActivationDeviation(model, layers=["stem.3"])


def test_model_is_not_in_the_state_dict_and_the_model_is_untouched():
    model = tiny_cnn().train()
    before = copy.deepcopy(model.state_dict())
    metric = ActivationDeviation(model, n_steps=4)
    assert metric.model is model and list(metric.children()) == [] and list(metric.parameters()) == []
    metric.persistent(True)
    assert set(metric.state_dict()) == {
        "insertion_mse_sum",
        "deletion_mse_sum",
        "insertion_overlap_sum",
        "deletion_overlap_sum",
        "count",
    }
    metric.update(*data(2))
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    clone = metric.clone()
    assert clone.model is model  # a clone evaluates the same model rather than a copy of it


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_give_the_single_process_result():
    model = tiny_cnn()
    x, attributions = data(6, seed=4)
    factory = functools.partial(ActivationDeviation, model, n_steps=8, internal_batch_size=7)
    # Shards of different sizes (rank 0: 4 samples, rank 1: 2): a mean of per-rank means would be wrong.
    batches = [(x[:3], attributions[:3]), {"x": x[3:5], "attributions": attributions[3:5]}, (x[5:], attributions[5:])]
    expected = compute_on_all(factory, batches)
    for rank, result in enumerate(run_ddp(compute_on_shards, 2, factory, batches)):
        assert_nested_close(result, expected, f"rank {rank}", rtol=0, atol=1e-6)
