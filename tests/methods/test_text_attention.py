"""Attention rollout on Hugging Face text encoders: a textbook rollout of the models' own attentions, batches with
padding, the registry, the model left as it was, and errors."""

import pytest
import torch
from text_helpers import CLS, MASK, PAD, SEP, SPECIALS, VOCAB, plain_transformer, tiny_bert, token_batch
from torch import nn

from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods import TextAttentionRollout, available_methods, get_method

OPTIONS = TokenOptions(special_token_ids=SPECIALS, mask_token_id=MASK)


def tiny_roberta(seed=0, **config):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    return RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=40, num_labels=3, pad_token_id=PAD, initializer_range=0.1, **config,
        )  # fmt: skip
    ).eval()


def tiny_distilbert(seed=0, **config):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    return DistilBertForSequenceClassification(
        DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32, num_labels=3,
            pad_token_id=PAD, initializer_range=0.1, **config,
        )  # fmt: skip
    ).eval()


def bert(seed=0, **config):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, num_labels=3, pad_token_id=PAD, initializer_range=0.1, **config,
        )  # fmt: skip
    ).eval()


BUILDERS = {"bert": bert, "roberta": tiny_roberta, "distilbert": tiny_distilbert}
FUSE = {"mean": lambda a: a.mean(dim=0), "max": lambda a: a.amax(dim=0), "min": lambda a: a.amin(dim=0)}


def textbook_rollout(attentions, sample, length, fusion, row):
    """Abnar & Zuidema's rollout of one sample's real tokens, from the model's own per-layer attentions."""
    rolled = torch.eye(length)
    for layer in attentions:
        mixed = 0.5 * FUSE[fusion](layer[sample, :, :length, :length]) + 0.5 * torch.eye(length)
        rolled = (mixed / mixed.sum(dim=1, keepdim=True)) @ rolled
    return rolled[0] if row == "first" else rolled.mean(dim=0)


@pytest.mark.parametrize("kind", BUILDERS)
@pytest.mark.parametrize(("fusion", "row"), [("mean", "first"), ("max", "mean"), ("min", "first")])
def test_rollout_is_the_textbook_rollout_of_the_models_attentions(kind, fusion, row):
    model = BUILDERS[kind]()  # the library's default attention (sdpa), which reports no probabilities
    eager = BUILDERS[kind](attn_implementation="eager")  # the same weights, for the reference
    ids, mask = token_batch()
    with torch.no_grad():
        reference = eager(ids, attention_mask=mask, output_attentions=True)
    method = get_method("attention_rollout", model, head_fusion=fusion, row=row, token_options=OPTIONS)
    assert isinstance(method, TextAttentionRollout)
    scores = method.attribute(ids, attention_mask=mask)
    frozen = (mask == 0) | (ids == CLS) | (ids == SEP)
    assert scores.shape == ids.shape and bool((scores[frozen] == 0).all()) and bool((scores[~frozen] > 0).all())
    for i in range(len(ids)):
        length = int(mask[i].sum())
        expected = textbook_rollout(reference.attentions, i, length, fusion, row)
        torch.testing.assert_close(scores[i, 1 : length - 1], expected[1 : length - 1], rtol=1e-5, atol=1e-6)
        alone = method.attribute(ids[i : i + 1, :length])  # unpadded, in a batch of its own
        torch.testing.assert_close(alone[0], scores[i, :length], rtol=1e-5, atol=1e-6)


def test_scores_do_not_depend_on_the_target_and_the_model_is_left_as_it_was():
    model = bert()
    ids, mask = token_batch()
    method = get_method("attention_rollout", model, token_options=OPTIONS)
    first = method.attribute(ids, target=0, attention_mask=mask)
    torch.testing.assert_close(method.attribute(ids, target=2, attention_mask=mask), first, rtol=0, atol=0)
    assert model.config._attn_implementation == "sdpa"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

    def interrupt(module, args, output):
        raise KeyboardInterrupt

    handle = model.bert.encoder.layer[1].register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        method.attribute(ids, attention_mask=mask)
    handle.remove()
    assert model.config._attn_implementation == "sdpa"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class Wrapped(nn.Module):
    """A user's module around a Hugging Face classifier (as a LightningModule holds one)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits


def test_registered_for_text_encoders_only():
    wrapped = Wrapped(tiny_bert())
    assert "attention_rollout" in available_methods(tiny_bert()) and "attention_rollout" in available_methods(wrapped)
    assert "generic_attention" not in available_methods(tiny_bert())  # a vision transformer method
    assert "attention_rollout" not in available_methods(nn.Embedding(4, 2))
    ids, mask = token_batch()
    direct = get_method("attention_rollout", wrapped.inner, token_options=OPTIONS).attribute(ids, attention_mask=mask)
    through = get_method("attention_rollout", wrapped, token_options=OPTIONS).attribute(ids, attention_mask=mask)
    torch.testing.assert_close(through, direct, rtol=0, atol=0)

    from transformers import GPT2Config, GPT2ForSequenceClassification

    causal = GPT2ForSequenceClassification(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    assert "attention_rollout" not in available_methods(causal)  # its first token sees itself only
    with pytest.raises(ValueError, match="holds no Hugging Face text encoder"):
        TextAttentionRollout(causal)
    with pytest.raises(ValueError, match="Cannot find a torchvision or timm vision transformer"):
        get_method("attention_rollout", plain_transformer())  # attention modules, but neither a ViT nor HF


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="`head_fusion`"):
        get_method("attention_rollout", tiny_bert(), head_fusion="median")
    with pytest.raises(ValueError, match="`row`"):
        get_method("attention_rollout", tiny_bert(), row="last")
    with pytest.raises(TypeError, match="patch_size"):
        get_method("attention_rollout", tiny_bert(), patch_size=8)
