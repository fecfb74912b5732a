"""The monitor within a time budget, its background delivery, and checkpoint selection on its scores (issue #16).

Time is an injected clock that only moves when training or the monitor works, by amounts set here: the rule's
decisions are then exact, and no test depends on how fast this machine is.
"""

from __future__ import annotations

import json
import warnings

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, Timer

from callbacks._helpers import (
    METRIC_KWARGS,
    TRAINER_DEFAULTS,
    FakeClock,
    HistoryDump,
    RankSkewedClock,
    datamodule,
    fit,
    model,
    read_metrics_csv,
)
from lit_attr import viz
from lit_attr._probe import ProbeSet
from lit_attr.callbacks import AttributionCheckpoint, AttributionEarlyStopping, AttributionMonitor, attribution_monitor
from lit_attr.methods import AttributionMethod

EPOCH_SECONDS = 10.0  # the fit's own time per epoch (4 training batches of 2.5 s)
SECONDS_PER_PROBE = 0.25  # the monitor's cost per probe sample: 2 s for a run over 8 probes
INSERTION = "attr/saliency/insertion_deletion/insertion"


class Timed(L.Callback):
    """Advances the clock as if every training batch took 2.5 s and every monitor sample 0.25 s."""

    def __init__(self, clock: FakeClock, monitor: AttributionMonitor) -> None:
        self.clock, self.monitor = clock, monitor
        self.runs: list[int] = []

    def on_train_start(self, trainer, pl_module):
        run = self.monitor.runner.run

        def timed_run(batch, *args, **kwargs):
            self.clock.advance(SECONDS_PER_PROBE * len(batch))
            self.runs.append(len(batch))
            return run(batch, *args, **kwargs)

        self.monitor.runner.run = timed_run

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.clock.advance(EPOCH_SECONDS / 4)


def _budget_fit(tmp_path, max_overhead, **trainer_options):
    clock = FakeClock()
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=8, batch_size=8,
                                 log_heatmaps=0, metric_kwargs=METRIC_KWARGS, max_overhead=max_overhead, clock=clock,
                                 background_delivery=False)  # fmt: skip
    timed = Timed(clock, monitor)
    options = {"max_epochs": 6, **trainer_options}
    _, trainer, _ = fit(tmp_path, [monitor, timed], **options)
    return monitor, timed, trainer


def test_the_budget_decides_which_epochs_run(tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="AttributionMonitor: its time")  # within budget: no warning
        monitor, timed, _ = _budget_fit(tmp_path, max_overhead=0.1)
    # By hand, with the rule of the docstring (fit time T, spent S, estimate E = 2 s, budget 10 %):
    # epoch 0: calibration on 1 sample costs 0.25 s (S = 0.25), E = 0.25 s * 8 = 2 s; S + E = 2.25 > 0.1 * 10:
    # skip; epoch 1: 2.25 > 2: skip; epoch 2: 2.25 <= 3, and the fit will last 60 s: S + 2E = 4.25 <= 6: run
    # (S = 2.25); epoch 3: 4.25 > 4: skip; epoch 4: 4.25 <= 5, but S + 2E = 6.25 > 6 (no room left for the last
    # run): skip; epoch 5: the last epoch always runs (S = 4.25).
    assert sorted(monitor.history) == [2, 5]
    assert timed.runs == [1, 8, 8]  # the calibration, then two runs of the 8 probes
    assert monitor.history[2]["attr/overhead"] == pytest.approx(2.25 / 30)
    assert monitor.history[5]["attr/overhead"] == pytest.approx(4.25 / 60)


