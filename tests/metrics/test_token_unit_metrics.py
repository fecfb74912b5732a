"""The #26 metrics that take token ids by name in the runner and AttributionQuality, and the map-only ones on tokens.

The runner's per-sample scores must equal the functionals' on the same maps (and the batch's ``token_type_ids`` reach
every row); the text demo model scores them all by name; sufficiency (Dasgupta) and consistency of token maps equal a
per-sentence loop over the sentences' own tokens.
"""

import math

import pytest
import torch
from text_helpers import TOKEN_METRIC_OPTIONS, declared_pair_classifier, pair_batch

from lit_attr.attribution_quality import AttributionQuality
from lit_attr.batch import Batch
from lit_attr.data.text import TextDataset, collate_tokens
from lit_attr.functional.axioms import completeness, input_invariance, non_sensitivity, random_logit
from lit_attr.functional.dasgupta import consistency, sufficiency_dasgupta
from lit_attr.functional.faithfulness import faithfulness_correlation, faithfulness_estimate, sensitivity_n
from lit_attr.functional.focus import focus
from lit_attr.functional.monotonicity import monotonicity, monotonicity_correlation
from lit_attr.functional.regions import irof, region_perturbation, selectivity
from lit_attr.functional.robustness import avg_sensitivity, continuity, local_lipschitz
from lit_attr.functional.stability import relative_stability
from lit_attr.methods import get_method
from lit_attr.metrics import get_metric_spec
from lit_attr.runner import AttributionRunner

#: Every metric that takes token ids now, with small options, and its functional with the same options.
OPTIONS = TOKEN_METRIC_OPTIONS
#: The metrics that re-run the method (on moved or shifted embeddings), with the functional's keys of their values.
METHODS = {
    "local_lipschitz": lambda *a, **k: {"local_lipschitz": local_lipschitz(*a, **k)},
    "avg_sensitivity": lambda *a, **k: {"avg_sensitivity": avg_sensitivity(*a, **k)},
    "continuity": lambda *a, **k: {"continuity": continuity(*a, **k)},
    "relative_stability": lambda *a, **k: {
        f"relative_{variant}_stability": values for variant, values in relative_stability(*a, **k).items()
    },
    "input_invariance": lambda *a, **k: {"input_invariance_change": input_invariance(*a, **k)},
}
GAMES = {
    "faithfulness_correlation": lambda *a, **k: {"faithfulness_correlation": faithfulness_correlation(*a, **k)},
    "faithfulness_estimate": lambda *a, **k: {"faithfulness_estimate": faithfulness_estimate(*a, **k)},
    "sensitivity_n": lambda *a, **k: {"sensitivity_n": sensitivity_n(*a, **k).mean(dim=1)},
    "monotonicity": lambda *a, **k: {"monotonicity": monotonicity(*a, **k)},
    "monotonicity_correlation": lambda *a, **k: {"monotonicity_correlation": monotonicity_correlation(*a, **k)},
    "completeness": lambda *a, **k: {"completeness": completeness(*a, **k)},
    "region_perturbation": lambda *a, **k: {"region_perturbation": region_perturbation(*a, **k)["morf"]},
    "selectivity": lambda *a, **k: {"selectivity": selectivity(*a, **k)},
    "irof": lambda *a, **k: {"irof": irof(*a, **k)},
    "non_sensitivity": lambda *a, **k: {"non_sensitivity": non_sensitivity(*a, **k)},
}


