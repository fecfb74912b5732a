"""Tiny text classifiers and padded token batches shared by the token tests (importable in DDP children too).

Token conventions of every batch here: [PAD] = 0, [CLS] = 2, [SEP] = 3, [MASK] = 4; real words are ids 5 .. 99.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

PAD, CLS, SEP, MASK = 0, 2, 3, 4
VOCAB = 100
SPECIALS = (CLS, SEP)
#: The registered methods that attribute token ids (every method whose `raw_inputs_only` is empty).
TOKEN_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "mfaba", "ig2", "fei")


class PlainTransformer(nn.Module):
    """``nn.Embedding`` + learned positions + ``nn.TransformerEncoder`` + masked mean pooling + linear head.

    The positions are a parameter, not an ``nn.Embedding``, so the token embedding is the model's only
    ``nn.Embedding`` (found without a name). The activation is a module (GELU, smooth, by default; ReLU for FEI's
    gates).
    """

    def __init__(
        self, vocab: int = VOCAB, dim: int = 32, classes: int = 3, max_length: int = 32, relu: bool = False
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(max_length, dim) * 0.5)
        layer = nn.TransformerEncoderLayer(
            dim, 2, 64, dropout=0.1, activation=nn.ReLU() if relu else nn.GELU(), batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        weights = attention_mask.to(h.dtype)[..., None]
        return self.head((h * weights).sum(dim=1) / weights.sum(dim=1))


def plain_transformer(seed: int = 0, dtype: torch.dtype = torch.float32, relu: bool = False) -> PlainTransformer:
    torch.manual_seed(seed)
    return PlainTransformer(relu=relu).to(dtype).eval()


def tiny_bert(
    seed: int = 0, dtype: torch.dtype = torch.float32, init: float = 0.1, hidden_act: str = "gelu"
) -> nn.Module:
    """A random ``BertForSequenceClassification``: vocabulary 100, hidden 32, 2 layers, 2 heads (GELU, as BERT)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
        initializer_range=init,
        pad_token_id=PAD,
        hidden_act=hidden_act,
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).to(dtype).eval()


def token_batch(lengths: tuple[int, ...] = (9, 6, 7, 5), seed: int = 1) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``: [CLS] words [SEP] then padding, one row per entry of ``lengths``."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(5, VOCAB, (len(lengths), width), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, 0], ids[row, length - 1], ids[row, length:] = CLS, SEP, PAD
        mask[row, :length] = 1
    return ids, mask


def with_embeddings(model: nn.Module, layer: nn.Module, embeddings: Tensor, input_ids: Tensor) -> Tensor:
    """The model's logits when ``layer`` outputs ``embeddings`` for ``input_ids`` (no padding)."""
    handle = layer.register_forward_hook(lambda module, args, output: embeddings.to(output.dtype))
    try:
        out = model(input_ids)
    finally:
        handle.remove()
    return getattr(out, "logits", out)