def test_the_calibration_scales_only_the_attribution_not_the_first_read_of_the_probes(tmp_path, monkeypatch):
    # Reading the probe set takes 2 s, once. Spent after the calibration: 2.25 s, but the estimate stays
    # 0.25 s * 8 = 2 s (scaling the read too would make it 18 s and skip every epoch but the last): with 50 %,
    # S + E = 4.25 <= 5 and S + 2E = 6.25 <= 30 at epoch 0, and every later epoch fits as well.
    clock = FakeClock()
    load = ProbeSet.load

    def slow_first_read(self, trainer, adapter):
        if self.batch is None:
            clock.advance(2.0)
        return load(self, trainer, adapter)

    monkeypatch.setattr(ProbeSet, "load", slow_first_read)
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=8, batch_size=8,
                                 log_heatmaps=0, metric_kwargs=METRIC_KWARGS, max_overhead=0.5, clock=clock,
                                 background_delivery=False)  # fmt: skip
    fit(tmp_path, [monitor, Timed(clock, monitor)], max_epochs=6)
    assert sorted(monitor.history) == list(range(6))
    assert monitor.history[5]["attr/overhead"] == pytest.approx((2.25 + 6 * 2) / 60)


def test_a_budget_below_one_run_scores_only_the_last_epoch_and_warns(tmp_path):
    # One run costs 2 s of a 60 s fit (3.3 %): with 2 % no epoch before the last fits, and the last one, which
    # always runs, overshoots; the warning gives the figures.
    expected = r"its time came to 3\.8% of the fit's, over `max_overhead=0\.02`.* took 2\.0 s"
    with pytest.warns(UserWarning, match=expected):
        monitor, timed, _ = _budget_fit(tmp_path, max_overhead=0.02)
    assert sorted(monitor.history) == [5] and timed.runs == [1, 8]
    assert monitor.history[5]["attr/overhead"] == pytest.approx(2.25 / 60)


def test_a_generous_budget_runs_every_epoch_and_none_runs_as_before(tmp_path):
    generous, _, _ = _budget_fit(tmp_path / "a", max_overhead=0.9)
    assert sorted(generous.history) == list(range(6))
    unlimited, timed, trainer = _budget_fit(tmp_path / "b", max_overhead=None)
    assert sorted(unlimited.history) == list(range(6))
    assert "attr/overhead" not in trainer.callback_metrics and timed.runs == [8] * 6


def test_the_model_is_scored_after_the_last_epoch_when_max_steps_ends_the_fit(tmp_path):
    # 4 batches per epoch: max_steps=14 stops in the middle of epoch 3, which validation never reaches. The rule
    # plans for a 35 s fit, not the 60 s of max_epochs=6: at epoch 2 (T = 30 s, 12 of 14 steps, S = 0.25 s),
    # S + 2E = 4.25 > 0.1 * 35: skip, keeping room for the run after the fit (S = 2.25 s).
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="AttributionMonitor: its time")
        monitor, _, _ = _budget_fit(tmp_path, max_overhead=0.1, max_steps=14)
    assert sorted(monitor.history) == [3]
    assert monitor.history[3]["attr/overhead"] == pytest.approx(2.25 / 35)


