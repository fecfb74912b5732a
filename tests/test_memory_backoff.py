"""Out-of-memory back-off: a chunk that raises torch.OutOfMemoryError is halved and retried (lit_attr/_memory.py).

The model stands in for a GPU: any forward pass that sees more than ``limit`` rows raises ``torch.OutOfMemoryError``.
Every method and every perturbation game must still finish, warn once naming the size that worked, and give the
result of a run that used that size from the start (on the same limited model, which then never fails). Where the
first failing chunk had twice the rows, the size reported is the first of the halving sequence that works: twice it
fails. Token ids take the same paths: every token-capable method and every token game.
"""

from __future__ import annotations

import functools
import re
import warnings

import pytest
import torch
from breadth_helpers import FAST as BREADTH_FAST
from text_helpers import MASK, SPECIALS, TOKEN_METHODS, plain_transformer, token_batch
from torch import Tensor, nn
from vit_helpers import torchvision_vit

from lit_attr._memory import OutOfMemoryWarning
from lit_attr.functional import (
    completeness,
    faithfulness_correlation,
    faithfulness_estimate,
    irof,
    monotonicity,
    monotonicity_correlation,
    non_sensitivity,
    region_perturbation,
    selectivity,
    sensitivity_n,
)
from lit_attr.functional.activation_deviation import activation_deviation
from lit_attr.functional.eraser import comprehensiveness, sufficiency
from lit_attr.functional.infidelity import infidelity
from lit_attr.functional.insertion_deletion import insertion_deletion
from lit_attr.functional.road import road
from lit_attr.functional.token_activation_deviation import token_activation_deviation
from lit_attr.functional.token_games import token_insertion_deletion
from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods import available_methods, get_method
from lit_attr.metrics import get_metric_spec

LIMIT = 4  # rows per forward pass
N = 6  # samples per batch: the whole batch does not fit


class RowLimited(nn.Module):
    """A model whose forward raises torch.OutOfMemoryError above ``limit`` rows (None: never)."""

    def __init__(self, inner: nn.Module, limit: int | None) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.largest = 0  # the most rows a forward pass that succeeded has seen

    def forward(self, x: Tensor) -> Tensor:
        if self.limit is not None and x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} rows > {self.limit}")
        self.largest = max(self.largest, x.shape[0])
        return self.inner(x)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 4),
    ).eval()  # fmt: skip


#: The methods that need a vision transformer: the others run on the small CNN (listed from its structure alone).
_CNN_STRUCTURE = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6, 4))
VIT_ONLY = sorted(set(available_methods()) - set(available_methods(_CNN_STRUCTURE)))

FAST = {
    "ig2": {"steps": 3, "n_references": 2},
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 3},
    "gradient_shap": {"n_samples": 2},  # all of a sample's points share one forward: 2 rows at least
    "mfaba": {"max_steps": 5},
    "big": {"attack_steps": 3, "ig_steps": 4},
    "agi": {"max_iter": 3, "n_classes": 2},
    "fei": {"iterations": 2, "levels": (0.5,)},
}


