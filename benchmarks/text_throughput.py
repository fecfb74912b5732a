"""Token attribution throughput and the batched ERASER games against a per-sample loop.

Two tables:

1. Tokens/s (real, non-padding tokens attributed per second) of every token-capable method on
   * the text demo model (DemoTextClassifier trained for ``--demo-epochs`` epochs on 1000 synthetic sentences,
     ``--demo-batch`` validation sentences of mixed lengths), and
   * a BERT-base-sized ``BertForSequenceClassification`` with random weights (hidden 768, 12 layers, 12 heads,
     vocabulary 30522), ``--bert-batch`` sentences of random tokens whose lengths run evenly from
     ``--bert-min-length`` to ``--bert-length`` (8 sentences of 16-128 tokens by default), padded to the longest, and
     Captum's ``LayerIntegratedGradients`` on the same sentences, budget and baseline ([MASK] at every token but
     [CLS] and [SEP]) for the ratio of the two IG times.
   Budgets are small and printed in the table (BERT-base: IG 8 steps, MFABA at most 10 steps, IG2 5 steps x 2
   references, FEI 2 levels x 3 iterations, gate "none" as BERT has GELUs), so everything runs in about five
   minutes on a shared CPU. Time is the median of ``--repeats`` runs after one warm-up (one run for BERT-base),
   on ``--threads`` CPU threads (default 1: on a shared two-core machine, two threads made the small model's
   loops 10x slower).
2. Comprehensiveness and sufficiency (ERASER bins 1/5/10/20/50 %, ``replacement="mask"``) of ``--games-batch``
   demo sentences: the batched functional (rows in chunks of 128) against a naive loop that runs every perturbed
   sentence alone, with the largest difference between the two.

Run: ``python benchmarks/text_throughput.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from lit_attr.data import SyntheticTextDataModule
from lit_attr.data.text import collate_tokens
from lit_attr.functional.eraser import DEFAULT_BINS, comprehensiveness, sufficiency
from lit_attr.methods import get_method
from lit_attr.models import train_demo_text_classifier

DEMO_BUDGETS = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 32},
    "mfaba": {"max_steps": 50},
    "ig2": {"steps": 50, "n_references": 4},
    "fei": {"iterations": 20, "levels": (0.1, 0.3, 0.5, 0.7, 0.9)},
}
BERT_BUDGETS = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 8},
    "mfaba": {"max_steps": 10},
    "ig2": {"steps": 5, "n_references": 2},
    "fei": {"iterations": 3, "levels": (0.3, 0.6), "gate": "none"},
}


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


#: BERT's [CLS], [SEP], [MASK] and [PAD] ids, as a method's token options (a dict, as in a YAML config).
BERT_OPTIONS = {"special_token_ids": [101, 102], "mask_token_id": 103, "pad_token_id": 0}


def bert_base(shortest: int, longest: int, batch: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict]:
    """BERT-base with random weights and ``batch`` sentences of evenly spread lengths, right-padded."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    generator = torch.Generator().manual_seed(1)
    lengths = torch.linspace(shortest, longest, batch).round().long()
    ids = torch.randint(1000, 30000, (batch, longest), generator=generator)
    mask = (torch.arange(longest)[None] < lengths[:, None]).long()
    ids[:, 0], ids[torch.arange(batch), lengths - 1] = 101, 102  # [CLS] ... [SEP]
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    pool = torch.randint(1000, 30000, (8, longest), generator=generator)
    return model, {"input_ids": ids, "attention_mask": mask, "pool": pool}, BERT_OPTIONS


def captum_layer_ig(model: torch.nn.Module, inputs: dict[str, torch.Tensor], n_steps: int) -> Callable[[], object]:
    """Captum's LayerIntegratedGradients on the word embeddings, from [MASK] at every token but [CLS] and [SEP]."""
    from captum.attr import LayerIntegratedGradients

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    frozen = (ids == 101) | (ids == 102) | (mask == 0)
    baselines = torch.where(frozen, ids, torch.full_like(ids, 103))
    layer = LayerIntegratedGradients(
        lambda i, m: model(i, attention_mask=m).logits, model.bert.embeddings.word_embeddings
    )
    return lambda: layer.attribute(ids, baselines=baselines, target=0, additional_forward_args=(mask,),
                                   n_steps=n_steps, method="gausslegendre")  # fmt: skip


def throughput_rows(model, inputs, options, budgets, repeats) -> list[tuple[str, str, float, float]]:
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    tokens = int(mask.sum())
    rows = []
    for name, budget in budgets.items():
        kwargs = dict(budget)
        if name == "ig2":
            labels = torch.arange(len(inputs["pool"])) % 2
            kwargs["reference_pool"] = (inputs["pool"], labels)
        method = get_method(name, model, token_options=options, **kwargs)
        seconds = median_time(lambda m=method: m.attribute(ids, attention_mask=mask), repeats)
        shown = ", ".join(f"{k}={v}" for k, v in budget.items()) or "-"
        rows.append((name, shown, tokens / seconds, seconds))
    return rows


