"""Synthetic review sentences whose class is decided by a few known words, generated locally and deterministically.

Every sentence holds one *opinion clause*, "the soup was not good", whose adjective decides the class (positive or
negative). The opinion needs context, two words together: a "not" before the opinion adjective flips it, so "not
good" is negative and "not boring" positive. Up to ``max_distractors`` *distractor clauses* ("the room was big",
"we went there yesterday") and the opinion clause's own subject carry no class information. The deciding words
(the opinion adjective and a negation) are known per token (:attr:`TextDataset.rationale_masks`), so token
attributions can be scored against ground truth.

Sentences are tokenised by a word-level Hugging Face ``tokenizers`` tokenizer built from the grammar's vocabulary
(``pip install lit-attr[text]``), with the specials ``[PAD] [UNK] [CLS] [SEP] [MASK]``; batches are dicts as
Hugging Face collators produce them, padded per batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_attr._optional import import_optional
from lit_attr.data._synthetic import SyntheticDataModule
from lit_attr.inputs.tokens import TokenOptions

__all__ = ["TEXT_CLASS_NAMES", "SyntheticTextDataModule", "TextDataset", "build_tokenizer", "collate_tokens"]

TEXT_CLASS_NAMES: tuple[str, ...] = ("negative", "positive")
"""Class names indexed by label."""

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""Special tokens, with ids 0 .. 4 in this order."""

_SUBJECTS = ("match", "team", "coach", "race", "pizza", "soup", "dinner", "chef", "menu", "film", "show", "book")
_POSITIVE = ("good", "great", "excellent", "wonderful", "fun", "superb")
_NEGATIVE = ("bad", "awful", "boring", "terrible", "poor", "dull")
_NEUTRAL = ("new", "old", "big", "small", "long", "short", "loud", "quiet")
_PLACES = ("room", "city", "street", "hall", "weather", "trip", "car", "bus")
_TIMES = ("yesterday", "today", "tonight", "again", "early", "late")
_PEOPLE = ("friend", "sister", "brother", "neighbour", "boss")
_CONNECTORS = ("and", "but", "so", "then")
#: Share of opinions that are negated. Below one half, the adjective alone predicts the class most of the time, which
#: gives a model a gradient to start from; at one half the class is the XOR of the adjective's polarity and the
#: negation, and training stalls at chance. (Negations of neutral adjectives in distractor clauses, and four classes
#: of topic x opinion, made a small BERT stall as well.)
NEGATION_RATE = 0.3
# Opinion clauses: T = subject noun, N = optional "not", A = opinion adjective (N always right before A).
_OPINIONS = (
    ("the", "T", "was", "N", "A"),
    ("this", "T", "is", "N", "A"),
    ("i", "think", "the", "T", "was", "N", "A"),
    ("our", "T", "looked", "N", "A"),
    ("honestly", "the", "T", "was", "N", "A"),
)
# Distractor clauses: P = place, J = neutral adjective, W = time, F = person.
_DISTRACTORS = (
    ("the", "P", "was", "J"),
    ("we", "went", "there", "W"),
    ("my", "F", "said", "it", "was", "J"),
    ("it", "rained", "W"),
    ("a", "J", "P", "nearby"),
)


def _vocabulary() -> tuple[str, ...]:
    words = {"not", *_SUBJECTS, *_POSITIVE, *_NEGATIVE, *_NEUTRAL, *_PLACES, *_TIMES, *_PEOPLE, *_CONNECTORS}
    for template in (*_OPINIONS, *_DISTRACTORS):
        words.update(w for w in template if w.islower())
    return SPECIAL_TOKENS + tuple(sorted(words))


VOCABULARY: tuple[str, ...] = _vocabulary()
"""Every token, specials first; a token's id is its index."""


_SLOT_WORDS = {"T": _SUBJECTS, "P": _PLACES, "J": _NEUTRAL, "W": _TIMES, "F": _PEOPLE}


def _clause(
    template: Sequence[str], rng: random.Random, negate: bool, decided: dict[str, str] | None = None
) -> list[tuple[str, bool]]:
    """The words of a clause, each with whether it decides the class.

    ``decided`` fills the opinion adjective slot "A"; it and a negation in the same clause decide the class. Other
    upper-case slots are drawn from their word lists, lower-case words are kept.
    """
    words = []
    for slot in template:
        if slot == "N":
            if negate:
                words.append(("not", decided is not None))
        elif decided is not None and slot in decided:
            words.append((decided[slot], True))
        elif slot in _SLOT_WORDS:
            words.append((rng.choice(_SLOT_WORDS[slot]), False))
        else:
            words.append((slot, False))
    return words