def test_the_model_is_scored_after_the_last_epoch_when_max_time_ends_the_fit(tmp_path, monkeypatch):
    # Lightning's Timer reads the same fake clock. Epochs of 10 s and the calibration's 0.25 s: the time is up
    # (35.25 s) after the second batch of epoch 3 (step 14). With 2 % no run fits before; epoch 3 is scored after it.
    clock = FakeClock()
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": clock())
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=8, batch_size=8,
                                 log_heatmaps=0, metric_kwargs=METRIC_KWARGS, max_overhead=0.02, clock=clock,
                                 background_delivery=False)  # fmt: skip
    timed = Timed(clock, monitor)
    with pytest.warns(UserWarning, match="its time came to"):
        _, trainer, _ = fit(tmp_path, [monitor, timed], max_epochs=6, max_time={"seconds": 35})
    assert trainer.global_step == 14 and sorted(monitor.history) == [3] and timed.runs == [1, 8]
    assert monitor.history[3]["attr/overhead"] == pytest.approx(2.25 / 35)
    rows = read_metrics_csv(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    assert [float(row["epoch"]) for row in rows if row.get(INSERTION)] == [3]


def test_with_validation_twice_an_epoch_the_final_weights_are_scored(tmp_path):
    # val_check_interval=0.5: validations after steps 2, 4, 6 and 8. The monitor runs once an epoch, at its first
    # validation (a generous budget); the weights after step 8 are new, so they are scored after the fit.
    monitor, timed, _ = _budget_fit(tmp_path, max_overhead=0.9, max_epochs=2, val_check_interval=0.5)
    assert timed.runs == [1, 8, 8, 8]  # the calibration, steps 2 and 6, then the final weights
    rows = read_metrics_csv(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    assert [int(row["step"]) for row in rows if row.get(INSERTION)][-1] == 8
    assert sorted(monitor.history) == [0, 1]


class _SerialWorker:
    """Delivers when the monitor counts the deliveries, as if each had held up training for 1 s (the clock moves)."""

    def __init__(self, clock: FakeClock, **kwargs) -> None:
        self.clock, self.pending = clock, []

    def submit(self, job):
        self.pending.append(job)

    def busy_seconds(self):
        done, self.pending = self.pending, []
        for job in done:
            job()
            self.clock.advance(1.0)
        return [1.0] * len(done)

    def errors(self):
        return []

    def flush(self, timeout=600.0):
        return []


def test_validation_inside_the_only_epoch_keeps_room_for_the_final_run(tmp_path):
    # val_check_interval=0.75 with 4 batches: a validation after step 3, three quarters into the fit. There
    # T = 7.5 s, S = 0.25 s, E = 2 s: S + E = 2.25 <= 0.35 * 7.5, but the fit will last 10 s and S + 2E = 4.25 >
    # 3.5: skip. The final weights are scored after the fit: 2.25 s of 10 s. Counting only completed epochs, the
    # rule saw no progress, ran at step 3 and again at the end: 42.5 %.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="AttributionMonitor: its time")
        monitor, timed, _ = _budget_fit(tmp_path, max_overhead=0.35, max_epochs=1, val_check_interval=0.75)
    assert timed.runs == [1, 8] and sorted(monitor.history) == [0]
    assert monitor.history[0]["attr/overhead"] == pytest.approx(2.25 / 10)


def test_background_deliveries_count_against_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(attribution_monitor, "DeliveryWorker", _SerialWorker)
    clock = FakeClock()
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=8, batch_size=8,
                                 log_heatmaps=0, metric_kwargs=METRIC_KWARGS, max_overhead=0.15,
                                 clock=clock)  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="AttributionMonitor: its time")
        fit(tmp_path, [monitor, Timed(clock, monitor)], max_epochs=6)
    # Runs cost 2 s, deliveries 1 s (fit time T, spent S, estimate E): epoch 1: T = 20, S = 0.25, E = 2 (no
    # delivery seen yet): run, then S = 3.25 with its delivery; from then on E = 3. Epoch 2: 6.25 > 4.5; epoch 3:
    # 6.25 > 6; epoch 4: S + 2E = 9.25 > 0.15 * 60: skip. Epoch 5 (always): S = 6.25. Uncounted, the deliveries
    # would have let epochs 2 and 4 run too, for 12.25 s: 20 % of the fit.
    assert sorted(monitor.history) == [1, 5]
    assert monitor.history[5]["attr/overhead"] == pytest.approx(6.25 / 60)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ranks_take_rank_zeros_decisions(tmp_path):
    # Rank 1's clock never moves, so left to itself it would never find room for a run and the ranks' collective
    # calls would no longer match. Rank 0 decides for both.
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=6, log_heatmaps=0,
                                 metric_kwargs=METRIC_KWARGS, max_overhead=0.5, clock=RankSkewedClock(),
                                 background_delivery=False)  # fmt: skip
    options = {**TRAINER_DEFAULTS, "devices": 2, "strategy": "ddp_spawn"}
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=3, logger=False,
                        callbacks=[monitor, HistoryDump(tmp_path)], **options)  # fmt: skip
    trainer.fit(model(), datamodule=datamodule(num_train=128, num_val=32))
    ranks = [json.loads((tmp_path / f"history_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]
    assert 2 in ranks[0]  # the last epoch


# ------------------------------------------------------------------ background delivery
def _media(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("media/**/*")) if p.is_file()}


def test_background_delivery_writes_the_same_media_as_synchronous_delivery(tmp_path):
    written = {}
    for background in (False, True):
        monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=6, log_heatmaps=2,
                                     metric_kwargs=METRIC_KWARGS, background_delivery=background)  # fmt: skip
        fit(tmp_path / str(background), [monitor], max_epochs=2)
        written[background] = _media(tmp_path / str(background))
    assert set(written[True]) == set(written[False])
    assert any(name.endswith("step_0000004.png") for name in written[True])  # epoch 0's step, epoch 1's too
    assert any(name.endswith("step_0000008.png") for name in written[True])
    for name, data in written[False].items():
        assert written[True][name] == data, name


class _BrokenGrid:
    def __init__(self):
        self.original = viz.attribution_grid

    def __call__(self, *args, **kwargs):
        raise RuntimeError("rendering exploded")


def test_a_rendering_error_warns_or_raises_and_the_fit_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(viz, "attribution_grid", _BrokenGrid())
    warned = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=4, log_heatmaps=2,
                                metric_kwargs=METRIC_KWARGS, on_error="warn")  # fmt: skip
    with pytest.warns(UserWarning, match=r"logging the attribution images failed .*rendering exploded"):
        _, trainer, _ = fit(tmp_path / "warn", [warned], max_epochs=2)
    assert trainer.state.finished and sorted(warned.history) == [0, 1]

    raised = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=4, log_heatmaps=2,
                                metric_kwargs=METRIC_KWARGS, on_error="raise")  # fmt: skip
    with pytest.raises(RuntimeError, match="rendering exploded"):
        fit(tmp_path / "raise", [raised], max_epochs=2)


