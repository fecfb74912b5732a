"""The one attribution runner and the metric registry, and the orchestrators built on them.

The monitor, ``evaluate`` and ``AttributionQuality`` are three users of ``AttributionRunner``: on the same data they
give the same scores, accept the same method options (tuple-returning ones included), and take a metric registered
here by name without any change to their code.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from callbacks._helpers import TRAINER_DEFAULTS, datamodule, fit, model
from torch import Tensor
from torchmetrics import Metric

from lit_attr.attribution_quality import AttributionQuality
from lit_attr.batch import Batch
from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
from lit_attr.evaluate import evaluate
from lit_attr.methods import get_method
from lit_attr.metrics import (
    InsertionDeletion,
    Localization,
    ParameterRandomization,
    SmoothMPRT,
    available_metrics,
    register_metric,
    unregister_metric,
)
from lit_attr.metrics.parameter_randomization import similarity_summary
from lit_attr.runner import AttributionRunner

N = 8
METRICS = ("insertion_deletion", "localization")
METRIC_KWARGS = {"insertion_deletion": {"n_steps": 6}}
# MFABA's return_info and IG2's return_baseline make attribute() return (attributions, info) tuples.
METHOD_KWARGS = {"mfaba": {"max_steps": 4, "return_info": True}, "ig2": {"steps": 3, "n_references": 2,
                                                                         "return_baseline": True}}  # fmt: skip
METHODS = ("saliency", "mfaba", "ig2")


class MeanAbsAttribution(Metric):
    """A metric written in a test: the mean |A| per sample, registered by name below."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def score(self, attributions: Tensor) -> dict[str, Tensor]:
        return {"mean_abs": self.scale * attributions.abs().flatten(1).mean(dim=1)}

    def update(self, attributions: Tensor, *, scores: dict[str, Tensor] | None = None) -> None:
        scores = self.score(attributions) if scores is None else scores
        self.total += scores["mean_abs"].sum()
        self.count += scores["mean_abs"].numel()

    def compute(self) -> dict[str, Tensor]:
        return {"mean_abs": self.total / self.count}


@pytest.fixture
def mean_abs_metric():
    register_metric("mean_abs_attribution", MeanAbsAttribution, consumes=("attributions",))
    yield "mean_abs_attribution"
    unregister_metric("mean_abs_attribution")


@pytest.fixture(scope="module")
def data():
    dm = datamodule(num_val=N)
    dm.setup("validate")
    return dm


def _monitor_scores(net, dm, metrics, metric_kwargs):
    monitor = AttributionMonitor(list(METHODS), metrics=metrics, num_samples=N, log_heatmaps=0, batch_size=3,
                                 method_kwargs=METHOD_KWARGS, metric_kwargs=metric_kwargs,
                                 input_bounds=(0.0, 1.0))  # fmt: skip
    trainer = L.Trainer(logger=False, callbacks=[monitor], inference_mode=False, **TRAINER_DEFAULTS)
    trainer.validate(net, datamodule=dm, verbose=False)
    return {key[len("attr/") :]: value for key, value in trainer.callback_metrics.items() if key.startswith("attr/")}


def _evaluate_scores(net, dm, metrics, metric_kwargs, tmp_path):
    result = evaluate(net, dm, tmp_path / "out", methods=list(METHODS), method_kwargs=METHOD_KWARGS, metrics=metrics,
                      metric_kwargs=metric_kwargs, limit_samples=N, batch_size=5, progress=False,
                      reference_pool_size=N)  # fmt: skip
    return result


def _quality_scores(net, dm, metrics, metric_kwargs):
    x, y, masks = dm.val_set.images, dm.val_set.labels, dm.val_set.masks
    scores = {}
    for name in METHODS:
        options = {**METHOD_KWARGS.get(name, {}), "input_bounds": (0.0, 1.0)}  # evaluate's default bounds
        if name == "ig2":  # the monitor and evaluate draw IG2's references from the split: so does the user here
            options["reference_pool"] = (x, y)
        quality = AttributionQuality(net, name, metrics=metrics, method_kwargs=options, metric_kwargs=metric_kwargs)
        for rows in (slice(0, 3), slice(3, N)):
            quality.update(x[rows], target=y[rows], masks=masks[rows])
        scores.update(quality.compute())
    return scores


