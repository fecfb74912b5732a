"""Batched insertion/deletion against the naive per-image, per-step loop of RISE's single-image evaluation.

Run ``python benchmarks/insertion_deletion.py --help`` for options. The naive loop plays each game on one image
at a time: one forward pass of a single image per step, pixels set through flat indexing into the image. The
batched implementation (``lit_attr.functional.insertion_deletion``) builds every perturbed image with
``torch.where`` on a rank map and sends (images x steps) rows through the model together. Both use RISE's
protocol (insertion from the blur substrate, deletion to zeros, 28 steps, softmax probability of the clean
top-1 class); the table reports wall time and the largest absolute difference between their curves.

On a CPU both implementations are bound by the forward passes themselves, so the speed-up is what batching saves
per row (a few times on two cores); the per-image loop pays the fixed cost of a forward pass once per step.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F

from lit_attr.functional.insertion_deletion import insertion_deletion
from lit_attr.functional.perturbation import rise_blur_kernel

# Chunks of a few dozen rows keep a CPU's caches warm; on a GPU pass a larger --internal-batch-size.
DEFAULTS = {
    "demo": {"images": 16, "internal_batch_size": 32, "repeats": 3},
    "resnet50": {"images": 2, "internal_batch_size": 16, "repeats": 1},
}


def build_model(name: str, device: torch.device) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if name == "demo":
        from lit_attr.models import DemoClassifier

        return DemoClassifier().to(device).eval(), (3, 32, 32)
    if name == "resnet50":
        from torchvision.models import resnet50

        return resnet50(weights=None).to(device).eval(), (3, 224, 224)
    raise ValueError(f"--models accepts demo and resnet50, got {name!r}")


@torch.no_grad()
def naive_games(model: torch.nn.Module, x: torch.Tensor, saliency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RISE-style evaluation: for each image and each step, one single-image forward pass."""
    n, channels, height, width = x.shape
    hw = height * width
    step = math.ceil(hw / 28)
    points = math.ceil(hw / step) + 1
    taps = rise_blur_kernel(x.dtype, x.device)
    kernel2d = torch.outer(taps, taps)
    kernel = torch.zeros(channels, channels, 11, 11, dtype=x.dtype, device=x.device)
    for c in range(channels):
        kernel[c, c] = kernel2d
    curves = {mode: torch.empty(n, points, dtype=torch.float64) for mode in ("ins", "del")}
    for i in range(n):
        img = x[i : i + 1]
        target = int(model(img).argmax())
        order = torch.sort(saliency[i].flatten(), descending=True, stable=True).indices
        blurred = F.conv2d(img, kernel, padding=5)
        for mode, (start, finish) in (("ins", (blurred, img)), ("del", (img, torch.zeros_like(img)))):
            start = start.clone()
            for t in range(points):
                curves[mode][i, t] = float(model(start).softmax(dim=1)[0, target])
                coords = order[step * t : step * (t + 1)]
                start.view(channels, hw)[:, coords] = finish.reshape(channels, hw)[:, coords]
    return curves["ins"], curves["del"]


def timed(fn, args: tuple, kwargs: dict, device: torch.device, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="demo,resnet50", help="comma-separated: demo, resnet50")
    parser.add_argument("--images", type=int, default=None, help="images per model (default: 16 demo, 2 resnet50)")
    parser.add_argument("--internal-batch-size", type=int, default=None, help="rows per forward of the batched run")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per implementation (best kept)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    threads = torch.get_num_threads()
    table = Table(title=f"Insertion/deletion, RISE protocol (28 steps), {device.type}, {threads} threads, {args.dtype}")
    for column in ("model", "images", "naive s", "batched s", "speed-up", "max |difference|"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, shape = build_model(name.strip(), device)
        dtype = getattr(torch, args.dtype)
        model = model.to(dtype)
        images = args.images or DEFAULTS[name]["images"]
        chunk = args.internal_batch_size or DEFAULTS[name]["internal_batch_size"]
        repeats = args.repeats or DEFAULTS[name]["repeats"]
        x = torch.rand(images, *shape, device=device, dtype=dtype)
        attributions = torch.randn(images, *shape, device=device, dtype=dtype)
        saliency = attributions.sum(dim=1)
        # Warm-up, so one-off costs (allocator, kernel selection) are not timed.
        insertion_deletion(model, x[:1], attributions[:1], internal_batch_size=chunk)
        naive_s, (naive_ins, naive_del) = timed(naive_games, (model, x, saliency), {}, device, repeats)
        batched_s, result = timed(
            insertion_deletion, (model, x, attributions), {"internal_batch_size": chunk}, device, repeats
        )
        difference = max(
            float((result.insertion_curve.cpu().double() - naive_ins).abs().max()),
            float((result.deletion_curve.cpu().double() - naive_del).abs().max()),
        )
        table.add_row(
            name,
            str(images),
            f"{naive_s:.3f}",
            f"{batched_s:.3f}",
            f"{naive_s / batched_s:.1f}x",
            f"{difference:.2e}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