def _run(call):
    """``(result, [OutOfMemoryWarning messages])`` of ``call()``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught if issubclass(w.category, OutOfMemoryWarning)]


def _reported(messages: list[str], who: str) -> int:
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{who}: out of memory"), messages[0]
    return int(re.search(r"halved it to internal_batch_size=(\d+)", messages[0]).group(1))


def _method_setup(name: str) -> tuple[nn.Module, Tensor, dict]:
    if name in VIT_ONLY:
        return torchvision_vit(), torch.rand(N, 3, 32, 32, generator=torch.Generator().manual_seed(1)), {}
    options = dict(FAST.get(name, {}))
    if name == "ig2":
        pool = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(9))
        options["reference_pool"] = (pool, torch.arange(8) % 4)
    return small_cnn(), torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(1)), options


@pytest.mark.parametrize("name", available_methods())
def test_every_method_backs_off_to_a_size_that_fits(name):
    inner, x, options = _method_setup(name)
    model = RowLimited(inner, LIMIT)
    method = get_method(name, model, input_bounds=(0.0, 1.0), **options)
    assert method.internal_batch_size is None  # everything at once: the whole batch cannot fit
    backed_off, messages = _run(lambda: method.attribute(x, target=1))
    size = _reported(messages, name)
    assert method.internal_batch_size == size  # kept for the next batches
    assert model.largest <= LIMIT

    from_start, again = _run(lambda: get_method(name, model, input_bounds=(0.0, 1.0), internal_batch_size=size,
                                                **options).attribute(x, target=1))
    assert again == []  # the reported size works from the start ...
    torch.testing.assert_close(backed_off, from_start, rtol=1e-6, atol=1e-6)
    _, twice = _run(lambda: get_method(name, model, input_bounds=(0.0, 1.0), internal_batch_size=2 * size,
                                       **options).attribute(x, target=1))
    assert len(twice) == 1  # ... and twice it does not: it is the first size of the halving sequence that works


def test_a_started_bound_is_halved_and_the_clean_pass_backs_off_too():
    model = RowLimited(small_cnn(), 3)
    x = torch.rand(N, 3, 8, 8)
    method = get_method("integrated_gradients", model, n_steps=4, internal_batch_size=64)
    result, messages = _run(lambda: method.attribute(x))  # target None: the clean forward of 6 rows fails first
    # The failed chunk had 6 rows, not 64: halved to 3, which fits the clean pass and Captum's batches of 3 points.
    assert _reported(messages, "integrated_gradients") == 3
    assert "internal_batch_size=64" in messages[0]
    reference = get_method("integrated_gradients", small_cnn(), n_steps=4, internal_batch_size=3)
    torch.testing.assert_close(result, reference.attribute(x), rtol=1e-6, atol=1e-6)


def test_a_model_failing_at_one_row_re_raises_and_keeps_the_users_size():
    model = RowLimited(small_cnn(), 0)
    method = get_method("saliency", model, internal_batch_size=8)
    with pytest.raises(torch.OutOfMemoryError, match="1 rows > 0"):
        method.attribute(torch.rand(3, 3, 8, 8), target=0)
    assert method.internal_batch_size == 8
    with pytest.raises(torch.OutOfMemoryError, match="1 rows > 0"):
        insertion_deletion(model, torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), n_steps=4)


GAMES = {
    "insertion_deletion": lambda model, x, a, size, logits: insertion_deletion(
        model, x, a, n_steps=4, internal_batch_size=size, logits=logits
    ),
    "activation_deviation": lambda model, x, a, size, logits: activation_deviation(
        model, x, a, layers=["inner.1"], n_steps=4, internal_batch_size=size
    ),
    "road": lambda model, x, a, size, logits: road(
        model, x, a, percentiles=(20, 50, 80), internal_batch_size=size, logits=logits
    ),
    "infidelity": lambda model, x, a, size, logits: infidelity(
        model, x, a.unsqueeze(1).expand_as(x), n_perturb_samples=2, internal_batch_size=size, logits=logits
    ),
}


def _tensors(result) -> list[Tensor]:
    values = result if isinstance(result, tuple) else (result,)
    return [v for v in values if isinstance(v, Tensor)]


# With the clean logits given (as the runner does) only the perturbed rows run; without, the clean pass runs first.
CASES = [(game, False) for game in GAMES] + [(game, True) for game in GAMES if game != "activation_deviation"]


@pytest.mark.parametrize(("game", "with_logits"), CASES, ids=[f"{g}-{'logits' if w else 'clean'}" for g, w in CASES])
def test_every_game_backs_off_to_a_size_that_fits(game, with_logits):
    inner = small_cnn()
    model = RowLimited(inner, 5)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    a = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3))
    logits = inner(x).detach() if with_logits else None
    backed_off, messages = _run(lambda: GAMES[game](model, x, a, 32, logits))
    size = _reported(messages, game)
    assert model.largest <= 5
    from_start, again = _run(lambda: GAMES[game](model, x, a, size, logits))
    assert again == []
    for got, expected in zip(_tensors(backed_off), _tensors(from_start), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    _, twice = _run(lambda: GAMES[game](model, x, a, 2 * size, logits))
    assert len(twice) == 1


# ---------------------------------------------------------------------------------------------------- token inputs
class TokenRowLimited(RowLimited):
    """The text model's version: token ids and an attention mask in, torch.OutOfMemoryError above ``limit`` rows."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if self.limit is not None and input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: {input_ids.shape[0]} rows > {self.limit}")
        self.largest = max(self.largest, input_ids.shape[0])
        return self.inner(input_ids, attention_mask)


