"""Training-time overhead of ``AttributionMonitor`` on the demo: per epoch, within a budget, and per probe.

Run ``python benchmarks/monitor_overhead.py --help`` for options. Four tables:

1. Overhead: the demo classifier trains on the default shapes data (4000 images, batch 64) for ``--epochs``
   epochs without and with the monitor (MFABA + insertion/deletion, 64 probe images, every epoch, 8 heatmaps,
   PNGs through a CSVLogger, delivery on its background thread). Mean epoch time of each run (first epoch
   excluded as warm-up), the monitor's hook time and its delivery's time per epoch, and the overhead as a
   percentage of the plain epoch.
2. Budget: the same fit with ``max_overhead`` = each of ``--budgets``, ``--repeats`` times, interleaved with
   plain fits: the epochs the monitor ran, the overhead it measured itself (``attr/overhead`` of its last run:
   its time over the fit's own, without that run's delivery), the same ratio timed from outside with every
   delivery (hooks around the monitor's and a timer on its delivery), and the wall-clock overhead of the whole
   ``trainer.fit`` call against the plain fit of the same repeat; medians, with their range. The target: within
   the budget plus 2 points, judged on the own and the outside figures, both taken within one fit. The paired
   wall figure is the cross-check that nothing outside the monitor's hooks costs time, but it compares two fits,
   and identical plain fits differ by a few seconds on a shared machine (their range is printed). The floor is
   the share of the plain fit taken by one run and its delivery, below which no budget can go (the run after the
   last epoch always happens, and the fit returns once its delivery is done).
3. Scaling: on the trained model, one ``trainer.validate`` per ``--scaling`` probe-set size times the monitor's
   hook alone, split into attribution (the methods' ``attribute``), metric updates (the games) and delivery.
4. Necessary passes: during the 64-probe run, every forward pass through the model is counted with a hook (its rows,
   and whether a backward follows); a bare forward, and a bare forward + input-gradient backward, are timed at the
   same batch sizes. The monitor's compute time over the time of those passes alone is its bookkeeping factor
   (target <= 1.25).

Timings depend on the machine's load; on a shared two-core box, ``--threads 1`` avoids OpenMP threads spinning
against other jobs. Weights are checked to be bit-identical across the training runs, as a side effect.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
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


def timed(fn: Callable[..., Any], record: Callable[[float], Any]) -> Callable[..., Any]:
    """``fn``, handing the seconds of each call to ``record``."""

    def run(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record(time.perf_counter() - start)

    return run


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
    """Put after the monitor: once it has built its runner, time its methods, its metrics and its delivery."""

    def __init__(self, monitor: AttributionMonitor) -> None:
        self.monitor = monitor
        self.seconds = {"attribution": 0.0, "metric updates": 0.0, "delivery": 0.0}

    def _timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        return timed(fn, lambda seconds: self.seconds.update({part: self.seconds[part] + seconds}))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the monitor's own on_validation_start built its runner. The private _submit: this script measures
        # the monitor from the inside; nothing else should.
        for method in self.monitor.runner.methods.values():
            method.attribute = self._timed("attribution", method.attribute)
        for metrics in self.monitor.runner.metrics.values():
            for metric in metrics.values():
                metric.score = self._timed("metric updates", metric.score)
                metric.update = self._timed("metric updates", metric.update)
        time_jobs(self.monitor, self._timed("delivery", lambda job: job()))


class PassCounter(L.Callback):
    """Counts the forward passes through the model during the monitor's run: (rows, gradients on) -> calls."""

    def __init__(self) -> None:
        self.passes: Counter[tuple[int, bool]] = Counter()
        self._handle: Any = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before the monitor's hook (callbacks run in list order): count only what the monitor does.
        def count(module: Any, args: tuple, output: Any) -> None:
            self.passes[(args[0].shape[0], torch.is_grad_enabled() and output.requires_grad)] += 1

        self._handle = pl_module.register_forward_hook(count)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()


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


def make_monitor(num_samples: int, max_overhead: float | None = None) -> AttributionMonitor:
    return AttributionMonitor(
        ["mfaba"],
        metrics=("insertion_deletion",),
        num_samples=num_samples,
        input_bounds=(0.0, 1.0),
        log_heatmaps=8,
        max_overhead=max_overhead,
    )


def time_jobs(monitor: AttributionMonitor, run: Callable[[Callable[[], None]], None]) -> None:
    """Run every delivery job ``monitor`` submits (on its background thread, or at once) through ``run``."""
    submit = monitor._submit
    monitor._submit = lambda job, when: submit(lambda: run(job), when)


