"""The tokenizer's conventions by default: special ids from the tokenizer or the config, RoBERTa's positions."""

import pytest
import torch
from captum.attr import LayerIntegratedGradients

from lit_attr.functional import token_insertion_deletion
from lit_attr.inputs import TokenOptions
from lit_attr.inputs.tokens import position_limit
from lit_attr.methods import get_method

BOS, PAD, EOS = 0, 1, 2  # RoBERTa's <s>, <pad>, </s>


def tiny_roberta(max_positions=20):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=max_positions, num_labels=3,
                           initializer_range=0.2)  # fmt: skip
    torch.manual_seed(0)
    return RobertaForSequenceClassification(config).eval()


def roberta_batch():
    generator = torch.Generator().manual_seed(1)
    rows = [[BOS, *torch.randint(4, 50, (k,), generator=generator).tolist(), EOS] for k in (6, 3, 5)]
    width = max(map(len, rows))
    ids = torch.tensor([row + [PAD] * (width - len(row)) for row in rows])
    return ids, (ids != PAD).long()


def test_options_from_a_hugging_face_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "soup", "was", "good"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    options = TokenOptions.from_tokenizer(tokenizer)
    assert set(options.special_token_ids) == {0, 1, 2, 3, 4}
    assert (options.mask_token_id, options.pad_token_id, options.replacement_id) == (4, 0, 4)
    with pytest.raises(TypeError, match="`tokenizer` must declare its special ids"):
        TokenOptions.from_tokenizer(object())


def test_the_configs_special_ids_are_frozen_without_options_and_the_pad_embedding_is_the_baseline():
    model = tiny_roberta()
    ids, mask = roberta_batch()
    ig = get_method("integrated_gradients", model, n_steps=32)
    scores = ig.attribute(ids, target=0, attention_mask=mask)
    frozen = (ids == BOS) | (ids == EOS) | (mask == 0)
    assert bool((scores[frozen] == 0).all()) and bool((scores[~frozen] != 0).any())
    # No mask id in RoBERTa's config: the baseline is the pad embedding, the positions those of the original input
    # (Captum's LayerIG runs the model on the original ids with the embeddings replaced, as lit-attr does).
    baselines = torch.where(frozen, ids, torch.full_like(ids, PAD))
    layer = LayerIntegratedGradients(lambda i, m: model(i, attention_mask=m).logits, model.get_input_embeddings())
    reference = layer.attribute(ids, baselines=baselines, target=0, additional_forward_args=(mask,), n_steps=32,
                                method="gausslegendre").sum(dim=-1)  # fmt: skip
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


def test_robertas_position_range_is_its_limit():
    model = tiny_roberta(max_positions=20)
    assert position_limit(model) == 20 - PAD - 1
    saliency = get_method("saliency", model)
    fits = torch.tensor([[BOS, *range(4, 20), EOS]])  # 18 tokens
    assert saliency.attribute(fits).shape == fits.shape
    with pytest.raises(ValueError, match="`input_ids` has sequences of 19 tokens, but the model accepts at most 18"):
        saliency.attribute(torch.tensor([[BOS, *range(4, 21), EOS]]))


def naive_deletion(model, ids, mask, scores, steps, keep_positions):
    curves = []
    for row, real, score in zip(ids, mask.bool(), scores, strict=True):
        row, score = row[real], score[real]
        order = sorted(range(1, len(row) - 1), key=lambda j: (-float(score[j]), j))
        curve = []
        for t in range(steps + 1):
            gone = order[: -(-t * len(order) // steps)]
            new = row.clone()
            new[gone] = PAD
            positions = torch.arange(len(row))[None] + PAD + 1 if keep_positions else None
            with torch.no_grad():
                out = model(new[None], attention_mask=torch.ones_like(new)[None], position_ids=positions).logits
            curve.append(float(out.softmax(dim=1)[0, 0]))
        curves.append(curve)
    return torch.tensor(curves)


def test_a_token_replaced_by_the_pad_id_keeps_its_position():
    model = tiny_roberta()
    ids, mask = roberta_batch()
    scores = torch.randn(ids.shape, generator=torch.Generator().manual_seed(2))
    result = token_insertion_deletion(model, ids, scores, 0, attention_mask=mask, n_steps=3)  # no mask id: pad
    kept = naive_deletion(model, ids, mask, scores, 3, keep_positions=True)
    torch.testing.assert_close(result.deletion_curve, kept, rtol=1e-4, atol=1e-5)
    # Left to the model, the pad ids would have taken the padding position: another curve.
    moved = naive_deletion(model, ids, mask, scores, 3, keep_positions=False)
    assert float((moved - kept).abs().max()) > 1e-3
