"""Token games, ERASER scores, token localisation and activation deviation against naive per-sample loops."""

import math

import pytest
import torch
from text_helpers import CLS, MASK, PAD, SEP, SPECIALS, VOCAB, logits_of, plain_transformer, tiny_bert, token_batch

from lit_attr.functional.eraser import comprehensiveness, sufficiency
from lit_attr.functional.token_activation_deviation import encoder_layers, token_activation_deviation
from lit_attr.functional.token_games import perturb_tokens, token_insertion_deletion, token_schedule
from lit_attr.functional.token_localization import token_auprc, token_f1, token_iou

BUILDERS = {"bert": tiny_bert, "plain": plain_transformer}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def model(request):
    return BUILDERS[request.param](dtype=torch.float64)


def batch_and_scores(seed=0):
    ids, mask = token_batch((9, 6, 7, 5))
    scores = torch.randn(ids.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    scores[1, 2] = scores[1, 3]  # a tie: the earlier token ranks first
    return ids, mask, scores


# ----------------------------------------------------------------------------------------------- naive reference
def sample_tokens(ids, mask, i):
    """The real tokens of sample i as a list, and the ranking of its perturbable positions."""
    length = int(mask[i].sum())
    tokens = ids[i, :length].tolist()
    perturbable = [p for p, t in enumerate(tokens) if t not in SPECIALS]
    return tokens, perturbable


def ranking(scores, i, perturbable):
    return sorted(perturbable, key=lambda p: (-float(scores[i, p]), p))


def perturbed(tokens, removed, replacement):
    if replacement == "mask":
        return [MASK if p in removed else t for p, t in enumerate(tokens)]
    kept = [t for p, t in enumerate(tokens) if p not in removed]
    return kept or [MASK]


def probability(model, tokens, c, output="prob"):
    """The tracked score of one sentence: its softmax probability, or for a multi-label head sigmoid(logit_c)."""
    with torch.no_grad():
        logits = logits_of(model, torch.tensor([tokens]))[0]
    return float(torch.sigmoid(logits[c]) if output == "sigmoid" else logits.softmax(dim=0)[c])


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


def prediction(model, tokens):
    with torch.no_grad():
        return int(logits_of(model, torch.tensor([tokens])).argmax())


def explained_labels(model, ids, mask, output):
    """``None`` (the top prediction) for softmax scores; for sigmoid scores each sample's lowest-logit label, as a
    multi-label head explains any of its labels, not only the top one."""
    if output != "sigmoid":
        return None
    with torch.no_grad():
        return logits_of(model, ids, mask).argmin(dim=1)


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


class LabelSums(torch.nn.Module):
    """A two-label head whose logits are sums of per-token weights over the attended tokens (by hand)."""

    def __init__(self, weights):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 2, dtype=torch.float64)
        with torch.no_grad():
            self.embed.weight.zero_()  # specials, [MASK] and [PAD] add nothing
            for token, row in weights.items():
                self.embed.weight[token] = torch.tensor(row, dtype=torch.float64)

    def forward(self, input_ids, attention_mask=None):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return (self.embed(input_ids) * mask[..., None]).sum(dim=1)


# ------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("output", ["prob", "sigmoid"])
@pytest.mark.parametrize("replacement", ["mask", "remove"])
def test_token_insertion_deletion_matches_a_per_sample_loop(model, replacement, output):
    ids, mask, scores = batch_and_scores()
    steps = 4
    target = explained_labels(model, ids, mask, output)
    result = token_insertion_deletion(
        model, ids, scores, target, attention_mask=mask, special_token_ids=SPECIALS, replacement_id=MASK,
        pad_token_id=PAD, replacement=replacement, n_steps=steps, internal_batch_size=7, output=output,
    )  # fmt: skip
    for i in range(len(ids)):
        tokens, perturbable = sample_tokens(ids, mask, i)
        order = ranking(scores, i, perturbable)
        c = prediction(model, tokens) if target is None else int(target[i])
        assert int(result.target[i]) == c
        insertion, deletion = [], []
        for t in range(steps + 1):
            n_t = math.ceil(t * len(perturbable) / steps - 1e-12)
            top = set(order[:n_t])
            deletion.append(probability(model, perturbed(tokens, top, replacement), c, output))
            insertion.append(probability(model, perturbed(tokens, set(perturbable) - top, replacement), c, output))
        close(result.deletion_curve[i], deletion)
        close(result.insertion_curve[i], insertion)
        trapezoid = (sum(deletion) - (deletion[0] + deletion[-1]) / 2) / steps
        assert float(result.deletion_auc[i]) == pytest.approx(trapezoid, abs=1e-6)