def time_deliveries(monitor: AttributionMonitor) -> list[float]:
    """Time every delivery of ``monitor`` (the jobs it submits to its background thread), as PartTimer does."""
    seconds: list[float] = []
    time_jobs(monitor, timed(lambda job: job(), seconds.append))
    return seconds


def train(epochs: int, monitor: AttributionMonitor | None, root: str) -> tuple[L.Trainer, DemoClassifier, dict]:
    """One fit; ``fit`` is the wall time of the whole ``trainer.fit`` call, as its user waits for it."""
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
    deliveries = [] if monitor is None else time_deliveries(monitor)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    timing = {"epochs": epoch_timer.times, "fit": fit_seconds, "monitor": shared.get("times", [])}
    return trainer, model, {**timing, "deliveries": deliveries, "dm": datamodule}


def bare_pass_seconds(model: DemoClassifier, rows: int, backward: bool, repeats: int = 5) -> float:
    """Median time of one forward (with an input-gradient backward) on ``rows`` images, as the methods do it."""
    model.eval()
    x = torch.rand(rows, 3, 32, 32)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        if backward:
            inputs = x.clone().requires_grad_(True)
            torch.autograd.grad(model(inputs).logsumexp(dim=1).sum(), inputs)
        else:
            with torch.no_grad():
                model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa)


