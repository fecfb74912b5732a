import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from lit_attr.functional.complexity import complexity, sparseness
from lit_attr.functional.randomization import randomize_
from lit_attr.functional.similarity import spearman, ssim_maps
from lit_attr.methods import get_method
from lit_attr.metrics.parameter_randomization import ParameterRandomization


class TinyCNN(nn.Module):
    """Head registered first, so definition order differs from forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


FORWARD = ["conv1", "bn", "conv2", "fc"]


@pytest.fixture
def tiny():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyCNN()
        model.train()(torch.rand(16, 3, 8, 8))  # non-trivial BatchNorm statistics
        x = torch.rand(4, 3, 8, 8)
    return model.eval(), x


def _reference_curves(model, x, randomised_sets, seed=0):
    """Similarities per stage computed independently: a fresh copy per stage, layers randomised by hand."""
    index = {name: i for i, name in enumerate(FORWARD)}
    reference = get_method("saliency", model)
    target = model(x).argmax(dim=1)
    base = reference.attribute(x, target)
    curves = {"spearman_abs": [], "spearman": [], "ssim": []}
    for names in randomised_sets:
        clone = copy.deepcopy(model)
        for name in names:
            randomize_(getattr(clone, name), seed + index[name])
        a = get_method("saliency", clone).attribute(x, target)
        curves["spearman_abs"].append(spearman(base.abs().sum(1), a.abs().sum(1)).mean())
        curves["spearman"].append(spearman(base.sum(1), a.sum(1)).mean())
        curves["ssim"].append(ssim_maps(base.abs().sum(1), a.abs().sum(1)).mean())
    return {k: torch.stack(v) for k, v in curves.items()}


def test_top_down_cascade_matches_an_independent_reference(tiny):
    model, x = tiny
    metric = ParameterRandomization("saliency", model)
    metric.update(x[:3])
    metric.update(x[3:])
    result = metric.report()
    # stages follow the forward order from the logits backwards, not the definition order (fc, conv1, ...)
    assert result["spearman_abs"]["stages"] == ["original", "fc", "conv2", "bn", "conv1"]
    sets = [[], ["fc"], ["fc", "conv2"], ["fc", "conv2", "bn"], FORWARD]
    expected = _reference_curves(model, x, sets)
    for name in ("spearman_abs", "spearman", "ssim"):
        entry = result[name]
        assert entry["curve"][0].item() == 1.0  # the determinism check is exactly 1
        torch.testing.assert_close(entry["curve"], expected[name], msg=name)
        assert entry["final"] == entry["curve"][-1]
        assert entry["passed"].dtype == torch.bool and bool(entry["passed"]) == bool(entry["final"] < 0.5)
    assert result["threshold"] == 0.5


def test_map_metrics_score_every_stage_as_their_functionals_do(tiny):
    model, x = tiny
    metric = ParameterRandomization("saliency", model, similarity="spearman_abs",
                                    map_metrics=("sparseness", "complexity"))  # fmt: skip
    metric.update(x[:3])  # shards of 3 and 1: the mean over all samples, not of the batch means
    metric.update(x[3:])
    result = metric.report()
    # The maps of every stage made independently (layers randomised by hand), scored by the functionals.
    sets = [[], ["fc"], ["fc", "conv2"], ["fc", "conv2", "bn"], FORWARD]
    index = {name: i for i, name in enumerate(FORWARD)}
    target = model(x).argmax(dim=1)
    expected = {"sparseness": [], "complexity": []}
    for names in sets:
        clone = copy.deepcopy(model)
        for name in names:
            randomize_(getattr(clone, name), index[name])
        maps = get_method("saliency", clone).attribute(x, target)
        expected["sparseness"].append(sparseness(maps).mean())
        expected["complexity"].append(complexity(maps).mean())
    assert set(result["map_metrics"]) == {"sparseness", "complexity"}
    for key, values in expected.items():
        entry = result["map_metrics"][key]
        assert entry["stages"] == ["original", "fc", "conv2", "bn", "conv1"]
        torch.testing.assert_close(entry["curve"], torch.stack(values), msg=key)
        assert entry["final"] == entry["curve"][-1]
    assert set(metric.compute()) == {"spearman_abs"}, "the map metrics are not similarities"
    # Names are checked when the metric is built: unknown ones and ones that need more than the maps.
    with pytest.raises(ValueError, match=r"`map_metrics`: unknown metric 'nope'; the metrics of the maps alone: "):
        ParameterRandomization("saliency", model, map_metrics=["nope"])
    with pytest.raises(ValueError, match=r"`map_metrics` takes metrics of the maps alone .*'insertion_deletion' also"):
        ParameterRandomization("saliency", model, map_metrics="insertion_deletion")


def test_bottom_up_independent_and_last(tiny):
    model, x = tiny
    bottom = ParameterRandomization("saliency", model, order="bottom_up", similarity="spearman_abs")
    bottom.update(x)
    curve = bottom.report()["spearman_abs"]
    assert curve["stages"] == ["original", "conv1", "bn", "conv2", "fc"]
    expected = _reference_curves(model, x, [[], ["conv1"], ["conv1", "bn"], ["conv1", "bn", "conv2"], FORWARD])
    torch.testing.assert_close(curve["curve"], expected["spearman_abs"])

    independent = ParameterRandomization("saliency", model, order="independent", similarity="spearman_abs")
    independent.update(x)
    curve = independent.report()["spearman_abs"]
    assert curve["stages"] == ["original", "fc", "conv2", "bn", "conv1"]
    expected = _reference_curves(model, x, [[], ["fc"], ["conv2"], ["bn"], ["conv1"]])
    torch.testing.assert_close(curve["curve"], expected["spearman_abs"])

    last = ParameterRandomization("saliency", model, stages="last")
    full = ParameterRandomization("saliency", model)
    last.update(x)
    full.update(x)
    last_result, full_result = last.report(), full.report()
    assert last_result["ssim"]["stages"] == ["original", "conv1"]
    for name in ("spearman_abs", "spearman", "ssim"):  # the fully randomised network is the same in both modes
        torch.testing.assert_close(last_result[name]["final"], full_result[name]["final"])


def test_users_model_rng_and_modes_are_untouched(tiny):
    model, x = tiny
    model.train()
    model.bn.eval()
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    model.conv2.bias.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    rng = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    metric = ParameterRandomization("saliency", model, order="independent")
    metric.update(x)
    metric.update(x, target=1)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert modes == {name: m.training for name, m in model.named_modules()}
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert torch.equal(model.conv1.weight.grad, torch.ones_like(model.conv1.weight))
    assert model.conv2.weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1]) and random.getstate() == rng[2]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    # the model lives outside the metric's state
    assert all("weight" not in key for key in metric.state_dict())
    assert not any(p is q for p in metric.parameters() for q in model.parameters())


def test_each_update_checks_the_current_weights(tiny):
    model, x = tiny
    metric = ParameterRandomization("saliency", model, similarity="spearman_abs")
    with torch.no_grad():
        model.fc.weight.mul_(-1)  # changes the top-1 class and the maps after the metric was built
    metric.update(x)
    expected = ParameterRandomization("saliency", copy.deepcopy(model), similarity="spearman_abs")
    expected.update(x)
    torch.testing.assert_close(metric.report()["spearman_abs"]["curve"], expected.report()["spearman_abs"]["curve"])


def test_instance_given_attributions_and_inference_mode(tiny):
    model, x = tiny
    by_name = ParameterRandomization("integrated_gradients", model, method_kwargs={"n_steps": 8})
    method = get_method("integrated_gradients", model, n_steps=8, forward_fn=model.forward)
    by_instance = ParameterRandomization(method)
    assert by_instance.method.model is not model and method.model is model
    assert by_instance.method.forward_fn.__self__ is by_instance.method.model  # bound method re-bound to the copy
    by_name.update(x)
    with torch.inference_mode():  # as in Lightning's validation loop
        by_instance.update(x, attributions=method.attribute(x))
    a, b = by_name.report(), by_instance.report()
    for name in ("spearman_abs", "spearman", "ssim"):
        torch.testing.assert_close(a[name]["curve"], b[name]["curve"])


def test_closure_over_the_users_model_is_detected(tiny):
    model, x = tiny
    method = get_method("saliency", model, forward_fn=lambda inputs: model(inputs))
    metric = ParameterRandomization(method)
    with pytest.raises(ValueError, match="never calls the model it is bound to"):
        metric.update(x)


def test_non_image_inputs_and_block_granularity():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    metric = ParameterRandomization("saliency", mlp, similarity=("spearman", "spearman_abs"))
    metric.update(torch.rand(6, 5))
    result = metric.report()
    assert result["spearman"]["stages"] == ["original", "3", "1", "0"]
    assert result["spearman"]["curve"][0].item() == 1.0
    with pytest.raises(
        ValueError, match=r"'ssim' needs image inputs \(N, C, H, W\) of at least 6x6 pixels .* got shape \(6, 5\)"
    ):
        ParameterRandomization("saliency", mlp).update(torch.rand(6, 5))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(x))

    blocks = ParameterRandomization("saliency", Net(), granularity="block", similarity="spearman")
    blocks.update(torch.rand(3, 4))
    assert blocks.report()["spearman"]["stages"] == ["original", "head", "body"]


def test_plot_uses_the_object_oriented_api(tiny):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    model, x = tiny
    metric = ParameterRandomization("saliency", model)
    metric.update(x)
    figures = plt.get_fignums()
    fig, ax = metric.plot()
    assert isinstance(fig, Figure) and len(ax.get_lines()) == 5  # 3 curves + threshold + zero line
    # Top-down: the last stage (named after conv1, the layer randomised last) is the fully randomised network.
    assert [t.get_text() for t in ax.get_xticklabels()] == ["original", "fc", "conv2", "bn", "fully randomised"]
    assert plt.get_fignums() == figures


def test_errors(tiny):
    model, x = tiny
    method = get_method("saliency", model)
    with pytest.raises(ValueError, match="`model` is required when `method` is a name"):
        ParameterRandomization("saliency")
    with pytest.raises(ValueError, match="Unknown attribution method 'nope'"):
        ParameterRandomization("nope", model)
    with pytest.raises(TypeError, match="`method` must be a registered method name or an AttributionMethod"):
        ParameterRandomization(model)
    with pytest.raises(ValueError, match="`method_kwargs` only apply when `method` is a name"):
        ParameterRandomization(method, method_kwargs={"abs": True})
    with pytest.raises(ValueError, match=r"`model` must be omitted or be `method.model`"):
        ParameterRandomization(method, model=TinyCNN())
    with pytest.raises(ValueError, match="`order` must be one of"):
        ParameterRandomization("saliency", model, order="random")
    with pytest.raises(ValueError, match="`stages` must be one of"):
        ParameterRandomization("saliency", model, stages="first")
    with pytest.raises(ValueError, match="`stages='last'` .* needs `order` 'top_down' or 'bottom_up'"):
        ParameterRandomization("saliency", model, order="independent", stages="last")
    with pytest.raises(ValueError, match=r"`similarity` must be drawn from .* got unknown \['hog'\]"):
        ParameterRandomization("saliency", model, similarity=("spearman", "hog"))
    with pytest.raises(ValueError, match="'nope', which is not a submodule"):
        ParameterRandomization("saliency", model, layers=["nope"])
    with pytest.raises(TypeError, match="`threshold` must be a number"):
        ParameterRandomization("saliency", model, threshold="0.5")
    with pytest.raises(ValueError, match="`threshold` must be a finite number, got nan"):
        ParameterRandomization("saliency", model, threshold=float("nan"))
    with pytest.raises(TypeError, match="`similarity` must be a similarity measure or a sequence of"):
        ParameterRandomization("saliency", model, similarity=None)
    metric = ParameterRandomization("saliency", model)
    assert ParameterRandomization.higher_is_better is False and ParameterRandomization.full_state_update is False
    with pytest.raises(ValueError, match=r"`x` must be a non-empty batch \(N, \.\.\.\) .* got shape \(0, 3, 8, 8\)"):
        metric.update(x[:0])
    with pytest.raises(ValueError, match=r"`attributions` must have the shape of `x`, \(4, 3, 8, 8\), got \(4, 8, 8\)"):
        metric.update(x, attributions=torch.ones(4, 8, 8))
    with pytest.raises(ValueError, match=r"`target` values must be in \[0, 2\]"):
        metric.update(x, target=7)


def test_trained_classifier_saliency_passes(trained_demo):
    model, datamodule = trained_demo
    x = datamodule.val_set.images[:8]
    metric = ParameterRandomization("saliency", model)
    metric.update(x)
    result = metric.report()
    curve = result["spearman_abs"]["curve"]
    assert result["spearman_abs"]["stages"][:2] == ["original", "fc"]
    assert curve[0].item() == 1.0
    assert result["spearman_abs"]["final"] < 0.35
    assert bool(result["spearman_abs"]["passed"])
    assert result["ssim"]["final"] < result["ssim"]["curve"][0]


def test_metric_can_live_inside_the_model_it_checks_and_forward_works(tiny):
    _, x = tiny

    class Checked(TinyCNN):
        def __init__(self) -> None:
            super().__init__()
            self.check = ParameterRandomization("saliency", self, similarity="spearman_abs")

    torch.manual_seed(0)
    model = Checked().eval()
    model.check.persistent(True)  # its states now appear in the model's state_dict, but not in the working copy
    batch_value = model.check(x)  # torchmetrics forward: the batch's value, and accumulation
    assert batch_value["spearman_abs"].ndim == 0
    model.check.update(x)
    report = model.check.report()
    assert report["spearman_abs"]["curve"][0].item() == 1.0
    torch.testing.assert_close(report["spearman_abs"]["final"], batch_value["spearman_abs"])
    assert "check.similarity_sum" in model.state_dict()


def test_compute_returns_scalars_for_log_dict_and_metric_collection(tiny):
    import lightning as L
    from torchmetrics import MetricCollection

    model, x = tiny
    collection = MetricCollection({"check": ParameterRandomization("saliency", model, similarity=("spearman_abs",
                                                                                                  "spearman"))})
    collection.update(x)
    values = collection.compute()
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in values.values()), values
    report = collection["check"].report()
    assert set(values) == {"spearman_abs", "spearman"}  # MetricCollection flattens a dict result
    torch.testing.assert_close(values["spearman_abs"], report["spearman_abs"]["final"])

    class Logged(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model
            self.check = ParameterRandomization("saliency", model, similarity="spearman_abs")

        def forward(self, inputs):
            return self.net(inputs)

        def validation_step(self, batch, batch_idx):
            self.check.update(batch[0])

        def on_validation_epoch_end(self):
            self.log_dict(self.check.compute())

    module = Logged()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=len(x))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.validate(module, loader, verbose=False)
    torch.testing.assert_close(trainer.callback_metrics["spearman_abs"], module.check.report()["spearman_abs"]["final"])