def generate_sentences(
    labels: Sequence[int], max_distractors: int, rng: random.Random
) -> tuple[list[str], list[list[bool]]]:
    """One sentence per label, with a per-word flag that marks the words deciding the class.

    Args:
        labels: class indices (see :data:`TEXT_CLASS_NAMES`).
        max_distractors: at most this many distractor clauses per sentence (drawn uniformly from 0 .. max).
        rng: the only source of randomness used.

    Example:
        >>> sentences, flags = generate_sentences([1], 0, random.Random(0))
        >>> len(sentences[0].split()) == len(flags[0]), sum(flags[0]) in (1, 2)
        (True, True)
    """
    sentences, rationales = [], []
    for label in labels:
        negate = rng.random() < NEGATION_RATE
        # A negated opinion flips: "not good" is negative, so the adjective comes from the opposite list.
        adjectives = _POSITIVE if bool(label) != negate else _NEGATIVE
        clauses = [_clause(rng.choice(_OPINIONS), rng, negate, {"A": rng.choice(adjectives)})]
        for _ in range(rng.randint(0, max_distractors)):
            clauses.append(_clause(rng.choice(_DISTRACTORS), rng, False))
        rng.shuffle(clauses)
        words: list[tuple[str, bool]] = list(clauses[0])
        for clause in clauses[1:]:
            words.append((rng.choice(_CONNECTORS), False))
            words.extend(clause)
        sentences.append(" ".join(w for w, _ in words))
        rationales.append([flag for _, flag in words])
    return sentences, rationales


