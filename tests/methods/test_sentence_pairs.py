"""Sentence pairs: a classifier's extra inputs (``token_type_ids``) reach the model in every method, game and metric.

The references are Captum's ``LayerIntegratedGradients`` given the segments and naive loops that call the model on
each perturbed pair with its own ``token_type_ids``.
"""

import pytest
import torch
from captum.attr import LayerIntegratedGradients
from text_helpers import CLS, MASK, SEP, SPECIALS, VOCAB, tiny_bert

from lit_attr.batch import adapt_batch
from lit_attr.functional import token_insertion_deletion
from lit_attr.methods import get_method
from lit_attr.runner import AttributionRunner

OPTIONS = {"token_options": {"special_token_ids": list(SPECIALS), "mask_token_id": MASK}}


def pairs():
    """Four pairs [CLS] a [SEP] b [SEP] of different lengths, right-padded, with their segments and masks."""
    generator = torch.Generator().manual_seed(5)
    rows, types = [], []
    for first, second in ((3, 4), (5, 2), (2, 2), (4, 5)):
        a, b = (torch.randint(4, VOCAB, (k,), generator=generator).tolist() for k in (first, second))
        rows.append([CLS, *a, SEP, *b, SEP])
        types.append([0] * (first + 2) + [1] * (second + 1))
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    token_type_ids = torch.tensor([row + [0] * (width - len(row)) for row in types])
    return ids, (ids != 0).long(), token_type_ids


def logits(model, ids, mask, token_type_ids):
    return model(ids, attention_mask=mask, token_type_ids=token_type_ids).logits


@pytest.fixture(scope="module")
def model():
    return tiny_bert(seed=3)


def test_integrated_gradients_on_pairs_equal_captum_layer_ig_given_the_segments(model):
    ids, mask, segments = pairs()
    ours = get_method("integrated_gradients", model, n_steps=32, **OPTIONS)
    scores = ours.attribute(ids, target=1, attention_mask=mask, token_type_ids=segments)
    perturbable = mask.bool() & (ids != CLS) & (ids != SEP)
    baselines = torch.where(perturbable, torch.full_like(ids, MASK), ids)
    layer = LayerIntegratedGradients(lambda i, m, t: logits(model, i, m, t), model.get_input_embeddings())
    reference = layer.attribute(
        ids, baselines=baselines, target=1, additional_forward_args=(mask, segments), n_steps=32,
        method="gausslegendre",
    ).sum(dim=-1)  # fmt: skip
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    # Read as one segment, the pairs explain differently: the segments did reach the model.
    alike = ours.attribute(ids, target=1, attention_mask=mask)
    assert float((alike - scores).abs().max()) > 1e-3 * float(scores.abs().max())


def naive_deletion(model, ids, mask, segments, scores, steps, replacement):
    """Each pair alone, its top tokens removed step by step: by the mask id, or dropped with their segment ids."""
    curves = []
    for row, real, types, score in zip(ids, mask.bool(), segments, scores, strict=True):
        row, types, score = row[real], types[real], score[real]
        candidates = [j for j in range(len(row)) if int(row[j]) not in SPECIALS]
        order = sorted(candidates, key=lambda j: (-float(score[j]), j))
        curve = []
        for t in range(steps + 1):
            gone = set(order[: -(-t * len(order) // steps)])
            keep = [j for j in range(len(row)) if j not in gone or replacement == "mask"]
            new_ids = torch.tensor([MASK if j in gone else int(row[j]) for j in keep])[None]
            new_types = types[keep][None]
            with torch.no_grad():
                out = logits(model, new_ids, torch.ones_like(new_ids), new_types)
            curve.append(float(out.softmax(dim=1)[0, 1]))
        curves.append(curve)
    return torch.tensor(curves)


@pytest.mark.parametrize("replacement", ["mask", "remove"])
def test_token_deletion_keeps_every_token_with_its_segment(model, replacement):
    ids, mask, segments = pairs()
    scores = torch.randn(ids.shape, generator=torch.Generator().manual_seed(2))
    result = token_insertion_deletion(
        model, ids, scores, 1, attention_mask=mask, special_token_ids=SPECIALS, replacement=replacement,
        replacement_id=MASK, n_steps=4, model_inputs={"token_type_ids": segments},
    )  # fmt: skip
    expected = naive_deletion(model, ids, mask, segments, scores, 4, replacement)
    torch.testing.assert_close(result.deletion_curve, expected, rtol=1e-4, atol=1e-5)


def test_the_runner_reads_segments_from_the_batch_and_hands_them_to_methods_and_metrics(model):
    ids, mask, segments = pairs()
    batch = adapt_batch({"input_ids": ids, "attention_mask": mask, "token_type_ids": segments, "labels": ids[:, 0] % 3,
                         "idx": torch.arange(4)})  # fmt: skip
    assert set(batch.model_inputs) == {"token_type_ids", "idx"}  # kept by name; only what the model takes goes in
    metric = {"token_insertion_deletion": {"n_steps": 4, "replacement_id": MASK}}
    runner = AttributionRunner(model, ["saliency"], ["token_insertion_deletion"], method_kwargs={"saliency": OPTIONS},
                               metric_kwargs=metric, keep_attributions=4)  # fmt: skip
    records = runner.run(batch, target=1)
    direct = get_method("saliency", model, **OPTIONS).attribute(ids, 1, attention_mask=mask, token_type_ids=segments)
    for row, record in enumerate(records):
        torch.testing.assert_close(record.attributions["saliency"], direct[row][mask[row].bool()])
    expected = token_insertion_deletion(
        model, ids, direct, 1, attention_mask=mask, replacement_id=MASK, n_steps=4,
        model_inputs={"token_type_ids": segments},
    )  # fmt: skip
    deletion = torch.tensor([record.scores["saliency"]["deletion"] for record in records])
    torch.testing.assert_close(deletion, expected.deletion_auc)