TOKEN_FAST = {
    "integrated_gradients": {"n_steps": 4},
    "mfaba": {"max_steps": 4},
    "ig2": {"steps": 3, "n_references": 2},
    "fei": {"iterations": 2, "levels": (0.5,), "gate": "none"},
}
OPTIONS = TokenOptions(special_token_ids=SPECIALS, mask_token_id=MASK)


def _token_method(name: str, model: nn.Module, **kwargs):
    options = dict(TOKEN_FAST.get(name, {}))
    if name == "ig2":
        pool = token_batch((7, 5, 8, 6), seed=9)[0]
        options["reference_pool"] = (pool, torch.arange(len(pool)) % 3)
    method = get_method(name, model, **options, **kwargs)
    method.token_options = OPTIONS
    return method


@pytest.mark.parametrize("name", TOKEN_METHODS)
def test_every_token_method_backs_off_to_a_size_that_fits(name):
    model = TokenRowLimited(plain_transformer(), LIMIT)
    ids, mask = token_batch((9, 9, 9, 9, 9, 6))  # a length group of 5 sentences (one forward each) and one of 1
    method = _token_method(name, model)
    backed_off, messages = _run(lambda: method.attribute(ids, target=1, attention_mask=mask))
    size = _reported(messages, name)
    assert method.internal_batch_size == size and model.largest <= LIMIT
    from_start, again = _run(
        lambda: _token_method(name, model, internal_batch_size=size).attribute(ids, target=1, attention_mask=mask)
    )
    assert again == []
    torch.testing.assert_close(backed_off, from_start, rtol=1e-6, atol=1e-6)


TOKEN_GAMES = {
    "token_insertion_deletion": lambda model, ids, mask, scores, size: token_insertion_deletion(
        model, ids, scores, attention_mask=mask, n_steps=3, internal_batch_size=size, replacement_id=MASK,
        special_token_ids=SPECIALS,
    ),
    "comprehensiveness": lambda model, ids, mask, scores, size: comprehensiveness(
        model, ids, scores, attention_mask=mask, bins=(20, 50), internal_batch_size=size, replacement_id=MASK,
        special_token_ids=SPECIALS,
    ),
    "sufficiency": lambda model, ids, mask, scores, size: sufficiency(
        model, ids, scores, attention_mask=mask, bins=(20, 50), internal_batch_size=size, replacement_id=MASK,
        special_token_ids=SPECIALS,
    ),
    "token_activation_deviation": lambda model, ids, mask, scores, size: token_activation_deviation(
        model, ids, scores, attention_mask=mask, n_steps=3, internal_batch_size=size, replacement_id=MASK,
        special_token_ids=SPECIALS, layers=["inner.encoder.layers.0"],
    ),
}