def test_monitor_evaluate_and_attribution_quality_give_identical_scores(data, tmp_path, mean_abs_metric):
    net = model().eval()
    metrics = (*METRICS, mean_abs_metric)
    metric_kwargs = {**METRIC_KWARGS, mean_abs_metric: {"scale": 2.0}}
    monitored = _monitor_scores(net, data, metrics, metric_kwargs)
    evaluated = _evaluate_scores(net, data, metrics, metric_kwargs, tmp_path)
    quality = _quality_scores(net, data, metrics, metric_kwargs)

    expected_keys = {f"{m}/{k}" for m in METHODS for k in
                     ("insertion", "deletion", "difference", "pointing_game", "relevance_mass", "relevance_rank",
                      "auroc", "mean_abs")}  # fmt: skip
    assert set(monitored) == expected_keys
    assert set(quality) == expected_keys
    for key in sorted(expected_keys):
        method, score = key.split("/")
        metric = next(name for name in metrics if score in evaluated["methods"][method][name])
        from_evaluate = torch.tensor(evaluated["methods"][method][metric][score])
        torch.testing.assert_close(monitored[key].float(), from_evaluate.float(), rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(quality[key].float(), from_evaluate.float(), rtol=1e-5, atol=1e-6, msg=key)

    # ... and the registered metric's value is the one computed here by hand (the scale option reached it).
    x, y = data.val_set.images, data.val_set.labels
    saliency = get_method("saliency", net).attribute(x, y)
    expected = 2.0 * saliency.abs().flatten(1).mean(dim=1).mean()
    torch.testing.assert_close(quality["saliency/mean_abs"], expected, rtol=1e-5, atol=1e-7)
    # The insertion scores equal the metric run by hand on the same maps.
    reference = InsertionDeletion(net, n_steps=6)
    reference.update(x, saliency, y)
    torch.testing.assert_close(monitored["saliency/insertion"], reference.compute()["insertion"], rtol=1e-5, atol=1e-6)


def test_the_registered_metric_reaches_the_report_and_per_sample_records(data, tmp_path, mean_abs_metric):
    assert mean_abs_metric in available_metrics()
    net = model().eval()
    runner = AttributionRunner(net, ["saliency"], ["insertion_deletion", mean_abs_metric],
                               metric_kwargs=METRIC_KWARGS, keep_attributions=2)  # fmt: skip
    x, y = data.val_set.images[:4], data.val_set.labels[:4]
    records = runner.run(Batch(x, y), indices=[5, 0, 1, 7])
    assert [r.index for r in records] == [5, 0, 1, 7]
    assert [r.x is not None for r in records] == [False, True, True, False]
    assert torch.equal(records[1].x, x[1])
    per_sample = torch.tensor([r.scores["saliency"]["mean_abs"] for r in records])
    maps = get_method("saliency", net).attribute(x, y)
    torch.testing.assert_close(per_sample, maps.abs().flatten(1).mean(dim=1))
    torch.testing.assert_close(records[2].attributions["saliency"], maps[2])
    # Per-sample means are the scalars, for every headline number.
    scalars = runner.scalars()
    for key in ("insertion", "deletion", "difference", "mean_abs"):
        mean = torch.tensor([r.scores["saliency"][key] for r in records]).mean()
        torch.testing.assert_close(scalars[f"saliency/{key}"].float(), mean, rtol=1e-5, atol=1e-7, msg=key)


def test_one_clean_forward_per_batch(data):
    net = model().eval()
    x, y = data.val_set.images[:4], data.val_set.labels[:4]
    clean_calls = []
    handle = net.register_forward_pre_hook(lambda module, args: clean_calls.append(torch.equal(args[0], x)))
    try:
        runner = AttributionRunner(net, ["saliency"], ["insertion_deletion"], metric_kwargs=METRIC_KWARGS)
        clean_calls.clear()
        runner.run(Batch(x, y))
    finally:
        handle.remove()
    # The runner's clean forward and saliency's own gradient pass; the target check and the games' clean forward
    # reuse the runner's logits (before the runner there were four: monitor, resolve_target, saliency, metric).
    assert sum(clean_calls) == 2


def test_metrics_needing_masks_are_skipped_and_left_out(data):
    net = model().eval()
    runner = AttributionRunner(net, ["saliency"], ["localization", "insertion_deletion"], metric_kwargs=METRIC_KWARGS)
    runner.run(Batch(data.val_set.images[:3], data.val_set.labels[:3]))
    assert runner.skipped == {"localization"}
    assert set(runner.compute()["saliency"]) == {"insertion_deletion"}


def test_metric_samples_limit_which_samples_a_metric_sees(data):
    net = model().eval()
    x, y, masks = data.val_set.images[:4], data.val_set.labels[:4], data.val_set.masks[:4]
    runner = AttributionRunner(net, ["saliency"], ["localization"], metric_samples={"localization": 2})
    records = runner.run(Batch(x, y, masks), indices=[3, 0, 1, 2])
    assert ["pointing_game" in r.scores["saliency"] for r in records] == [False, True, True, False]
    reference = Localization()
    reference.update(get_method("saliency", net).attribute(x[1:3], y[1:3]), masks[1:3])
    torch.testing.assert_close(runner.scalars()["saliency/relevance_mass"], reference.compute()["relevance_mass"])


def test_prepare_hands_the_data_to_every_method(data):
    net = model().eval()
    seen = []

    def factory(model, **kwargs):
        method = get_method("saliency", model, **kwargs)
        method.prepare = seen.append
        return method

    runner = AttributionRunner(net, {"recording": factory})
    pool = Batch(data.val_set.images[:5], data.val_set.labels[:5])
    runner.prepare(pool)
    assert seen == [pool]


def test_runner_errors(data):
    net = model().eval()
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['nope'\]; available: activation_deviation"):
        AttributionRunner(net, ["saliency"], ["nope"])
    with pytest.raises(ValueError, match=r"`metric_kwargs` has options for \['localization'\], which are not among"):
        AttributionRunner(net, ["saliency"], ["insertion_deletion"], metric_kwargs={"localization": {}})
    with pytest.raises(ValueError, match=r"`target` must be one of \('label', 'prediction'\)"):
        AttributionRunner(net, ["saliency"], target="logit")
    other = get_method("saliency", model())
    with pytest.raises(ValueError, match="bound to another model"):
        AttributionRunner(net, [other])
    with pytest.raises(ValueError, match="metric 'insertion_deletion' of method 'saliency'.*`output` must be one of"):
        AttributionRunner(net, ["saliency"], ["insertion_deletion"], metric_kwargs={"insertion_deletion": {
            "output": "softmax"}})  # fmt: skip
    runner = AttributionRunner(net, ["saliency"])
    with pytest.raises(ValueError, match=r"`indices` must have one entry per sample \(N=2\), got 3"):
        runner.run(Batch(data.val_set.images[:2]), indices=[0, 1, 2])


def test_registry_errors():
    with pytest.raises(ValueError, match="already registered"):
        register_metric("localization", Localization, consumes=("attributions", "masks"))
    with pytest.raises(ValueError, match="`consumes` must name per-batch inputs"):
        register_metric("bad_metric", Localization, consumes=("model",))
    with pytest.raises(ValueError, match="must be an identifier"):
        register_metric("bad name", Localization, consumes=("attributions",))
    with pytest.raises(ValueError, match="No metric named 'nope' is registered"):
        unregister_metric("nope")


def test_randomization_check_draws_the_maps_its_metric_scores(tmp_path):
    check = RandomizationCheck(["saliency"], num_samples=6, stages="all", log_heatmaps=3, layers=["stem.0", "fc"],
                               similarity="spearman_abs")  # fmt: skip
    scored: list[Tensor] = []
    drawn: dict[str, dict[str, Tensor]] = {}

    class Spy(L.Callback):
        def on_train_end(self, trainer, pl_module):
            # Runs before the check's own on_train_end (callbacks run in list order): record every map its metric's
            # method computes, and what the check hands to its delivery.
            method = check.runner.metrics["saliency"]["randomization"].method
            attribute = method.attribute
            method.attribute = lambda *args, **kwargs: scored.append(attribute(*args, **kwargs)) or scored[-1]
            check._deliver = lambda trainer, summary, stage_maps, epoch: drawn.update(stage_maps)

    _, trainer, _ = fit(tmp_path, [Spy(), check], max_epochs=1)
    stages = check.results["saliency"]["spearman_abs"]["stages"]
    assert stages == ["original", "fc", "stem.0"]
    # The metric scored the 6 probe samples at every stage, then drew the first 3 at every stage: the same maps.
    assert [a.shape[0] for a in scored] == [6] * len(stages) + [3] * len(stages)
    assert list(drawn["saliency"]) == stages
    for k, stage in enumerate(stages):
        torch.testing.assert_close(drawn["saliency"][stage], scored[k][:3].abs().cpu(), rtol=1e-6, atol=1e-7)


NEW_METRICS = {  # issue #15's metrics, with tiny budgets
    "road": {"percentiles": (30, 70)},
    "infidelity": {"n_perturb_samples": 2},
    "sensitivity": {"n_perturb_samples": 2},
    "emprt": {},
    "smprt": {"n_noise": 2, "similarity": ("spearman_abs",)},
}


def test_every_registered_metric_works_in_the_monitor_evaluate_quality_and_the_report(data, tmp_path):
    assert set(NEW_METRICS) < set(available_metrics())
    net = model().eval()
    metrics, n = tuple(NEW_METRICS), 4
    dm = datamodule(num_val=n)
    monitor = AttributionMonitor(["saliency"], metrics=metrics, num_samples=n, log_heatmaps=0,
                                 metric_kwargs=NEW_METRICS, background_delivery=False)  # fmt: skip
    trainer = L.Trainer(logger=False, callbacks=[monitor], inference_mode=False, **TRAINER_DEFAULTS)
    trainer.validate(net, datamodule=dm, verbose=False)
    monitored = {k[len("attr/saliency/") :]: v for k, v in trainer.callback_metrics.items() if k.startswith("attr/")}
    result = evaluate(net, dm, tmp_path / "out", methods=["saliency"], metrics=list(metrics), metric_kwargs=NEW_METRICS,
                      limit_samples=n, randomization_samples=n, input_bounds=None, progress=False)  # fmt: skip
    quality = AttributionQuality(net, "saliency", metrics=metrics, metric_kwargs=NEW_METRICS)
    dm.setup("validate")
    quality.update(dm.val_set.images, target=dm.val_set.labels)
    scores = {k[len("saliency/") :]: v for k, v in quality.compute().items()}

    expected = {"road", "morf", "lerf", "infidelity", "sensitivity", "emprt", "entropy_original", "entropy_randomized",
                "smprt_spearman_abs"}  # fmt: skip
    verdicts = {"emprt_passed", "smprt_passed"}
    assert set(monitored) == set(scores) == expected | verdicts
    for key in verdicts:
        assert float(monitored[key]) == float(scores[key]) == float(result["methods"]["saliency"][key[:5]]["passed"])
    evaluated = result["methods"]["saliency"]
    assert set(evaluated) == set(metrics)
    for key in expected:
        if key.startswith("smprt_"):
            value = evaluated["smprt"][key[len("smprt_") :]]["final"]
        else:
            value = evaluated[next(m for m in metrics if key in evaluated[m])][key]
        torch.testing.assert_close(monitored[key].float(), torch.tensor(value).float(), rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(scores[key].float(), torch.tensor(value).float(), rtol=1e-5, atol=1e-6, msg=key)
    page = (tmp_path / "out" / "report.html").read_text()
    for label in ("ROAD", "infidelity", "max-sensitivity", "eMPRT", "road curves", "smprt curves"):
        assert label in page, label


def test_smprt_through_the_runner_is_the_metric_itself_beside_mprt(data):
    """sMPRT compares noise-averaged maps only (its original stage scores 1), and MPRT's numbers keep their names."""
    x, y = data.val_set.images[:3], data.val_set.labels[:3]
    net = model().eval()
    options = {"smprt": {"n_noise": 3, "stages": "last"}, "randomization": {"stages": "last"}}
    runner = AttributionRunner(net, ["saliency"], metrics=["randomization", "smprt"], metric_kwargs=options)
    runner.run(Batch(x=x, y=y))
    results = runner.compute()["saliency"]
    direct = SmoothMPRT("saliency", net, **options["smprt"])
    direct.update(x, target=y)
    for name in ("spearman_abs", "spearman"):
        torch.testing.assert_close(results["smprt"][name]["curve"], direct.report()[name]["curve"])
        assert float(results["smprt"][name]["curve"][0]) == pytest.approx(1.0)
    scalars = runner.scalars()
    reference = ParameterRandomization("saliency", net, stages="last")
    reference.update(x, target=y)
    assert float(scalars["saliency/spearman_abs"]) == pytest.approx(float(reference.compute()["spearman_abs"]))
    assert float(scalars["saliency/smprt_spearman_abs"]) == pytest.approx(float(direct.compute()["spearman_abs"]))


def test_two_metrics_reporting_one_score_name_are_refused(data):
    x, y = data.val_set.images, data.val_set.labels
    register_metric("my_mprt_twin", ParameterRandomization, consumes=("method", "x", "target"),
                    summary=similarity_summary, details=ParameterRandomization.report)  # fmt: skip
    try:
        options = {"randomization": {"stages": "last"}, "my_mprt_twin": {"stages": "last"}}
        runner = AttributionRunner(model().eval(), ["saliency"], metrics=["randomization", "my_mprt_twin"],
                                   metric_kwargs=options)  # fmt: skip
        with pytest.raises(ValueError, match="'randomization' and 'my_mprt_twin' both report a score named"):
            runner.run(Batch(x=x[:2], y=y[:2]))
    finally:
        unregister_metric("my_mprt_twin")
