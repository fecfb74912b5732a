"""Feature ablation and Kernel SHAP over the input kind's features: closed forms on models linear in the features,
a hand-made masking loop on a tiny BERT, Kernel SHAP's efficiency, seeds, batches and errors."""

import pytest
import torch
from text_helpers import CLS, MASK, PAD, SEP, SPECIALS, VOCAB, logits_of, plain_transformer, tiny_bert, token_batch
from torch import nn

from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods import get_method

METHODS = ("feature_ablation", "kernel_shap")
MODELS = {"bert": tiny_bert, "plain": plain_transformer}
OPTIONS = TokenOptions(special_token_ids=SPECIALS, mask_token_id=MASK)


class BagOfEmbeddings(nn.Module):
    """Logits ``W sum_t E[id_t] + b``: linear in every token's embedding, so ablation and Shapley values agree."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask=None):
        weights = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.head((self.embed(input_ids) * weights[..., None]).sum(dim=1))


@pytest.mark.parametrize("name", METHODS)
def test_linear_model_on_features_gets_w_times_the_displacement(name):
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    baselines = torch.randn(4, 5, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2])
    w = model.weight.detach()[target]
    scores = get_method(name, model).attribute(x, target=target, baselines=baselines)
    torch.testing.assert_close(scores, w * (x - baselines), rtol=1e-5, atol=1e-6)
    # Without `baselines`: the lower input bound.
    bounded = get_method(name, model, input_bounds=(-3.0, 3.0)).attribute(x, target=target)
    torch.testing.assert_close(bounded, w * (x + 3.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_an_image_feature_is_a_pixel_over_its_channels(name):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    extra = {"n_samples": 64} if name == "kernel_shap" else {}
    scores = get_method(name, model, input_bounds=(0.0, 1.0), **extra).attribute(x, target=1)
    per_pixel = (model[1].weight.detach()[1].view(3, 4, 4) * x).sum(dim=1, keepdim=True)  # removal of all channels
    torch.testing.assert_close(scores, per_pixel.expand_as(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_tokens_of_a_model_linear_in_the_embeddings_get_their_closed_form(name):
    torch.manual_seed(2)
    model = BagOfEmbeddings().eval()
    ids, mask = token_batch()
    target = torch.tensor([0, 1, 2, 1])
    scores = get_method(name, model, token_options=OPTIONS).attribute(ids, target=target, attention_mask=mask)
    table, head = model.embed.weight.detach(), model.head.weight.detach()
    expected = ((table[ids] - table[MASK]) * head[target][:, None]).sum(dim=-1)
    expected[(mask == 0) | (ids == CLS) | (ids == SEP)] = 0
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


@pytest.mark.parametrize("replacement", ["mask", "pad", "call"])
def test_token_ablation_is_the_logit_drop_of_masking_each_token_by_hand(model, replacement):
    ids, mask = token_batch()
    options, kwargs, token = OPTIONS, {}, MASK
    if replacement == "pad":  # no mask id: the model's pad id (its config, or its embedding's padding_idx)
        options, token = TokenOptions(special_token_ids=SPECIALS), PAD
    elif replacement == "call":
        kwargs, token = {"baseline_token_id": 7}, 7
    scores = get_method("feature_ablation", model, token_options=options).attribute(
        ids, target=1, attention_mask=mask, **kwargs
    )
    assert scores.shape == ids.shape and scores.dtype == torch.float32
    frozen = (mask == 0) | (ids == CLS) | (ids == SEP)
    assert bool((scores[frozen] == 0).all()) and bool((scores[~frozen] != 0).all())
    with torch.no_grad():
        for i in range(len(ids)):
            length = int(mask[i].sum())
            sentence = ids[i : i + 1, :length]
            clean = logits_of(model, sentence, torch.ones_like(sentence))[0, 1]
            for j in range(1, length - 1):  # [CLS] and [SEP] are never removed
                masked = sentence.clone()
                masked[0, j] = token
                drop = clean - logits_of(model, masked, torch.ones_like(masked))[0, 1]
                torch.testing.assert_close(scores[i, j], drop, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_a_sentence_alone_gets_its_scores_in_a_padded_batch(model, name):
    ids, mask = token_batch()
    extra = {"n_samples": 48} if name == "kernel_shap" else {}
    method = get_method(name, model, token_options=OPTIONS, **extra)
    scores = method.attribute(ids, target=2, attention_mask=mask)
    for i in range(len(ids)):
        length = int(mask[i].sum())
        alone = method.attribute(ids[i : i + 1, :length], target=2)
        torch.testing.assert_close(alone[0], scores[i, :length], rtol=1e-4, atol=1e-5)
        assert bool((scores[i, length:] == 0).all())


@pytest.mark.parametrize("name", METHODS)
def test_internal_batch_size_bounds_rows_on_tokens_without_changing_scores(name):
    model = tiny_bert()
    ids, mask = token_batch()
    extra = {"n_samples": 24} if name == "kernel_shap" else {}
    full = get_method(name, model, token_options=OPTIONS, **extra).attribute(ids, target=0, attention_mask=mask)
    rows = []
    handle = model.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        bounded = get_method(name, model, token_options=OPTIONS, internal_batch_size=3, **extra)
        chunked = bounded.attribute(ids, target=0, attention_mask=mask)
    finally:
        handle.remove()
    assert rows and max(rows) <= 3
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-5)


def test_token_ablation_costs_one_row_per_token_and_one_per_sentence():
    model = tiny_bert()
    ids, mask = token_batch((9,))
    rows = []
    handle = model.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        get_method("feature_ablation", model, token_options=OPTIONS).attribute(ids, target=0, attention_mask=mask)
    finally:
        handle.remove()
    # The clean forward, then the 7 words (the specials join the first word's group, a no-op for them).
    assert sum(rows) == 1 + 7


def test_kernel_shap_adds_up_to_the_logit_change_from_the_masked_sentence(model):
    ids, mask = token_batch()
    scores = get_method("kernel_shap", model, token_options=OPTIONS, n_samples=32).attribute(
        ids, target=1, attention_mask=mask
    )
    with torch.no_grad():
        for i in range(len(ids)):
            length = int(mask[i].sum())
            sentence = ids[i : i + 1, :length]
            masked = sentence.clone()
            masked[0, 1 : length - 1] = MASK
            ones = torch.ones_like(sentence)
            change = logits_of(model, sentence, ones)[0, 1] - logits_of(model, masked, ones)[0, 1]
            # The full and the empty coalition carry the weight 1e6: the fit passes through both to ~1e-5.
            torch.testing.assert_close(scores[i].sum(), change, rtol=1e-4, atol=1e-4)


def test_kernel_shap_is_seeded_per_sample():
    model = tiny_bert()
    ids, mask = token_batch()
    a = get_method("kernel_shap", model, token_options=OPTIONS, n_samples=16, seed=1)
    b = get_method("kernel_shap", model, token_options=OPTIONS, n_samples=16, seed=1)
    c = get_method("kernel_shap", model, token_options=OPTIONS, n_samples=16, seed=2)
    first = a.attribute(ids, target=0, attention_mask=mask)
    torch.testing.assert_close(b.attribute(ids, target=0, attention_mask=mask), first, rtol=0, atol=0)
    # Other coalitions, other estimates of a model that is not additive in its tokens.
    assert not torch.allclose(c.attribute(ids, target=0, attention_mask=mask), first, rtol=1e-3, atol=1e-4)


def test_kernel_shap_with_one_or_no_player_is_the_removal_effect():
    model = tiny_bert()
    ids = torch.tensor([[CLS, 11, SEP], [CLS, SEP, PAD]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ablation, shap = (
        get_method(name, model, token_options=OPTIONS).attribute(ids, target=0, attention_mask=mask) for name in METHODS
    )
    torch.testing.assert_close(shap, ablation, rtol=1e-5, atol=1e-6)
    assert shap[0, 1] != 0 and bool((shap[1] == 0).all())


def test_bad_options_name_the_argument():
    model = tiny_bert()
    ids, mask = token_batch()
    with pytest.raises(ValueError, match="`baselines` does not apply"):
        get_method("feature_ablation", model, token_options=OPTIONS).attribute(
            ids, attention_mask=mask, baselines=torch.zeros(4, 9)
        )
    with pytest.raises(ValueError, match="`n_samples`"):
        get_method("kernel_shap", model, n_samples=0)
    with pytest.raises(ValueError, match=r"`baselines` must be a number or a tensor broadcastable to the inputs"):
        get_method("feature_ablation", nn.Linear(5, 2)).attribute(torch.rand(3, 5), baselines=torch.zeros(2, 5))
    with pytest.raises(TypeError, match="n_steps"):
        get_method("feature_ablation", nn.Linear(5, 2), n_steps=4)


def test_sentence_pairs_are_ablated_with_their_segments():
    from test_sentence_pairs import pairs

    model = tiny_bert(seed=3)
    ids, mask, segments = pairs()
    method = get_method("feature_ablation", model, token_options=OPTIONS)
    scores = method.attribute(ids, target=1, attention_mask=mask, token_type_ids=segments)
    with torch.no_grad():
        for i in range(len(ids)):
            length = int(mask[i].sum())
            sentence, types = ids[i : i + 1, :length], segments[i : i + 1, :length]
            ones = torch.ones_like(sentence)
            clean = model(sentence, attention_mask=ones, token_type_ids=types).logits[0, 1]
            for j in range(length):
                if int(sentence[0, j]) in SPECIALS:
                    assert scores[i, j] == 0
                    continue
                masked = sentence.clone()
                masked[0, j] = MASK
                drop = clean - model(masked, attention_mask=ones, token_type_ids=types).logits[0, 1]
                torch.testing.assert_close(scores[i, j], drop, rtol=1e-4, atol=1e-5)
    # Read as one segment, the pairs score differently: the segments did reach the model.
    alike = method.attribute(ids, target=1, attention_mask=mask)
    assert float((alike - scores).abs().max()) > 1e-3 * float(scores.abs().max())
