"""SyntheticTextDataModule: the class follows the grammar's rule, the rationale marks its words, batches as HF's."""

import random

import pytest
import torch

from lit_attr.data import SyntheticTextDataModule, TextDataset
from lit_attr.data.text import _NEGATIVE, _POSITIVE, VOCABULARY, build_tokenizer, collate_tokens


def test_labels_follow_the_rule_and_rationales_mark_its_words():
    ds = TextDataset(400, seed=3)
    assert torch.bincount(ds.labels).tolist() == [200, 200]
    negated = 0
    for text, label, ids, rationale in zip(ds.texts, ds.labels, ds.input_ids, ds.rationale_masks, strict=True):
        words = text.split()
        opinion = [i for i, w in enumerate(words) if w in _POSITIVE or w in _NEGATIVE]
        assert len(opinion) == 1  # exactly one opinion adjective per sentence
        i = opinion[0]
        flips = i > 0 and words[i - 1] == "not"
        negated += flips
        assert int(label) == int((words[i] in _POSITIVE) != flips)  # "not" flips the adjective
        expected = [j == i or (flips and j == i - 1) for j in range(len(words))]
        assert rationale.tolist() == [False, *expected, False]  # [CLS] and [SEP] are never rationale
        assert [VOCABULARY[t] for t in ids.tolist()] == ["[CLS]", *words, "[SEP]"]
        assert "not" not in words[:i - 1] + words[i + 1 :]  # no distractor negation
    assert 0.2 < negated / len(ds) < 0.4


def test_deterministic_private_randomness_and_distinct_splits():
    state = torch.get_rng_state(), random.getstate()
    a, b = TextDataset(50, seed=1), TextDataset(50, seed=1)
    assert a.texts == b.texts and torch.equal(a.labels, b.labels)
    assert TextDataset(50, seed=2).texts != a.texts
    assert torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]
    dm = SyntheticTextDataModule(num_train=20, num_val=20, num_test=20, seed=0)
    dm.setup()
    assert dm.train_set.texts != dm.val_set.texts != dm.test_set.texts


def test_batches_are_padded_per_batch_as_hugging_face_collators_pad():
    ds = TextDataset(16, seed=4)
    lengths = [len(ids) for ids in ds.input_ids]
    batch = collate_tokens([ds[i] for i in range(4)])
    longest = max(lengths[:4])
    assert batch["input_ids"].shape == (4, longest) and batch["labels"].shape == (4,)
    for i in range(4):
        n = lengths[i]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)
        assert batch["input_ids"][i, n:].eq(SyntheticTextDataModule.pad_token_id).all()
        assert batch["special_tokens_mask"][i].tolist() == [1] + [0] * (n - 2) + [1] + [1] * (longest - n)
        assert not batch["rationale_mask"][i, n:].any()
    dm = SyntheticTextDataModule(num_train=32, num_val=8, num_test=8, batch_size=8)
    dm.setup()
    first, again = next(iter(dm.train_dataloader())), next(iter(dm.train_dataloader()))
    assert torch.equal(first["input_ids"], again["input_ids"])  # the shuffle restarts from its own seed
    assert int(first["attention_mask"].sum(dim=1).max()) == first["input_ids"].shape[1]  # padded to its longest


def test_tokenizer_and_conventions():
    dm = SyntheticTextDataModule()
    tokenizer = build_tokenizer()
    encoding = tokenizer.encode("the soup was not good")
    assert encoding.tokens == ["[CLS]", "the", "soup", "was", "not", "good", "[SEP]"]
    assert tokenizer.encode("zebra").tokens == ["[CLS]", "[UNK]", "[SEP]"]
    assert (dm.pad_token_id, dm.unk_token_id, dm.cls_token_id, dm.sep_token_id, dm.mask_token_id) == (0, 1, 2, 3, 4)
    assert dm.special_token_ids == (2, 3) and dm.vocab_size == len(VOCABULARY) == tokenizer.get_vocab_size()
    assert dm.class_names == ("negative", "positive") and dm.num_classes == 2
    assert dm.token_options.replacement_id == 4
    assert dm.decode(encoding.ids) == encoding.tokens


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        TextDataset(0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 2.5"):
        SyntheticTextDataModule(batch_size=2.5)
    with pytest.raises(RuntimeError, match="call setup"):
        SyntheticTextDataModule().val_dataloader()
