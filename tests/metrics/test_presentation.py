"""Metrics own their presentation: names, scores with directions, captions, sanity verdicts and curves.

The defaults are derived from a toy Metric written here; every built-in metric's declared scores are checked against
its real results (on a tiny CNN for float inputs, a tiny transformer for token ids), and its curves against the
figures that ``report.curve_figures`` drew from the same results before the metrics owned them.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
from breadth_helpers import CURVE_STEMS as BREADTH_CURVE_STEMS
from breadth_helpers import FAST as BREADTH_FAST
from matplotlib.figure import Figure
from text_helpers import SPECIALS, game_metrics, plain_transformer, token_metric_inputs
from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr.methods import get_method
from lit_attr.metrics import TokenLocalization, available_metrics, get_metric_spec, register_metric, unregister_metric
from lit_attr.metrics.presentation import DEFAULT, Presentation, SanityCheck, Score

CURVE_STEMS = {
    "insertion_deletion": {"insertion_deletion_curves"},
    "road": {"road_curves"},
    "randomization": {"randomization_curves"},
    "smprt": {"smprt_curves"},
    **BREADTH_CURVE_STEMS,
}
SANITY = {"randomization": "MPRT", "smprt": "sMPRT", "emprt": "eMPRT"}
FAST = {
    "insertion_deletion": {"n_steps": 3},
    "activation_deviation": {"n_steps": 3},
    "road": {"percentiles": (20, 60)},
    "infidelity": {"n_perturb_samples": 2},
    "sensitivity": {"n_perturb_samples": 2},
    "smprt": {"n_noise": 2},
    **BREADTH_FAST,
}
METHODS = ("saliency", "input_x_gradient")


class ErrorProfile(Metric):
    """A metric a user might write: two scalars and a 1-D profile, lower is better."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(3), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, attributions: Tensor) -> None:
        self.total += attributions.abs().flatten(1)[:, :3].sum(dim=0)
        self.count += attributions.shape[0]

    def compute(self) -> dict[str, Any]:
        profile = self.total / self.count
        return {"error": profile.mean(), "peak": profile.max(), "profile": profile, "names": ("a", "b", "c")}


def plain(value: Any) -> Any:
    """Details as ``metrics.json`` holds them: floats and lists."""
    if isinstance(value, Tensor):
        return float(value) if value.ndim == 0 else value.tolist()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


@pytest.fixture
def error_profile():
    spec = register_metric("error_profile", ErrorProfile, consumes=("attributions",))
    yield spec
    unregister_metric("error_profile")


def toy_results() -> dict[str, dict[str, Any]]:
    results = {}
    for method, maps in (("m1", torch.tensor([[1.0, -2.0, 3.0, 9.0]])), ("m2", torch.tensor([[0.5, 0.5, -4.0, 0.0]]))):
        metric = ErrorProfile()
        metric.update(maps)
        results[method] = metric.compute()
    return results


@pytest.mark.parametrize("form", [dict, plain], ids=["tensors", "json"])
def test_a_metric_registered_without_a_presentation_gets_the_default(error_profile, form):
    results = {method: form(details) for method, details in toy_results().items()}
    presentation = error_profile.presentation
    assert presentation.display_name == "error_profile" and presentation.sanity is None
    scores = presentation.scores_in(results)
    assert [(s.key, s.label, s.higher_is_better, s.title) for s in scores] == [
        ("error", "error", False, "error ↓"),
        ("peak", "peak", False, "peak ↓"),
    ]
    assert all(s.console_header is None for s in scores) and presentation.captions({"error": 0.5}) == []

    figures = presentation.figures(results, "epoch 2")
    assert list(figures) == ["error_profile_curves"]
    (ax,) = figures["error_profile_curves"].axes  # one panel: the only 1-D entry of numbers
    assert ax.get_title() == "profile" and "epoch 2" in figures["error_profile_curves"]._suptitle.get_text()
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {"m1": [1.0, 2.0, 3.0], "m2": [0.5, 0.5, 4.0]}  # |A| of the first three features


