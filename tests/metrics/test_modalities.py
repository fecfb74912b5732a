"""Metrics declare the input kinds they accept as a set of tags, and the declarations match what they compute.

An input kind carries the tag of its name and, for float kinds, ``"continuous"``; a metric accepts a kind with any of
its tags. Every built-in float metric is run on images and on tabular features: it must compute exactly where its
declaration accepts the kind and refuse the rest with a ValueError; every one that does not declare token ids refuses
them (the unit games that do refuse them on a model of features), and every token metric refuses float inputs. (A
user's 1-D signal kind is the lead's toy-modality test.)
"""

from __future__ import annotations

import warnings

import pytest
import torch
from breadth_helpers import FAST as BREADTH_FAST
from text_helpers import game_metrics, plain_transformer, token_metric_inputs
from torch import nn

from lit_attr.methods import get_method
from lit_attr.metrics import (
    MetricSpec,
    TokenLocalization,
    available_metrics,
    get_metric_spec,
    register_metric,
    unregister_metric,
)
from lit_attr.metrics.registry import CONTINUOUS

from .test_presentation import ErrorProfile

KIND_TAGS = {
    "images": {"images", CONTINUOUS},
    "tabular": {"tabular", CONTINUOUS},
    "signals": {"signals", CONTINUOUS},  # a user's float kind
    "tokens": {"tokens"},
}
FAST = {
    "insertion_deletion": {"n_steps": 3},
    "activation_deviation": {"n_steps": 3},
    "road": {"percentiles": (50,)},
    "infidelity": {"n_perturb_samples": 2},
    "sensitivity": {"n_perturb_samples": 2},
    "smprt": {"n_noise": 2},
    "randomization": {"similarity": "spearman_abs"},  # "ssim" needs images and says so; the check itself does not
    **BREADTH_FAST,
}
TOKEN_METRICS = {*game_metrics(nn.Identity()), "token_localization"}
FLOAT_METRICS = [name for name in available_metrics() if name not in TOKEN_METRICS]


def registered(name: str, **options) -> MetricSpec:
    return register_metric(name, ErrorProfile, consumes=("attributions",), **options)


@pytest.fixture
def cleanup():
    names: list[str] = []
    yield names
    for name in names:
        unregister_metric(name)


def test_a_metric_accepts_the_kinds_that_carry_any_of_its_tags(cleanup):
    cleanup += ["images_only", "signals_only", "anything_float", "either"]
    images_only = registered("images_only", modalities={"images"})
    signals_only = registered("signals_only", modalities="signals")  # one tag as a string
    default = registered("anything_float")
    either = registered("either", modalities=("tokens", CONTINUOUS))
    accepted = {
        spec.name: sorted(kind for kind, tags in KIND_TAGS.items() if spec.accepts(tags))
        for spec in (images_only, signals_only, default, either)
    }
    assert accepted == {
        "images_only": ["images"],
        "signals_only": ["signals"],
        "anything_float": ["images", "signals", "tabular"],
        "either": ["images", "signals", "tabular", "tokens"],
    }
    assert default.modalities == frozenset({CONTINUOUS}) and either.modalities == frozenset({"tokens", CONTINUOUS})
    assert [spec.tokens for spec in (images_only, default, either)] == [False, False, None]


@pytest.mark.parametrize(
    ("tokens", "modalities"),
    [(True, {"tokens"}), (False, {CONTINUOUS}), (None, {"tokens", CONTINUOUS})],
)
def test_the_tokens_flag_still_works_with_a_deprecation_warning(cleanup, tokens, modalities):
    cleanup.append("flagged")
    with pytest.warns(DeprecationWarning, match="modalities="):
        spec = registered("flagged", tokens=tokens)
    assert spec.modalities == frozenset(modalities) and spec.tokens is tokens


def test_bad_modalities_are_refused_naming_the_argument():
    with pytest.raises(TypeError, match="`modalities` must be a non-empty set of input-kind tags"):
        registered("bad", modalities=set())
    with pytest.raises(TypeError, match="`modalities`"):
        registered("bad", modalities={"images", 3})
    with pytest.raises(ValueError, match="Pass `modalities` only"):
        registered("bad", modalities={"images"}, tokens=False)
    with warnings.catch_warnings(), pytest.raises(TypeError, match="`tokens` must be True, False or None"):
        warnings.simplefilter("ignore", DeprecationWarning)
        registered("bad", tokens="yes")
    assert "bad" not in available_metrics()
    with pytest.raises(TypeError, match="`tags`"):
        get_metric_spec("localization").accepts(None)