def build_tokenizer() -> Any:
    """The word-level tokenizer of :data:`VOCABULARY` (Hugging Face ``tokenizers``) adding [CLS] ... [SEP].

    Example:
        >>> tokenizer = build_tokenizer()
        >>> tokenizer.encode("the soup was not good").tokens
        ['[CLS]', 'the', 'soup', 'was', 'not', 'good', '[SEP]']
    """
    tokenizers = import_optional("tokenizers")
    vocab = {token: index for index, token in enumerate(VOCABULARY)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return tokenizer


class TextDataset(Dataset[dict[str, Tensor]]):
    """Synthetic review sentences of two classes with per-token rationale masks (see the module docstring).

    Labels are exactly balanced. Everything is generated eagerly from ``seed`` with a private generator, so the
    dataset is reproducible and leaves the global random state alone.

    Args:
        num_samples: number of sentences (>= 1).
        seed: seed of the private generator (>= 0).
        max_distractors: at most this many distractor clauses per sentence (>= 0).

    Attributes:
        texts: the sentences.
        labels: ``(N,)`` int64 class indices.
        input_ids: one ``(l,)`` int64 tensor per sentence, ``[CLS] words [SEP]``.
        rationale_masks: one ``(l,)`` bool tensor per sentence, True on the words that decide the class.
        special_tokens_masks: one ``(l,)`` int64 tensor per sentence, 1 on [CLS] and [SEP].

    Example:
        >>> ds = TextDataset(8, seed=1)
        >>> item = ds[0]
        >>> sorted(item), item["input_ids"].shape == item["rationale_mask"].shape
        (['attention_mask', 'input_ids', 'labels', 'rationale_mask', 'special_tokens_mask'], True)
    """

    def __init__(self, num_samples: int, seed: int = 0, max_distractors: int = 2) -> None:
        _check_int("num_samples", num_samples, 1)
        _check_int("seed", seed, 0)
        _check_int("max_distractors", max_distractors, 0)
        rng = random.Random(seed)
        labels = [i % len(TEXT_CLASS_NAMES) for i in range(num_samples)]
        rng.shuffle(labels)
        self.texts, word_flags = generate_sentences(labels, max_distractors, rng)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.input_ids: list[Tensor] = []
        self.rationale_masks: list[Tensor] = []
        self.special_tokens_masks: list[Tensor] = []
        for encoding, flags in zip(build_tokenizer().encode_batch(self.texts), word_flags, strict=True):
            self.input_ids.append(torch.tensor(encoding.ids, dtype=torch.long))
            self.special_tokens_masks.append(torch.tensor(encoding.special_tokens_mask, dtype=torch.long))
            self.rationale_masks.append(
                torch.tensor([word is not None and flags[word] for word in encoding.word_ids], dtype=torch.bool)
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids = self.input_ids[index]
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": self.labels[index],
            "rationale_mask": self.rationale_masks[index],
            "special_tokens_mask": self.special_tokens_masks[index],
        }


#: Padding value of each batch key (Hugging Face pads the special-tokens mask with 1: padding is special).
_PADDING = {"input_ids": 0, "attention_mask": 0, "rationale_mask": False, "special_tokens_mask": 1}


def collate_tokens(samples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack samples of :class:`TextDataset` into a batch padded to its longest sequence (right padding).

    Example:
        >>> batch = collate_tokens([TextDataset(2)[0], TextDataset(2)[1]])
        >>> batch["input_ids"].shape == batch["attention_mask"].shape, batch["labels"].shape
        (True, torch.Size([2]))
    """
    longest = max(sample["input_ids"].shape[0] for sample in samples)
    batch: dict[str, Tensor] = {}
    for key in samples[0]:
        if samples[0][key].ndim == 0:
            batch[key] = torch.stack([sample[key] for sample in samples])
            continue
        rows = [sample[key] for sample in samples]
        padded = torch.full((len(rows), longest), _PADDING[key], dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            padded[i, : row.shape[0]] = row
        batch[key] = padded
    return batch


class SyntheticTextDataModule(SyntheticDataModule):
    """Train, validation and test splits of :class:`TextDataset` for Lightning, with its tokenizer's conventions.

    Batches are dicts with ``input_ids``, ``attention_mask``, ``labels``, ``rationale_mask`` and
    ``special_tokens_mask``, padded per batch (see :func:`collate_tokens`). The splits come from distinct seeds
    derived from ``seed``; the training loader shuffles with a private generator. No loader draws from the
    global random state.

    Args:
        num_train: training sentences.
        num_val: validation sentences.
        num_test: test sentences (also used by :meth:`predict_dataloader`).
        batch_size: sentences per batch.
        max_distractors: at most this many distractor clauses per sentence.
        seed: base seed (>= 0).
        num_workers: DataLoader worker processes.

    Example:
        >>> dm = SyntheticTextDataModule(num_train=32, num_val=8, num_test=8, batch_size=4)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["input_ids"].shape[0], dm.num_classes, dm.vocab_size == len(VOCABULARY)
        (4, 2, True)
    """

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 512,
        num_test: int = 512,
        batch_size: int = 64,
        max_distractors: int = 2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("num_train", num_train, 1),
            ("num_val", num_val, 1),
            ("num_test", num_test, 1),
            ("batch_size", batch_size, 1),
            ("max_distractors", max_distractors, 0),
            ("seed", seed, 0),
            ("num_workers", num_workers, 0),
        ):
            _check_int(name, value, minimum)
        self.save_hyperparameters()
        self._seed_splits(seed)

    # ------------------------------------------------------------------ tokenizer conventions
    @property
    def num_classes(self) -> int:
        """Number of classes (always ``len(TEXT_CLASS_NAMES)``)."""
        return len(TEXT_CLASS_NAMES)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names indexed by label."""
        return TEXT_CLASS_NAMES

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(VOCABULARY)

    pad_token_id: int = VOCABULARY.index("[PAD]")
    unk_token_id: int = VOCABULARY.index("[UNK]")
    cls_token_id: int = VOCABULARY.index("[CLS]")
    sep_token_id: int = VOCABULARY.index("[SEP]")
    mask_token_id: int = VOCABULARY.index("[MASK]")

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """Ids that are never perturbed nor scored: [CLS] and [SEP] (padding is excluded by the attention mask)."""
        return (self.cls_token_id, self.sep_token_id)

    @property
    def token_options(self) -> TokenOptions:
        """The conventions above as :class:`~lit_attr.inputs.tokens.TokenOptions`."""
        return TokenOptions(self.special_token_ids, self.mask_token_id, self.pad_token_id)

    @property
    def tokenizer(self) -> Any:
        """A fresh word-level tokenizer (``tokenizers.Tokenizer``) of the vocabulary."""
        return build_tokenizer()

    @staticmethod
    def decode(input_ids: Tensor | Sequence[int]) -> list[str]:
        """The token of every id, specials included (for displaying attributions word by word).

        Example:
            >>> SyntheticTextDataModule.decode([2, 0])
            ['[CLS]', '[PAD]']
        """
        return [VOCABULARY[int(i)] for i in input_ids]

    # ------------------------------------------------------------------ splits
    collate_fn = collate_tokens

    def _make(self, split: str, num_samples: int) -> TextDataset:
        return TextDataset(num_samples, seed=self._split_seeds[split], max_distractors=self.hparams.max_distractors)


def _check_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value
