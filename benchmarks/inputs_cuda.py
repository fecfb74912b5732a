"""Every input kind on the GPU against the CPU: each method's maps and the runner's scores, and their time.

For images (a small CNN, 8 x 3 x 32 x 32), tabular features (an MLP, 16 x 10) and token ids (a 2-layer BERT built
from its config, 8 sentences of 5-16 tokens with padding), every method that takes the kind runs on the CPU and on
CUDA with the same weights and inputs; the table gives the largest difference between the two maps relative to the
largest CPU attribution, and the CUDA time of one call (after a warm-up). Then the runner scores each kind with its
metrics on both devices. SmoothGrad and GradientSHAP draw their noise from the device's generator, so their maps
differ by design; MFABA's paths may stop one step apart where a flip is a near tie. Without CUDA it says so and
exits with status 0.

Run: ``python benchmarks/inputs_cuda.py``.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from lit_attr.batch import Batch
from lit_attr.methods import available_methods, get_method
from lit_attr.runner import AttributionRunner

BUDGETS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 32},
    "smoothgrad": {"nt_samples": 8},
    "gradient_shap": {"n_samples": 8},
    "mfaba": {"max_steps": 20},
    "big": {"attack_steps": 10, "ig_steps": 16},
    "agi": {"max_iter": 10},
    "ig2": {"steps": 16, "n_references": 2},
    "fei": {"iterations": 10, "levels": (0.3, 0.6)},
}
TOKEN_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "mfaba", "ig2", "fei")


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, 4),
    )  # fmt: skip


def bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3, pad_token_id=0)  # fmt: skip
    return BertForSequenceClassification(config)


def cases() -> list[tuple[str, nn.Module, Batch, dict[str, Any], list[str]]]:
    """(kind, model, batch, options for every method, metrics) per input kind, on the CPU."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=generator)
    masks = torch.zeros(8, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    features = torch.rand(16, 10, generator=generator)
    lengths = torch.randint(5, 17, (8,), generator=generator)
    ids = torch.randint(4, 100, (8, 16), generator=generator)
    attended = torch.arange(16)[None] < lengths[:, None]
    ids = torch.where(attended, ids, torch.zeros_like(ids))
    ids[:, 0] = 1
    special = torch.zeros_like(ids)
    special[:, 0] = 1
    rationale = attended & (torch.rand(8, 16, generator=generator) > 0.6) & (special == 0)
    labels = torch.arange(16) % 4
    tokens = Batch(ids, labels[:8] % 3, rationale, attended.long(), special)
    token_options = {"token_options": {"special_token_ids": [1], "mask_token_id": 3}}
    return [
        ("images", cnn().eval(), Batch(images, labels[:8], masks), {"input_bounds": (0.0, 1.0)},
         ["insertion_deletion", "localization"]),
        ("tabular", nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), Batch(features, labels),
         {"input_bounds": (0.0, 1.0)}, ["insertion_deletion"]),
        ("tokens", bert().eval(), tokens, token_options, ["token_insertion_deletion", "token_localization"]),
    ]  # fmt: skip


def attribute(name: str, model: nn.Module, batch: Batch, options: dict[str, Any]) -> tuple[torch.Tensor, float]:
    method = get_method(name, model, **{**options, **BUDGETS.get(name, {})})
    method.prepare(batch)
    method.attribute(batch.x, batch.y, **batch.method_inputs())  # warm-up (kernels, caches)
    synchronize(batch.x)
    start = time.perf_counter()
    maps = method.attribute(batch.x, batch.y, **batch.method_inputs())
    synchronize(batch.x)
    return maps.float().cpu(), time.perf_counter() - start


def synchronize(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU (cpu: a dry run)")
    device = parser.parse_args().device
    console = Console(width=120)
    if device == "cuda" and not torch.cuda.is_available():
        console.print("No CUDA device: nothing to compare.")
        return
    console.print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device == 'cuda' else device}")
    maps_table = Table(title="Maps on CUDA against the CPU (same weights and inputs)")
    for column in ("kind", "method", "max |cuda - cpu| / max |cpu|", "finite", "CUDA s per call"):
        maps_table.add_column(column, justify="right")
    scores_table = Table(title="The runner's scores on CUDA against the CPU")
    for column in ("kind", "score", "cpu", "cuda"):
        scores_table.add_column(column, justify="right")
    for kind, model, batch, options, metrics in cases():
        gpu_model, gpu_batch = copy.deepcopy(model).to(device), batch.to(device)
        names = TOKEN_METHODS if kind == "tokens" else available_methods(model)
        for name in names:
            cpu_maps, _ = attribute(name, model, batch, options)
            gpu_maps, seconds = attribute(name, gpu_model, gpu_batch, options)
            scale = float(cpu_maps.abs().max()) or 1.0
            gap = float((gpu_maps - cpu_maps).abs().max()) / scale
            finite = bool(torch.isfinite(gpu_maps).all())
            maps_table.add_row(kind, name, f"{gap:.1e}", str(finite), f"{seconds:.3f}")
        method_options = {name: options for name in ("saliency", "integrated_gradients")}
        scores = []
        for device_model, device_batch in ((model, batch), (gpu_model, gpu_batch)):
            runner = AttributionRunner(device_model, list(method_options), metrics, method_kwargs=method_options)
            runner.run(device_batch)
            scores.append({key: float(value) for key, value in runner.scalars().items()})
        for key in scores[0]:
            scores_table.add_row(kind, key, f"{scores[0][key]:.4f}", f"{scores[1][key]:.4f}")
    console.print(maps_table)
    console.print(scores_table)


if __name__ == "__main__":
    main()
