"""Throughput of every registered attribution method: images/s, passes per image, peak memory.

Run ``python benchmarks/throughput.py --help`` for options; ``make bench`` runs the defaults (demo CNN at 32x32).
``--report mfaba`` prints the MFABA comparison instead: MFABA sharp/smooth against IG-50, BIG at the paper's
cost and AGI on the same images, MFABA's steps to flip, its efficiency against the limit of (mean steps + 1)
forward+backward passes, and images/s at batch 1, 8 and 64. ``--report ig2`` compares IG2's fused loop with the
authors' two passes (same output, images/s, peak memory at two ``internal_batch_size`` values).

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


def build_model(name: str, device: torch.device, train: bool = False) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if name == "demo":
        from lit_attr.models import DemoClassifier, train_demo_classifier

        model = train_demo_classifier()[0] if train else DemoClassifier()
        return model.to(device).eval(), (3, 32, 32)
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


def pass_time(model: torch.nn.Module, x: torch.Tensor, repeats: int, device: torch.device) -> float:
    """Median seconds of one forward+backward (input gradient of the summed top logit) at x's batch size."""
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        z = x.clone().requires_grad_(True)
        torch.autograd.grad(model(z).softmax(1).amax(1).sum(), z)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def mfaba_report(args: argparse.Namespace, device: torch.device) -> None:
    model, shape = build_model(args.model, device, train=args.model == "demo")
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    if args.model == "demo":
        from lit_attr.data import ShapesDataset

        pool = ShapesDataset(max(64, args.batch_size), seed=123).images
    else:
        pool = torch.rand(max(64, args.batch_size), *shape, generator=generator)
    x = pool[: args.batch_size].to(device)
    console = Console(width=140)
    contenders = [
        ("mfaba (sharp)", "mfaba", {"variant": "sharp"}),
        ("mfaba (smooth)", "mfaba", {"variant": "smooth"}),
        ("integrated_gradients (50)", "integrated_gradients", {"n_steps": 50}),
        ("big (paper cost, dedupe off)", "big", {"dedupe_attacks": False}),
        ("agi (1 false class)", "agi", {}),
    ]
    if args.skip_baselines:  # e.g. to re-measure MFABA's efficiency on a slow device without BIG's 400 passes
        contenders = contenders[:2]
    table = Table(title=f"MFABA vs baselines: {args.model} {shape}, batch {args.batch_size}, {device}")
    for col in ("method", "images/s", "s/image", "x mfaba sharp time", "mean steps to flip", "flipped"):
        table.add_column(col, justify="left" if col == "method" else "right")
    sharp_time, sharp_steps = None, None
    for label, name, kwargs in contenders:
        method = get_method(name, model, input_bounds=(0.0, 1.0), **kwargs)
        median = statistics.median(time_method(method, x, args.repeats, args.warmup, device))
        steps = flipped = ""
        if name == "mfaba":
            _, info = method.attribute(x, return_info=True)
            steps, flipped = f"{info['steps'].float().mean():.1f}", f"{info['flipped'].float().mean():.0%}"
            if sharp_time is None:
                sharp_time, sharp_steps = median, float(info["steps"].float().mean())
        table.add_row(label, f"{len(x) / median:.1f}", f"{median / len(x):.4f}", f"{median / sharp_time:.1f}", steps,
                      flipped)
    console.print(table)

    limit = (sharp_steps + 1) * pass_time(model, x, args.repeats, device)
    console.print(
        f"MFABA sharp efficiency: measured {sharp_time:.3f} s / limit {limit:.3f} s "
        f"((mean steps + 1) = {sharp_steps + 1:.1f} forward+backward passes at batch {len(x)}) "
        f"= {sharp_time / limit:.2f}"
    )

    scaling = Table(title="MFABA (sharp) images/s by batch size")
    for col in ("batch", "images/s", "mean steps"):
        scaling.add_column(col, justify="right")
    for batch in args.scaling_batches:
        xb = pool[:batch].to(device)
        method = get_method("mfaba", model, input_bounds=(0.0, 1.0))
        median = statistics.median(time_method(method, xb, args.repeats, args.warmup, device))
        _, info = method.attribute(xb, return_info=True)
        scaling.add_row(str(batch), f"{batch / median:.1f}", f"{info['steps'].float().mean():.1f}")
    console.print(scaling)


def ig2_report(args: argparse.Namespace, device: torch.device) -> None:
    model, shape = build_model(args.model, device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, *shape, generator=generator).to(device)
    refs = torch.rand(args.batch_size, args.references, *shape, generator=generator).to(device)
    rows = args.batch_size * args.references
    table = Table(title=f"IG2 fused vs two-pass: {args.model} {shape}, batch {args.batch_size} x {args.references} "
                        f"references, {args.ig2_steps} steps, {device}")
    for col in ("implementation", "internal_batch_size", "images/s", "peak MiB", "max |diff| vs fused"):
        table.add_column(col, justify="left" if col == "implementation" else "right")
    for ibs in (rows, max(1, rows // 4)):
        results = {}
        for fused in (True, False):
            method = get_method("ig2", model, steps=args.ig2_steps, fused=fused, internal_batch_size=ibs,
                                input_bounds=(0.0, 1.0))
            with PeakMemory(device) as memory:
                times = []
                for i in range(args.warmup + args.repeats):
                    start = time.perf_counter()
                    results[fused] = method.attribute(x, target=0, references=refs)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if i >= args.warmup:
                        times.append(time.perf_counter() - start)
            median = statistics.median(times)
            results[(fused, "ips")] = len(x) / median
            diff = (results[False] - results[True]).abs().max().item() if not fused else 0.0
            table.add_row("fused" if fused else "two-pass (authors)", str(ibs), f"{len(x) / median:.2f}",
                          f"{memory.peak:.0f}", f"{diff:.2e}")
        table.add_row("", "", f"speed-up {results[(True, 'ips')] / results[(False, 'ips')]:.2f}x", "", "")
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", choices=["demo", "resnet50"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--report", choices=["all", "mfaba", "ig2"], default="all", help="which table to print")
    parser.add_argument("--references", type=int, default=4, help="for --report ig2: references per sample")
    parser.add_argument("--ig2-steps", type=int, default=201, help="for --report ig2: path steps")
    parser.add_argument("--skip-baselines", action="store_true", help="--report mfaba: MFABA rows only")
    parser.add_argument("--scaling-batches", type=int, nargs="*", default=[1, 8, 64], help="for --report mfaba")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.report != "all":
        {"mfaba": mfaba_report, "ig2": ig2_report}[args.report](args, device)
        return
    model, shape = build_model(args.model, device)
    x = torch.rand(args.batch_size, *shape, device=device)
    counter = PassCounter(model)
    table = Table(title=f"{args.model} {shape}, batch {args.batch_size}, {device} ({torch.get_num_threads()} threads)")
    for col in ("method", "images/s", "median s/batch", "fwd/image", "bwd/image", "peak MiB"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name in args.methods or available_methods():
        kwargs = FAST.get(name, {})
        if name == "ig2":  # a random pool of references with random labels
            kwargs = {"reference_pool": (torch.rand(64, *shape, device=device), torch.arange(64) % 3)}
        method = get_method(name, model, input_bounds=(0.0, 1.0), **kwargs)
        try:
            with PeakMemory(device) as memory:
                times = time_method(method, x, args.repeats, args.warmup, device)
        except RuntimeError as err:  # e.g. Captum's DeepLift on torchvision ResNets (ReLU modules reused)
            table.add_row(name, "n/a", str(err).split(".")[0][:60], "", "", "")
            continue
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
