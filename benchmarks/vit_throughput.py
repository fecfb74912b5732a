"""Throughput of every registered attribution method on vision transformers: images/s and passes per image.

Two models, CPU by default:

* ``vit_b_16``: torchvision's ViT-B/16 (``weights=None``) at 224x224, batch 2, with small budgets (``BUDGETS``:
  a few path steps or samples per method) so that the table finishes in a few minutes on two cores; images/s
  then scale roughly inversely with a method's passes per image (the ``fwd/image`` and ``bwd/image`` columns).
* ``demo_vit``: the ViT demo, :class:`lit_attr.models.DemoViT` trained by ``train_demo_vit()`` as
  ``lit_attr demo --model vit`` trains it (the title gives its validation accuracy and training time;
  ``--demo-checkpoint PATH`` loads the weights, or saves them there after training), on 16 validation images at
  32x32 with every method's default budget.

vit_b_16 has random weights: torchvision zero-initialises the classification head, which makes every logit
constant and every input gradient zero; the head is redrawn from N(0, 0.02^2) so that the methods follow real
gradients. The median of ``--repeats`` timed calls is reported (after ``--warmup`` untimed ones); forward/backward
rows are counted during the timed calls as in ``throughput.py`` (``attribute`` adds one forward per call to
resolve the targets).

    OMP_NUM_THREADS=2 python benchmarks/vit_throughput.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import trained_demo
from rich.console import Console
from rich.table import Table
from throughput import PassCounter, time_method
from torch import Tensor, nn

from lit_attr.methods import available_methods, get_method

#: Per-method options for ViT-B/16 on CPU: the methods' defaults cost hundreds of passes per image there.
BUDGETS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 2},
    "gradient_shap": {"n_samples": 2},
    "occlusion": {"window": 56, "stride": 56},
    "mfaba": {"max_steps": 4},
    "big": {"attack_steps": 2, "ig_steps": 2},
    "agi": {"max_iter": 2},
    "ig2": {"steps": 3, "n_references": 1},
    "fei": {"iterations": 2, "levels": (0.5,)},
}


def build(
    name: str, checkpoint: Path | None
) -> tuple[nn.Module, Tensor, tuple[Tensor, Tensor], dict[str, dict], str]:
    """``(model, inputs, IG2's pool labels, per-method options, description)`` of a benchmark model."""
    generator = torch.Generator().manual_seed(1)
    if name == "vit_b_16":
        from torchvision.models import vit_b_16

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = vit_b_16(weights=None)
            nn.init.normal_(model.heads.head.weight, std=0.02)
        pool = torch.rand(8, 3, 224, 224, generator=generator)
        return model.eval(), torch.rand(2, 3, 224, 224, generator=generator), (pool, torch.arange(8) % 4), BUDGETS, (
            "random weights"
        )
    model, data, seconds = trained_demo_vit(checkpoint)
    images, labels = data.val_set.images, data.val_set.labels
    with torch.no_grad():
        accuracy = float((model(images).argmax(dim=1) == labels).float().mean())
    trained = "loaded" if seconds is None else f"trained in {seconds:.0f} s"
    return model, images[:16], (images[16:80], labels[16:80]), {}, f"validation accuracy {accuracy:.3f}, {trained}"


def trained_demo_vit(checkpoint: Path | None) -> tuple[nn.Module, Any, float | None]:
    """The ViT demo and its data: loaded from ``checkpoint``, or trained (and saved there); seconds of training."""
    from lit_attr.models import DemoViT, train_demo_vit

    loaded = checkpoint is not None and checkpoint.exists()
    start = time.perf_counter()
    model, data = trained_demo(checkpoint, build=lambda data: DemoViT(), train=train_demo_vit)
    return model, data, None if loaded else time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["vit_b_16", "demo_vit"], choices=["vit_b_16", "demo_vit"])
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per method")
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls per method before the timed ones")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--demo-checkpoint", type=Path, default=None, help="ViT demo weights to load, or to save")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=160)
    for name in args.models:
        model, x, pool, budgets, description = build(name, args.demo_checkpoint)
        batch, shape = x.shape[0], tuple(x.shape[1:])
        counter = PassCounter(model)
        threads = torch.get_num_threads()
        table = Table(title=f"{name} {shape}, batch {batch}, cpu ({threads} threads), {description}")
        for col in ("method", "options", "images/s", "median s/batch", "fwd/image", "bwd/image"):
            table.add_column(col, justify="left" if col in ("method", "options") else "right")
        for method_name in args.methods or available_methods(model):
            options = dict(budgets.get(method_name, {}))
            if method_name == "ig2":
                options["reference_pool"] = pool
            method = get_method(method_name, model, input_bounds=(0.0, 1.0), **options)
            for _ in range(args.warmup):
                method.attribute(x)
            counter.reset()
            median = statistics.median(time_method(method, x, args.repeats, 0, torch.device("cpu")))
            shown = ", ".join(f"{k}={v}" for k, v in options.items() if k != "reference_pool") or "defaults"
            table.add_row(
                method_name,
                shown,
                f"{batch / median:.2f}",
                f"{median:.2f}",
                f"{counter.forward_rows / batch / args.repeats:.1f}",
                f"{counter.backward_rows / batch / args.repeats:.1f}",
            )
        console.print(table)


if __name__ == "__main__":
    main()
