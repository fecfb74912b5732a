"""One table of bad inputs over the public API: every one is refused with a TypeError or ValueError naming the argument.

The table covers every registered method (constructor and ``attribute``, on float inputs and, for the token-capable
ones, on token ids), every registered metric (constructor and ``update``, on the inputs it takes: floats or token
ids), both callbacks and the selection callbacks, the runner, ``evaluate`` and the CLI (one line on stderr, a
non-zero exit). Devices are mismatched with the "meta" device, which exists on every machine. Token metrics and
games name the ids ``input_ids``, their functional argument, when the Metric's ``update`` calls them ``x``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from breadth_helpers import FAST as BREADTH_FAST
from text_helpers import MASK, SPECIALS, TOKEN_METHODS, plain_transformer, token_batch
from torch import Tensor, nn
from vit_helpers import torchvision_vit

from lit_attr.batch import Batch, adapt_batch
from lit_attr.callbacks import AttributionCheckpoint, AttributionEarlyStopping, AttributionMonitor, RandomizationCheck
from lit_attr.cli import main
from lit_attr.data import ShapesDataModule
from lit_attr.evaluate import evaluate
from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods import available_methods, get_method
from lit_attr.metrics import available_metrics, get_metric_spec
from lit_attr.models import DemoClassifier
from lit_attr.runner import AttributionRunner

# Lightning's note on a missing loader, and the probe's on a small set: the cases build them on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:.*the validation set has .* fewer than"),
]

VIT_ONLY = set(available_methods()) - set(available_methods(nn.Identity()))
FAST = {
    "fei": {"iterations": 2, "levels": (0.5,)},
    "mfaba": {"max_steps": 3},
    "big": {"attack_steps": 2, "ig_steps": 3},
    "agi": {"max_iter": 2, "n_classes": 2},
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 2},
    "gradient_shap": {"n_samples": 2},
}


@functools.cache
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4)).eval()


@functools.cache
def vit() -> nn.Module:
    return torchvision_vit()


def model_for(name: str) -> nn.Module:
    return vit() if name in VIT_ONLY else cnn()


def x_for(name: str = "saliency", n: int = 2) -> Tensor:
    shape = (n, 3, 32, 32) if name in VIT_ONLY else (n, 3, 8, 8)
    return 0.1 + 0.8 * torch.rand(shape, generator=torch.Generator().manual_seed(0))


def options(name: str) -> dict[str, Any]:
    fast = dict(FAST.get(name, {}))
    if name == "ig2":
        fast.update(steps=3, n_references=2, reference_pool=(torch.rand(8, 3, 8, 8), torch.arange(8) % 4))
    return fast


def nan_at(t: Tensor, value: float = float("nan")) -> Tensor:
    t = t.clone()
    t.view(-1)[0] = value
    return t


CASES: list[Any] = []


def case(name: str, expected: str, call: Callable[[], Any]) -> None:
    CASES.append(pytest.param(call, expected, id=name))


# ---------------------------------------------------------------------------------------------------- methods
METHOD_OPTIONS = {
    "internal_batch_size=0": ({"internal_batch_size": 0}, "`internal_batch_size`"),
    "internal_batch_size=2.5": ({"internal_batch_size": 2.5}, "`internal_batch_size`"),
    "input_bounds_reversed": ({"input_bounds": (1.0, 0.0)}, "`input_bounds`"),
    "input_bounds_nan": ({"input_bounds": (float("nan"), 1.0)}, "`input_bounds`"),
    "input_bounds_str": ({"input_bounds": "01"}, "`input_bounds`"),
    "forward_fn_int": ({"forward_fn": 3}, "`forward_fn`"),
    "unknown_option": ({"bogus": 1}, "bogus"),
}
for method in available_methods():
    for label, (bad, expected) in METHOD_OPTIONS.items():
        case(f"{method}-init-{label}", expected, lambda m=method, b=bad: get_method(m, model_for(m), **options(m), **b))
    case(f"{method}-init-model_str", "`model`", lambda m=method: get_method(m, "model", **options(m)))

SPECIFIC_OPTIONS = [
    ("ig2", {"steps": 0}, "`steps`"),
    ("ig2", {"references": "nope"}, "`references`"),
    ("ig2", {"layer": "nope"}, "`layer`"),
    ("mfaba", {"variant": "nope"}, "`variant`"),
    ("fei", {"levels": (1.5,)}, "`levels`"),
    ("fei", {"gate": "nope"}, "`gate`"),
    ("smoothgrad", {"nt_samples": 0}, "`nt_samples`"),
    ("smoothgrad", {"stdevs": -1.0}, "`stdevs`"),
    ("gradient_shap", {"n_samples": 0}, "`n_samples`"),
    ("integrated_gradients", {"n_steps": 0}, "`n_steps`"),
    ("integrated_gradients", {"method": "simpson"}, "`method`"),
    ("occlusion", {"window": 0}, "`window`"),
    ("agi", {"n_classes": 0}, "`n_classes`"),
    ("big", {"epsilons": ()}, "`epsilons`"),
    ("attention_rollout", {"head_fusion": "median"}, "`head_fusion`"),
    ("generic_attention", {"patch_size": 0}, "`patch_size`"),
]
for method, bad, expected in SPECIFIC_OPTIONS:
    label = "-".join(f"{k}={v}" for k, v in bad.items())
    case(f"{method}-init-{label}", expected, lambda m=method, b=bad: get_method(m, model_for(m), **{**options(m), **b}))
case("get_method-unknown_name", "salency", lambda: get_method("salency", cnn()))

ATTRIBUTE_INPUTS: dict[str, tuple[Callable[[str], Any], Any, str]] = {
    "x_list": (lambda m: [[0.5]], None, "`x`"),
    "x_int": (lambda m: (x_for(m) * 10).long(), None, "`x`"),
    "x_empty": (lambda m: x_for(m)[:0], None, "`x`"),
    "x_1d": (lambda m: torch.rand(5), None, "`x`"),
    "x_nan": (lambda m: nan_at(x_for(m)), None, "`x`"),
    "x_inf": (lambda m: nan_at(x_for(m), float("inf")), None, "`x`"),
    "x_meta_device": (lambda m: x_for(m).to("meta"), None, "`x`"),
    "x_outside_bounds": (lambda m: x_for(m) + 2.0, None, "`x`"),
    "target_too_large": (x_for, 4, "`target`"),
    "target_negative": (x_for, -1, "`target`"),
    "target_float": (x_for, 1.5, "`target`"),
    "target_bool": (x_for, True, "`target`"),
    "target_str": (x_for, "cat", "`target`"),
    "target_float_tensor": (x_for, torch.tensor([0.0, 1.0]), "`target`"),
    "target_wrong_length": (x_for, [0, 1, 2], "`target`"),
    "target_wrong_shape": (x_for, torch.zeros(2, 2, dtype=torch.long), "`target`"),
}
for method in available_methods():
    for label, (make_x, target, expected) in ATTRIBUTE_INPUTS.items():
        case(
            f"{method}-attribute-{label}",
            expected,
            lambda m=method, f=make_x, t=target: get_method(m, model_for(m), input_bounds=(0.0, 1.0), **options(m))
            .attribute(f(m), t),
        )
    case(
        f"{method}-attribute-logits_wrong_shape",
        "`logits`",
        lambda m=method: get_method(m, model_for(m), **options(m)).attribute(x_for(m), 0, logits=torch.zeros(3, 4)),
    )

# ---------------------------------------------------------------------------------------------------- metrics
METRIC_FAST = {
    "insertion_deletion": {"n_steps": 3},
    "activation_deviation": {"n_steps": 3},
    "road": {"percentiles": (50,)},
    "infidelity": {"n_perturb_samples": 2},
    "sensitivity": {"n_perturb_samples": 2},
    "smprt": {"n_noise": 2, "stages": "last"},
    **BREADTH_FAST,
}


FLOAT_METRICS = [name for name in available_metrics() if not get_metric_spec(name).tokens]
TOKEN_METRICS = [name for name in available_metrics() if get_metric_spec(name).tokens]


def build_metric(name: str, **bad: Any) -> Any:
    model = cnn()
    method = get_method("saliency", model, input_bounds=(0.0, 1.0))
    return get_metric_spec(name).build({**METRIC_FAST.get(name, {}), **bad}, model=model, method=method)


def update_metric(name: str, **bad: Any) -> None:
    x = x_for()
    good = {
        "x": x,
        "attributions": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)),
        "target": torch.tensor([0, 1]),
        "masks": torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5,
        "logits": cnn()(x).detach(),
        "attention_mask": None,  # as the runner feeds float batches
        "special_tokens_mask": None,
        "model_inputs": None,
    }
    inputs = {key: bad.get(key, good[key]) for key in get_metric_spec(name).update_inputs}
    build_metric(name).update(**inputs)


for metric in FLOAT_METRICS:
    case(f"{metric}-init-unknown_option", "bogus", lambda m=metric: build_metric(m, bogus=1))

SPECIFIC_METRIC_OPTIONS = [
    ("insertion_deletion", {"n_steps": 0}, "`n_steps`"),
    ("insertion_deletion", {"preset": "nope"}, "`preset`"),
    ("insertion_deletion", {"output": "odds"}, "`output`"),
    ("insertion_deletion", {"internal_batch_size": -1}, "`internal_batch_size`"),
    ("insertion_deletion", {"games": "both"}, "`games`"),
    ("insertion_deletion", {"deletion_substrate": "constant"}, "`substrate_value`"),
    ("localization", {"metrics": ["nope"]}, "`metrics`"),
    ("localization", {"tolerance": -1}, "`tolerance`"),
    ("road", {"percentiles": (150,)}, "`percentiles`"),
    ("road", {"noise": -1.0}, "`noise`"),
    ("infidelity", {"n_perturb_samples": 0}, "`n_perturb_samples`"),
    ("infidelity", {"noise_std": 0}, "`noise_std`"),
    ("infidelity", {"baseline": "zero"}, "`baseline`"),
    ("infidelity", {"baseline": torch.tensor(float("nan"))}, "`baseline`"),
    ("infidelity", {"normalize": "no"}, "`normalize`"),
    ("sensitivity", {"perturb_radius": 0}, "`perturb_radius`"),
    ("sensitivity", {"norm_ord": "max"}, "`norm_ord`"),
    ("activation_deviation", {"layers": ["nope"]}, "`layers`"),
    ("randomization", {"similarity": "cosine"}, "`similarity`"),
    ("randomization", {"threshold": float("nan")}, "`threshold`"),
    ("emprt", {"n_bins": 1}, "`n_bins`"),
    ("smprt", {"noise_level": -1.0}, "`noise_level`"),
]
for metric, bad, expected in SPECIFIC_METRIC_OPTIONS:
    label = "-".join(f"{k}={v}" for k, v in bad.items())
    case(f"{metric}-init-{label}", expected, lambda m=metric, b=bad: build_metric(m, **b))
case(
    "infidelity-update-baseline_wrong_shape",
    "`baseline`",
    lambda: build_metric("infidelity", baseline=torch.zeros(5, 5)).update(x_for(), torch.randn(2, 3, 8, 8)),
)

UPDATE_INPUTS: dict[str, tuple[dict[str, Any], str]] = {
    "attributions_wrong_shape": ({"attributions": torch.randn(2, 3, 4, 4)}, "attributions`"),
    "attributions_nan": ({"attributions": nan_at(torch.randn(2, 3, 8, 8))}, "`attributions`"),
    "attributions_list": ({"attributions": [[1.0]]}, "`attributions`"),
    "attributions_int": ({"attributions": torch.ones(2, 3, 8, 8, dtype=torch.long)}, "`attributions`"),
    "x_nan": ({"x": nan_at(x_for())}, "`x`"),
    "x_int": ({"x": (x_for() * 10).long()}, "`x`"),
    "x_meta_device": ({"x": x_for().to("meta")}, "`x`"),
    "target_too_large": ({"target": torch.tensor([0, 4])}, "`target`"),
    "target_float": ({"target": torch.tensor([0.0, 1.0])}, "`target`"),
    "target_wrong_length": ({"target": torch.tensor([0, 1, 2])}, "`target`"),
    "masks_wrong_shape": ({"masks": torch.ones(2, 4, 8, dtype=torch.bool)}, "`masks`"),
    "masks_wrong_length": ({"masks": torch.ones(1, 8, 8, dtype=torch.bool)}, "`masks`"),
    "masks_not_binary": ({"masks": torch.full((2, 8, 8), 3.0)}, "`masks`"),
    "masks_empty": ({"masks": torch.zeros(2, 8, 8, dtype=torch.bool)}, "`masks`"),
    "logits_wrong_shape": ({"logits": torch.zeros(1, 4)}, "`logits`"),
    "logits_nan": ({"logits": nan_at(torch.zeros(2, 4))}, "`logits`"),
}
for metric in FLOAT_METRICS:
    consumed = get_metric_spec(metric).update_inputs
    for label, (bad, expected) in UPDATE_INPUTS.items():
        if label == "attributions_wrong_shape" and not {"x", "masks"} & set(consumed):
            continue  # a metric of maps alone has no shape to hold a map to
        if set(bad) <= set(consumed):
            case(f"{metric}-update-{label}", expected, lambda m=metric, b=bad: update_metric(m, **b))
    empty = {"x": x_for()[:0], "attributions": torch.zeros(0, 3, 8, 8), "masks": torch.ones(0, 8, 8, dtype=torch.bool)}
    first = "`x`" if "x" in consumed else "`attributions`"
    case(f"{metric}-update-empty_batch", first, lambda m=metric, b=empty: update_metric(m, **b))

# ---------------------------------------------------------------------------------------------------- token inputs
TOKEN_OPTIONS = TokenOptions(special_token_ids=SPECIALS, mask_token_id=MASK)
TOKEN_FAST = {
    "integrated_gradients": {"n_steps": 4},
    "mfaba": {"max_steps": 3},
    "ig2": {"steps": 3, "n_references": 2},
    "fei": {"iterations": 2, "levels": (0.5,), "gate": "none"},
}


@functools.cache
def text_model() -> nn.Module:
    return plain_transformer()


def attribute_tokens_with(name: str, **bad: Any) -> None:
    options = dict(TOKEN_FAST.get(name, {}))
    if name == "ig2":
        pool = token_batch((7, 5, 8, 6), seed=9)[0]
        options["reference_pool"] = (pool, torch.arange(len(pool)) % 3)
    method = get_method(name, text_model(), **options)
    method.token_options = TOKEN_OPTIONS
    ids, mask = token_batch((6, 5))
    arguments = {"x": ids, "target": None, "attention_mask": mask, **bad}
    method.attribute(arguments.pop("x"), arguments.pop("target"), **arguments)


TOKEN_ATTRIBUTE = {
    "ids_out_of_vocabulary": ({"x": token_batch((6, 5))[0] + 1000}, "input_ids"),
    "ids_negative": ({"x": token_batch((6, 5))[0] - 10}, "input_ids"),
    "ids_meta_device": ({"x": token_batch((6, 5))[0].to("meta")}, "input_ids"),
    "ids_3d": ({"x": token_batch((6, 5))[0][None]}, "input_ids"),
    "ids_empty": ({"x": token_batch((6, 5))[0][:0], "attention_mask": token_batch((6, 5))[1][:0]}, "input_ids"),
    "attention_mask_wrong_shape": ({"attention_mask": torch.ones(2, 3, dtype=torch.long)}, "`attention_mask`"),
    "attention_mask_not_binary": ({"attention_mask": token_batch((6, 5))[1] * 2}, "`attention_mask`"),
    "attention_mask_all_padding": ({"attention_mask": torch.zeros(2, 6, dtype=torch.long)}, "`attention_mask`"),
    "special_tokens_mask_wrong_shape": ({"special_tokens_mask": torch.zeros(1, 6)}, "`special_tokens_mask`"),
    "target_too_large": ({"target": 5}, "`target`"),
    "token_reduction": ({"token_reduction": "max"}, "`token_reduction`"),
    "baseline_token_id_out_of_vocabulary": ({"baseline_token_id": 1000}, "`baseline_token_id`"),
    "model_input_the_forward_does_not_take": ({"token_type_ids": torch.zeros(2, 6, dtype=torch.long)},
                                              "`token_type_ids`"),
}
for method in TOKEN_METHODS:
    for label, (bad, expected) in TOKEN_ATTRIBUTE.items():
        case(f"{method}-attribute_tokens-{label}", expected, lambda m=method, b=bad: attribute_tokens_with(m, **b))


def update_token_metric(name: str, **bad: Any) -> None:
    spec = get_metric_spec(name)
    ids, mask = token_batch((6, 5))
    rationale = torch.zeros_like(ids, dtype=torch.bool)
    rationale[:, 1] = True
    good = {
        "x": ids,
        "attributions": torch.randn(ids.shape, generator=torch.Generator().manual_seed(3)),
        "target": torch.tensor([0, 1]),
        "masks": rationale,
        "logits": text_model()(ids, mask).detach(),
        "attention_mask": mask,
        "special_tokens_mask": None,
        "model_inputs": None,
    }
    options = {"comprehensiveness": {"bins": (10, 50)}, "token_insertion_deletion": {"n_steps": 3}}.get(name, {})
    if "model" in spec.consumes:
        options = {**options, "replacement_id": MASK, "special_token_ids": SPECIALS}
    method = get_method("saliency", text_model())
    metric = spec.build(options, model=text_model(), method=method)
    metric.update(**{key: bad.get(key, good[key]) for key in spec.update_inputs})


TOKEN_UPDATE: dict[str, tuple[dict[str, Any], str]] = {
    "ids_float": ({"x": token_batch((6, 5))[0].float()}, "input_ids"),
    "ids_out_of_vocabulary": ({"x": token_batch((6, 5))[0] + 1000}, "input_ids"),
    "ids_meta_device": ({"x": token_batch((6, 5))[0].to("meta")}, "input_ids"),
    "ids_1d": ({"x": token_batch((6, 5))[0][0]}, "input_ids"),
    "attention_mask_wrong_shape": ({"attention_mask": torch.ones(2, 3, dtype=torch.long)}, "`attention_mask`"),
    "attention_mask_not_binary": ({"attention_mask": token_batch((6, 5))[1] * 2}, "`attention_mask`"),
    "special_tokens_mask_wrong_shape": ({"special_tokens_mask": torch.zeros(2, 2)}, "`special_tokens_mask`"),
    "attributions_wrong_shape": ({"attributions": torch.randn(2, 3)}, "attributions"),
    # on a word: NaN on [CLS] or padding, whose scores are never read, is not an error
    "attributions_nan": ({"attributions": torch.randn(2, 6).index_fill(1, torch.tensor([1]), float("nan"))},
                         "`attributions`"),
    "attributions_int": ({"attributions": torch.ones(2, 6, dtype=torch.long)}, "`attributions`"),
    "target_too_large": ({"target": torch.tensor([0, 7])}, "`target`"),
    "target_float": ({"target": torch.tensor([0.0, 1.0])}, "`target`"),
    "masks_wrong_shape": ({"masks": torch.ones(2, 3, dtype=torch.bool)}, "`masks`"),
    "masks_not_binary": ({"masks": torch.full((2, 6), 3)}, "`masks`"),
    "logits_wrong_shape": ({"logits": torch.zeros(1, 3)}, "`logits`"),
    "logits_nan": ({"logits": nan_at(torch.zeros(2, 3))}, "`logits`"),
    "model_inputs_wrong_rows": ({"model_inputs": {"token_type_ids": torch.zeros(3, 6, dtype=torch.long)}},
                                "`model_inputs['token_type_ids']`"),
    "model_inputs_not_a_mapping": ({"model_inputs": torch.zeros(2, 6)}, "`model_inputs`"),
}
for metric in TOKEN_METRICS:
    consumed = get_metric_spec(metric).update_inputs
    for label, (bad, expected) in TOKEN_UPDATE.items():
        if set(bad) <= set(consumed):
            case(f"{metric}-update-{label}", expected, lambda m=metric, b=bad: update_token_metric(m, **b))
    empty = {"x": token_batch((6, 5))[0][:0], "attributions": torch.zeros(0, 6), "attention_mask": torch.ones(0, 6)}
    first = "input_ids" if "x" in consumed else "`attributions`"
    case(f"{metric}-update-empty_batch", first, lambda m=metric, b=empty: update_token_metric(m, **b))

# ---------------------------------------------------------------------------------------------------- callbacks
CALLBACKS = [
    ("monitor-methods_empty", "`methods`", lambda: AttributionMonitor([])),
    ("monitor-methods_unknown", "`methods`", lambda: AttributionMonitor(["salency"])),
    ("monitor-methods_int", "method", lambda: AttributionMonitor([42])),
    ("monitor-metrics_unknown", "`metrics`", lambda: AttributionMonitor(["saliency"], metrics=["nope"])),
    ("monitor-metrics_int", "`metrics`", lambda: AttributionMonitor(["saliency"], metrics=3)),
    ("monitor-num_samples_0", "`num_samples`", lambda: AttributionMonitor(["saliency"], num_samples=0)),
    ("monitor-num_samples_float", "`num_samples`", lambda: AttributionMonitor(["saliency"], num_samples=2.5)),
    ("monitor-every_n_epochs_0", "`every_n_epochs`", lambda: AttributionMonitor(["saliency"], every_n_epochs=0)),
    ("monitor-log_heatmaps_negative", "`log_heatmaps`", lambda: AttributionMonitor(["saliency"], log_heatmaps=-1)),
    ("monitor-on_error", "`on_error`", lambda: AttributionMonitor(["saliency"], on_error="ignore")),
    ("monitor-target", "`target`", lambda: AttributionMonitor(["saliency"], target="both")),
    ("monitor-batch_size_0", "`batch_size`", lambda: AttributionMonitor(["saliency"], batch_size=0)),
    ("monitor-max_overhead_nan", "`max_overhead`", lambda: AttributionMonitor(["saliency"], max_overhead=float("nan"))),
    ("monitor-dataloader_idx", "`dataloader_idx`", lambda: AttributionMonitor(["saliency"], dataloader_idx=-1)),
    ("monitor-batch_adapter", "`batch_adapter`", lambda: AttributionMonitor(["saliency"], batch_adapter=3)),
    ("monitor-method_kwargs", "`method_kwargs`", lambda: AttributionMonitor(["saliency"], method_kwargs={"mfaba": {}})),
    ("monitor-metric_kwargs", "`metric_kwargs`", lambda: AttributionMonitor(["saliency"], metric_kwargs={"road": {}})),
    ("monitor-seed_float", "`seed`", lambda: AttributionMonitor(["saliency"], seed=1.5)),
    ("monitor-input_bounds", "`input_bounds`", lambda: AttributionMonitor(["saliency"], input_bounds=(1.0, 0.0))),
    ("monitor-class_names", "`class_names`", lambda: AttributionMonitor(["saliency"], class_names=3)),
    ("monitor-background_delivery", "`background_delivery`",
     lambda: AttributionMonitor(["saliency"], background_delivery="yes")),
    ("monitor-clock", "`clock`", lambda: AttributionMonitor(["saliency"], clock=3)),
    ("randomization_check-order", "`order`", lambda: RandomizationCheck(["saliency"], order="sideways")),
    ("randomization_check-stages", "`stages`", lambda: RandomizationCheck(["saliency"], stages="some")),
    ("randomization_check-similarity", "`similarity`", lambda: RandomizationCheck(["saliency"], similarity="cos")),
    ("randomization_check-threshold_str", "`threshold`", lambda: RandomizationCheck(["saliency"], threshold="high")),
    ("randomization_check-threshold_nan", "`threshold`",
     lambda: RandomizationCheck(["saliency"], threshold=float("nan"))),
    ("randomization_check-every_n_epochs", "`every_n_epochs`",
     lambda: RandomizationCheck(["saliency"], every_n_epochs=0)),
    ("randomization_check-layers_int", "`layers`", lambda: RandomizationCheck(["saliency"], layers=3)),
    ("randomization_check-layers_empty", "`layers`", lambda: RandomizationCheck(["saliency"], layers=[])),
    ("checkpoint-mode", "`mode`", lambda: AttributionCheckpoint(monitor="attr/m/metric/score", mode="sideways")),
    ("checkpoint-monitor_int", "`monitor`", lambda: AttributionCheckpoint(monitor=3)),
    ("checkpoint-save_top_k", "save_top_k", lambda: AttributionCheckpoint(monitor="attr/x", save_top_k=-2)),
    ("early_stopping-mode", "`mode`", lambda: AttributionEarlyStopping(monitor="attr/x", mode="sideways")),
    ("early_stopping-monitor_none", "`monitor`", lambda: AttributionEarlyStopping(monitor=None)),
    ("early_stopping-patience", "`patience`", lambda: AttributionEarlyStopping(monitor="attr/x", patience=-1)),
    ("early_stopping-min_delta", "`min_delta`", lambda: AttributionEarlyStopping(monitor="attr/x", min_delta="0.1")),
]
for label, expected, call in CALLBACKS:
    case(label, expected, call)

# ---------------------------------------------------------------------------------------------------- runner
RUNNER = [
    ("model_str", "`model`", lambda: AttributionRunner("model", ["saliency"])),
    ("methods_empty", "`methods`", lambda: AttributionRunner(cnn(), [])),
    ("methods_int", "`methods`", lambda: AttributionRunner(cnn(), 3)),
    ("methods_unknown", "`methods`", lambda: AttributionRunner(cnn(), ["salency"])),
    ("metrics_unknown", "nope", lambda: AttributionRunner(cnn(), ["saliency"], ["nope"])),
    ("target", "`target`", lambda: AttributionRunner(cnn(), ["saliency"], target="both")),
    ("keep_attributions", "`keep_attributions`", lambda: AttributionRunner(cnn(), ["saliency"], keep_attributions=-1)),
    ("metric_samples_unknown", "`metric_samples`",
     lambda: AttributionRunner(cnn(), ["saliency"], ["localization"], metric_samples={"road": 1})),
    ("method_option_unknown", "bogus",
     lambda: AttributionRunner(cnn(), ["saliency"], method_kwargs={"saliency": {"bogus": 1}})),
    ("input_bounds", "`input_bounds`", lambda: AttributionRunner(cnn(), ["saliency"], input_bounds=(2.0, 1.0))),
    ("progress", "`progress`", lambda: AttributionRunner(cnn(), ["saliency"], progress=3)),
    ("run-batch_tensor", "`batch`", lambda: AttributionRunner(cnn(), ["saliency"]).run(x_for())),
    ("run-indices", "`indices`", lambda: AttributionRunner(cnn(), ["saliency"]).run(Batch(x_for()), indices=[1])),
    ("run-target", "`target`", lambda: AttributionRunner(cnn(), ["saliency"]).run(Batch(x_for()), target=7)),
    ("run-labels", "`target`",
     lambda: AttributionRunner(cnn(), ["saliency"]).run(Batch(x_for(), torch.tensor([0, 9])))),
    ("run-x_nan", "`x`", lambda: AttributionRunner(cnn(), ["saliency"]).run(Batch(nan_at(x_for())))),
    ("run-x_meta_device", "`x`", lambda: AttributionRunner(cnn(), ["saliency"]).run(Batch(x_for().to("meta")))),
    ("run-x_empty", "`x`", lambda: AttributionRunner(cnn(), ["saliency"]).run(Batch(x_for()[:0]))),
    ("run-masks_wrong_shape", "`masks`",
     lambda: AttributionRunner(cnn(), ["saliency"], ["localization"]).run(
         Batch(x_for(), torch.tensor([0, 1]), torch.ones(2, 4, 4, dtype=torch.bool)))),
]
for label, expected, call in RUNNER:
    case(f"runner-{label}", expected, call)


@functools.cache
def single_logit() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1)).eval()


# Outputs no score can be honest about, and labels that would be truncated to another class (one check for all).
SCORING = [
    ("runner-run-single_logit", "model_output='sigmoid'",
     lambda: AttributionRunner(single_logit(), ["saliency"]).run(Batch(x_for()))),
    ("runner-run-probabilities", "probabilities",
     lambda: AttributionRunner(nn.Sequential(cnn(), nn.Softmax(dim=1)), ["saliency"]).run(Batch(x_for()))),
    ("runner-model_output", "`model_output`", lambda: AttributionRunner(cnn(), ["saliency"], model_output="softmax")),
    ("runner-run-sigmoid_with_four_logits", "`model_output='sigmoid'`",
     lambda: AttributionRunner(cnn(), ["saliency"], model_output="sigmoid").run(Batch(x_for()))),
    ("monitor-model_output", "`model_output`", lambda: AttributionMonitor(["saliency"], model_output="probs")),
    ("randomization_check-model_output", "`model_output`",
     lambda: RandomizationCheck(["saliency"], model_output="probs")),
    ("batch-labels_with_a_fraction", "`labels`", lambda: adapt_batch((x_for(), torch.tensor([0.0, 1.9])))),
    ("batch-labels_nan", "`labels`", lambda: adapt_batch((x_for(), torch.tensor([0.0, float("nan")])))),
]
for label, expected, call in SCORING:
    case(label, expected, call)


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([(x_for(n=1)[0], torch.tensor(0))])


def fit_with(callback: Any, val: str, **options: Any) -> None:
    """One step of a tiny fit with ``callback``; ``val``: "none", "stream" (an IterableDataset) or "loader"."""
    import lightning as L
    from torch.utils.data import DataLoader

    data = ShapesDataModule(num_train=4, num_val=4, image_size=16)
    data.setup("fit")
    loaders = {"none": None, "stream": DataLoader(_Stream()), "loader": DataLoader(data.val_set)}
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback], **options)  # fmt: skip
    trainer.fit(DemoClassifier(width=4), DataLoader(data.train_set, batch_size=4), loaders[val])


# What the callbacks will not do, refused when the fit starts (on_error="raise").
NO_DATA = [
    ("monitor-no_validation_data", "no validation data", lambda: fit_with(AttributionMonitor(["saliency"]), "none")),
    ("monitor-limit_val_batches_0", "`limit_val_batches=0`",
     lambda: fit_with(AttributionMonitor(["saliency"]), "loader", limit_val_batches=0)),
    ("monitor-iterable_validation_data", "map-style dataset",
     lambda: fit_with(AttributionMonitor(["saliency"]), "stream")),
    ("randomization_check-no_validation_data", "no validation data",
     lambda: fit_with(RandomizationCheck(["saliency"]), "none")),
]
for label, expected, call in NO_DATA:
    case(label, expected, call)

# Shapes checked where what they must fit is first known.
FOUR_CHANNEL_BOUNDS = (torch.zeros(4, 1, 1), torch.ones(4, 1, 1))
SHAPES = [
    ("batch-masks_two_of_three_channels", "`masks`",
     lambda: adapt_batch((x_for(), torch.tensor([0, 1]), torch.ones(2, 2, 8, 8, dtype=torch.bool)))),
    ("runner-run-input_bounds_per_channel", "`input_bounds` of method `mfaba`",
     lambda: AttributionRunner(cnn(), ["mfaba"], input_bounds=FOUR_CHANNEL_BOUNDS).run(Batch(x_for()))),
]
for label, expected, call in SHAPES:
    case(label, expected, call)


# ---------------------------------------------------------------------------------------------------- evaluate
def run_evaluate_with(**bad: Any) -> None:
    arguments: dict[str, Any] = {
        "model": DemoClassifier(num_classes=4, width=8),
        "datamodule": ShapesDataModule(num_train=8, num_val=8, num_test=4),
        "output_dir": Path("/nonexistent/lit_attr_bad_input"),  # never reached: the arguments are refused first
        "methods": ["saliency"],
        "metrics": ["localization"],
        "limit_samples": 2,
        "progress": False,
    }
    evaluate(**{**arguments, **bad})


EVALUATE = [
    ("model", {"model": "model"}, "`model`"),
    ("datamodule", {"datamodule": "data"}, "`datamodule`"),
    ("trainer", {"trainer": "cpu"}, "`trainer`"),
    ("config", {"config": 3}, "`config`"),
    ("methods_unknown", {"methods": ["nope"]}, "`methods`"),
    ("methods_empty", {"methods": []}, "`methods`"),
    ("metrics_unknown", {"metrics": ["nope"]}, "`metrics`"),
    ("method_kwargs_unknown", {"method_kwargs": {"nope": {}}}, "`method_kwargs`"),
    ("method_kwargs_list", {"method_kwargs": [1]}, "`method_kwargs`"),
    ("split", {"split": "train"}, "`split`"),
    ("batch_size_0", {"batch_size": 0}, "`batch_size`"),
    ("batch_size_float", {"batch_size": 2.5}, "`batch_size`"),
    ("limit_samples_0", {"limit_samples": 0}, "`limit_samples`"),
    ("limit_samples_negative", {"limit_samples": -3}, "`limit_samples`"),
    ("heatmap_samples", {"heatmap_samples": -1}, "`heatmap_samples`"),
    ("randomization_samples", {"randomization_samples": -1}, "`randomization_samples`"),
    ("reference_pool_size", {"reference_pool_size": -1}, "`reference_pool_size`"),
    ("target", {"target": "both"}, "`target`"),
    ("input_bounds_reversed", {"input_bounds": (1.0, 0.0)}, "`input_bounds`"),
    ("input_bounds_str", {"input_bounds": "01"}, "`input_bounds`"),
    ("checkpoint_every", {"checkpoint_every": 0}, "`checkpoint_every`"),
    ("resume", {"resume": "yes"}, "`resume`"),
    ("overwrite", {"overwrite": 1}, "`overwrite`"),
    ("progress", {"progress": None}, "`progress`"),
    ("model_output", {"model_output": "softmax"}, "`model_output`"),
    ("input_bounds_per_channel", {"input_bounds": FOUR_CHANNEL_BOUNDS}, "`input_bounds`"),
    ("randomization_samples_0_with_randomization", {"metrics": ["randomization"], "randomization_samples": 0},
     "`randomization_samples`"),
]
for label, bad, expected in EVALUATE:
    case(f"evaluate-{label}", expected, lambda b=bad: run_evaluate_with(**b))


@pytest.mark.parametrize(("call", "expected"), CASES)
def test_bad_input_is_refused_naming_the_argument(call: Callable[[], Any], expected: str):
    with pytest.raises((TypeError, ValueError)) as error:
        call()
    assert expected in str(error.value), str(error.value)


def test_the_table_is_large():
    assert len(CASES) >= 60


# ---------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_bad_input")
    torch.manual_seed(0)
    torch.save(DemoClassifier(num_classes=4, width=8).state_dict(), root / "model.pt")
    config = {
        "model": {"class_path": "lit_attr.models.DemoClassifier", "init_args": {"num_classes": 4, "width": 8}},
        "data": {"class_path": "lit_attr.data.ShapesDataModule", "init_args": {"num_train": 8, "num_val": 8}},
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False},
        "methods": ["saliency"],
        "metrics": ["localization"],
        "limit_samples": 2,
    }
    (root / "evaluate.yaml").write_text(yaml.safe_dump(config))
    (root / "junk.ckpt").write_bytes(bytes(range(256)) * 4)
    (root / "notes.txt").write_text("a file where a directory is expected")
    evil = {"state_dict": torch.load(root / "model.pt"), "extra": _ShellCommand()}
    torch.save(evil, root / "legacy.ckpt", _use_new_zipfile_serialization=False)
    return {"config": root / "evaluate.yaml", "ckpt": root / "model.pt", "root": root}


class _ShellCommand:
    """Unpickles by calling os.system (never here: safe loading refuses it)."""

    def __reduce__(self) -> tuple:
        import os

        return os.system, ("true",)


CLI_CASES = [
    ("split", ["--split", "train"], "split"),
    ("batch_size_text", ["--batch_size", "abc"], "batch_size"),
    ("batch_size_0", ["--batch_size", "0"], "batch_size"),
    ("limit_samples_negative", ["--limit_samples", "-1"], "limit_samples"),
    ("methods_unknown", ["--methods", "[salency]"], "methods"),
    ("metrics_unknown", ["--metrics", "[nope]"], "metrics"),
    ("checkpoint_every_0", ["--checkpoint_every", "0"], "checkpoint_every"),
    ("input_bounds_reversed", ["--input_bounds", "[1, 0]"], "input_bounds"),
    ("resume_not_bool", ["--resume", "maybe"], "resume"),
    ("target", ["--target", "both"], "target"),
    ("model_output", ["--model_output", "softmax"], "model_output"),
    ("unknown_option", ["--bogus", "1"], "bogus"),
    ("missing_checkpoint", ["--ckpt_path", "missing.ckpt"], "--ckpt_path"),
    ("method_option_out_of_range", ["--methods", "[mfaba]", "--method_kwargs", "{mfaba: {max_steps: 0}}"],
     "max_steps"),
    ("not_a_checkpoint", ["--ckpt_path", "{root}/junk.ckpt"], "is not a PyTorch checkpoint"),
    ("legacy_checkpoint_calling_os_system", ["--ckpt_path", "{root}/legacy.ckpt"], "posix.system"),
    ("output_dir_under_a_file", ["--output_dir", "{root}/notes.txt/out"], "is a file, not a directory"),
    ("model_output_sigmoid_with_four_logits", ["--model_output", "sigmoid"], "model_output"),
    ("trainer_limit_leaving_no_sample", ["--trainer.limit_test_batches", "0.01"], "limit_test_batches=0.01"),
    ("randomization_samples_0", ["--metrics", "[randomization]", "--randomization_samples", "0"],
     "randomization_samples"),
]


@pytest.mark.parametrize(("arguments", "expected"), [pytest.param(a, e, id=i) for i, a, e in CLI_CASES])
def test_cli_bad_input_is_one_line_on_stderr_and_a_non_zero_exit(
    cli_files, restored_process_state, capsys, arguments, expected
):
    output_dir = cli_files["root"] / "out"
    code = main([
        "evaluate", "--config", str(cli_files["config"]), "--ckpt_path", str(cli_files["ckpt"]),
        "--output_dir", str(output_dir), *(a.replace("{root}", str(cli_files["root"])) for a in arguments),
    ])  # fmt: skip
    stderr = capsys.readouterr().err.strip()
    assert code != 0
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("lit_attr evaluate: error:") and expected in stderr, stderr
    assert not output_dir.exists()


@pytest.mark.parametrize("model", ["vit", "cnn"])
def test_demo_text_with_a_model_is_one_line_naming_model(restored_process_state, capsys, tmp_path, model):
    output_dir = tmp_path / "out"
    code = main(["demo", "--task", "text", "--model", model, "--output_dir", str(output_dir)])
    stderr = capsys.readouterr().err.strip()
    assert code != 0
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"lit_attr demo: error: --model {model} ") and "--task text" in stderr, stderr
    assert not output_dir.exists()
