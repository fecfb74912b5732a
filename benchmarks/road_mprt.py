"""ROAD batched vs a per-image direct-solve loop; eMPRT and sMPRT seconds per image against MPRT's.

Run ``python benchmarks/road_mprt.py --help`` for options. Two tables:

1. **ROAD.** :func:`lit_attr.functional.road` (all images x percentiles x MoRF/LeRF imputed together by conjugate
   gradients on the stencil, then classified in chunks) against a reference loop in the style of the ROAD authors'
   code: for every percentile and order, every image is imputed on its own by a sparse system solved with SciPy's
   ``spsolve`` (built with vectorised NumPy), then the batch is classified. Both with noise 0, so the curves must
   agree (``max |diff|``); the ratio is reference seconds / batched seconds. Maps: saliency (scattered removed
   regions) and saliency blurred by RISE's 11x11 kernel (large connected holes, the slow case for an iterative
   solver). Models: the demo classifier on ``--demo-images`` validation images (trained as the test suite trains
   it, or loaded from ``--checkpoint``), and torchvision's resnet50 with random weights on ``--resnet-images``
   random 224x224 images.
2. **MPRT variants** on the demo classifier, saliency, ``--demo-images`` images: seconds per image of
   ``ParameterRandomization`` (top-down and bottom-up, every stage), ``EfficientMPRT`` and ``SmoothMPRT``
   (``--noise-copies`` copies), with their scores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from _common import trained_demo
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from lit_attr.functional import blur, rank_map, road
from lit_attr.functional.road import DEFAULT_PERCENTILES, road_removed_counts
from lit_attr.methods import get_method
from lit_attr.metrics import EfficientMPRT, ParameterRandomization, SmoothMPRT

SEED = 0
_OFFSETS = [(dh, dw, 1 / 6 if dh == 0 or dw == 0 else 1 / 12) for dh in (-1, 0, 1) for dw in (-1, 0, 1) if dh or dw]


def direct_imputation(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """ROAD's system for one (C, H, W) image, assembled with NumPy index arithmetic and solved with spsolve."""
    channels, height, width = image.shape
    flat_keep = keep.reshape(-1)
    removed = np.flatnonzero(~flat_keep)
    position = np.full(height * width, -1)
    position[removed] = np.arange(removed.size)
    rows_h, rows_w = np.divmod(removed, width)
    values = image.reshape(channels, -1)
    diagonal = np.zeros(removed.size)
    rhs = np.zeros((removed.size, channels))
    entries_i, entries_j, entries_v = [], [], []
    for dh, dw, weight in _OFFSETS:
        hh, ww = rows_h + dh, rows_w + dw
        inside = (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
        diagonal[inside] += weight
        neighbour = hh[inside] * width + ww[inside]
        rows = np.flatnonzero(inside)
        known = flat_keep[neighbour]
        np.add.at(rhs, rows[known], weight * values[:, neighbour[known]].T)
        entries_i.append(rows[~known])
        entries_j.append(position[neighbour[~known]])
        entries_v.append(np.full((~known).sum(), -weight))
    i = np.concatenate([*entries_i, np.arange(removed.size)])
    j = np.concatenate([*entries_j, np.arange(removed.size)])
    v = np.concatenate([*entries_v, diagonal])
    matrix = scipy.sparse.csc_matrix((v, (i, j)), shape=(removed.size, removed.size))
    solution = scipy.sparse.linalg.spsolve(matrix, rhs).reshape(removed.size, channels)
    out = values.astype(np.float64).copy()
    out[:, removed] = solution.T
    return out.reshape(channels, height, width)


def reference_road(model: nn.Module, x: Tensor, maps: Tensor, percentiles: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Per image and percentile: direct solve; then one forward per (percentile, order) over the batch."""
    n, _, height, width = x.shape
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    ranks = rank_map(maps).flatten(1).numpy()
    curves = {"morf": torch.zeros(n, len(percentiles)), "lerf": torch.zeros(n, len(percentiles))}
    for p, count in enumerate(road_removed_counts(height * width, percentiles)):
        for order, curve in curves.items():
            removed = ranks < count if order == "morf" else ranks >= height * width - count
            imputed = [direct_imputation(x[i].double().numpy(), ~removed[i].reshape(height, width)) for i in range(n)]
            batch = torch.from_numpy(np.stack(imputed)).to(x.dtype)
            with torch.no_grad():
                curve[:, p] = model(batch).softmax(dim=1).gather(1, target[:, None]).squeeze(1)
    return curves["morf"], curves["lerf"]


def road_rows(console: Console, name: str, model: nn.Module, x: Tensor, chunk: int) -> list[tuple[str, ...]]:
    """Time ROAD batched and the reference loop on saliency maps and their blurred version."""
    saliency = get_method("saliency", model).attribute(x).sum(dim=1, keepdim=True)
    rows = []
    for kind, maps in (("saliency", saliency), ("blurred saliency", blur(saliency.abs()))):
        maps = maps[:, 0]
        start = time.perf_counter()
        result = road(model, x, maps, noise=0.0, internal_batch_size=chunk)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        morf, lerf = reference_road(model, x, maps, DEFAULT_PERCENTILES)
        direct = time.perf_counter() - start
        diff = max(
            float((result.morf_curve.float() - morf).abs().max()), float((result.lerf_curve.float() - lerf).abs().max())
        )
        rows.append((name, kind, str(x.shape[0]), f"{batched:.2f}", f"{direct:.2f}", f"{direct / batched:.1f}x",
                     f"{diff:.1e}", f"{float(result.road.mean()):.4f}"))  # fmt: skip
        console.print(f"ROAD {name} / {kind}: done")
    return rows


def mprt_rows(console: Console, model: nn.Module, x: Tensor, copies: int) -> list[tuple[str, ...]]:
    """Seconds per image and score of MPRT (both cascades), eMPRT and sMPRT with saliency."""
    metrics = {
        "MPRT top-down (all stages)": (ParameterRandomization("saliency", model, similarity="spearman_abs"), None),
        "MPRT bottom-up (all stages)": (
            ParameterRandomization("saliency", model, order="bottom_up", similarity="spearman_abs"),
            None,
        ),
        "eMPRT": (EfficientMPRT("saliency", model), "emprt"),
        f"sMPRT ({copies} copies)": (SmoothMPRT("saliency", model, n_noise=copies, similarity="spearman_abs"), None),
    }
    rows = []
    for name, (metric, key) in metrics.items():
        start = time.perf_counter()
        metric.update(x)
        seconds = (time.perf_counter() - start) / x.shape[0]
        if key is None:
            score = f"final spearman_abs {float(metric.compute()['spearman_abs']):.3f}"
        else:
            score = f"emprt {float(metric.compute()[key]):.3f}"
        rows.append((name, f"{seconds:.4f}", score))
        console.print(f"{name}: done")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-images", type=int, default=16, help="demo validation images")
    parser.add_argument("--resnet-images", type=int, default=2, help="random 224x224 images for resnet50")
    parser.add_argument("--noise-copies", type=int, default=50, help="sMPRT copies per map")
    parser.add_argument("--checkpoint", type=Path, default=None, help="demo weights to load, or to save after training")
    parser.add_argument("--internal-batch-size", type=int, default=128, help="ROAD rows per imputation and forward")
    parser.add_argument("--skip-resnet", action="store_true", help="only the demo classifier")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        # On a loaded machine, several intra-op threads per process can make the many small tensor operations of
        # the iterative solve 30x slower (threads waiting for busy cores); 1 thread measures the algorithms.
        torch.set_num_threads(args.threads)

    console = Console(width=150)
    device_note = f"CPU, {torch.get_num_threads()} threads"
    model, datamodule = trained_demo(args.checkpoint)
    x = datamodule.val_set.images[: args.demo_images]
    rows = road_rows(console, "demo 32x32 (trained)", model, x, args.internal_batch_size)
    if not args.skip_resnet:
        from torchvision.models import resnet50

        torch.manual_seed(SEED)
        net = resnet50(weights=None).eval()
        images = torch.rand(args.resnet_images, 3, 224, 224, generator=torch.Generator().manual_seed(SEED))
        rows += road_rows(console, "resnet50 224x224 (random)", net, images, args.internal_batch_size)
    table = Table(title=f"ROAD, noise 0, percentiles 10..90, MoRF + LeRF ({device_note})")
    for column in ("model", "maps", "images", "batched s", "direct loop s", "ratio", "max |diff|", "ROAD"):
        table.add_column(column, justify="left" if column in ("model", "maps") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)

    table = Table(title=f"MPRT variants, saliency, demo classifier, {x.shape[0]} images ({device_note})")
    for column in ("metric", "s / image", "score"):
        table.add_column(column, justify="left" if column != "s / image" else "right")
    for row in mprt_rows(console, model, x, args.noise_copies):
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
