"""The ``lit_attr`` console script.

``lit_attr demo`` trains the demo classifier on the embedded synthetic shapes and compares every registered
attribution method on held-out images: time per image and the share of positive relevance that falls on the
class-defining object (relevance mass inside the ground-truth mask).

Example:
    $ lit_attr demo --epochs 6 --num-images 32
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Sequence

from lit_attr.functional import relevance_mass
from lit_attr.methods import available_methods, get_method

log = logging.getLogger(__name__)

#: Per-method settings that keep the demo within a few minutes on a laptop CPU.
DEMO_METHOD_KWARGS: dict[str, dict] = {"occlusion": {"window": 4, "stride": 2}}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lit_attr`` (one sub-command per job)."""
    parser = argparse.ArgumentParser(
        prog="lit_attr",
        description="Feature attribution and its faithfulness inside PyTorch Lightning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train the demo classifier on synthetic shapes and compare attribution methods",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default: DEMO_EPOCHS)")
    demo.add_argument("--num-images", type=_positive_int, default=32, help="validation images to explain")
    demo.add_argument(
        "--methods", nargs="+", default=None, metavar="NAME", help="methods to compare (default: all registered)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for data, weights and training")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Lightning's start-up banners (accelerator, tips) drown the demo's own output.
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")  # lightning vs torch 2.14 pytree
    if args.command == "demo":
        unknown = sorted(set(args.methods or []) - set(available_methods()))
        if unknown:
            build_parser().error(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(available_methods())}")
        run_demo(epochs=args.epochs, num_images=args.num_images, methods=args.methods, seed=args.seed)
    return 0


def run_demo(epochs: int | None = None, num_images: int = 32, methods: Sequence[str] | None = None, seed: int = 0):
    """Train the demo classifier, then time every method and score its localisation; print a table.

    Args:
        epochs: training epochs; ``None`` uses :data:`lit_attr.models.DEMO_EPOCHS`.
        num_images: how many validation images to explain.
        methods: method names (default: every registered method).
        seed: seed for data generation, initialisation and training.

    Returns:
        One dict per method with ``method``, ``seconds_per_image`` and ``relevance_mass``.
    """
    import lightning as L
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from lit_attr.data import ShapesDataModule
    from lit_attr.models import DEMO_EPOCHS, DemoClassifier

    console = Console()
    L.seed_everything(seed, verbose=False)
    data = ShapesDataModule(seed=seed)
    model = DemoClassifier(num_classes=data.num_classes)
    trainer = L.Trainer(
        max_epochs=epochs or DEMO_EPOCHS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
    )
    console.rule("[bold]lit-attr demo: training the demo classifier on synthetic shapes")
    trainer.fit(model, datamodule=data)
    accuracy = float(trainer.validate(model, datamodule=data, verbose=False)[0]["val_acc"])
    console.print(f"validation accuracy: [bold]{accuracy:.3f}[/bold]")

    images, labels, masks = (t[:num_images] for t in (data.val_set.images, data.val_set.labels, data.val_set.masks))
    model.eval()
    rows = []
    names = list(methods or available_methods())
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("attributing", total=len(names))
        for name in names:
            progress.update(task, description=f"attributing with {name}")
            kwargs = DEMO_METHOD_KWARGS.get(name, {})
            if name == "fei":  # 500 optimisation steps: show them on the demo's own bar
                kwargs = {
                    **kwargs,
                    "progress": lambda done, total, n=name: progress.update(
                        task, description=f"attributing with {n} (iteration {done}/{total})"
                    ),
                }
            if name == "ig2":
                kwargs = {**kwargs, "reference_pool": (data.train_set.images[:256], data.train_set.labels[:256])}
            method = get_method(name, model, input_bounds=(0.0, 1.0), **kwargs)
            start = time.perf_counter()
            attributions = method.attribute(images, target=labels)
            elapsed = time.perf_counter() - start
            rows.append(
                {
                    "method": name,
                    "seconds_per_image": elapsed / len(images),
                    "relevance_mass": float(relevance_mass(attributions, masks).mean()),
                }
            )
            progress.advance(task)

    table = Table(title=f"Attribution on {len(images)} validation images (target = true class)")
    table.add_column("method")
    table.add_column("ms / image", justify="right")
    table.add_column("relevance mass in mask", justify="right")
    for row in sorted(rows, key=lambda r: -r["relevance_mass"]):
        table.add_row(row["method"], f"{1000 * row['seconds_per_image']:.2f}", f"{row['relevance_mass']:.3f}")
    console.print(table)
    console.print(
        f"A map that ignores the image puts {float(masks.float().mean()):.3f} of its mass in the mask "
        "(the masks' mean area fraction); higher is better localisation."
    )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