def test_token_prob_ratio_is_the_probability_over_the_clean_probability(model):
    ids, mask, scores = batch_and_scores()
    options = {"attention_mask": mask, "special_token_ids": SPECIALS, "replacement_id": MASK, "pad_token_id": PAD,
               "n_steps": 4, "internal_batch_size": 5}  # fmt: skip
    probability = token_insertion_deletion(model, ids, scores, **options)
    ratio = token_insertion_deletion(model, ids, scores, output="prob_ratio", **options)
    clean = logits_of(model, ids, mask).softmax(dim=1).gather(1, probability.target[:, None])
    torch.testing.assert_close(ratio.deletion_curve, probability.deletion_curve / clean)
    torch.testing.assert_close(ratio.insertion_curve, probability.insertion_curve / clean)


@pytest.mark.parametrize("output", ["prob", "sigmoid"])
@pytest.mark.parametrize("replacement", ["mask", "remove"])
def test_comprehensiveness_and_sufficiency_match_a_per_sample_loop(model, replacement, output):
    ids, mask, scores = batch_and_scores(seed=1)
    bins = (1, 20, 50, 100)
    options = dict(
        attention_mask=mask, special_token_ids=SPECIALS, replacement_id=MASK, pad_token_id=PAD,
        replacement=replacement, bins=bins, internal_batch_size=5, output=output,
    )  # fmt: skip
    target = explained_labels(model, ids, mask, output)
    comp = comprehensiveness(model, ids, scores, target, **options)
    suff = sufficiency(model, ids, scores, target, **options)
    for i in range(len(ids)):
        tokens, perturbable = sample_tokens(ids, mask, i)
        order = ranking(scores, i, perturbable)
        c = prediction(model, tokens) if target is None else int(target[i])
        assert int(comp.target[i]) == int(suff.target[i]) == c
        p0 = probability(model, tokens, c, output)
        expected_comp, expected_suff = [], []
        for k in bins:
            rationale = set(order[: math.ceil(k / 100 * len(perturbable) - 1e-12)])
            rest = set(perturbable) - rationale
            expected_comp.append(p0 - probability(model, perturbed(tokens, rationale, replacement), c, output))
            expected_suff.append(p0 - probability(model, perturbed(tokens, rest, replacement), c, output))
        close(comp.per_bin[i], expected_comp)
        close(suff.per_bin[i], expected_suff)
        assert float(comp.aopc[i]) == pytest.approx(sum(expected_comp) / len(bins), abs=1e-6)
        assert float(suff.aopc[i]) == pytest.approx(sum(expected_suff) / len(bins), abs=1e-6)
    assert float(suff.per_bin[:, -1].abs().max()) < 1e-6  # keeping every token changes nothing