# ------------------------------------------------------------------ checkpoint selection
def test_checkpoints_and_early_stopping_consider_only_the_epochs_the_monitor_ran(tmp_path):
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=4, log_heatmaps=0,
                                 metric_kwargs=METRIC_KWARGS, every_n_epochs=2)  # fmt: skip
    checkpoint = AttributionCheckpoint(dirpath=tmp_path / "ckpt", monitor=INSERTION, mode="max",
                                       save_top_k=-1, filename="{epoch}")  # fmt: skip
    stopping = AttributionEarlyStopping(monitor=INSERTION, mode="max", patience=1, min_delta=10.0)
    _, trainer, _ = fit(tmp_path, [monitor, checkpoint, stopping], max_epochs=6, enable_checkpointing=True)
    # The monitor ran at epochs 1 and 3; an improvement of 10 is impossible, so the second run ran out of
    # patience (1 run, not 1 epoch) and stopped the fit after epoch 3.
    assert sorted(monitor.history) == [1, 3]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=1.ckpt", "epoch=3.ckpt"]
    assert trainer.current_epoch == 4 and stopping.stopped_epoch == 3
    best = max(monitor.history, key=lambda epoch: monitor.history[epoch][INSERTION])
    assert checkpoint.best_model_path.endswith(f"epoch={best}.ckpt")


def test_a_plain_model_checkpoint_finds_no_score_before_the_first_run(tmp_path):
    # Why the subclasses exist: epoch 0 is skipped, and Lightning refuses a monitored key that was never logged.
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=4, log_heatmaps=0,
                                 metric_kwargs=METRIC_KWARGS, every_n_epochs=2)  # fmt: skip
    plain = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=INSERTION, mode="max")
    with warnings.catch_warnings(), pytest.raises(MisconfigurationException, match="could not find the monitored"):
        warnings.simplefilter("ignore")
        fit(tmp_path, [monitor, plain], max_epochs=2, enable_checkpointing=True)


class _FailsOnce(AttributionMethod):
    """Saliency whose ``fails_at``-th call raises (the first call is the budget's calibration)."""

    fails_at = 1

    def __init__(self, model, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.calls = 0

    def _attribute(self, x, target):
        self.calls += 1
        if self.calls == self.fails_at:
            raise RuntimeError("attribution exploded")
        x.requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.logits(x).gather(1, target[:, None]).sum(), x)
        return gradient.abs().detach()


class _AlwaysFails(_FailsOnce):
    def _attribute(self, x, target):
        raise RuntimeError("attribution exploded")


