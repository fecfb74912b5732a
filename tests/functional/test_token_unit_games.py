"""The unit games on token ids (#26) against naive per-sample loops that mask tokens by hand.

Every reference below takes one sentence at a time, finds its units by hand (attended positions that are not [CLS] or
[SEP]), writes the [MASK] id into the masked positions and calls the model with the sentence's attention mask and
``token_type_ids``; it shares no code with the games but the model.
"""

import math

import pytest
import torch
from text_helpers import CLS, MASK, PAD, SEP, VOCAB, PairClassifier, declared_pair_classifier, pair_batch
from torch import nn

from lit_attr._hygiene import row_seed
from lit_attr.functional.axioms import completeness, non_sensitivity, random_logit
from lit_attr.functional.faithfulness import faithfulness_correlation, faithfulness_estimate, sensitivity_n
from lit_attr.functional.monotonicity import monotonicity, monotonicity_correlation, monotonicity_curves
from lit_attr.functional.regions import irof, region_perturbation, selectivity
from lit_attr.inputs import TokenOptions
from lit_attr.methods import get_method


@pytest.fixture(scope="module")
def model():
    return PairClassifier().double().eval()


def options(mask, special, types):
    return {"attention_mask": mask, "special_tokens_mask": special, "model_inputs": {"token_type_ids": types},
            "substrate": "constant", "substrate_value": MASK}  # fmt: skip


# ----------------------------------------------------------------------------------------------- naive reference
class Sentence:
    """One sentence of a batch: its units by hand and the target score of the sentence with some units masked."""

    def __init__(self, model, ids, mask, types, i, output="prob"):
        self.model, self.ids, self.mask, self.types = model, ids[i], mask[i], types[i]
        self.units = [p for p in range(ids.shape[1]) if mask[i, p] and int(ids[i, p]) not in (CLS, SEP)]
        self.output = output
        self.target = int(self.logits([]).argmax())
        self.clean = self.score([])

    def logits(self, masked):
        ids = self.ids.clone()
        ids[list(masked)] = MASK
        with torch.no_grad():
            return self.model(ids[None], attention_mask=self.mask[None], token_type_ids=self.types[None])[0]

    def score(self, masked):
        logits = self.logits(masked)
        return float(logits.softmax(dim=0)[self.target] if self.output == "prob" else logits[self.target])


def pearson(a, b):
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    scale = float((a * a).sum() * (b * b).sum())
    return float((a * b).sum()) / math.sqrt(scale) if scale > 0 else 0.0


def runs(units, order_scores, patch, statistic, descending):
    """Runs of ``patch`` consecutive units, ordered by their summed (or mean) score; ties in sentence order."""
    regions = [units[k : k + patch] for k in range(0, len(units), patch)]
    value = [sum(order_scores[p] for p in r) / (len(r) if statistic == "mean" else 1) for r in regions]
    ranked = sorted(range(len(regions)), key=lambda k: (-value[k] if descending else value[k], k))
    return [regions[k] for k in ranked]


def removal_curve(sentence, regions, steps):
    return [sentence.score([p for r in regions[:t] for p in r]) for t in range(steps + 1)]


def trapezoid(curve):
    return (sum(curve) - (curve[0] + curve[-1]) / 2) / (len(curve) - 1)


# ---------------------------------------------------------------------------------------------------- the tests
def test_faithfulness_estimate_masks_each_token_alone(model):
    ids, mask, special, types, scores = pair_batch()
    got = faithfulness_estimate(model, ids, scores, **options(mask, special, types))
    for i in range(ids.shape[0]):
        s = Sentence(model, ids, mask, types, i)
        drops = [s.clean - s.score([p]) for p in s.units]
        assert got[i].item() == pytest.approx(pearson([scores[i, p].item() for p in s.units], drops), abs=1e-9)


def documented_subsets(ids, units, sizes):
    """A generator seeded by row_seed(0, the sentence's unit ids); row r is the sizes[r] units of smallest keys."""
    generator = torch.Generator().manual_seed(row_seed(0, ids[units]))
    keys = torch.rand((len(sizes), len(units)), generator=generator)
    return [units[keys[r].argsort()[:n]].tolist() for r, n in enumerate(sizes)]