def test_the_default_direction_comes_from_the_metric_class():
    class Undirected(ErrorProfile):
        higher_is_better = None

    class Better(ErrorProfile):
        higher_is_better = True

    for name, factory, expected in (
        ("undirected_toy", Undirected, None),
        ("better_toy", Better, True),
        ("partial_toy", functools.partial(Better), True),  # the class a partial builds
        ("function_toy", lambda: Better(), None),  # a plain function declares no direction
    ):
        spec = register_metric(name, factory, consumes=("attributions",))
        try:
            assert spec.presentation.higher_is_better is expected
            assert [s.higher_is_better for s in spec.presentation.scores_in(toy_results())] == [expected, expected]
        finally:
            unregister_metric(name)


def test_declared_scores_take_the_metric_direction_unless_they_declare_their_own():
    declared = Presentation(scores=(Score("insertion"), Score("deletion", higher_is_better=False)), curves=None)
    resolved = declared.resolve("games", higher_is_better=True)
    assert [s.higher_is_better for s in resolved.scores] == [True, False]
    assert declared.scores[0].higher_is_better is DEFAULT  # resolving returns a copy
    overridden = Presentation(scores=(Score("insertion"),), higher_is_better=None).resolve("games", True)
    assert overridden.scores[0].higher_is_better is None and overridden.scores[0].arrow == ""
    # Built-in metrics of both directions: deletion down, insertion up, from the class and the declaration.
    games = get_metric_spec("insertion_deletion").presentation.scores
    assert {s.key: s.higher_is_better for s in games} == {"insertion": True, "deletion": False, "difference": True}


def test_captions_format_the_samples_scores_of_the_declared_scores():
    sample = {"insertion": 0.5234, "deletion": 0.3149, "pointing_game": 1.0, "relevance_mass": 0.4251}
    assert get_metric_spec("insertion_deletion").presentation.captions(sample) == ["ins 0.52", "del 0.31"]
    assert get_metric_spec("localization").presentation.captions(sample) == ["point 1", "mass 0.43"]
    # A game this sample did not play is left out.
    deletion_only = {"insertion": float("nan"), "deletion": 0.25}
    assert get_metric_spec("insertion_deletion").presentation.captions(deletion_only) == ["del 0.25"]


def test_sanity_checks_read_their_headline_and_verdict():
    mprt = get_metric_spec("randomization").presentation.sanity
    details = {"ssim": {"final": 0.9}, "spearman_abs": {"final": 0.2, "passed": True}, "passed": False}
    assert mprt.read(details) == (0.2, False)  # the overall verdict wins over spearman's own
    assert mprt.read({"ssim": {"final": 0.7, "passed": True}, "threshold": 0.5}) == (0.7, True)
    assert get_metric_spec("smprt").presentation.sanity.read(plain({"spearman_abs": {"final": torch.tensor(0.1)}}))[
        0
    ] == pytest.approx(0.1)
    emprt = get_metric_spec("emprt").presentation.sanity
    assert emprt.read({"emprt": torch.tensor(0.25), "passed": torch.tensor(True)}) == (0.25, True)
    value, passed = emprt.read({})
    assert math.isnan(value) and passed is None
    assert [get_metric_spec(name).presentation.sanity.title for name in SANITY] == [
        "MPRT (final spearman |A|) ↓",
        "sMPRT (final spearman |A|) ↓",
        "eMPRT (entropy rise) ↑",
    ]


def test_bad_declarations_are_refused_naming_the_argument():
    with pytest.raises(TypeError, match="`presentation`"):
        register_metric("bad_presentation", ErrorProfile, consumes=("attributions",), presentation="table")
    assert "bad_presentation" not in available_metrics()
    with pytest.raises(ValueError, match="`caption` must be a format string"):
        Score("auc", caption="auc {value}")
    with pytest.raises(TypeError, match="`higher_is_better`"):
        Score("auc", higher_is_better="up")
    with pytest.raises(TypeError, match="`scores` must hold Score"):
        Presentation(scores=["auc"])
    with pytest.raises(ValueError, match="`scores` must not repeat"):
        Presentation(scores=(Score("auc"), Score("auc")))
    with pytest.raises(TypeError, match="`curves`"):
        Presentation(curves="lines")
    with pytest.raises(TypeError, match="`headline`"):
        SanityCheck("x", "x", True, headline=None)


