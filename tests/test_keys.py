"""One key scheme for every scalar: ``attr/<method>/<metric>/<score>`` in the monitor, ``evaluate``, the
randomisation check and ``AttributionQuality``, read back from what a CSVLogger wrote; former keys of the monitor
given to the checkpoint callbacks get their current form (issue #23, item 3)."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from callbacks._helpers import METRIC_KWARGS, TRAINER_DEFAULTS, datamodule, fit, model, read_metrics_csv
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torchmetrics import Metric

from lit_attr.callbacks import AttributionCheckpoint, AttributionEarlyStopping, AttributionMonitor, RandomizationCheck
from lit_attr.evaluate import evaluate, flat_scalars
from lit_attr.keys import former_key_matches, scalar_key, split_key
from lit_attr.metrics import register_metric, unregister_metric

# The scheme written out by hand for the metrics below (not derived from lit-attr's code).
EXPECTED = {
    "attr/saliency/insertion_deletion/insertion",
    "attr/saliency/insertion_deletion/deletion",
    "attr/saliency/insertion_deletion/difference",
    "attr/saliency/localization/pointing_game",
    "attr/saliency/localization/relevance_mass",
    "attr/saliency/localization/relevance_rank",
    "attr/saliency/localization/auroc",
}


def _written(path) -> dict[str, list[float]]:
    """Every non-empty value of every column of a CSVLogger's metrics.csv."""
    values: dict[str, list[float]] = {}
    for row in read_metrics_csv(path):
        for key, value in row.items():
            if value:
                values.setdefault(key, []).append(float(value))
    return values


def test_the_scheme_and_the_matching_of_former_keys():
    assert scalar_key("ig2", "road", "morf") == "attr/ig2/road/morf"
    assert split_key("attr/ig2/road/morf") == ("ig2", "road", "morf")
    assert split_key("attr/overhead") is None and split_key("randomization/ig2/ssim") is None
    logged = ["attr/a/insertion_deletion/insertion", "attr/a/twin/insertion", "attr/b/insertion_deletion/insertion",
              "attr/a/emprt/passed", "attr/overhead"]  # fmt: skip
    assert former_key_matches("attr/b/insertion", logged) == ["attr/b/insertion_deletion/insertion"]
    assert former_key_matches("attr/a/insertion", logged) == logged[:2]  # ambiguous
    assert former_key_matches("attr/a/emprt_passed", logged) == ["attr/a/emprt/passed"]
    assert former_key_matches("attr/a/deletion", logged) == []
    assert former_key_matches("attr/a/insertion_deletion/insertion", logged) == []  # already current


def test_monitor_check_and_evaluate_write_the_same_scheme(tmp_path):
    monitor = AttributionMonitor(["saliency"], num_samples=6, log_heatmaps=0, metric_kwargs=METRIC_KWARGS,
                                 background_delivery=False)  # fmt: skip
    check = RandomizationCheck(["saliency"], num_samples=4, stages="last", similarity="spearman_abs",
                               log_heatmaps=0)  # fmt: skip
    _, trainer, _ = fit(tmp_path / "fit", [monitor, check], max_epochs=1)
    written = _written(trainer.logger.log_dir + "/metrics.csv")
    attr = {key for key in written if key.startswith("attr/")}
    check_keys = {"attr/saliency/randomization/spearman_abs", "attr/saliency/randomization/passed"}
    assert attr == EXPECTED | check_keys
    assert not any(key.startswith(("randomization/", "evaluate/")) for key in written)

    net, dm = model().eval(), datamodule(num_val=6)
    logger = CSVLogger(tmp_path / "evaluate")
    runner = L.Trainer(logger=logger, inference_mode=False, **TRAINER_DEFAULTS)
    result = evaluate(net, dm, tmp_path / "out", methods=["saliency"], metrics=["insertion_deletion", "localization"],
                      metric_kwargs=METRIC_KWARGS, limit_samples=6, trainer=runner, progress=False)  # fmt: skip
    logger.save()
    evaluated = _written(logger.log_dir + "/metrics.csv")
    assert {key for key in evaluated if key != "step"} == EXPECTED
    for key in EXPECTED:  # the logged value is the nested one of metrics.json
        _, method, metric, score = key.split("/")
        assert evaluated[key] == [pytest.approx(result["methods"][method][metric][score], rel=1e-6)], key
    assert set(flat_scalars(result)) == EXPECTED


