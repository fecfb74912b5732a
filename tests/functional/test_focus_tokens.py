"""Focus on token ids: sentence mosaics (four sentences' words between one [CLS] and [SEP]) against a per-sentence loop,
closed forms on a bag-of-words model whose words each belong to one class, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch
from text_helpers import CLS, MASK, PAD, SEP, SPECIALS, declared_pair_classifier, pair_batch, tiny_bert, token_batch
from torch import nn

from lit_attr._hygiene import row_seed
from lit_attr.functional import focus
from lit_attr.functional.focus import focus_mosaics
from lit_attr.inputs import TokenOptions
from lit_attr.methods import get_method
from lit_attr.metrics import Focus

LABELS = [0, 1, 2, 0, 1, 2]


def _reference(method, ids, types, lengths, labels, seed, limit=None):
    """Focus of every sentence, one unpadded mosaic at a time: [CLS], four sentences' words (with their token types,
    drawn as ``focus_mosaics``' docstring says), [SEP]; the share of the positive scores on the target's sentences.
    NaN where the mosaic has more than ``limit`` tokens."""
    n, values = len(labels), []
    words = [list(range(1, length - 1)) for length in lengths]  # token_batch's layout: [CLS] words [SEP] padding
    for i in range(n):
        others = [j for j in range(n) if labels[j] != labels[i]]
        same = [j for j in range(n) if labels[j] == labels[i] and j != i] or [i]
        generator = torch.Generator().manual_seed(row_seed(seed, ids[i, : lengths[i]]))
        partner = same[int(torch.randint(len(same), (1,), generator=generator))]
        picked = [others[k] for k in torch.randperm(len(others), generator=generator)[:2].tolist()]
        places = torch.randperm(4, generator=generator).tolist()
        order = [0] * 4
        for place, sentence in zip(places, [i, partner, *(picked * 2)[:2]], strict=True):
            order[place] = sentence
        tokens = [(CLS, int(types[i, 0]), -1)]
        tokens += [(int(ids[s, p]), int(types[s, p]), slot) for slot, s in enumerate(order) for p in words[s]]
        tokens.append((SEP, int(types[i, lengths[i] - 1]), -1))
        if limit is not None and len(tokens) > limit:
            values.append(math.nan)
            continue
        mosaic = torch.tensor([[t for t, _, _ in tokens]])
        token_types = torch.tensor([[k for _, k, _ in tokens]])
        scores = method.attribute(mosaic, torch.tensor([labels[i]]), token_type_ids=token_types)[0]
        positive = [0.0] * 4
        for (_, _, slot), score in zip(tokens, scores.tolist(), strict=True):
            if slot >= 0:
                positive[slot] += max(score, 0.0)
        values.append((positive[places[0]] + positive[places[1]]) / sum(positive))
    return values


def test_focus_of_sentences_equals_a_per_mosaic_loop_in_any_padding():
    model = declared_pair_classifier()
    lengths = (9, 6, 7, 5, 8, 6)
    ids, mask, special, types, _ = pair_batch(lengths)
    method = get_method("input_x_gradient", model)
    target = torch.tensor(LABELS)
    expected = torch.tensor(_reference(method, ids, types, lengths, LABELS, seed=5), dtype=torch.float64)
    assert 0.05 < float(expected.std()) and 0 < float(expected.min()) and float(expected.max()) < 1  # they differ
    tokens = {"attention_mask": mask, "special_tokens_mask": special, "model_inputs": {"token_type_ids": types}}
    state = torch.get_rng_state()
    torch.testing.assert_close(focus(method, ids, target, seed=5, **tokens), expected, rtol=1e-6, atol=1e-9)
    assert torch.equal(torch.get_rng_state(), state)  # seeded generators only: the global random state untouched
    # Three more columns of padding change neither the draws (keyed by the real ids) nor the mosaics' words.
    pad = nn.functional.pad
    wide = {"attention_mask": pad(mask, (0, 3)), "special_tokens_mask": pad(special, (0, 3)),
            "model_inputs": {"token_type_ids": pad(types, (0, 3))}}  # fmt: skip
    got = focus(method, pad(ids, (0, 3), value=PAD), target, seed=5, **wide)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    metric = Focus(method, seed=5)
    metric.update(ids, target, **tokens)
    torch.testing.assert_close(metric.compute()["focus"].double(), expected.mean(), rtol=1e-6, atol=1e-9)


class WordClasses(nn.Module):
    """Bag of words: ids 5-34 are words of class 0, 35-64 of class 1, 65-99 of class 2; specials embed to zero.

    The logits are the mean of the attended tokens' one-hot class embeddings, so input x gradient scores a word
    ``1 / n`` for its own class and 0 for the others, and saliency ``1 / n`` every token (a map blind to the words).
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 3, padding_idx=PAD)
        with torch.no_grad():
            self.embed.weight.zero_()
            for c, (low, high) in enumerate(((5, 35), (35, 65), (65, 100))):
                self.embed.weight[low:high, c] = 1.0
        self.token_options = TokenOptions(SPECIALS, MASK, PAD)

    def forward(self, input_ids, attention_mask=None):
        embeddings = self.embed(input_ids)
        weights = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).to(embeddings)[..., None]
        return (embeddings * weights).sum(dim=1) / weights.sum(dim=1)