def logits_of(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Logits of a plain model or of a Hugging Face one (whose output holds them in ``.logits``)."""
    out = model(input_ids, attention_mask=attention_mask)
    return getattr(out, "logits", out)


CONVENTIONS = {"replacement_id": MASK, "special_token_ids": SPECIALS}


def token_metric_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, scores, rationale)`` of six padded sentences."""
    ids, mask = token_batch((9, 6, 7, 5, 8, 4), seed=seed)
    scores = torch.randn(ids.shape, generator=torch.Generator().manual_seed(seed))
    rationale = torch.zeros_like(ids, dtype=torch.bool)
    rationale[:, 1] = True
    rationale[::2, 2] = True
    return ids, mask, scores, rationale


def game_metrics(model: torch.nn.Module) -> dict:
    """Factories of the token Metrics that play games with ``model`` (picklable, for the DDP test too)."""
    from lit_attr.metrics import Comprehensiveness, Sufficiency, TokenActivationDeviation, TokenInsertionDeletion

    return {
        "comprehensiveness": functools.partial(Comprehensiveness, model, bins=(10, 50), **CONVENTIONS),
        "sufficiency": functools.partial(Sufficiency, model, replacement="remove", **CONVENTIONS),
        "token_insertion_deletion": functools.partial(TokenInsertionDeletion, model, n_steps=4, **CONVENTIONS),
        "token_activation_deviation": functools.partial(TokenActivationDeviation, model, n_steps=3, **CONVENTIONS),
    }


class PairClassifier(nn.Module):
    """Token, token-type and (optionally) position embeddings, tanh, masked mean pooling and a linear head.

    Without positions it is a bag of tokens: moving the padding changes nothing but float rounding.
    """

    def __init__(self, positions: bool = True, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 8, padding_idx=PAD)
        self.types = nn.Embedding(2, 8)
        self.pos = nn.Parameter(torch.randn(32, 8)) if positions else None
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        h = self.embed(input_ids) + 2 * self.types(types)
        if self.pos is not None:
            h = h + self.pos[: input_ids.shape[1]]
        weights = attention_mask.to(h.dtype)[..., None]
        return self.head((torch.tanh(h) * weights).sum(dim=1) / weights.sum(dim=1))


def declared_pair_classifier(seed: int = 0) -> PairClassifier:
    """A float64 :class:`PairClassifier` declaring its conventions: [CLS]/[SEP] special, [MASK], [PAD], ``embed``."""
    from lit_attr.inputs import TokenOptions

    model = PairClassifier(seed=seed).double().eval()
    model.token_options = TokenOptions(SPECIALS, MASK, PAD, embedding_layer="embed")
    return model


def pair_batch(lengths=(9, 6, 7, 5), seed=1):
    """Padded sentences, their special-token mask, token types (the second half of a sentence is type 1), a map."""
    ids, mask = token_batch(lengths, seed=seed)
    special = (ids == CLS) | (ids == SEP)
    types = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        types[row, length // 2 : length] = 1
    scores = torch.randn(ids.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    scores[~mask.bool() | special] = 50.0  # large scores on padding and special tokens: they must not count
    return ids, mask, special, types, scores


#: Every metric of issue #26 that takes token ids, with small options.
TOKEN_METRIC_OPTIONS = {
    "faithfulness_correlation": {"subset_size": 0.5, "n_subsets": 4},
    "faithfulness_estimate": {},
    "sensitivity_n": {"sizes": (1, 0.5), "n_subsets": 4},
    "monotonicity": {},
    "monotonicity_correlation": {"n_samples": 2},
    "completeness": {},
    "region_perturbation": {"patch_size": 2, "regions": 3},
    "selectivity": {"patch_size": 2},
    "irof": {"patch_size": 2},
    "non_sensitivity": {"n_samples": 1, "tolerance": 1e-4},
    "sufficiency_dasgupta": {"threshold": 1.0},
    "consistency": {"top_k": 1},
    "random_logit": {"similarity": "spearman_abs"},
    "local_lipschitz": {"n_perturb_samples": 2},
    "avg_sensitivity": {"n_perturb_samples": 2},
    "continuity": {"n_perturb_samples": 2},
    "relative_stability": {"n_perturb_samples": 2, "noise": 0.01},
    "input_invariance": {},
    "focus": {},
}


def token_metric_shards() -> tuple[dict, dict]:
    """``(factories, uneven shards)`` of every token metric but random_logit on six padded sentence pairs.

    Each metric is built as its registry spec's ``consumes`` say: with the method, the model, or the maps alone; a
    shard holds what its ``update`` takes (ids, the classes explained, a map, masks, ``token_type_ids``, logits),
    sentences 0-3 and 4-5.
    """
    from lit_attr.metrics import get_metric_spec

    model = declared_pair_classifier()
    ids, mask, special, types, scores = pair_batch(lengths=(9, 6, 7, 5, 8, 6))
    logits = model(ids, attention_mask=mask, token_type_ids=types).detach()
    classes = torch.tensor([0, 1, 2, 0, 1, 2])  # every shard holds several: focus builds mosaics from a shard
    given = {"x": ids, "target": classes, "attributions": scores, "attention_mask": mask,
             "special_tokens_mask": special, "model_inputs": {"token_type_ids": types}, "logits": logits}  # fmt: skip
    factories, batches = {}, {}
    for name in (name for name in TOKEN_METRIC_OPTIONS if name != "random_logit"):
        spec = get_metric_spec(name)
        needs = ("saliency", model) if "method" in spec.consumes else (model,) if "model" in spec.consumes else ()
        factories[name] = functools.partial(spec.factory, *needs, **TOKEN_METRIC_OPTIONS[name])
        batches[name] = [
            {key: {k: v[rows] for k, v in value.items()} if isinstance(value, dict) else value[rows]
             for key, value in given.items() if key in spec.update_inputs}
            for rows in (slice(0, 4), slice(4, 6))
        ]  # fmt: skip
    return factories, batches
