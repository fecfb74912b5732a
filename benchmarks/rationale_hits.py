"""How far above chance each method's top tokens hit the rationale, on the trained text demo.

The text demo (``train_demo_text_classifier()``: DemoTextClassifier on SyntheticTextDataModule's default data)
is trained, then each token-capable method attributes ``--samples`` validation sentences (the first ones of the
split, their labels as targets, special tokens and padding excluded). Each map is scored against the sentence's
rationale (the words that decide its class) with the functional token localisation scores:

* token F1 and IoU of the top-K tokens, K = the rationale's size;
* AUPRC of the scores as detectors of rationale tokens.

Two controls: a random map (uniform scores from a generator seeded with ``--seed``, averaged over ``--random-draws``
draws), and the exact chance level of F1, ``E[F1] = |rationale| / |candidates|`` per sentence (K random candidates
hit on average K * |rationale| / |candidates| rationale tokens), which the random row should approach. The last
column is each F1 divided by the chance level.

Run: ``python benchmarks/rationale_hits.py`` (``--help`` for the options); about two minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from lit_attr.data.text import collate_tokens
from lit_attr.functional.token_localization import token_auprc, token_f1, token_iou
from lit_attr.methods import get_method
from lit_attr.models import train_demo_text_classifier

BUDGETS = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 32},
    "mfaba": {"max_steps": 50},
    "ig2": {"steps": 50, "n_references": 4},
    "fei": {"iterations": 20},
    "feature_ablation": {},
    "kernel_shap": {"n_samples": 200},
    "attention_rollout": {},
}
POOL = range(100, 164)  # validation sentences that IG2 draws its references from (apart from the scored ones)


def scores_of(maps: Tensor, batch: dict[str, Tensor]) -> tuple[float, float, float]:
    """Mean token F1, IoU and AUPRC of ``maps`` against the batch's rationales."""
    inputs = (batch["rationale_mask"], batch["attention_mask"], batch["special_tokens_mask"])
    return tuple(float(fn(maps, *inputs).mean()) for fn in (token_f1, token_iou, token_auprc))  # type: ignore[return-value]


def chance_f1(batch: dict[str, Tensor]) -> float:
    """Exact expected F1 of a random ranking: |rationale| / |candidates|, averaged over the sentences."""
    candidates = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
    return float((batch["rationale_mask"].sum(dim=1) / candidates.sum(dim=1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64, help="validation sentences scored (default 64)")
    parser.add_argument("--random-draws", type=int, default=20, help="random maps averaged in the control row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random maps")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: small models on a shared CPU oversubscribe)"
    )
    args = parser.parse_args()
    if args.samples < 1 or args.samples > POOL.start:
        parser.error(f"--samples must be in [1, {POOL.start}] (the sentences after them are IG2's references)")
    torch.set_num_threads(args.threads)
    console = Console(width=130)

    model, data = train_demo_text_classifier()
    val = data.val_set
    batch = collate_tokens([val[i] for i in range(args.samples)])
    pool = collate_tokens([val[i] for i in POOL])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]

    chance = chance_f1(batch)
    table = Table(
        title=f"Top tokens vs rationale: trained text demo, {args.samples} validation sentences "
        f"(CPU, {torch.get_num_threads()} threads)"
    )
    for column in ("scores", "budget", "token F1", "token IoU", "AUPRC", "F1 / chance", "s"):
        table.add_column(column, justify="left" if column in ("scores", "budget") else "right")
    table.add_row("chance (exact E[F1])", "-", f"{chance:.3f}", "-", "-", "1.0", "-")

    generator = torch.Generator().manual_seed(args.seed)
    draws = [scores_of(torch.rand(ids.shape, generator=generator), batch) for _ in range(args.random_draws)]
    f1, iou, auprc = (sum(values) / len(values) for values in zip(*draws, strict=True))
    budget = f"mean of {args.random_draws}, seed {args.seed}"
    table.add_row("random map", budget, f"{f1:.3f}", f"{iou:.3f}", f"{auprc:.3f}", f"{f1 / chance:.1f}", "-")

    for name, budget in BUDGETS.items():
        options = dict(budget)
        if name == "ig2":
            options["reference_pool"] = (pool["input_ids"], pool["labels"])
        method = get_method(name, model, **options)
        start = time.perf_counter()
        maps = method.attribute(ids, labels, attention_mask=mask, special_tokens_mask=batch["special_tokens_mask"])
        seconds = time.perf_counter() - start
        f1, iou, auprc = scores_of(maps, batch)
        shown = ", ".join(f"{k}={v}" for k, v in budget.items()) or "-"
        table.add_row(name, shown, f"{f1:.3f}", f"{iou:.3f}", f"{auprc:.3f}", f"{f1 / chance:.1f}", f"{seconds:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