def _spread(values: list[float], scale: float) -> str:
    return f"[{scale * min(values):.1f}, {scale * max(values):.1f}]" if len(values) > 1 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per run (the first is warm-up)")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--budgets", type=float, nargs="*", default=[0.05, 0.1, 0.2])
    parser.add_argument("--repeats", type=int, default=3, help="plain and budgeted fits, interleaved")
    parser.add_argument("--scaling", type=int, nargs="*", default=[16, 64, 256])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=max(Console().width, 160))
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")

    with tempfile.TemporaryDirectory() as root:
        _, plain_model, plain = train(args.epochs, None, root)
        monitor = make_monitor(args.num_samples)
        _, watched_model, watched = train(args.epochs, monitor, root)
        # Plain and budgeted fits interleaved, repeat after repeat: each budgeted fit is set against the plain fit
        # of its own repeat, so slow drifts of the machine's speed cancel out of the wall-clock figure.
        plain_fits = [plain["fit"]]
        fits: dict[float, list[dict[str, Any]]] = {budget: [] for budget in args.budgets}
        for repeat in range(args.repeats):
            if repeat:
                plain_fits.append(train(args.epochs, None, root)[2]["fit"])
            for budget in args.budgets:
                limited = make_monitor(args.num_samples, max_overhead=budget)
                _, budget_model, timing = train(args.epochs, limited, root)
                # Every run, the calibration and every delivery, timed from outside the monitor.
                spent = sum(timing["monitor"]) + sum(timing["deliveries"])
                fits[budget].append({
                    "epochs": sorted(limited.history),
                    "own": limited.history[max(limited.history)]["attr/overhead"],
                    "outside": spent / (timing["fit"] - spent),
                    "fit": timing["fit"],
                    "wall": (timing["fit"] - plain_fits[-1]) / plain_fits[-1],
                    "identical": same_weights(plain_model, budget_model),
                })
    plain_epoch = statistics.mean(plain["epochs"][1:])
    watched_epoch = statistics.mean(watched["epochs"][1:])
    monitor_time = statistics.mean(watched["monitor"][1:])
    delivery_time = statistics.mean(watched["deliveries"][1:])
    table = Table(title=f"AttributionMonitor overhead (MFABA + insertion/deletion, {args.num_samples} probes)")
    for column in ("epoch w/o monitor (s)", "epoch with monitor (s)", "monitor hook (s)", "delivery, background (s)",
                   "overhead (hook)", "overhead (epoch diff)", "weights identical"):  # fmt: skip
        table.add_column(column, justify="right")
    table.add_row(
        f"{plain_epoch:.2f}",
        f"{watched_epoch:.2f}",
        f"{monitor_time:.2f}",
        f"{delivery_time:.2f}",
        f"{100 * monitor_time / plain_epoch:.1f} %",
        f"{100 * (watched_epoch - plain_epoch) / plain_epoch:.1f} %",
        str(same_weights(plain_model, watched_model)),
    )
    console.print(table)

    plain_fit = statistics.median(plain_fits)
    title = (f"{args.epochs}-epoch fits within a budget (max_overhead): medians of {args.repeats} repeat(s), "
             f"[min, max] below; plain fit {plain_fit:.1f} s {_spread(plain_fits, 1)}")  # fmt: skip
    budgets = Table(title=title)
    for column in ("max_overhead", "epochs scored", "attr/overhead (own)", "runs + deliveries / rest (outside)",
                   "fit (s)", "overhead (wall, paired)", "floor: last run + delivery",
                   "own / outside within budget + 2 pts", "weights identical"):  # fmt: skip
        budgets.add_column(column, justify="right")
    # The run after the last epoch always happens, and the fit returns once it is delivered: no budget gets below
    # that share of the fit.
    floor = (monitor_time + delivery_time) / plain_fit
    for budget, runs in fits.items():
        figures = {key: [run[key] for run in runs] for key in ("own", "outside", "fit", "wall")}
        own, outside = statistics.median(figures["own"]), statistics.median(figures["outside"])
        schedules = Counter(str(run["epochs"]) for run in runs)
        budgets.add_row(
            f"{budget:.2f}",
            ", ".join(f"{epochs} x{count}" for epochs, count in schedules.items()),
            f"{100 * own:.1f} % {_spread(figures['own'], 100)}",
            f"{100 * outside:.1f} % {_spread(figures['outside'], 100)}",
            f"{statistics.median(figures['fit']):.1f}",
            f"{100 * statistics.median(figures['wall']):.1f} % {_spread(figures['wall'], 100)}",
            f"{100 * floor:.1f} %",
            f"{own <= budget + 0.02} / {outside <= budget + 0.02}",
            str(all(run["identical"] for run in runs)),
        )
    console.print(budgets)

    scaling = Table(title="Monitor cost vs num_samples (one run on the trained model, after a warm-up run)")
    parts = ("attribution", "metric updates", "delivery")
    for column in ("num_samples", "monitor hook (s)", "per sample (ms)", "% of a plain epoch"):
        scaling.add_column(column, justify="right")
    for part in parts:
        scaling.add_column(f"{part} (s)", justify="right", no_wrap=True)
    datamodule = plain["dm"]
    passes: Counter[tuple[int, bool]] = Counter()
    compute_seconds = 0.0
    with tempfile.TemporaryDirectory() as root:
        for run, n in enumerate([args.scaling[0], *args.scaling]):
            shared: dict[str, Any] = {}
            monitor = make_monitor(n)
            # Synchronous delivery here: its time is measured as a part of its own.
            monitor.background_delivery = False
            timer, counter = PartTimer(monitor), PassCounter()
            trainer = L.Trainer(
                accelerator="cpu",
                devices=1,
                logger=CSVLogger(root),
                inference_mode=False,
                callbacks=[counter, HookTimer("start", shared), monitor, HookTimer("stop", shared), timer],
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.validate(plain_model, datamodule=datamodule, verbose=False)
            if run == 0:  # warm-up: first-use costs (probe loading, allocator, matplotlib) are not timed
                continue
            seconds = shared["times"][0]
            row = [str(n), f"{seconds:.2f}", f"{1000 * seconds / n:.1f}", f"{100 * seconds / plain_epoch:.1f} %"]
            scaling.add_row(*row, *(f"{timer.seconds[part]:.2f}" for part in parts))
            if n == args.num_samples:
                passes = counter.passes
                compute_seconds = timer.seconds["attribution"] + timer.seconds["metric updates"]
    console.print(scaling)

    if passes:
        necessary = Table(title=f"Per-probe cost against the necessary passes ({args.num_samples} probes)")
        for column in ("rows per pass", "backward", "passes", "bare pass (ms)", "total (s)"):
            necessary.add_column(column, justify="right")
        total = 0.0
        for (rows, backward), calls in sorted(passes.items()):
            bare = bare_pass_seconds(plain_model, rows, backward)
            total += calls * bare
            necessary.add_row(str(rows), str(backward), str(calls), f"{1000 * bare:.2f}", f"{calls * bare:.3f}")
        console.print(necessary)
        console.print(
            f"necessary passes {total:.2f} s, monitor compute (attribution + metrics) {compute_seconds:.2f} s: "
            f"factor {compute_seconds / total:.2f} (target <= 1.25); "
            f"{1000 * compute_seconds / args.num_samples:.1f} ms per probe"
        )


if __name__ == "__main__":
    main()
