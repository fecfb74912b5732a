"""FEI report: faithfulness, internal faithfulness and cost of FEI's gradient gates on the demo classifier.

Run ``python benchmarks/fei_report.py --help`` for options. The script trains the demo classifier as the test suite
does (``ShapesDataModule(seed=0)``, ``DemoClassifier``, ``DEMO_EPOCHS`` epochs on the CPU; ``--checkpoint PATH``
reuses saved weights, or saves them there after training), takes the first ``--num-images`` validation images and
explains their predicted class with FEI under each gate (``none`` = FEI_NONE, ``ibm``, ``vm``; 5 nested levels x
``--iterations`` Adam steps, 500 by default). Every map is scored with the FEI protocol (preset ``"fei"``: insertion
from RISE's blur, deletion to zeros, 28 steps):

* insertion / deletion AUC of the target probability and their difference;
* activation deviation: MSE between the probe layers' activations on the perturbed and on the clean images
  (mean over the probe layers: stem output and each residual block), and the fraction of units whose on/off
  state is unchanged, for each game;
* seconds per image of the attribution itself, at batch 1 (a few single images, timed one by one) and with all
  images in one batch.

A random map is scored as a control (no timing). The gates only change FEI's backward pass, so a gate that keeps the
optimisation on the clean pathway should show lower activation deviation and higher overlap than ``none``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import trained_demo
from rich.console import Console
from rich.table import Table

from lit_attr.methods import get_method
from lit_attr.metrics.activation_deviation import ActivationDeviation
from lit_attr.metrics.insertion_deletion import InsertionDeletion

SEED = 0


def score(model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor, chunk: int) -> dict[str, float]:
    """Insertion/deletion and activation deviation of ``maps`` under the FEI protocol."""
    games = InsertionDeletion(model, preset="fei", internal_batch_size=chunk)
    deviation = ActivationDeviation(model, preset="fei", internal_batch_size=chunk)
    games.update(x, maps)
    deviation.update(x, maps)
    auc, ad = games.compute(), deviation.compute()
    insertion_mse, deletion_mse = ad["insertion_mse"].reshape(-1), ad["deletion_mse"].reshape(-1)
    return {
        "insertion": float(auc["insertion"]),
        "deletion": float(auc["deletion"]),
        "difference": float(auc["difference"]),
        "mse_insertion": float(ad["insertion_mse"].mean()),
        "mse_deletion": float(ad["deletion_mse"].mean()),
        "overlap_insertion": float(ad["insertion_overlap"].mean()),
        "overlap_deletion": float(ad["deletion_overlap"].mean()),
        "per_layer": {
            name: (float(i), float(d)) for name, i, d in zip(ad["layers"], insertion_mse, deletion_mse, strict=True)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100, help="Adam steps per level (5 levels; 100 = 500)")
    parser.add_argument("--num-images", type=int, default=32, help="validation images explained and scored")
    parser.add_argument("--gates", default="none,ibm,vm", help="comma-separated FEI gates")
    parser.add_argument("--timing-images", type=int, default=3, help="single images timed at batch 1")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights to load, or to save after training")
    parser.add_argument("--internal-batch-size", type=int, default=256, help="rows per forward of the metrics")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    console = Console(width=160)  # wide enough for the table when the output is not a terminal
    start = time.perf_counter()
    model, datamodule = trained_demo(args.checkpoint)
    x = datamodule.val_set.images[: args.num_images]
    labels = datamodule.val_set.labels[: args.num_images]
    with torch.no_grad():
        accuracy = float((model(x).argmax(dim=1) == labels).float().mean())
    console.print(
        f"demo classifier ready in {time.perf_counter() - start:.0f} s; accuracy on the {x.shape[0]} images: "
        f"{accuracy:.3f}"
    )

    rows: list[tuple[str, dict, float | None, float | None]] = []
    for gate in args.gates.split(","):
        gate = gate.strip()
        method = get_method("fei", model, gate=gate, iterations=args.iterations, input_bounds=(0.0, 1.0))
        start = time.perf_counter()
        maps = method.attribute(x)
        batched = (time.perf_counter() - start) / x.shape[0]
        single = []
        for i in range(min(args.timing_images, x.shape[0])):
            start = time.perf_counter()
            method.attribute(x[i : i + 1])
            single.append(time.perf_counter() - start)
        rows.append((gate, score(model, x, maps, args.internal_batch_size), sum(single) / len(single), batched))
        console.print(f"gate {gate}: done")
    control = torch.rand(x.shape[0], *x.shape[2:], generator=torch.Generator().manual_seed(SEED))
    rows.append(("random (control)", score(model, x, control, args.internal_batch_size), None, None))

    table = Table(
        title=f"FEI on the demo classifier: {x.shape[0]} val images, 5 x {args.iterations} iterations, "
        f"preset 'fei' (28 steps), CPU, {torch.get_num_threads()} threads"
    )
    columns = (
        "gate",
        "ins AUC ↑",
        "del AUC ↓",
        "ins - del ↑",
        "AD MSE ins ↓",
        "AD MSE del ↓",
        "overlap ins ↑",
        "overlap del ↑",
        "s/img batch 1",
        f"s/img batch {x.shape[0]}",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "gate" else "right")
    for gate, s, single, batched in rows:
        table.add_row(
            gate,
            f"{s['insertion']:.3f}",
            f"{s['deletion']:.3f}",
            f"{s['difference']:.3f}",
            f"{s['mse_insertion']:.4f}",
            f"{s['mse_deletion']:.4f}",
            f"{s['overlap_insertion']:.3f}",
            f"{s['overlap_deletion']:.3f}",
            "-" if single is None else f"{single:.2f}",
            "-" if batched is None else f"{batched:.3f}",
        )
    console.print(table)

    layers = list(rows[0][1]["per_layer"])
    per_layer = Table(title="Activation deviation MSE per probe layer (insertion / deletion)")
    per_layer.add_column("gate")
    for name in layers:
        per_layer.add_column(name, justify="right")
    for gate, s, _, _ in rows:
        per_layer.add_row(gate, *(f"{s['per_layer'][n][0]:.4f} / {s['per_layer'][n][1]:.4f}" for n in layers))
    console.print(per_layer)


if __name__ == "__main__":
    main()
