"""Training-time overhead of ``AttributionMonitor`` on the demo, and how its cost grows with ``num_samples``.

Run ``python benchmarks/monitor_overhead.py --help`` for options. Two measurements:

1. Overhead: the demo classifier trains on the default shapes data (4000 images, batch 64) for ``--epochs``
   epochs without and with the monitor (MFABA + insertion/deletion, 64 probe images, every epoch, 8 heatmaps,
   PNGs through a CSVLogger). The table reports the mean epoch time of each run (training + validation, first
   epoch excluded as warm-up), the monitor's own time per epoch (timed around its hook), and the overhead as a
   percentage of the plain epoch time. The target is <= 15 %.
2. Scaling: on the trained model, one ``trainer.validate`` per ``--scaling`` probe-set size times the monitor's
   hook alone; the per-sample cost should stay flat (the work is linear in num_samples). The hook's time is split
   into attribution (the method's ``attribute``), metric updates (the insertion/deletion games) and delivery
   (rendering the heatmap grid and curves, writing PNGs and the table through a CSVLogger).

Timings depend on the machine's load; on a shared two-core box, ``--threads 1`` avoids OpenMP threads spinning
against other jobs. Weights are checked to be bit-identical across the two training runs, as a side effect.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console
from rich.table import Table

from lit_attr.callbacks import AttributionMonitor
from lit_attr.data import ShapesDataModule
from lit_attr.models import DemoClassifier


class EpochTimer(L.Callback):
    """Wall time of every epoch, from the start of training to the end of its validation (all hooks included)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation before on_train_epoch_end, so this spans both.
        self.times.append(time.perf_counter() - self._start)


class PartTimer(L.Callback):
    """Put after the monitor: once it has built its methods and metrics, time their calls and its delivery."""

    def __init__(self, monitor: AttributionMonitor) -> None:
        self.monitor = monitor
        self.seconds = {"attribution": 0.0, "metric updates": 0.0, "delivery": 0.0}

    def _timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start

        return run

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the monitor's own on_validation_start built its runner. The private _deliver: this script measures
        # the monitor from the inside; nothing else should.
        for method in self.monitor.runner.methods.values():
            method.attribute = self._timed("attribution", method.attribute)
        for metrics in self.monitor.runner.metrics.values():
            for metric in metrics.values():
                metric.score = self._timed("metric updates", metric.score)
                metric.update = self._timed("metric updates", metric.update)
        self.monitor._deliver = self._timed("delivery", self.monitor._deliver)


class HookTimer(L.Callback):
    """Put one before and one after the monitor: callbacks run in list order, so ``stop - start`` is its time."""

    def __init__(self, role: str, shared: dict[str, Any]) -> None:
        self.role, self.shared = role, shared

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        now = time.perf_counter()
        if self.role == "start":
            self.shared["start"] = now
        else:
            self.shared.setdefault("times", []).append(now - self.shared["start"])


def make_monitor(num_samples: int) -> AttributionMonitor:
    return AttributionMonitor(
        ["mfaba"], metrics=("insertion_deletion",), num_samples=num_samples, input_bounds=(0.0, 1.0), log_heatmaps=8
    )


def train(epochs: int, monitor: AttributionMonitor | None, root: str) -> tuple[L.Trainer, DemoClassifier, dict]:
    torch.manual_seed(0)
    datamodule = ShapesDataModule(seed=0)
    model = DemoClassifier(num_classes=datamodule.num_classes)
    epoch_timer, shared = EpochTimer(), {}
    callbacks: list[L.Callback] = [epoch_timer]
    if monitor is not None:
        callbacks += [HookTimer("start", shared), monitor, HookTimer("stop", shared)]
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(root),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer, model, {"epochs": epoch_timer.times, "monitor": shared.get("times", []), "dm": datamodule}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="training epochs per run (the first is warm-up)")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--scaling", type=int, nargs="*", default=[16, 32, 64, 128, 256])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=max(Console().width, 120))
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")

    with tempfile.TemporaryDirectory() as root:
        _, plain_model, plain = train(args.epochs, None, root)
        monitor = make_monitor(args.num_samples)
        _, watched_model, watched = train(args.epochs, monitor, root)
    plain_state, watched_state = plain_model.state_dict(), watched_model.state_dict()
    identical = plain_state.keys() == watched_state.keys() and all(
        torch.equal(plain_state[key], watched_state[key]) for key in plain_state
    )
    plain_epoch = statistics.mean(plain["epochs"][1:])
    watched_epoch = statistics.mean(watched["epochs"][1:])
    monitor_time = statistics.mean(watched["monitor"][1:])
    table = Table(title=f"AttributionMonitor overhead (MFABA + insertion/deletion, {args.num_samples} probes)")
    for column in (
        "epoch w/o monitor [s]",
        "epoch with monitor [s]",
        "monitor hook [s]",
        "overhead (hook)",
        "overhead (epoch diff)",
        "weights identical",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        f"{plain_epoch:.2f}",
        f"{watched_epoch:.2f}",
        f"{monitor_time:.2f}",
        f"{100 * monitor_time / plain_epoch:.1f} %",
        f"{100 * (watched_epoch - plain_epoch) / plain_epoch:.1f} %",
        str(identical),
    )
    console.print(table)

    scaling = Table(title="Monitor cost vs num_samples (one run on the trained model, after a warm-up run)")
    parts = ("attribution", "metric updates", "delivery")
    for column in ("num_samples", "monitor hook [s]", "per sample [ms]", "% of a plain epoch"):
        scaling.add_column(column, justify="right")
    for part in parts:
        scaling.add_column(f"{part} [s]", justify="right", no_wrap=True)
    datamodule = plain["dm"]
    with tempfile.TemporaryDirectory() as root:
        for run, n in enumerate([args.scaling[0], *args.scaling]):
            shared: dict[str, Any] = {}
            monitor = make_monitor(n)
            timer = PartTimer(monitor)
            trainer = L.Trainer(
                accelerator="cpu",
                devices=1,
                logger=CSVLogger(root),
                inference_mode=False,
                callbacks=[HookTimer("start", shared), monitor, HookTimer("stop", shared), timer],
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.validate(plain_model, datamodule=datamodule, verbose=False)
            if run == 0:  # warm-up: first-use costs (probe loading, allocator, matplotlib) are not timed
                continue
            seconds = shared["times"][0]
            row = [str(n), f"{seconds:.2f}", f"{1000 * seconds / n:.1f}", f"{100 * seconds / plain_epoch:.1f} %"]
            scaling.add_row(*row, *(f"{timer.seconds[part]:.2f}" for part in parts))
    console.print(scaling)


if __name__ == "__main__":
    main()
