"""The one-shot GPU benchmark behind ``benchmarks/gpu.sh``: one table, in under 8 minutes on one GPU.

Rows (all on ``cuda:0``, random weights unless said otherwise):

* every generic method on torchvision's resnet50 at 224x224, batch 16: images/s and peak memory (the methods'
  defaults, except integrated gradients at 50 steps and IG2 at ``--ig2-steps``, 4 references);
* insertion/deletion (RISE protocol, 28 steps) on resnet50, batched against the naive per-sample, per-step loop of
  ``benchmarks/insertion_deletion.py`` (expected about 10x on a GPU), with the largest difference of the AUCs;
* IG2 fused against the authors' two passes and against one batched (vmapped) backward for both gradients, same
  output (``_common.BatchedBackwardIG2``; the library takes it only if this row shows it faster);
* MFABA's images/s on resnet50 against the paper's 51.58 (ResNet-50, their GPU);
* the monitor's overhead on a resnet18 fit of the shapes data (3 epochs, MFABA + insertion/deletion, 64 probes).

On a machine without CUDA it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _common import BatchedBackwardIG2  # noqa: E402
from insertion_deletion import naive_games  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from throughput import PeakMemory, build_model, time_method  # noqa: E402

from lit_attr.functional import insertion_deletion  # noqa: E402
from lit_attr.methods import IG2, available_methods, get_method  # noqa: E402

MFABA_PAPER_IMAGES_PER_SECOND = 51.58


def method_rows(table: Table, device: torch.device, args: argparse.Namespace) -> None:
    model, shape = build_model("resnet50", device)
    x = torch.rand(args.batch_size, *shape, device=device)
    options = {
        "integrated_gradients": {"n_steps": 50},
        "ig2": {
            "steps": args.ig2_steps,
            "n_references": 4,
            "reference_pool": (torch.rand(32, *shape, device=device), torch.arange(32, device=device) % 1000),
        },
    }
    for name in available_methods(model):
        method = get_method(name, model, input_bounds=(0.0, 1.0), **options.get(name, {}))
        try:
            with PeakMemory(device) as memory:
                times = time_method(method, x, repeats=1, warmup=1, device=device)
        except RuntimeError as error:  # e.g. Captum's DeepLift on torchvision ResNets (ReLU modules reused)
            table.add_row(f"{name} (resnet50, batch {args.batch_size})", "n/a", str(error).split(".")[0][:50])
            continue
        seconds = statistics.median(times)
        table.add_row(
            f"{name} (resnet50, batch {args.batch_size})", f"{args.batch_size / seconds:.1f} images/s",
            f"peak {memory.peak:.0f} MiB",
        )  # fmt: skip
        if name == "mfaba":
            ratio = args.batch_size / seconds / MFABA_PAPER_IMAGES_PER_SECOND
            table.add_row("mfaba vs the paper's 51.58 images/s", f"{ratio:.2f}x", "their GPU, their batch")


def games_row(table: Table, device: torch.device) -> None:
    model, shape = build_model("resnet50", device)
    x = torch.rand(4, *shape, device=device)
    saliency = get_method("saliency", model).attribute(x).sum(dim=1)

    def timed(fn):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        return out, time.perf_counter() - start

    timed(lambda: insertion_deletion(model, x, saliency, preset="rise"))  # warm-up
    batched, batched_seconds = timed(lambda: insertion_deletion(model, x, saliency, preset="rise"))
    (naive_ins, naive_del), naive_seconds = timed(lambda: naive_games(model, x, saliency))
    diff = max(
        (batched.insertion_curve.double().cpu() - naive_ins).abs().max().item(),
        (batched.deletion_curve.double().cpu() - naive_del).abs().max().item(),
    )
    table.add_row(
        "insertion/deletion batched vs naive (resnet50, 4 images)",
        f"{naive_seconds / batched_seconds:.1f}x",
        f"{batched_seconds:.2f} s vs {naive_seconds:.2f} s, curves' max |diff| {diff:.1e}",
    )


def ig2_row(table: Table, device: torch.device, args: argparse.Namespace) -> None:
    model, shape = build_model("resnet50", device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, *shape, generator=generator).to(device)
    references = torch.rand(4, 4, *shape, generator=generator).to(device)
    seconds, outputs = {}, {}
    variants = {"fused": (IG2, {}), "two-pass": (IG2, {"fused": False}), "batched": (BatchedBackwardIG2, {})}
    for name, (variant, options) in variants.items():
        method = variant(model, steps=args.ig2_steps, input_bounds=(0.0, 1.0), **options)
        outputs[name] = method.attribute(x, target=0, references=references)  # warm-up, and the result compared
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        method.attribute(x, target=0, references=references)
        torch.cuda.synchronize(device)
        seconds[name] = time.perf_counter() - start
    rows = f"resnet50, 4 images x 4 references, {args.ig2_steps} steps"
    for other in ("two-pass", "batched"):
        diff = (outputs["fused"] - outputs[other]).abs().max().item()
        table.add_row(
            f"ig2 fused vs {other} ({rows})",
            f"{seconds[other] / seconds['fused']:.2f}x",
            f"{seconds['fused']:.1f} s vs {seconds[other]:.1f} s, max |diff| {diff:.1e}",
        )


def monitor_row(table: Table) -> None:
    import lightning as L

    from lit_attr.callbacks import AttributionMonitor
    from lit_attr.data import ShapesDataModule
    from lit_attr.models import TorchvisionClassifier

    fits = {}
    for watched in (False, True):
        torch.manual_seed(0)
        callbacks = []
        if watched:
            callbacks = [AttributionMonitor(["mfaba"], metrics="insertion_deletion", num_samples=64,
                                            input_bounds=(0.0, 1.0), log_heatmaps=0)]  # fmt: skip
        trainer = L.Trainer(max_epochs=3, accelerator="gpu", devices=1, logger=False, callbacks=callbacks,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0)  # fmt: skip
        model = TorchvisionClassifier("resnet18", num_classes=4)
        start = time.perf_counter()
        trainer.fit(model, datamodule=ShapesDataModule(seed=0))
        fits[watched] = time.perf_counter() - start
    overhead = (fits[True] - fits[False]) / fits[False]
    table.add_row("monitor overhead (resnet18 fit, 3 epochs, 64 probes)", f"{100 * overhead:.1f} %",
                  f"{fits[True]:.1f} s vs {fits[False]:.1f} s plain")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ig2-steps", type=int, default=201)
    parser.add_argument("--skip", nargs="*", default=[], choices=["methods", "games", "ig2", "monitor"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.sh: no CUDA device here; nothing was measured (run it on a machine with a GPU).")
        return
    device = torch.device("cuda:0")
    torch.backends.cudnn.benchmark = True
    table = Table(title=f"lit-attr on {torch.cuda.get_device_name(device)} (torch {torch.__version__})")
    for column in ("measurement", "value", "details"):
        table.add_column(column, justify="left" if column != "value" else "right")
    started = time.perf_counter()
    steps = {"methods": lambda: method_rows(table, device, args), "games": lambda: games_row(table, device),
             "ig2": lambda: ig2_row(table, device, args), "monitor": lambda: monitor_row(table)}  # fmt: skip
    for name, step in steps.items():
        if name not in args.skip:
            step()
    table.caption = f"measured in {time.perf_counter() - started:.0f} s"
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