def naive_eraser(model, ids, mask, scores, special, keep_top, replacement_id) -> torch.Tensor:
    """Per sample and bin: one forward of the perturbed sentence alone (the loop the functional replaces)."""
    out = []
    with torch.no_grad():
        for i in range(len(ids)):
            length = int(mask[i].sum())
            tokens = ids[i, :length]
            candidates = [p for p in range(length) if not special[i, p]]
            order = sorted(candidates, key=lambda p: (-float(scores[i, p]), p))
            probs = model(tokens[None]).softmax(dim=1)[0]
            c = int(probs.argmax())
            row = []
            for k in DEFAULT_BINS:
                top = set(order[: math.ceil(k / 100 * len(candidates) - 1e-12)])
                removed = set(candidates) - top if keep_top else top
                perturbed = tokens.clone()
                perturbed[list(removed)] = replacement_id
                row.append(float(probs[c] - model(perturbed[None]).softmax(dim=1)[0, c]))
            out.append(row)
    return torch.tensor(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-batch", type=int, default=16)
    parser.add_argument("--demo-epochs", type=int, default=4)
    parser.add_argument("--bert-batch", type=int, default=8)
    parser.add_argument("--bert-min-length", type=int, default=16)
    parser.add_argument("--bert-length", type=int, default=128, help="the longest sentence")
    parser.add_argument("--games-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-bert", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: small models on a shared CPU oversubscribe)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=130)

    data = SyntheticTextDataModule(num_train=1000, num_val=max(256, args.games_batch))
    demo, data = train_demo_text_classifier(data, epochs=args.demo_epochs)
    val = data.val_set
    demo_inputs = collate_tokens([val[i] for i in range(args.demo_batch)])
    demo_inputs["pool"] = collate_tokens([val[i] for i in range(100, 164)])["input_ids"]
    threads = torch.get_num_threads()
    table = Table(title=f"Token attribution throughput (CPU, {threads} threads, median of {args.repeats})")
    for column in ("model", "method", "budget", "tokens/s", "s per call"):
        table.add_column(column, justify="right" if column in ("tokens/s", "s per call") else "left")
    lengths = demo_inputs["attention_mask"].sum(dim=1)
    label = f"demo ({args.demo_batch} x {int(lengths.min())}-{int(lengths.max())} tokens)"
    demo_options = {"special_token_ids": list(data.special_token_ids), "mask_token_id": data.mask_token_id}
    demo_rows = throughput_rows(demo, demo_inputs, demo_options, DEMO_BUDGETS, args.repeats)
    for name, budget, rate, seconds in demo_rows:
        table.add_row(label, name, budget, f"{rate:.0f}", f"{seconds:.3f}")
    if not args.skip_bert:
        model, inputs, options = bert_base(args.bert_min_length, args.bert_length, args.bert_batch)
        label = f"BERT-base ({args.bert_batch} x {args.bert_min_length}-{args.bert_length})"
        ig_seconds = None
        for name, budget, rate, seconds in throughput_rows(model, inputs, options, BERT_BUDGETS, 1):
            table.add_row(label, name, budget, f"{rate:.1f}", f"{seconds:.2f}")
            ig_seconds = seconds if name == "integrated_gradients" else ig_seconds
        steps = BERT_BUDGETS["integrated_gradients"]["n_steps"]
        captum = median_time(captum_layer_ig(model, inputs, steps), 1)
        tokens = int(inputs["attention_mask"].sum())
        table.add_row(label, "Captum LayerIG", f"n_steps={steps}", f"{tokens / captum:.1f}", f"{captum:.2f}")
        if ig_seconds is not None:
            table.caption = f"integrated_gradients / Captum LayerIG on BERT-base: {ig_seconds / captum:.2f}x the time"
    console.print(table)

    games = collate_tokens([val[i] for i in range(args.games_batch)])
    ids, mask, special = games["input_ids"], games["attention_mask"], games["special_tokens_mask"].bool()
    scores = get_method("input_x_gradient", demo).attribute(ids, attention_mask=mask)
    eraser = Table(title=f"ERASER games on {args.games_batch} demo sentences: batched vs per-sample loop")
    for column in ("score", "batched s", "loop s", "speed-up", "max |difference|"):
        eraser.add_column(column, justify="left" if column == "score" else "right")
    for name, fn, keep_top in (("comprehensiveness", comprehensiveness, False), ("sufficiency", sufficiency, True)):
        result = fn(demo, ids, scores, attention_mask=mask)
        batched = median_time(lambda f=fn: f(demo, ids, scores, attention_mask=mask), args.repeats)
        loop = median_time(
            lambda k=keep_top: naive_eraser(demo, ids, mask, scores, special, k, data.mask_token_id), 1
        )
        expected = naive_eraser(demo, ids, mask, scores, special, keep_top, data.mask_token_id)
        difference = float((result.per_bin - expected).abs().max())
        eraser.add_row(name, f"{batched:.3f}", f"{loop:.3f}", f"{loop / batched:.1f}x", f"{difference:.1e}")
    console.print(eraser)


if __name__ == "__main__":
    main()
