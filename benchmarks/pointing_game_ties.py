"""Pointing game with and without tie handling, for FEI (plateaus) and saliency on the demo classifier.

Run ``python benchmarks/pointing_game_ties.py --help`` for options. The script trains the demo classifier as the test
suite does (``train_demo_classifier(seed=0)``; ``--checkpoint PATH`` reuses saved weights, or saves them there after
training), explains the predicted class of the first ``--num-images`` validation images with FEI (5 levels x
``--iterations`` Adam steps) and saliency, and scores the maps against the object masks with

* the old pointing game: the first maximum in raster order (``argmax``) must lie in the mask;
* the tie-aware pointing game (:func:`lit_attr.functional.pointing_game`): the fraction of the maximal pixels that
  lie in the mask, i.e. the expected hit of a uniformly random choice among them;

both at tolerance 0 and 1 pixel, with the mean number of maximal pixels per map.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import trained_demo
from rich.console import Console
from rich.table import Table
from torch import Tensor
from torch.nn import functional as F

from lit_attr.functional import pointing_game
from lit_attr.methods import get_method


def first_argmax_hit(maps: Tensor, masks: Tensor, tolerance: int) -> Tensor:
    """The pointing game before tie handling: the first maximum in raster order decides."""
    target = masks.bool()
    if tolerance:
        target = F.max_pool2d(target[:, None].float(), 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0] > 0
    pointed = maps.sum(dim=1).flatten(1).argmax(dim=1, keepdim=True)
    return target.flatten(1).gather(1, pointed).squeeze(1).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100, help="FEI Adam steps per level (5 levels)")
    parser.add_argument("--num-images", type=int, default=32, help="validation images explained and scored")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights to load, or to save after training")
    args = parser.parse_args()

    console = Console(width=140)
    model, datamodule = trained_demo(args.checkpoint)
    x = datamodule.val_set.images[: args.num_images]
    masks = datamodule.val_set.masks[: args.num_images]
    table = Table(title=f"Pointing game on {x.shape[0]} demo validation images (target: predicted class)")
    for column in ("method", "tol", "first argmax", "tie-aware", "maximal pixels / map", "seconds"):
        table.add_column(column, justify="left" if column == "method" else "right")
    methods = {
        f"fei (5 x {args.iterations} it.)": get_method("fei", model, iterations=args.iterations, input_bounds=(0, 1)),
        "saliency": get_method("saliency", model),
    }
    for name, method in methods.items():
        start = time.perf_counter()
        maps = method.attribute(x)
        seconds = time.perf_counter() - start
        flat = maps.sum(dim=1).flatten(1)
        maximal = (flat == flat.amax(dim=1, keepdim=True)).sum(dim=1).float().mean()
        for tolerance in (0, 1):
            old = first_argmax_hit(maps, masks, tolerance).mean()
            new = pointing_game(maps, masks, tolerance=tolerance).mean()
            table.add_row(name, str(tolerance), f"{old:.3f}", f"{new:.3f}", f"{maximal:.1f}", f"{seconds:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
