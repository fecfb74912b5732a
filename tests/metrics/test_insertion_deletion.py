import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from lit_attr.functional.insertion_deletion import insertion_deletion
from lit_attr.metrics.insertion_deletion import InsertionDeletion


def tiny_cnn(seed: int = 0) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.7)
        net[1].running_mean.copy_(torch.randn(4, generator=generator, dtype=torch.float64) * 0.1)
    return net


def data(n: int, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=generator, dtype=torch.float64)
    return x, torch.randn(n, 3, size, size, generator=generator, dtype=torch.float64)


def test_two_updates_equal_the_functional_result_on_the_concatenation():
    model = tiny_cnn()
    (x1, a1), (x2, a2) = data(3, seed=1), data(2, seed=2)
    options = {"n_steps": 10, "insertion_substrate": "blur", "deletion_substrate": "mean", "output": "prob_ratio"}
    metric = InsertionDeletion(model, **options)
    metric.update(x1, a1)
    metric.update(x2, a2, target=torch.tensor([0, 2]))
    result = metric.compute()
    target = torch.cat([model.eval()(x1).argmax(1), torch.tensor([0, 2])])
    expected = insertion_deletion(model, torch.cat([x1, x2]), torch.cat([a1, a2]), target, **options)
    check = lambda got, want: torch.testing.assert_close(got, want.float(), rtol=0, atol=1e-6)  # noqa: E731
    check(result["insertion"], expected.insertion_auc.mean())
    check(result["deletion"], expected.deletion_auc.mean())
    check(result["difference"], (expected.insertion_auc - expected.deletion_auc).mean())
    check(result["insertion_curve"], expected.insertion_curve.mean(0))
    check(result["deletion_curve"], expected.deletion_curve.mean(0))
    assert result["insertion_curve"].shape == (11,)


def test_merged_states_equal_one_metric_over_all_data():
    # The sum-reduced states merge exactly (what DDP synchronisation does with them).
    model = tiny_cnn()
    (x1, a1), (x2, a2) = data(2, seed=1), data(3, seed=2)
    single, first, second = (InsertionDeletion(model) for _ in range(3))
    single.update(torch.cat([x1, x2]), torch.cat([a1, a2]))
    first.update(x1, a1)
    second.update(x2, a2)
    first.merge_state(second)
    for key, value in single.compute().items():
        torch.testing.assert_close(first.compute()[key], value, rtol=0, atol=1e-6)
    assert single.compute()["insertion_curve"].shape == (23,)  # 8x8 with n_steps=28: 3 px per step, 22 steps


def test_model_is_not_in_the_state_dict_and_not_moved_or_cast():
    model = tiny_cnn()
    metric = InsertionDeletion(model)
    assert metric.model is model
    assert list(metric.children()) == [] and list(metric.parameters()) == []
    assert not any(key.startswith(("model", "_model")) or "weight" in key for key in metric.state_dict())
    metric.persistent(True)
    assert set(metric.state_dict()) == {
        "insertion_auc_sum",
        "deletion_auc_sum",
        "count",
        "insertion_curve_sum",
        "deletion_curve_sum",
        "curve_count",
    }
    metric.set_dtype(torch.float32)
    metric.to("cpu")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert metric.clone().model is model