@pytest.mark.parametrize("game", list(TOKEN_GAMES))
def test_every_token_game_backs_off_to_a_size_that_fits(game):
    model = TokenRowLimited(plain_transformer(), 5)
    ids, mask = token_batch((9, 6, 7, 5, 8, 9))
    scores = torch.randn(ids.shape, generator=torch.Generator().manual_seed(5))
    backed_off, messages = _run(lambda: TOKEN_GAMES[game](model, ids, mask, scores, 64))
    size = _reported(messages, game)
    assert model.largest <= 5
    from_start, again = _run(lambda: TOKEN_GAMES[game](model, ids, mask, scores, size))
    assert again == []
    for got, expected in zip(_tensors(backed_off), _tensors(from_start), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    _, twice = _run(lambda: TOKEN_GAMES[game](model, ids, mask, scores, 2 * size))
    assert len(twice) == 1


# ------------------------------------------------------------------------------------- the metrics of issue #26
#: The unit games of issue #26 with small budgets (breadth_helpers.FAST): each plays several rows per sample.
UNIT_GAMES = {
    "faithfulness_correlation": faithfulness_correlation,
    "faithfulness_estimate": faithfulness_estimate,
    "sensitivity_n": sensitivity_n,
    "monotonicity": monotonicity,
    "monotonicity_correlation": monotonicity_correlation,
    "region_perturbation": region_perturbation,
    "selectivity": selectivity,
    "irof": irof,
    "non_sensitivity": non_sensitivity,
}


def _values(result) -> list[Tensor]:
    """Every tensor of a game's result (a tensor, a tuple or a dict of them), in a fixed order."""
    if isinstance(result, dict):
        return [result[key] for key in sorted(result)]
    return _tensors(result)


def _assert_same(got, expected) -> None:
    for a, b in zip(_values(got), _values(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("name", list(UNIT_GAMES))
def test_every_new_unit_game_backs_off_to_the_values_of_an_unlimited_model(name):
    # 3 samples fit the clean pass; the perturbed rows (12 to 24) do not fit 4 rows at the default size of 128.
    game = functools.partial(UNIT_GAMES[name], **BREADTH_FAST[name])
    inner = small_cnn().double()  # float64: a chunk's size changes a float32 conv's last bits, and so the scores
    model = RowLimited(inner, LIMIT)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    backed_off, messages = _run(lambda: game(model, x, a))
    size = _reported(messages, name)
    assert model.largest <= LIMIT
    _assert_same(backed_off, game(RowLimited(inner, None), x, a))
    from_start, again = _run(lambda: game(model, x, a, internal_batch_size=size))
    assert again == []
    _assert_same(from_start, backed_off)


@pytest.mark.parametrize("name", [*UNIT_GAMES, "completeness"])
def test_the_clean_pass_of_a_new_game_backs_off_on_a_batch_larger_than_the_limit(name):
    # Without logits the game runs the model on the batch first: 6 rows, then the baseline (completeness) or the game.
    game = functools.partial({**UNIT_GAMES, "completeness": completeness}[name], **BREADTH_FAST[name])
    inner = small_cnn().double()
    model = RowLimited(inner, LIMIT)
    x = torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    a = torch.randn(N, 3, 8, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    backed_off, messages = _run(lambda: game(model, x, a))
    assert messages and all(message.startswith(f"{name}: out of memory") for message in messages)
    assert model.largest <= LIMIT
    _assert_same(backed_off, game(RowLimited(inner, None), x, a))


def _counting(method):
    """``method`` that counts the rows it is asked to explain (``method.explained``), however it chunks them."""
    attribute = method.attribute
    method.explained = 0

    def counted(x: Tensor, *args, **kwargs):
        method.explained += x.shape[0]
        return attribute(x, *args, **kwargs)

    method.attribute = counted
    return method


@pytest.mark.parametrize("name", ["local_lipschitz", "avg_sensitivity", "continuity", "relative_stability"])
def test_every_robustness_metric_backs_off_with_the_values_and_method_calls_of_an_unlimited_model(name):
    # 3 samples x 3 copies: 9 rows per call of the method (and forward, for relative stability) at the default size.
    inner = small_cnn().double()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    target = torch.tensor([0, 1, 2])

    def score(limit: int | None):
        model = RowLimited(inner, limit)
        method = _counting(get_method("saliency", model))
        metric = get_metric_spec(name).build({**BREADTH_FAST[name], "n_perturb_samples": 3}, model=model, method=method)
        result, messages = _run(lambda: metric.score(x, target))
        return result, messages, method.explained, model.largest

    backed_off, messages, explained, largest = score(LIMIT)
    assert messages and largest <= LIMIT
    expected, none, unlimited_explained, unlimited_largest = score(None)
    assert none == [] and unlimited_largest > LIMIT  # the unlimited run does put more rows in one call
    assert sorted(backed_off) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(backed_off[key], expected[key], rtol=1e-6, atol=1e-6, equal_nan=True)
    # The reported attributions per sample are the rows the method explained, with or without the back-off.
    calls = backed_off[f"{name}_method_calls"]
    assert explained == unlimited_explained == int(calls.sum()) == 3 * 4
