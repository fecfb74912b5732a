"""IG2's three ways to take a path point's two gradients: fused, the authors' two passes, one batched backward.

IG2 needs two gradients at every path point: of the target logit (integrated along the path) and of the distance
between the point's representation and the reference's (the next step of the path). The variants:

* ``fused`` (the default): one forward, two ``torch.autograd.grad`` calls on its graph;
* ``two-pass`` (``fused=False``, the authors' structure): search the whole path, then integrate over its points,
  a forward for each gradient;
* ``batched`` (``_common.BatchedBackwardIG2``, not in the library): one forward, one vmapped backward for both
  gradients (``torch.autograd.grad(..., is_grads_batched=True)``); the library would take it only if it were faster.

The table gives the median seconds of each on random inputs and references (random weights; the cost does not
depend on them), the speed of each against ``fused``, and the largest difference of the maps from ``fused``'s.
Models: the demo classifier at 32x32 and torchvision's resnet18 at ``--size`` (resnet50 at 224x224 is in
``benchmarks/gpu.sh``). On a GPU, ``--device cuda`` runs the same table there.

Run: ``python benchmarks/ig2_variants.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from _common import BatchedBackwardIG2
from rich.console import Console
from rich.table import Table
from torch import nn

from lit_attr.methods import IG2
from lit_attr.models import DemoClassifier

VARIANTS = {"fused": (IG2, {}), "two-pass": (IG2, {"fused": False}), "batched": (BatchedBackwardIG2, {})}


def models(size: int) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "demo (32x32)": (DemoClassifier(num_classes=4).eval(), (3, 32, 32)),
        f"resnet18 ({size}x{size})": (torchvision.models.resnet18(num_classes=10).eval(), (3, size, size)),
    }


def seconds(method: IG2, x: torch.Tensor, references: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    def once() -> torch.Tensor:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return method.attribute(x, target=0, references=references)

    result = once()  # warm-up, and the map compared
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="images per call")
    parser.add_argument("--references", type=int, default=2, help="references per image")
    parser.add_argument("--steps", type=int, default=16, help="path steps")
    parser.add_argument("--size", type=int, default=64, help="resnet18 input size")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    console = Console()
    title = (f"IG2 variants on {device.type} ({torch.get_num_threads()} thread(s)): {args.images} images x "
             f"{args.references} references, {args.steps} steps")  # fmt: skip
    table = Table(title=title)
    for column in ("model", *(f"{name} (s)" for name in VARIANTS), "two-pass / fused", "batched / fused",
                   "max |diff| vs fused"):  # fmt: skip
        table.add_column(column, justify="right")
    for label, (model, shape) in models(args.size).items():
        model = model.to(device)
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(args.images, *shape, generator=generator).to(device)
        references = torch.rand(args.images, args.references, *shape, generator=generator).to(device)
        timings, maps = {}, {}
        for name, (variant, options) in VARIANTS.items():
            method = variant(model, steps=args.steps, input_bounds=(0.0, 1.0), **options)
            timings[name], maps[name] = seconds(method, x, references, args.repeats)
        diff = max(float((maps[name] - maps["fused"]).abs().max()) for name in VARIANTS)
        table.add_row(
            label,
            *(f"{timings[name]:.3f}" for name in VARIANTS),
            f"{timings['fused'] / timings['two-pass']:.2f}x",
            f"{timings['fused'] / timings['batched']:.2f}x",
            f"{diff:.1e}",
        )
    console.print(table)
    console.print("x: speed against fused (above 1: faster than fused).")


if __name__ == "__main__":
    main()