@pytest.mark.parametrize("size", [2, 0.5])
def test_faithfulness_correlation_and_sensitivity_n_mask_the_documented_subsets(model, size):
    ids, mask, special, types, scores = pair_batch()
    got = faithfulness_correlation(model, ids, scores, subset_size=size, n_subsets=6, output="logit",
                                   **options(mask, special, types))  # fmt: skip
    curve = sensitivity_n(model, ids, scores, sizes=(1, size), n_subsets=6, **options(mask, special, types))
    for i in range(ids.shape[0]):
        s = Sentence(model, ids, mask, types, i, output="logit")
        units = torch.tensor(s.units)
        take = size if isinstance(size, int) else max(1, round(size * len(units)))
        played = documented_subsets(ids[i], units, [take] * 6), documented_subsets(ids[i], units, [1] * 6 + [take] * 6)
        for value, subsets in ((got[i], played[0]), (curve[i, 0], played[1][:6]), (curve[i, 1], played[1][6:])):
            sums = [sum(scores[i, p].item() for p in subset) for subset in subsets]
            drops = [s.clean - s.score(subset) for subset in subsets]
            assert value.item() == pytest.approx(pearson(sums, drops), abs=1e-9)


def test_monotonicity_puts_tokens_back_least_attributed_first(model):
    ids, mask, special, types, scores = pair_batch()
    curves = monotonicity_curves(model, ids, scores, **options(mask, special, types))
    passed = monotonicity(model, ids, scores, **options(mask, special, types))
    assert curves.shape == (ids.shape[0], 7 + 1)  # the longest sentence has 7 units
    for i in range(ids.shape[0]):
        s = Sentence(model, ids, mask, types, i)
        order = sorted(s.units, key=lambda p: (scores[i, p].item(), p))
        expected = [s.score(order[t:]) for t in range(len(order) + 1)]
        expected_curve = torch.tensor(expected, dtype=torch.float64)
        torch.testing.assert_close(curves[i, : len(expected)], expected_curve, rtol=0, atol=1e-12)
        assert bool(curves[i, len(expected) :].isnan().all())
        assert passed[i].item() == float(all(b >= a for a, b in zip(expected, expected[1:], strict=False)))


@pytest.mark.parametrize("patch", [1, 2])
def test_region_games_remove_runs_of_tokens(model, patch):
    ids, mask, special, types, scores = pair_batch()
    region = region_perturbation(model, ids, scores, patch_size=patch, regions=3, orders=("morf", "lerf"),
                                 **options(mask, special, types))  # fmt: skip
    select = selectivity(model, ids, scores, patch_size=patch, **options(mask, special, types))
    areas = irof(model, ids, scores, patch_size=patch, **options(mask, special, types))
    for i in range(ids.shape[0]):
        s = Sentence(model, ids, mask, types, i)
        a = {p: scores[i, p].item() for p in s.units}
        for order in ("morf", "lerf"):
            regions = runs(s.units, a, patch, "sum", descending=order == "morf")
            curve = removal_curve(s, regions, min(3, len(regions)))
            expected = sum(curve[0] - c for c in curve) / len(curve)
            assert region[order][i].item() == pytest.approx(expected, abs=1e-12)
            played = region[f"{order}_curve"][i, : len(curve)]
            torch.testing.assert_close(played, torch.tensor(curve, dtype=torch.float64), rtol=0, atol=1e-12)
        regions = runs(s.units, a, patch, "sum", descending=True)
        assert select[i].item() == pytest.approx(trapezoid(removal_curve(s, regions, len(regions))), abs=1e-12)
        regions = runs(s.units, a, patch, "mean", descending=True)
        ratio = [c / s.clean for c in removal_curve(s, regions, len(regions))]
        assert areas[i].item() == pytest.approx(1 - trapezoid(ratio), abs=1e-12)