@pytest.mark.parametrize("replacement", ["mask", "remove"])
def test_sigmoid_scores_of_a_hand_built_multi_label_head(replacement):
    # Label 0's logit is the sum of the weights 2, 1, -1, 0.5 of the words 10 .. 13; the ranking is 10, 11, 13, 12.
    # Label 1 carries only word 10; a softmax would let it move label 0's score, the sigmoid must not.
    ids = torch.tensor([[CLS, 10, 11, 12, 13, SEP]])
    scores = torch.tensor([[0.0, 4.0, 3.0, 1.0, 2.0, 0.0]], dtype=torch.float64)
    weights = {10: (2.0, 3.0), 11: (1.0, 0.0), 12: (-1.0, 0.0), 13: (0.5, 0.0)}
    heads = [LabelSums(weights), LabelSums({**weights, 10: (2.0, -3.0)})]
    options = dict(special_token_ids=SPECIALS, replacement_id=MASK, pad_token_id=PAD, replacement=replacement)
    eraser = dict(bins=(25, 50, 100), output="sigmoid", **options)  # rationales: {10}, {10, 11}, every word
    for head in heads:
        comp = comprehensiveness(head, ids, scores, 0, **eraser)
        suff = sufficiency(head, ids, scores, 0, **eraser)
        # label 0's logit: 2.5 in full; without the rationales 0.5, -0.5, 0; with only them 2, 3, 2.5
        expected_comp = [sigmoid(2.5) - sigmoid(z) for z in (0.5, -0.5, 0.0)]
        expected_suff = [sigmoid(2.5) - sigmoid(z) for z in (2.0, 3.0, 2.5)]
        close(comp.per_bin[0], expected_comp)
        close(suff.per_bin[0], expected_suff)
        assert float(comp.aopc[0]) == pytest.approx(sum(expected_comp) / 3, abs=1e-12)
        assert float(suff.aopc[0]) == pytest.approx(sum(expected_suff) / 3, abs=1e-12)
        games = token_insertion_deletion(head, ids, scores, 0, n_steps=4, output="sigmoid", **options)
        close(games.deletion_curve[0], [sigmoid(z) for z in (2.5, 0.5, -0.5, -1.0, 0.0)])
        close(games.insertion_curve[0], [sigmoid(z) for z in (0.0, 2.0, 3.0, 3.5, 2.5)])
    softmax = [comprehensiveness(head, ids, scores, 0, **{**eraser, "output": "prob"}).aopc for head in heads]
    assert abs(float(softmax[0] - softmax[1])) > 0.05  # label 1 moves the softmax score, as a control


def test_token_activation_deviation_matches_a_per_sample_loop(model):
    ids, mask, scores = batch_and_scores(seed=2)
    steps = 3
    result = token_activation_deviation(
        model, ids, scores, attention_mask=mask, special_token_ids=SPECIALS, replacement_id=MASK, n_steps=steps
    )
    names = encoder_layers(model)
    assert result.layers == names and len(names) == 2
    modules = dict(model.named_modules())

    def hidden(tokens):
        store = []

        def keep(module, args, out):
            store.append(out[0] if isinstance(out, tuple) else out)

        handles = [modules[n].register_forward_hook(keep) for n in names]
        with torch.no_grad():
            model(torch.tensor([tokens]))
        for h in handles:
            h.remove()
        return store

    for i in range(len(ids)):
        tokens, perturbable = sample_tokens(ids, mask, i)
        order = ranking(scores, i, perturbable)
        clean = hidden(tokens)
        for game, column in (("insertion", result.insertion_mse), ("deletion", result.deletion_mse)):
            per_step = []
            for t in range(steps + 1):
                top = set(order[: math.ceil(t * len(perturbable) / steps - 1e-12)])
                removed = set(perturbable) - top if game == "insertion" else top
                states = hidden(perturbed(tokens, removed, "mask"))
                per_step.append([float((s - c).square().mean()) for s, c in zip(states, clean, strict=True)])
            close(column[i], torch.tensor(per_step, dtype=torch.float64).mean(dim=0).tolist())


def test_token_localization_matches_a_per_sample_loop():
    ids, mask, scores = batch_and_scores(seed=3)
    scores[0, 3] = scores[0, 5] = scores[0, 6]  # ties across the rationale boundary
    special = ((ids == SPECIALS[0]) | (ids == SPECIALS[1])).long()
    rationale = torch.zeros_like(ids, dtype=torch.bool)
    rationale[0, [3, 4]] = rationale[1, 1] = rationale[2, [2, 3, 5]] = rationale[3, 2] = True
    f1, iou, ap = (fn(scores, rationale, mask, special) for fn in (token_f1, token_iou, token_auprc))
    for i in range(len(ids)):
        _, candidates = sample_tokens(ids, mask, i)
        truth = {p for p in candidates if rationale[i, p]}
        top = set(ranking(scores, i, candidates)[: len(truth)])
        hits = len(top & truth)
        assert float(f1[i]) == pytest.approx(2 * hits / (len(top) + len(truth)))
        assert float(iou[i]) == pytest.approx(hits / len(top | truth))
        expected_ap, previous_recall = 0.0, 0.0
        for threshold in sorted({float(scores[i, p]) for p in candidates}, reverse=True):
            chosen = {p for p in candidates if float(scores[i, p]) >= threshold}
            recall = len(chosen & truth) / len(truth)
            expected_ap += (recall - previous_recall) * len(chosen & truth) / len(chosen)
            previous_recall = recall
        assert float(ap[i]) == pytest.approx(expected_ap)