def _float_batch(kind: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    if kind == "images":
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3))
        x, masks = torch.rand(4, 3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.bool)
        masks[:, 2:5, 2:5] = True
    else:
        model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
        x, masks = torch.rand(4, 10), torch.zeros(4, 10, dtype=torch.bool)
        masks[:, :3] = True
    model.eval()
    target = torch.tensor([0, 1, 2, 0])
    attributions = get_method("saliency", model).attribute(x, target)
    given = {"x": x, "attributions": attributions, "target": target, "masks": masks, "logits": model(x).detach()}
    return model, {**given, "attention_mask": None, "special_tokens_mask": None, "model_inputs": None}  # as the runner


@pytest.mark.parametrize("kind", ["images", "tabular"])
@pytest.mark.parametrize("name", FLOAT_METRICS)
def test_a_float_metric_computes_exactly_on_the_kinds_it_declares(name, kind):
    spec = get_metric_spec(name)
    model, given = _float_batch(kind)
    metric = spec.build(FAST.get(name, {}), model=model, method=get_method("saliency", model))
    inputs = {key: given[key] for key in spec.update_inputs}
    if spec.accepts(KIND_TAGS[kind]):
        metric.update(**inputs)
        assert spec.details(metric)
    else:
        with pytest.raises(ValueError, match="must"):
            metric.update(**inputs)


@pytest.mark.parametrize("name", [name for name in FLOAT_METRICS if "x" in get_metric_spec(name).update_inputs])
def test_float_metrics_refuse_token_ids(name):
    spec = get_metric_spec(name)
    assert not spec.accepts(KIND_TAGS["tokens"]) or spec.modalities in ({"tokens", CONTINUOUS}, {"tokens", "images"})
    model, given = _float_batch("tabular")
    given["x"] = torch.randint(0, 5, (4, 10))
    options = {key: value for key, value in FAST.get(name, {}).items() if key != "tile"}  # sentences tile whole
    metric = spec.build(options, model=model, method=get_method("saliency", model))
    # A metric that re-runs the method on token ids meets the method's refusal: the model embeds no tokens.
    rerun = "method" in spec.consumes and spec.accepts(KIND_TAGS["tokens"])
    refusal = (ValueError, "embeds the tokens") if rerun else (TypeError, "`x`")
    with pytest.raises(refusal[0], match=refusal[1]):
        metric.update(**{key: given[key] for key in spec.update_inputs})


def test_token_metrics_accept_token_ids_only():
    model = plain_transformer()
    ids, mask, scores, rationale = token_metric_inputs()
    for name, factory in game_metrics(model).items():
        assert get_metric_spec(name).modalities == frozenset({"tokens"}), name
        factory().update(ids, scores, attention_mask=mask)
        with pytest.raises(TypeError, match="must hold integer token ids"):
            factory().update(torch.rand(ids.shape), scores, attention_mask=mask)
    assert get_metric_spec("token_localization").modalities == frozenset({"tokens"})
    # Only the metrics that declare token ids beside floats (those of maps alone) accept them.
    both = {name for name in FLOAT_METRICS if get_metric_spec(name).accepts(KIND_TAGS["tokens"])}
    assert all(get_metric_spec(name).tokens is None for name in both)
    assert {"sparseness", "complexity", "effective_complexity"} <= both
    TokenLocalization().update(scores, rationale, attention_mask=mask)


def test_the_readme_table_names_every_metric_with_the_kinds_it_declares():
    """README's "every metric" table: one row per registered metric, its kinds column equal to the declaration."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 7 and cells[0].startswith("`") and cells[1] != "group":
            rows[cells[0].strip("`")] = set(cells[5].split(", "))
    assert set(rows) == set(available_metrics())
    for name, kinds in rows.items():
        assert kinds == set(get_metric_spec(name).modalities), name