# ---------------------------------------------------------------------------------------------------- real results
@functools.cache
def float_results() -> dict[str, dict[str, Any]]:
    """``{metric: {method: details}}`` of every float metric, two methods on four 8x8 images with masks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    x = 0.1 + 0.8 * torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    target = torch.tensor([0, 1, 2, 0])
    given = {"x": x, "target": target, "masks": masks, "logits": model(x).detach()}
    given.update(attention_mask=None, special_tokens_mask=None, model_inputs=None)  # as the runner feeds float batches
    results: dict[str, dict[str, Any]] = {}
    for name in available_metrics():
        spec = get_metric_spec(name)
        if spec.tokens:
            continue
        for method_name in METHODS:
            method = get_method(method_name, model, input_bounds=(0.0, 1.0))
            given["attributions"] = method.attribute(x, target)
            metric = spec.build(FAST.get(name, {}), model=model, method=method)
            metric.update(**{key: given[key] for key in spec.update_inputs})
            results.setdefault(name, {})[method_name] = spec.details(metric)
    return results


@functools.cache
def token_results() -> dict[str, dict[str, Any]]:
    """``{metric: {method: details}}`` of every token metric; the "methods" are two fixed random score maps."""
    model = plain_transformer()
    ids, mask, scores, rationale = token_metric_inputs()
    special = ids.eq(SPECIALS[0]) | ids.eq(SPECIALS[1])
    results: dict[str, dict[str, Any]] = {}
    for method, maps in (("random", scores), ("reversed", -scores)):
        for name, factory in game_metrics(model).items():
            metric = factory()
            metric.update(ids, maps, attention_mask=mask)
            results.setdefault(name, {})[method] = get_metric_spec(name).details(metric)
        localization = TokenLocalization()
        localization.update(maps, rationale, attention_mask=mask, special_tokens_mask=special)
        results.setdefault("token_localization", {})[method] = get_metric_spec("token_localization").details(
            localization
        )
    return results


def test_every_builtin_metric_has_results_for_what_it_declares():
    results = {**float_results(), **token_results()}
    assert set(results) == set(available_metrics())
    for name, by_method in results.items():
        presentation = get_metric_spec(name).presentation
        if presentation.scores is DEFAULT:
            continue
        for details in by_method.values():
            missing = [s.key for s in presentation.scores if s.key not in details]
            assert not missing, f"{name}: declared scores {missing} are not in its results {sorted(details)}"
            assert all(math.isfinite(float(details[s.key])) for s in presentation.scores), name
        assert presentation.scores_in(by_method) == tuple(presentation.scores)
        if name in SANITY:
            assert presentation.sanity.short == SANITY[name]
            for details in (*by_method.values(), *map(plain, by_method.values())):
                value, passed = presentation.sanity.read(details)
                assert math.isfinite(value) and isinstance(passed, bool), name
        else:
            assert presentation.sanity is None and presentation.scores, name


@pytest.mark.parametrize("form", [dict, plain], ids=["tensors", "json"])
def test_curves_of_real_results_are_the_figures_the_report_drew(form):
    from lit_attr.report import curve_figures

    results = {name: {m: form(d) for m, d in by_method.items()} for name, by_method in float_results().items()}
    drawn: dict[str, Figure] = {}
    for name, by_method in results.items():
        figures = get_metric_spec(name).presentation.figures(by_method, "4 samples")
        assert set(figures) == CURVE_STEMS.get(name, set()), name
        assert all(isinstance(figure, Figure) for figure in figures.values())
        drawn.update(figures)
    by_method = {method: {name: results[name][method] for name in results} for method in METHODS}
    before = curve_figures(by_method, "4 samples")
    assert set(before) == set(drawn)
    for stem, figure in before.items():
        new = drawn[stem]
        assert [ax.get_title() for ax in new.axes] == [ax.get_title() for ax in figure.axes], stem
        assert [[line.get_label() for line in ax.get_lines()] for ax in new.axes] == [
            [line.get_label() for line in ax.get_lines()] for ax in figure.axes
        ], stem
    # Token metrics draw no curves yet (as before), and no metric draws for methods without results.
    for name, by_method in token_results().items():
        assert get_metric_spec(name).presentation.figures(by_method, "x") == {}
    assert get_metric_spec("insertion_deletion").presentation.figures({"saliency": {}}, "x") == {}


def test_every_registered_presentation_pickles(error_profile):
    # Metric specs travel to spawned DDP processes with the callbacks that hold them.
    import pickle

    for name in available_metrics():
        presentation = get_metric_spec(name).presentation
        # Same fields; functions (and the partials over them) come back as the same module-level objects.
        assert repr(pickle.loads(pickle.dumps(presentation))) == repr(presentation), name