def _class_sentences(labels, words):
    """[CLS], ``words`` random words of the sentence's class, [SEP], two tokens of padding."""
    generator = torch.Generator().manual_seed(0)
    width = words + 4
    ids, mask = torch.full((len(labels), width), PAD), torch.zeros(len(labels), width, dtype=torch.long)
    for i, label in enumerate(labels):
        sentence = torch.randint(5 + 30 * label, 35 + 30 * label, (words,), generator=generator)
        ids[i, : words + 2] = torch.cat([torch.tensor([CLS]), sentence, torch.tensor([SEP])])
        mask[i, : words + 2] = 1
    return ids, mask


def test_a_map_on_the_class_words_scores_one_and_a_blind_map_one_half():
    model = WordClasses().eval()
    ids, mask = _class_sentences(LABELS, words=4)
    target = torch.tensor(LABELS)
    torch.testing.assert_close(focus(get_method("input_x_gradient", model), ids, target, attention_mask=mask),
                               torch.ones(6))  # fmt: skip
    torch.testing.assert_close(focus(get_method("saliency", model), ids, target, attention_mask=mask),
                               torch.full((6,), 0.5))  # fmt: skip
    # A batch of one class has no mosaic: NaN, and the metric leaves the sample out of its mean.
    metric = Focus("input_x_gradient", model)
    metric.update(ids[:3], target[:3], attention_mask=mask[:3])
    metric.update(ids[3:4], target[3:4], attention_mask=mask[3:4])
    assert float(metric.compute()["focus"]) == 1.0 and float(metric.score_count[0]) == 3
    assert math.isnan(float(focus(get_method("saliency", model), ids[:1], target[:1], attention_mask=mask[:1])[0]))


def test_mosaics_frame_four_sentences_words_with_the_sample_special_tokens():
    model = declared_pair_classifier()
    ids, mask, special, types, _ = pair_batch((9, 6, 7, 5))
    mosaics = focus_mosaics(ids, torch.tensor([0, 1, 0, 2]), method=get_method("saliency", model), seed=2,
                            attention_mask=mask, model_inputs={"token_type_ids": types})  # fmt: skip
    real = mask.bool()
    for m, sample in enumerate(mosaics.samples.tolist()):
        kept = mosaics.kwargs["attention_mask"][m].bool()
        tokens, slots = mosaics.inputs[m][kept], mosaics.slots[m][kept]
        assert tokens[0] == CLS and tokens[-1] == SEP and slots[0] == slots[-1] == -1
        assert bool((mosaics.inputs[m][~kept] == PAD).all()) and bool((mosaics.slots[m][~kept] == -1).all())
        sources = [int(s) for s in torch.unique_consecutive(slots[1:-1])]
        assert sources == [0, 1, 2, 3]  # four tiles in slot order, each a sentence's words
        words = {tuple(ids[j][real[j]][1:-1].tolist()) for j in range(4)}
        for slot in range(4):
            assert tuple(tokens[slots == slot].tolist()) in words
        own = tuple(ids[sample][real[sample]][1:-1].tolist())
        assert own in {tuple(tokens[slots == slot].tolist()) for slot in range(4) if mosaics.quadrants[m, slot]}
        # Every token keeps its own token type; [CLS] and [SEP] the sample's.
        carried = mosaics.kwargs["token_type_ids"][m][kept]
        assert carried[0] == types[sample, 0] and carried[-1] == types[sample, real[sample].sum() - 1]
    assert sorted(mosaics.kwargs) == ["attention_mask", "special_tokens_mask", "token_type_ids"]


def test_refusals_name_the_argument():
    model = declared_pair_classifier()
    ids, mask, special, types, _ = pair_batch((9, 6, 7, 5))
    method = get_method("saliency", model)
    target = torch.tensor([0, 1, 0, 2])
    with pytest.raises(ValueError, match="`tile`"):
        focus(method, ids, target, tile="half", attention_mask=mask)
    with pytest.raises(ValueError, match="`method`"):
        focus_mosaics(ids, target, attention_mask=mask)
    with pytest.raises(ValueError, match="position_ids"):
        focus(method, ids, target, attention_mask=mask, model_inputs={"position_ids": torch.zeros_like(ids)})
    with pytest.raises(ValueError, match="token_type_ids"):
        focus(method, ids, target, attention_mask=mask, model_inputs={"token_type_ids": types[:, 0]})
    pair = ids.clone()
    pair[0, 4] = SEP  # [CLS] a [SEP] b [SEP]: two segments make no one tile
    with pytest.raises(ValueError, match="sentence pair"):
        focus(method, pair, target, attention_mask=mask)


def test_a_mosaic_longer_than_the_model_positions_leaves_its_sample_without_a_value():
    bert = tiny_bert(dtype=torch.float64)  # 32 positions: a mosaic holding the sentence of 26 words does not fit
    bert.token_options = TokenOptions(SPECIALS, MASK, PAD)
    lengths = (28, 5, 6, 4, 7, 5)
    ids, mask = token_batch(lengths, seed=2)
    method = get_method("input_x_gradient", bert)
    expected = torch.tensor(_reference(method, ids, torch.zeros_like(ids), lengths, LABELS, seed=1, limit=32),
                            dtype=torch.float64)  # fmt: skip
    assert 2 <= int(expected.isnan().sum()) < 6  # the draws put the long sentence in some mosaics, not all
    with pytest.warns(UserWarning, match=r"longer than the model's 32 positions"):
        got = focus(method, ids, torch.tensor(LABELS), seed=1, attention_mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9, equal_nan=True)
