"""Throughput of every registered attribution method: images/s, passes per image, peak memory.

Run ``python benchmarks/throughput.py --help`` for options; ``make bench`` runs the defaults (demo CNN at 32x32).

Forward and backward passes are counted with hooks on the model: a forward hook adds the rows it sees, and a
tensor hook on the output adds the rows whenever a gradient flows back through it. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and the peak resident-set growth (sampled every millisecond) on CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch
from rich.console import Console
from rich.table import Table

from lit_attr.methods import available_methods, get_method

FAST = {"integrated_gradients": {"n_steps": 50}}


def build_model(name: str, device: torch.device) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if name == "demo":
        from lit_attr.models import DemoClassifier

        return DemoClassifier().to(device).eval(), (3, 32, 32)
    if name == "resnet50":
        from torchvision.models import resnet50

        return resnet50(weights=None).to(device).eval(), (3, 224, 224)
    raise ValueError(f"--model must be demo or resnet50, got {name!r}")


class PassCounter:
    """Counts forward and backward rows through ``model``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward_rows = 0
        self.backward_rows = 0
        self.handle = model.register_forward_hook(self._on_forward)

    def _on_forward(self, module, inputs, output) -> None:
        rows = output.shape[0]
        self.forward_rows += rows
        if output.requires_grad:
            output.register_hook(lambda grad: self._on_backward(rows))

    def _on_backward(self, rows: int) -> None:
        self.backward_rows += rows

    def reset(self) -> None:
        self.forward_rows = self.backward_rows = 0


def resident_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry, in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = resident_bytes()
            self._stop = threading.Event()
            self._max = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, resident_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = (self._max - self._base) / 2**20


def time_method(method, x, repeats: int, warmup: int, device: torch.device) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        method.attribute(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", choices=["demo", "resnet50"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model, shape = build_model(args.model, device)
    x = torch.rand(args.batch_size, *shape, device=device)
    counter = PassCounter(model)
    table = Table(title=f"{args.model} {shape}, batch {args.batch_size}, {device} ({torch.get_num_threads()} threads)")
    for col in ("method", "images/s", "median s/batch", "fwd/image", "bwd/image", "peak MiB"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name in args.methods or available_methods():
        method = get_method(name, model, input_bounds=(0.0, 1.0), **FAST.get(name, {}))
        with PeakMemory(device) as memory:
            times = time_method(method, x, args.repeats, args.warmup, device)
        counter.reset()
        method.attribute(x)
        # attribute() runs one extra forward (no grad) to resolve and check targets.
        median = statistics.median(times)
        table.add_row(
            name,
            f"{args.batch_size / median:.1f}",
            f"{median:.3f}",
            f"{counter.forward_rows / args.batch_size:.1f}",
            f"{counter.backward_rows / args.batch_size:.1f}",
            f"{memory.peak:.0f}",
        )
    Console(width=140).print(table)
    print("fwd/image includes the one no-grad forward that resolves and checks targets.")


if __name__ == "__main__":
    main()