def test_perturbation_and_schedule_closed_forms():
    ids = torch.tensor([[2, 7, 8, 3, 0], [9, 10, 0, 0, 0]])
    attended = ids.ne(0)
    removed = torch.tensor([[False, True, True, False, False], [True, True, False, False, False]])
    out, mask = perturb_tokens(ids, attended, removed, "remove", MASK, PAD)
    assert out.tolist() == [[2, 3, 0, 0, 0], [MASK, 0, 0, 0, 0]] and mask.tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    out, mask = perturb_tokens(ids, attended, removed, "mask", MASK, PAD)
    assert out.tolist() == [[2, 4, 4, 3, 0], [4, 4, 0, 0, 0]] and mask.tolist() == attended.long().tolist()
    assert token_schedule(torch.tensor([3]), tokens_per_step=2, max_tokens=5).tolist() == [[0, 2, 3, 3]]
    with pytest.raises(ValueError, match="`max_tokens` .* must be given with `tokens_per_step`"):
        token_schedule(torch.tensor([3]), tokens_per_step=2)
    with pytest.raises(ValueError, match="at most one of `n_steps` and `tokens_per_step`"):
        token_schedule(torch.tensor([3]), n_steps=2, tokens_per_step=2)


def test_bad_input_names_the_argument():
    model = plain_transformer()
    ids, mask, scores = batch_and_scores()
    options = dict(attention_mask=mask, special_token_ids=SPECIALS)
    with pytest.raises(ValueError, match="`replacement_id` must be a token id in the vocabulary, \\[0, 99\\], got 100"):
        comprehensiveness(model, ids, scores.float(), replacement_id=100, **options)
    with pytest.raises(ValueError, match="`attributions` must have the shape of the token ids"):
        sufficiency(model, ids, scores[:, :4].float(), replacement_id=MASK, **options)
    with pytest.raises(TypeError, match="`input_ids` must hold integer token ids"):
        token_insertion_deletion(model, ids.float(), scores.float(), replacement_id=MASK, **options)
    with pytest.raises(ValueError, match="`masks` \\(the rationales\\) must have the shape of attributions"):
        token_f1(scores, torch.ones(4, 3), mask)
    on_cls = torch.nn.functional.one_hot(torch.zeros(4, dtype=torch.long), 9)
    with pytest.raises(ValueError, match=r"marks padding or special tokens as rationale in samples \[0, 1, 2, 3\]"):
        token_iou(scores, on_cls, mask, ids.eq(2))
    with pytest.raises(ValueError, match="`bins` must hold percentages in \\(0, 100\\]"):
        comprehensiveness(model, ids, scores.float(), replacement_id=MASK, bins=(0, 10), **options)
    with pytest.raises(ValueError, match="`replacement_id` \\(the \\[MASK\\] or \\[PAD\\] id"):
        comprehensiveness(torch.nn.Sequential(torch.nn.EmbeddingBag(100, 4), torch.nn.Linear(4, 2)), ids, scores)
    eraser_outputs = r"`output` must be one of \('prob', 'logit', 'sigmoid'\), got "
    with pytest.raises(ValueError, match=eraser_outputs + "'softmax'"):
        comprehensiveness(model, ids, scores.float(), replacement_id=MASK, output="softmax", **options)
    with pytest.raises(ValueError, match=eraser_outputs + "'prob_ratio'"):
        sufficiency(model, ids, scores.float(), replacement_id=MASK, output="prob_ratio", **options)
    games_outputs = r"`output` must be one of \('prob', 'logit', 'prob_ratio', 'sigmoid'\), got 'multi'"
    with pytest.raises(ValueError, match=games_outputs):
        token_insertion_deletion(model, ids, scores.float(), replacement_id=MASK, output="multi", **options)
