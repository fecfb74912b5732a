"""Samples per second of every metric of issue #26, batched against a per-sample loop of the same code.

Run ``python benchmarks/metrics_throughput.py --help`` for options. For each model (the demo CNN at 32 x 32, an
untrained torchvision resnet18 at 224 x 224, and with ``--models text`` the demo text classifier on padded synthetic
sentences, for the metrics that take token ids) and each metric, the metric scores a batch of inputs with saliency
maps in one ``score()`` call (its rows go through the model ``internal_batch_size`` at a time, its copies through the
method in blocks), then once per image; the table reports both times, samples per second, the speed-up and the
largest relative difference between the two results' per-sample values, with 1e-4 as the smallest scale (values
that are float noise around 0, such as input invariance's change for a gradient method, do not count). It is float
rounding only: a sample's value does not depend on its batch; relative stability divides by near-zero map entries and
magnifies the rounding of a float32 model's batched convolutions. "batch" marks the metrics that compare the samples
of a batch, focus and Dasgupta's, whose values do depend on it: a batch of one sample has no counterpart, so they
have no loop to compare with (``-``); focus explains the classes in turn, so that a batch holds several.

The budgets below are smaller than the papers' defaults (noted per metric in the README's table of metrics) so that
a CPU run takes minutes: the cost of a metric scales with them (forwards or attributions per sample).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from lit_attr.inputs import input_kind
from lit_attr.methods import get_method
from lit_attr.metrics import get_metric_spec

#: Per metric: options with a CPU-sized budget; every size is a fraction of the units, so both models take them.
BUDGETS: dict[str, dict[str, Any]] = {
    "sparseness": {},
    "complexity": {},
    "effective_complexity": {},
    "faithfulness_correlation": {"subset_size": 0.05, "n_subsets": 20},
    "faithfulness_estimate": {"features_per_step": 64},
    "sensitivity_n": {"sizes": (0.01, 0.1, 0.5), "n_subsets": 10},
    "monotonicity": {"features_per_step": 64},
    "monotonicity_correlation": {"features_per_step": 128, "n_samples": 2},
    "region_perturbation": {"patch_size": 8, "regions": 16},
    "selectivity": {"patch_size": 16},
    "irof": {"patch_size": 16},
    "sufficiency_dasgupta": {},
    "consistency": {},
    "attribution_localisation": {},
    "top_k_intersection": {"k": 0.1},
    "focus": {},
    "random_logit": {"similarity": "spearman_abs"},
    "completeness": {},
    "non_sensitivity": {"features_per_step": 128, "n_samples": 2},
    "input_invariance": {},
    "local_lipschitz": {"n_perturb_samples": 4},
    "avg_sensitivity": {"n_perturb_samples": 4},
    "continuity": {"n_perturb_samples": 4},
    "relative_stability": {"n_perturb_samples": 4, "noise": 0.01},
}
#: The sentences' budgets where the images' do not fit about ten tokens: a unit or two per step, runs of two tokens.
TEXT_BUDGETS: dict[str, dict[str, Any]] = {
    "faithfulness_correlation": {"subset_size": 0.25, "n_subsets": 20},
    "faithfulness_estimate": {},
    "sensitivity_n": {"sizes": (0.1, 0.25, 0.5), "n_subsets": 10},
    "monotonicity": {},
    "monotonicity_correlation": {"n_samples": 2},
    "region_perturbation": {"patch_size": 2, "regions": 4},
    "selectivity": {"patch_size": 2},
    "irof": {"patch_size": 2},
    "non_sensitivity": {"n_samples": 2},
    "top_k_intersection": {"k": 0.25},
    "consistency": {"top_k": 0.25},  # its default (5 units) exceeds the shortest sentences
}
DEFAULT_IMAGES = {"demo": 16, "resnet18": 4, "text": 16}
#: The metrics that compare the samples of a batch: a sample's value depends on its batch.
BATCH_DEPENDENT = {"focus", "sufficiency_dasgupta", "consistency"}


def build_model(name: str, device: torch.device) -> tuple[torch.nn.Module, int]:
    """The model and its input side."""
    if name == "demo":
        from lit_attr.models import DemoClassifier

        return DemoClassifier().to(device).eval(), 32
    if name == "resnet18":
        from torchvision.models import resnet18

        return resnet18(weights=None).to(device).eval(), 224
    if name == "text":
        from lit_attr.models import DemoTextClassifier

        with torch.random.fork_rng():
            torch.manual_seed(0)
            return DemoTextClassifier().to(device).eval(), 0
    raise ValueError(f"--models accepts demo, resnet18 and text, got {name!r}")


def inputs(model: torch.nn.Module, side: int, n: int, device: torch.device) -> dict[str, Any]:
    """Images and a central square as the ground-truth mask, with their saliency maps (:func:`explained`)."""
    x = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    masks = torch.zeros(n, side, side, dtype=torch.bool, device=device)
    masks[:, side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = True
    return explained(model, x, masks, {})


def sentences(model: torch.nn.Module, n: int, device: torch.device) -> dict[str, Any]:
    """``n`` synthetic sentences of several lengths, padded to the longest, with their rationales as masks."""
    from lit_attr.data.text import TextDataset, collate_tokens

    data = TextDataset(n, seed=0)
    batch = {key: value.to(device) for key, value in collate_tokens([data[i] for i in range(n)]).items()}
    fields = {"attention_mask": batch["attention_mask"], "special_tokens_mask": batch["special_tokens_mask"]}
    return explained(model, batch["input_ids"], batch["rationale_mask"].bool(), fields)


def explained(model: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor, fields: dict[str, Any]) -> dict[str, Any]:
    """Everything a metric may consume of the batch: its saliency maps of the predicted classes, logits, masks."""
    with torch.no_grad():
        logits = input_kind(x).model_logits(model, x, fields)
    target = logits.argmax(dim=1)
    attributions = get_method("saliency", model).attribute(x, target, logits=logits, **fields)
    classes = torch.arange(x.shape[0], device=x.device) % logits.shape[1]  # the classes in turn, for focus
    given = {"x": x, "attributions": attributions, "target": target, "classes": classes, "masks": masks,
             "logits": logits, "attention_mask": None, "special_tokens_mask": None, "model_inputs": None}  # fmt: skip
    return {**given, **fields}


def per_sample(values: dict[str, torch.Tensor]) -> torch.Tensor:
    """The per-sample entries of a score() result, stacked ``(N, k)``."""
    return torch.stack([value.double() for value in values.values() if value.ndim == 1], dim=1)


def timed(call: Any, device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "resnet18"], choices=["demo", "resnet18", "text"])
    parser.add_argument("--metrics", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--images", type=int, default=None, help="per model (default: 16 demo, 4 resnet18, 16 text)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    table = Table(title=f"Metrics of issue #26: batched score() vs a per-sample loop ({device})")
    for column in ("model", "metric", "images", "batched s", "loop s", "samples/s", "speed-up", "max rel. diff"):
        table.add_column(column, justify="left" if column in ("model", "metric") else "right")
    for model_name in args.models:
        model, side = build_model(model_name, device)
        n = args.images or DEFAULT_IMAGES[model_name]
        text = model_name == "text"
        given = sentences(model, n, device) if text else inputs(model, side, n, device)  # every metric scores them
        for metric_name in args.metrics:
            spec = get_metric_spec(metric_name)
            if text and not spec.accepts({"tokens"}):
                continue
            budget = (TEXT_BUDGETS if text else {}).get(metric_name, BUDGETS[metric_name])
            metric = spec.build(budget, model=model, method=get_method("saliency", model))
            # Focus needs samples of several classes in a batch: the untrained models predict one class for most.
            target = "classes" if metric_name == "focus" else "target"
            batch = {key: given[target if key == "target" else key] for key in spec.update_inputs}
            whole, batched = timed(lambda metric=metric, batch=batch: metric.score(**batch), device)
            if metric_name in BATCH_DEPENDENT:  # a batch of one sample has no counterpart: its loop scores nothing
                row = (model_name, metric_name, str(n), f"{batched:.2f}", "-", f"{n / batched:.1f}", "-", "batch")
            else:
                singles = [{k: v if v is None else v[i : i + 1] for k, v in batch.items()} for i in range(n)]
                rows, looped = timed(
                    lambda metric=metric, singles=singles: [metric.score(**s) for s in singles], device
                )
                together, alone = per_sample(whole), torch.cat([per_sample(row) for row in rows])
                scale = torch.maximum(together.abs(), alone.abs()).clamp(min=1e-4)  # below: float32 noise
                diff = ((together - alone).abs() / scale).nan_to_num(0.0).max()
                row = (model_name, metric_name, str(n), f"{batched:.2f}", f"{looped:.2f}", f"{n / batched:.1f}",
                       f"{looped / batched:.2f}x", f"{float(diff):.1e}")  # fmt: skip
            table.add_row(*row)
            print(" | ".join(row), file=sys.stderr, flush=True)  # long runs: each row as soon as it is measured
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
