"""A method's ``token_options`` (its constructor, so ``method_kwargs`` and YAML configs) act as per-call keywords."""

import pytest
import torch
from text_helpers import CLS, MASK, SEP, SPECIALS, plain_transformer, tiny_bert, token_batch
from torch import nn

from lit_attr.attribution_quality import AttributionQuality
from lit_attr.batch import Batch
from lit_attr.functional.token_localization import token_auprc, token_f1
from lit_attr.inputs import TokenOptions
from lit_attr.methods import get_method
from lit_attr.runner import AttributionRunner

FAST = {"integrated_gradients": {"n_steps": 16}, "mfaba": {"max_steps": 8}}
LAYER = "bert.embeddings.word_embeddings"
OPTIONS = {"special_token_ids": list(SPECIALS), "baseline_token_id": MASK, "token_reduction": "norm"}
PER_CALL = {"special_token_ids": SPECIALS, "baseline_token_id": MASK, "token_reduction": "norm"}


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "mfaba"])
def test_constructor_options_give_the_maps_of_per_call_keywords(name, bert):
    ids, mask = token_batch()
    plain = get_method(name, bert, **FAST.get(name, {}))
    configured = get_method(name, bert, token_options={**OPTIONS, "embedding_layer": LAYER}, **FAST.get(name, {}))
    assert configured.token_options == TokenOptions(special_token_ids=SPECIALS, embedding_layer=LAYER)
    scores = configured.attribute(ids, target=0, attention_mask=mask)
    per_call = plain.attribute(ids, target=0, attention_mask=mask, embedding_layer=LAYER, **PER_CALL)
    torch.testing.assert_close(scores, per_call)
    # Each option took effect, checked against what it means:
    full = plain.attribute(ids, target=0, attention_mask=mask, **{**PER_CALL, "token_reduction": "none"})
    torch.testing.assert_close(scores, full.norm(dim=-1))  # the norm over the embedding dimension
    assert bool((scores[(ids == CLS) | (ids == SEP)] == 0).all())  # special ids frozen ...
    # ... which they are not by default: [CLS] gets an embedding attribution of a size comparable to other tokens'
    # (its L2 norm against the largest; a signed sum over a LayerNorm'd embedding could be float noise of 1e-8).
    unmarked = plain.attribute(ids, target=0, attention_mask=mask, token_reduction="none").norm(dim=-1)
    assert bool((unmarked[:, 0] > 1e-3 * unmarked.amax(dim=1)).all())
    # Per-call keywords override the constructor's.
    summed = configured.attribute(ids, target=0, attention_mask=mask, token_reduction="sum")
    torch.testing.assert_close(summed, full.sum(dim=-1))
    torch.testing.assert_close(configured.attribute(ids, target=0, attention_mask=mask, token_reduction=None), scores)


def test_baseline_token_id_reaches_integrated_gradients(bert):
    ids, mask = token_batch()
    options = {"n_steps": 16, "token_options": TokenOptions(special_token_ids=SPECIALS, mask_token_id=MASK)}
    by_mask_id = get_method("integrated_gradients", bert, **options).attribute(ids, target=1, attention_mask=mask)
    by_id = {"special_token_ids": SPECIALS, "baseline_token_id": MASK}
    by_baseline = get_method("integrated_gradients", bert, n_steps=16, token_options=by_id)
    by_baseline = by_baseline.attribute(ids, target=1, attention_mask=mask)
    from_pad = get_method("integrated_gradients", bert, n_steps=16, token_options={"special_token_ids": SPECIALS})
    torch.testing.assert_close(by_baseline, by_mask_id)
    assert not torch.allclose(from_pad.attribute(ids, target=1, attention_mask=mask), by_mask_id)  # pad id 0 differs


def test_options_leave_float_inputs_alone():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(2, 3, 2, 2)
    configured = get_method("saliency", net, token_options={"token_reduction": "norm", "baseline_token_id": 4})
    torch.testing.assert_close(configured.attribute(x, target=1), get_method("saliency", net).attribute(x, target=1))


def test_runner_and_attribution_quality_configured_by_method_kwargs_match_per_call_keywords():
    plain = plain_transformer()  # the runner wants logits, not Hugging Face outputs
    ids, mask = token_batch()
    rationale = torch.zeros_like(ids, dtype=torch.bool)
    rationale[:, 1] = rationale[::2, 2] = True
    per_call = get_method("saliency", plain).attribute(ids, attention_mask=mask, **PER_CALL)

    runner = AttributionRunner(plain, ["saliency"], method_kwargs={"saliency": {"token_options": OPTIONS}},
                               keep_attributions=len(ids))  # fmt: skip
    records = runner.run(Batch(ids, attention_mask=mask), indices=list(range(len(ids))))
    for row, record in enumerate(records):
        torch.testing.assert_close(record.attributions["saliency"], per_call[row, : int(mask[row].sum())])

    quality = AttributionQuality(plain, "saliency", ["token_localization"], method_kwargs={"token_options": OPTIONS})
    quality.update(ids, masks=rationale, attention_mask=mask)
    scores = {key.rsplit("/", 1)[-1]: value for key, value in quality.compute().items()}  # attr/saliency/<metric>/
    assert float(scores["token_f1"]) == pytest.approx(float(token_f1(per_call, rationale, mask).mean()))
    assert float(scores["auprc"]) == pytest.approx(float(token_auprc(per_call, rationale, mask).mean()))
    signed = get_method("saliency", plain).attribute(ids, attention_mask=mask)  # without the options: other scores
    assert float(token_auprc(signed, rationale, mask).mean()) != pytest.approx(float(scores["auprc"]))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"special_tokens": [2]}, ValueError, r"`token_options` has unknown keys \['special_tokens'\]; accepted keys: "
                                              r"special_token_ids, mask_token_id, pad_token_id, embedding_layer, "
                                              r"baseline_token_id, token_reduction"),
        ({"token_reduction": "mean"}, ValueError, r"`token_options\['token_reduction'\]` must be one of \('sum', "
                                                  r"'norm', 'none'\), got 'mean'"),
        ({"baseline_token_id": -1}, ValueError, r"`token_options\['baseline_token_id'\]` must be a token id"),
        ({"mask_token_id": "4"}, TypeError, r"`token_options\['mask_token_id'\]` must be an int token id, got str"),
        ({"special_token_ids": "2,3"}, TypeError, r"`token_options\['special_token_ids'\]` must be a sequence"),
        ({"embedding_layer": 3}, TypeError, r"`token_options\['embedding_layer'\]` must be a module name"),
        ([2, 3], TypeError, r"`token_options` must be a TokenOptions, a mapping .* or None, got list"),
    ],
)  # fmt: skip
def test_bad_options_name_the_key(options, error, message):
    with pytest.raises(error, match=message):
        get_method("mfaba", plain_transformer(), token_options=options)