def test_the_runner_scores_every_token_metric_by_name_as_the_functionals_do():
    model = declared_pair_classifier()
    ids, mask, special, types, _ = pair_batch()
    labels = torch.tensor([0, 1, 2, 0])
    batch = Batch(ids, labels, None, mask, special, {"token_type_ids": types})
    runner = AttributionRunner(model, ["saliency"], list(OPTIONS), metric_kwargs=OPTIONS)
    records = runner.run(batch)
    maps = get_method("saliency", model).attribute(ids, labels, attention_mask=mask, special_tokens_mask=special,
                                                   token_type_ids=types)  # fmt: skip
    assert maps.shape == ids.shape
    tokens = {"attention_mask": mask, "special_tokens_mask": special, "model_inputs": {"token_type_ids": types}}
    for name in OPTIONS:
        assert get_metric_spec(name).accepts({"tokens"}), name
        if name in GAMES:
            expected = GAMES[name](model, ids, maps, labels, **OPTIONS[name], **tokens)
        elif name in METHODS:
            method = get_method("saliency", model)
            expected = METHODS[name](method, ids, labels, attributions=maps, **OPTIONS[name], **tokens)
        elif name == "focus":  # the method explains the sentence mosaics of the batch itself
            expected = {name: focus(get_method("saliency", model), ids, labels, **tokens)}
        elif name == "random_logit":
            method = get_method("saliency", model)
            fields = {"attention_mask": mask, "special_tokens_mask": special, "token_type_ids": types}
            expected = {name: random_logit(method, ids, labels, **fields, **OPTIONS[name])}
        else:
            functional = sufficiency_dasgupta if name == "sufficiency_dasgupta" else consistency
            logits = model(ids, attention_mask=mask, token_type_ids=types).detach()
            expected = {name: functional(maps, logits, **OPTIONS[name], attention_mask=mask,
                                         special_tokens_mask=special)}  # fmt: skip
        for key, values in expected.items():
            got = torch.tensor([record.scores["saliency"][key] for record in records], dtype=torch.float64)
            torch.testing.assert_close(got, values.double(), rtol=0, atol=1e-9, equal_nan=True, msg=key)


def test_attribution_quality_scores_them_by_name_on_the_text_demo_model():
    from lit_attr.models import DemoTextClassifier

    torch.manual_seed(0)
    model = DemoTextClassifier(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32).eval()
    batch = collate_tokens([TextDataset(6, seed=4)[i] for i in range(6)])
    tokens = {"attention_mask": batch["attention_mask"], "special_tokens_mask": batch["special_tokens_mask"]}
    quality = AttributionQuality(model, "saliency", metrics=list(OPTIONS), metric_kwargs=OPTIONS)
    quality.update(batch["input_ids"], target=batch["labels"], **tokens)
    result = quality.compute()
    maps = get_method("saliency", model).attribute(batch["input_ids"], batch["labels"], **tokens)
    for name, game in GAMES.items():  # the model's declared [MASK] id and special ids: no conventions passed
        for key, values in game(model, batch["input_ids"], maps, batch["labels"], **OPTIONS[name], **tokens).items():
            got = result[f"attr/saliency/{name}/{key}"]
            assert math.isfinite(float(got)), key
            assert float(got) == pytest.approx(float(values.double().nanmean()), abs=1e-5), key


def test_sufficiency_and_consistency_of_token_maps_use_each_sentence_own_tokens():
    ids, mask, special, types, scores = pair_batch(lengths=(9, 6, 7, 5, 8, 6))
    scores = scores.abs()
    scores[3] = scores[1]  # two sentences explained alike on their shared positions
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    got_sufficiency = sufficiency_dasgupta(scores, logits, threshold=0.9, attention_mask=mask,
                                           special_tokens_mask=special)  # fmt: skip
    got_consistency = consistency(scores, logits, top_k=2, attention_mask=mask, special_tokens_mask=special)
    counted = mask.bool() & ~special
    units = torch.where(counted, scores, 0.0)
    units = units / units.norm(dim=1, keepdim=True)
    tops = []
    for i in range(ids.shape[0]):
        own = [p for p in range(ids.shape[1]) if counted[i, p]]
        tops.append(set(sorted(own, key=lambda p: (-scores[i, p].item(), p))[:2]))
    predictions = logits.argmax(dim=1)
    for i in range(ids.shape[0]):
        for got, alike in (
            (got_sufficiency[i], [j for j in range(6) if j != i and (units[i] - units[j]).norm() <= 0.9]),
            (got_consistency[i], [j for j in range(6) if j != i and tops[j] == tops[i]]),
        ):
            expected = sum(int(predictions[j] == predictions[i]) for j in alike) / len(alike) if alike else math.nan
            assert (math.isnan(expected) and math.isnan(got.item())) or got.item() == pytest.approx(expected)
    assert not math.isnan(got_consistency[1].item())  # sentences 1 and 3 share their explanation