def test_a_former_key_gets_its_current_form_with_a_deprecation_warning(tmp_path):
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=4, log_heatmaps=0,
                                 metric_kwargs=METRIC_KWARGS, every_n_epochs=2)  # fmt: skip
    checkpoint = AttributionCheckpoint(dirpath=tmp_path / "ckpt", monitor="attr/saliency/insertion", mode="max",
                                       save_top_k=-1, filename="{epoch}")  # fmt: skip
    stopping = AttributionEarlyStopping(monitor="attr/saliency/deletion", mode="min", patience=5)
    assert checkpoint.monitor == "attr/saliency/insertion"  # the logged keys decide, once the monitor ran
    with pytest.warns(DeprecationWarning) as caught:
        fit(tmp_path, [monitor, checkpoint, stopping], max_epochs=4, enable_checkpointing=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any("'attr/saliency/insertion_deletion/insertion'" in m for m in messages), messages
    assert any("'attr/saliency/insertion_deletion/deletion'" in m for m in messages), messages
    assert checkpoint.monitor == "attr/saliency/insertion_deletion/insertion"
    assert stopping.monitor == "attr/saliency/insertion_deletion/deletion"
    # Saved at the epochs the monitor ran, as with the current key.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=1.ckpt", "epoch=3.ckpt"]


def test_a_former_verdict_key_is_mapped_at_once_and_an_unmatched_key_refused(tmp_path):
    with pytest.warns(DeprecationWarning, match="'attr/saliency/randomization/passed'"):
        verdict = AttributionCheckpoint(monitor="attr/saliency/randomization_passed", mode="max")
    assert verdict.monitor == "attr/saliency/randomization/passed"

    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=4, log_heatmaps=0,
                                 metric_kwargs=METRIC_KWARGS)  # fmt: skip
    typo = AttributionCheckpoint(dirpath=tmp_path / "ckpt", monitor="attr/saliency/insertoin", mode="max")
    with warnings.catch_warnings(), pytest.raises(ValueError) as raised:
        warnings.simplefilter("ignore")
        fit(tmp_path, [monitor, typo], max_epochs=1, enable_checkpointing=True)
    message = str(raised.value)
    assert "\n" not in message and "`monitor='attr/saliency/insertoin'`" in message
    assert "attr/saliency/insertion_deletion/insertion" in message  # the keys there are, to choose from


class _Recorder(L.Callback):
    """What a checkpoint callback holds when the fit starts (after setup and the restore of a checkpoint)."""

    def __init__(self, checkpoint: AttributionCheckpoint) -> None:
        self.checkpoint, self.seen = checkpoint, []

    def on_fit_start(self, trainer, pl_module):
        self.seen.append((self.checkpoint.monitor, self.checkpoint.best_model_score))


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # the same dirpath, on purpose
def test_a_declared_former_key_is_current_before_a_checkpoint_restores_its_state(tmp_path):
    def run(ckpt_path=None):
        monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=4, log_heatmaps=0,
                                     metric_kwargs=METRIC_KWARGS)  # fmt: skip
        checkpoint = AttributionCheckpoint(dirpath=tmp_path / "ckpt", monitor="attr/saliency/insertion", mode="max")
        recorder = _Recorder(checkpoint)
        with pytest.warns(DeprecationWarning, match="'attr/saliency/insertion_deletion/insertion'"):
            _, trainer, _ = fit(tmp_path, [monitor, checkpoint, recorder], max_epochs=2, enable_checkpointing=True,
                                ckpt_path=ckpt_path)  # fmt: skip
        return trainer, checkpoint, recorder

    trainer, first, _ = run()
    trainer.save_checkpoint(tmp_path / "resume.ckpt")
    saved = torch.load(tmp_path / "resume.ckpt", weights_only=False)["callbacks"]
    assert first.state_key in saved and "attr/saliency/insertion_deletion/insertion" in first.state_key
    # Restored with the same former key: it is current again by the time the state is restored (the fit's setup
    # comes before the restore), so the best score so far comes back.
    _, _, recorder = run(tmp_path / "resume.ckpt")
    assert recorder.seen == [("attr/saliency/insertion_deletion/insertion", first.best_model_score)]


class MeanAbs(Metric):
    """A metric without a presentation: its score names are known only once the monitor logged them."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, attributions: Tensor) -> None:
        self.total += attributions.abs().flatten(1).mean(dim=1).sum()
        self.count += attributions.shape[0]

    def compute(self) -> dict[str, Tensor]:
        return {"mean_abs": self.total / self.count}


def test_an_undeclared_former_key_gets_its_current_form_from_the_logged_keys(tmp_path):
    register_metric("mean_abs_of_keys", MeanAbs, consumes=("attributions",))
    try:
        monitor = AttributionMonitor(["saliency"], metrics="mean_abs_of_keys", num_samples=4, log_heatmaps=0)
        checkpoint = AttributionCheckpoint(dirpath=tmp_path / "ckpt", monitor="attr/saliency/mean_abs", mode="max")
        recorder = _Recorder(checkpoint)
        with pytest.warns(DeprecationWarning, match="'attr/saliency/mean_abs_of_keys/mean_abs'"):
            fit(tmp_path, [monitor, checkpoint, recorder], max_epochs=1, enable_checkpointing=True)
    finally:
        unregister_metric("mean_abs_of_keys")
    assert recorder.seen == [("attr/saliency/mean_abs", None)]  # not declared: unknown when the fit started
    assert checkpoint.monitor == "attr/saliency/mean_abs_of_keys/mean_abs"
    assert checkpoint.best_model_score is not None