def test_non_sensitivity_counts_the_tokens_where_zero_attribution_and_no_effect_disagree(model):
    ids, mask, special, types, scores = pair_batch()
    scores[:, 1::3] = 0.0  # some real tokens without attribution
    got = non_sensitivity(model, ids, scores, n_samples=2, tolerance=1e-3, **options(mask, special, types))
    for i in range(ids.shape[0]):
        s = Sentence(model, ids, mask, types, i)
        largest = max(abs(scores[i, p].item()) for p in s.units)
        zero = [abs(scores[i, p].item()) <= 1e-5 * largest for p in s.units]
        moved = [abs(s.score([p]) - s.clean) > 1e-3 for p in s.units]
        assert got[i].item() == sum(z == m for z, m in zip(zero, moved, strict=True))


def test_the_mask_substrate_is_the_models_declared_mask_id(model):
    ids, mask, special, types, scores = pair_batch()
    declared = declared_pair_classifier()
    given = faithfulness_estimate(model, ids, scores, **options(mask, special, types))
    # No substrate and no special_tokens_mask: the model's declared [MASK] id and special ids.
    found = faithfulness_estimate(declared, ids, scores, attention_mask=mask, model_inputs={"token_type_ids": types})
    torch.testing.assert_close(found, given, rtol=0, atol=0)


def test_moving_the_padding_changes_no_score():
    """Left padding and wider padding, with other scores on padding and special tokens: the same per-sample scores."""
    bag = PairClassifier(positions=False).double().eval()
    ids, mask, special, types, scores = pair_batch()
    n, width = ids.shape
    lengths = mask.sum(dim=1)
    left = {name: torch.zeros(n, width + 3, dtype=t.dtype) for name, t in
            (("ids", ids), ("mask", mask), ("special", special), ("types", types), ("scores", scores))}  # fmt: skip
    left["scores"].fill_(-70.0)
    for i, length in enumerate(lengths.tolist()):
        for name, t in (("ids", ids), ("mask", mask), ("special", special), ("types", types), ("scores", scores)):
            left[name][i, width + 3 - length :] = t[i, :length]
    left["scores"][left["special"]] = -70.0
    games = {
        "faithfulness_correlation": lambda **k: faithfulness_correlation(bag, subset_size=0.5, n_subsets=5, **k),
        "sensitivity_n": lambda **k: sensitivity_n(bag, sizes=(1, 0.4), n_subsets=5, **k),
        "faithfulness_estimate": lambda **k: faithfulness_estimate(bag, **k),
        "monotonicity": lambda **k: monotonicity(bag, **k),
        "region_perturbation": lambda **k: region_perturbation(bag, patch_size=2, **k)["morf"],
        "selectivity": lambda **k: selectivity(bag, patch_size=2, **k),
        "irof": lambda **k: irof(bag, patch_size=3, **k),
        "non_sensitivity": lambda **k: non_sensitivity(bag, n_samples=1, tolerance=1e-3, **k),
    }
    for name, game in games.items():
        right_scores = game(x=ids, attributions=scores, **options(mask, special, types))
        left_scores = game(x=left["ids"], attributions=left["scores"],
                           **options(left["mask"], left["special"], left["types"]))  # fmt: skip
        torch.testing.assert_close(left_scores, right_scores, rtol=0, atol=1e-9, msg=name)


def test_random_logit_compares_the_maps_of_a_sentence_own_tokens():
    from scipy.stats import spearmanr

    model = declared_pair_classifier()
    method = get_method("saliency", model)
    ids, mask, special, types, _ = pair_batch()
    fields = {"attention_mask": mask, "special_tokens_mask": special, "token_type_ids": types}
    got = random_logit(method, ids, similarity="spearman_abs", **fields)
    for i in range(ids.shape[0]):
        s = Sentence(model, ids, mask, types, i)
        units = torch.tensor(s.units)
        generator = torch.Generator().manual_seed(row_seed(0, ids[i, units]))
        other = int(torch.randint(2, (1,), generator=generator))
        other += int(other >= s.target)  # one of the two other classes
        one = {key: value[i : i + 1] for key, value in fields.items()}
        own, theirs = (method.attribute(ids[i : i + 1], c, **one)[0, units].abs() for c in (s.target, other))
        assert got[i].item() == pytest.approx(spearmanr(own, theirs).statistic, abs=1e-9)
    with pytest.raises(ValueError, match="'ssim' needs image maps"):
        random_logit(method, ids, **fields)


