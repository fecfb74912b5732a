"""The metrics of issue #26 (every evaluation users reach Quantus for), with small budgets for the registry-wide tests.

The tests that run every registered metric (presentation, modalities, bad input, the runner) merge :data:`FAST` into
their own options, so the new metrics stay cheap there; importable in DDP children too.
"""

from __future__ import annotations

import torch
from torch import nn

#: Every metric of issue #26 -> options that keep it cheap on 8x8 images and 10 features.
FAST: dict[str, dict] = {
    "sparseness": {},
    "complexity": {},
    "effective_complexity": {},
    "faithfulness_correlation": {"subset_size": 0.25, "n_subsets": 4},
    "faithfulness_estimate": {"features_per_step": 16},
    "sensitivity_n": {"sizes": (0.1, 0.5), "n_subsets": 3},
    "monotonicity": {"features_per_step": 16},
    "monotonicity_correlation": {"features_per_step": 16, "n_samples": 2},
    "region_perturbation": {"patch_size": 4, "regions": 3, "orders": ("morf", "lerf")},
    "selectivity": {"patch_size": 4},
    "irof": {"patch_size": 4},
    "sufficiency_dasgupta": {"threshold": 2.0},  # every pair of unit-norm maps of magnitudes is within sqrt(2)
    "consistency": {"top_k": 1.0},  # every unit: all samples share one explanation (plumbing, not a verdict)
    "attribution_localisation": {},
    "top_k_intersection": {"k": 5},
    "focus": {"tile": "half"},  # the registry-wide tests' models take 8x8 inputs only
    "random_logit": {"similarity": "spearman_abs"},  # "ssim" needs images and says so
    "completeness": {},
    "non_sensitivity": {"features_per_step": 16, "n_samples": 2},
    "input_invariance": {},
    "local_lipschitz": {"n_perturb_samples": 2},
    "avg_sensitivity": {"n_perturb_samples": 2},
    "continuity": {"n_perturb_samples": 2},
    "relative_stability": {"n_perturb_samples": 2, "noise": 0.01},  # small copies keep their predictions
}

#: The figures each new metric with curves draws (the default presentation: one panel per 1-D entry).
CURVE_STEMS = {
    "sensitivity_n": {"sensitivity_n_curves"},
    "region_perturbation": {"region_perturbation_curves"},
}


def linear_model(features: int = 12, classes: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """``nn.Linear`` classifier: with IG from a zero baseline its maps are exactly ``w_target * x``."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(features, classes).to(dtype)
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, features, generator=gen, dtype=dtype))
        model.bias.copy_(torch.randn(classes, generator=gen, dtype=dtype))
    return model.eval()


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A small image classifier for 8x8 RGB inputs (3 classes), built from torch modules only (it pickles)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 3)
    ).eval()


def build_metric(name: str, model: nn.Module, **options):
    """The registered metric ``name`` with its :data:`FAST` options, built as the runner builds it (saliency maps)."""
    from lit_attr.methods import get_method
    from lit_attr.metrics import get_metric_spec

    spec = get_metric_spec(name)
    return spec.build({**FAST[name], **options}, model=model, method=get_method("saliency", model))


def image_batch(n: int = 6, seed: int = 0) -> tuple[nn.Module, dict]:
    """``(model, inputs)``: :func:`tiny_cnn` and every input a metric may consume for ``n`` 8x8 images.

    The targets cycle through the 3 classes, the masks are a 4x4 square, the maps are saliency's.
    """
    from lit_attr.methods import get_method

    model = tiny_cnn(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 3, 8, 8, generator=gen)
    target = torch.arange(n) % 3
    masks = torch.zeros(n, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 3:7] = True
    attributions = get_method("saliency", model).attribute(x, target)
    inputs = {"x": x, "attributions": attributions, "target": target, "masks": masks, "logits": model(x).detach()}
    return model, {**inputs, "attention_mask": None, "special_tokens_mask": None, "model_inputs": None}


def inputs_for(name: str, given: dict, rows: slice = slice(None)) -> dict:
    """The inputs metric ``name`` consumes (its registry entry says which), for the samples ``rows``."""
    from lit_attr.metrics import get_metric_spec

    return {
        key: given[key] if given[key] is None else given[key][rows] for key in get_metric_spec(name).update_inputs
    }