@pytest.mark.parametrize("fails", ["once", "always"])
def test_a_failing_calibration_leaves_the_error_to_the_run_and_on_error(tmp_path, fails):
    # The calibration fails on rank 0 alone: the monitor runs the epoch instead, whose error path (every rank
    # together) applies `on_error`. Raising from the calibration would bypass it (and strand the other ranks).
    clock = FakeClock()
    factory = _FailsOnce if fails == "once" else _AlwaysFails
    monitor = AttributionMonitor({"flaky": factory}, metrics="insertion_deletion", num_samples=8, batch_size=8,
                                 log_heatmaps=0, metric_kwargs=METRIC_KWARGS, max_overhead=0.9, clock=clock,
                                 on_error="warn", background_delivery=False)  # fmt: skip
    timed = Timed(clock, monitor)
    if fails == "always":
        with pytest.warns(UserWarning) as caught:
            _, trainer, _ = fit(tmp_path, [monitor, timed], max_epochs=3)
        failed = [str(w.message) for w in caught if "attribution exploded" in str(w.message)]
        assert [f"attribution failed at epoch {epoch} (RuntimeError" in message for epoch, message in
                enumerate(failed)] == [True] * 3  # fmt: skip  (the failed last epoch is not retried after the fit)
        assert trainer.state.finished and monitor.history == {}
        return
    _, trainer, _ = fit(tmp_path, [monitor, timed], max_epochs=3)
    assert trainer.state.finished
    assert monitor.runner.methods["flaky"].calls == 4  # the calibration, then epochs 0, 1 and 2
    assert sorted(monitor.history) == [0, 1, 2]
    rows = read_metrics_csv(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    overhead = [float(row["attr/overhead"]) for row in rows if row.get("attr/overhead")]
    assert overhead == pytest.approx([monitor.history[epoch]["attr/overhead"] for epoch in (0, 1, 2)])


def test_with_two_monitors_the_one_that_logs_the_key_decides(tmp_path):
    every = AttributionMonitor({"every": "saliency"}, metrics="insertion_deletion", num_samples=4, log_heatmaps=0,
                               metric_kwargs=METRIC_KWARGS)  # fmt: skip
    second = AttributionMonitor({"second": "saliency"}, metrics="insertion_deletion", num_samples=4,
                                log_heatmaps=0, metric_kwargs=METRIC_KWARGS, every_n_epochs=2)  # fmt: skip
    checkpoint = AttributionCheckpoint(dirpath=tmp_path / "ckpt", monitor="attr/second/insertion_deletion/insertion",
                                       mode="max", save_top_k=-1, filename="{epoch}")  # fmt: skip
    fit(tmp_path, [every, second, checkpoint], max_epochs=4, enable_checkpointing=True)
    assert sorted(every.history) == [0, 1, 2, 3] and sorted(second.history) == [1, 3]
    # Epochs 0 and 2: only the other monitor ran; attr/second/... was not measured on those weights.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=1.ckpt", "epoch=3.ckpt"]


class _FailsThirdTime(_FailsOnce):
    fails_at = 3


def test_a_failed_final_run_leaves_the_epochs_earlier_scores_alone(tmp_path):
    # Calls: the calibration, the run at step 2 (the first validation of the only epoch), then the final weights
    # after the fit, which fails and warns. Epoch 0's entry keeps the step-2 run's scores and overhead.
    clock = FakeClock()
    monitor = AttributionMonitor({"flaky": _FailsThirdTime}, metrics="insertion_deletion", num_samples=8,
                                 batch_size=8, log_heatmaps=0, metric_kwargs=METRIC_KWARGS, max_overhead=0.9,
                                 clock=clock, on_error="warn", background_delivery=False)  # fmt: skip
    with pytest.warns(UserWarning, match="attribution failed at epoch 0"):
        fit(tmp_path, [monitor, Timed(clock, monitor)], max_epochs=1, val_check_interval=0.5)
    assert monitor.runner.methods["flaky"].calls == 3
    # At the step-2 run: S = 0.25 + 2 = 2.25 s over T = 5 s of training.
    assert monitor.history[0]["attr/overhead"] == pytest.approx(2.25 / 5)
