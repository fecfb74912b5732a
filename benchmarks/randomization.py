"""Cost of the parameter-randomisation check: seconds per image, per method, for ``stages="all"`` and ``"last"``.

Run ``python benchmarks/randomization.py --help`` for options. The default model is the demo classifier with
seeded random weights (``--train-epochs N`` trains it first on the shapes data; timings barely depend on the
weights, the similarity values do). One ``update`` costs ``2 + #stages`` attributions (original, the
"original"-stage determinism check, one per randomised stage) plus one forward pass per attribution for the
target check, so the cost per image is roughly (stages + 2) x the method's own cost.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from lit_attr.data import ShapesDataModule, ShapesDataset
from lit_attr.metrics.parameter_randomization import ParameterRandomization
from lit_attr.models import DemoClassifier

METHODS = {"saliency": {}, "integrated_gradients": {"n_steps": 50}}


def build_model(train_epochs: int, seed: int) -> DemoClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DemoClassifier()
        if train_epochs:
            import lightning as L

            trainer = L.Trainer(
                max_epochs=train_epochs,
                accelerator="cpu",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.fit(model, datamodule=ShapesDataModule(seed=seed))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-epochs", type=int, default=0, help="train the demo classifier first (0: random)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args.train_epochs, args.seed)
    x = ShapesDataset(args.batch_size, seed=123).images
    weights = f"trained {args.train_epochs} epochs" if args.train_epochs else "random weights (seeded)"
    table = Table(
        title=f"ParameterRandomization on DemoClassifier (3x32x32, {weights}), batch {args.batch_size}, "
        f"CPU x{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for column in ("method", "stages", "#stages", "s/image", "s/batch", "final spearman_abs"):
        table.add_column(column, justify="left" if column in ("method", "stages") else "right")
    for name, kwargs in METHODS.items():
        for stages in ("all", "last"):
            metric = ParameterRandomization(name, model, stages=stages, method_kwargs=kwargs)
            metric.update(x[:1])  # warm-up; also resolves the forward order once
            times = []
            for _ in range(args.repeats):
                metric.reset()
                start = time.perf_counter()
                metric.update(x)
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            result = metric.report()["spearman_abs"]
            table.add_row(
                f"{name} {kwargs or ''}".strip(),
                stages,
                str(len(result["stages"])),
                f"{median / len(x):.4f}",
                f"{median:.3f}",
                f"{float(result['final']):.3f}",
            )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