class LitLike(nn.Module):
    """A model that holds its own metric, as a LightningModule does."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_cnn()
        self.metric = InsertionDeletion(self, n_steps=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_metric_can_live_inside_the_model_it_evaluates():
    model = LitLike()
    assert set(model.state_dict()) == {f"body.{key}" for key in model.body.state_dict()}
    assert len(list(model.modules())) == 2 + len(list(model.body.modules()))  # no cycle through metric.model
    model.metric.update(*data(2))
    assert model.metric.compute()["insertion_curve"].shape == (5,)


def test_update_keeps_the_model_mode_and_buffers():
    model = tiny_cnn().train()
    buffers = [b.clone() for b in model.buffers()]
    metric = InsertionDeletion(model, n_steps=5)
    with torch.inference_mode():  # as in Lightning's validation loop
        metric.update(*data(2))
    assert int(metric.count) == 2
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(b, saved) for b, saved in zip(model.buffers(), buffers, strict=True))


def test_forward_returns_the_batch_value_and_accumulates():
    model = tiny_cnn()
    (x1, a1), (x2, a2) = data(2, seed=1), data(2, seed=2)
    metric = InsertionDeletion(model, n_steps=6)
    batch_value = metric(x1, a1)
    expected = insertion_deletion(model, x1, a1, n_steps=6)
    torch.testing.assert_close(batch_value["insertion"], expected.insertion_auc.mean().float())
    metric(x2, a2)
    assert int(metric.count) == 4
    metric.reset()
    assert int(metric.count) == 0 and int(metric.curve_count.sum()) == 0


def test_pixels_per_step_needs_num_units_and_checks_it():
    model = tiny_cnn()
    x, a = data(2)
    with pytest.raises(ValueError, match="`num_units` .* must be given with `pixels_per_step`"):
        InsertionDeletion(model, pixels_per_step=5)
    metric = InsertionDeletion(model, pixels_per_step=5, num_units=64)
    metric.update(x, a)
    assert metric.compute()["deletion_curve"].shape == (14,)
    with pytest.raises(ValueError, match="built with `num_units=64`, but this batch has 256 units"):
        metric.update(*data(1, size=16))
    per_element = InsertionDeletion(model, pixels_per_step=16, num_units=3 * 64, reduce="none")
    per_element.update(x, a)
    assert per_element.compute()["insertion_curve"].shape == (13,)


def test_inputs_of_different_sizes_are_rejected():
    model = tiny_cnn()
    metric = InsertionDeletion(model)
    metric.update(*data(1, size=8))
    with pytest.raises(ValueError, match="inputs of one size: earlier batches gave 22 steps, this .* gives 26"):
        metric.update(*data(1, size=16))
    other = InsertionDeletion(model)
    other.update(*data(1, size=16))
    metric.merge_state(other)
    with pytest.raises(ValueError, match="different numbers of steps"):
        metric.compute()


def test_init_errors():
    model = tiny_cnn()
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        InsertionDeletion(lambda t: t)
    with pytest.raises(ValueError, match="`preset` must be one of"):
        InsertionDeletion(model, preset="rice")
    with pytest.raises(ValueError, match="`output` must be one of"):
        InsertionDeletion(model, output="probability")
    with pytest.raises(ValueError, match="at most one of `pixels_per_step` and `n_steps`"):
        InsertionDeletion(model, pixels_per_step=3, n_steps=3, num_units=64)
    with pytest.raises(ValueError, match=r'`substrate_value` must be given when .* "constant" \(deletion\)'):
        InsertionDeletion(model, deletion_substrate="constant")


def test_plot_returns_a_figure():
    model = tiny_cnn()
    metric = InsertionDeletion(model, n_steps=4, output="logit")
    metric.update(*data(2))
    fig, ax = metric.plot()
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    assert len(ax.get_lines()) == 2 and ax.get_ylabel() == "logit"
    own = Figure().add_subplot()
    assert metric.plot(ax=own)[1] is own


def test_metric_class_attributes():
    assert InsertionDeletion.higher_is_better is True
    assert InsertionDeletion.full_state_update is False
    assert InsertionDeletion.is_differentiable is False


def test_score_returns_the_batch_per_sample_aucs_and_update_accepts_them():
    model = tiny_cnn()
    metric = InsertionDeletion(model, n_steps=6)
    first, second = data(3, seed=1), data(2, seed=2)
    metric.update(*first)
    scores = metric.score(*second)
    expected = insertion_deletion(model, *second, n_steps=6)
    torch.testing.assert_close(scores["insertion"], expected.insertion_auc)
    torch.testing.assert_close(scores["deletion"], expected.deletion_auc)
    torch.testing.assert_close(scores["difference"], expected.insertion_auc - expected.deletion_auc)
    torch.testing.assert_close(scores["insertion_curve"], expected.insertion_curve)
    assert int(metric.count) == 3  # score() leaves the states alone
    metric.update(*second, scores=scores)
    reference = InsertionDeletion(model, n_steps=6)
    reference.update(*first)
    reference.update(*second)
    for key, value in reference.compute().items():
        torch.testing.assert_close(metric.compute()[key], value, msg=key)


def test_precomputed_logits_replace_the_clean_forward():
    model = tiny_cnn()
    x, a = data(3, seed=4)
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            logits = model(x)
        calls.clear()
        with_logits = insertion_deletion(model, x, a, n_steps=4, logits=logits, internal_batch_size=None)
        games_only = list(calls)
        calls.clear()
        plain = insertion_deletion(model, x, a, n_steps=4, internal_batch_size=None)
    finally:
        handle.remove()
    assert calls == [3, *games_only]  # the plain call runs one extra clean forward of the 3 samples
    for got, want in zip(with_logits, plain, strict=True):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"`logits` must be the model's logits \(N, K\) = \(3, K\)"):
        insertion_deletion(model, x, a, n_steps=4, logits=logits[:2])