def random_word_table(seed):
    """The documented "noise" of token ids: a table seeded by ``seed`` giving every id a word that is not special."""
    words = torch.tensor([i for i in range(VOCAB) if i not in (CLS, SEP, PAD, MASK)])
    return words[torch.randint(len(words), (VOCAB,), generator=torch.Generator().manual_seed(seed))]


def test_monotonicity_correlation_replaces_each_token_by_random_words():
    from scipy.stats import spearmanr

    declared = declared_pair_classifier()
    ids, mask, special, types, scores = pair_batch()
    fields = {"attention_mask": mask, "special_tokens_mask": special, "model_inputs": {"token_type_ids": types}}
    got = monotonicity_correlation(declared, ids, scores, n_samples=3, seed=5, **fields)
    tables = [random_word_table(5 + j) for j in range(3)]
    for i in range(ids.shape[0]):
        s = Sentence(declared, ids, mask, types, i)
        effects = []
        for p in s.units:
            changes = []
            for table in tables:
                moved = ids[i].clone()
                moved[p] = table[ids[i, p]]
                with torch.no_grad():
                    logits = declared(moved[None], attention_mask=mask[i : i + 1], token_type_ids=types[i : i + 1])
                changes.append((s.clean - float(logits[0].softmax(dim=0)[s.target])) ** 2)
            effects.append(sum(changes) / len(changes))
        expected = spearmanr([abs(scores[i, p].item()) for p in s.units], effects).statistic
        assert got[i].item() == pytest.approx(expected, abs=1e-9)
    assert 0.2 < float(got.abs().mean())  # the draws change the scores: the correlations are not all 0


def test_completeness_masks_every_token_and_integrated_gradients_complete():
    declared = declared_pair_classifier()
    ids, mask, special, types, _ = pair_batch()
    fields = {"attention_mask": mask, "special_tokens_mask": special, "token_type_ids": types}
    target = declared(ids, attention_mask=mask, token_type_ids=types).argmax(dim=1)
    ig = get_method("integrated_gradients", declared, n_steps=256).attribute(ids, target, **fields)
    saliency = get_method("saliency", declared).attribute(ids, target, **fields)
    game_fields = {"attention_mask": mask, "special_tokens_mask": special, "model_inputs": {"token_type_ids": types}}
    for maps in (ig, saliency):
        got = completeness(declared, ids, maps, target, **game_fields)
        for i in range(ids.shape[0]):
            s = Sentence(declared, ids, mask, types, i, output="logit")
            delta = s.score([]) - s.score(s.units)  # every real word masked; [CLS], [SEP] and padding kept
            expected = abs(sum(maps[i, p].item() for p in s.units) - delta) / abs(delta)
            assert got[i].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # Integrated gradients from the [MASK] embeddings sum to the change of the logit (a 256-step Riemann sum).
    assert float(completeness(declared, ids, ig, target, **game_fields).max()) < 1e-3
    assert float(completeness(declared, ids, saliency, target, **game_fields).min()) > 0.05


def test_bad_token_inputs_name_the_argument(model):
    ids, mask, special, types, scores = pair_batch()
    declared = PairClassifier().double().eval()
    declared.token_options = TokenOptions((CLS, SEP), embedding_layer="embed")  # its vocabulary is known
    with pytest.raises(ValueError, match="`substrate`"):
        faithfulness_estimate(model, ids, scores, attention_mask=mask, substrate="zero")
    with pytest.raises(ValueError, match="`substrate_value`"):
        faithfulness_estimate(declared, ids, scores, attention_mask=mask, substrate="constant", substrate_value=VOCAB)
    with pytest.raises(ValueError, match=r"`model_inputs\['segment_ids'\]`"):
        selectivity(model, ids, scores, attention_mask=mask, substrate="constant", substrate_value=MASK,
                    model_inputs={"segment_ids": types})  # fmt: skip
    with pytest.raises(ValueError, match="`attention_mask`"):
        monotonicity(model, ids, scores, attention_mask=mask[:, :3], substrate="constant", substrate_value=MASK)
    with pytest.raises(TypeError, match="`x`"):
        faithfulness_estimate(nn.Linear(ids.shape[1], 2), ids, scores)
