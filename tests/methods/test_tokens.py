"""Token ids through every token-capable method, on a tiny Hugging Face BERT and on a plain nn.TransformerEncoder."""

import random

import numpy as np
import pytest
import torch
from text_helpers import (
    CLS,
    MASK,
    SEP,
    SPECIALS,
    TOKEN_METHODS,
    VOCAB,
    logits_of,
    plain_transformer,
    tiny_bert,
    token_batch,
    with_embeddings,
)
from torch import nn

from lit_attr.functional import completeness_error
from lit_attr.inputs.tokens import TokenOptions, find_embedding_layer
from lit_attr.methods import get_method

MODELS = {"bert": tiny_bert, "plain": plain_transformer}


def fast_kwargs(name, pool_ids=None):
    pool_ids = pool_ids if pool_ids is not None else token_batch((7, 5, 8, 6, 7, 5), seed=9)[0]
    fast = {
        "integrated_gradients": {"n_steps": 16},
        "mfaba": {"max_steps": 12},
        "ig2": {"steps": 6, "n_references": 2, "reference_pool": (pool_ids, torch.arange(len(pool_ids)) % 3)},
        "fei": {"iterations": 3, "levels": (0.3, 0.6)},  # the default gate, on both models' GELU modules
    }
    return fast.get(name, {})


def method_for(name, model, **kwargs):
    method = get_method(name, model, **{**fast_kwargs(name), **kwargs})
    method.token_options = TokenOptions(special_token_ids=SPECIALS, mask_token_id=MASK)
    return method


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


@pytest.mark.parametrize("name", TOKEN_METHODS)
def test_shapes_zeros_and_batch_independence_across_padding(name, model):
    ids, mask = token_batch()
    method = method_for(name, model)
    scores = method.attribute(ids, attention_mask=mask)
    assert scores.shape == ids.shape and scores.dtype == torch.float32 and not scores.requires_grad
    frozen = (mask == 0) | (ids == CLS) | (ids == SEP)
    assert bool((scores[frozen] == 0).all())
    assert bool((scores[~frozen] != 0).any())
    for i in range(len(ids)):
        length = int(mask[i].sum())
        alone = method.attribute(ids[i : i + 1, :length])  # unpadded, alone: same target (its own prediction)
        torch.testing.assert_close(alone[0], scores[i, :length], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TOKEN_METHODS)
def test_internal_batch_size_and_reductions(name, model):
    ids, mask = token_batch()
    method = method_for(name, model)
    full = method.attribute(ids, target=1, attention_mask=mask, token_reduction="none")
    default = method.attribute(ids, target=1, attention_mask=mask)
    summed = method.attribute(ids, target=1, attention_mask=mask, token_reduction="sum")
    norms = method.attribute(ids, target=1, attention_mask=mask, token_reduction="norm")
    assert full.shape == (*ids.shape, 32)
    if name == "fei":  # one mask value per token, shown on every embedding feature; every reduction gives it
        torch.testing.assert_close(full, summed[..., None].expand_as(full))
        torch.testing.assert_close(norms, summed)
    else:
        torch.testing.assert_close(summed, full.sum(-1))
        torch.testing.assert_close(norms, full.norm(dim=-1))
    # Plain gradients reduce to their L2 norm by default, maps that are gradient x displacement to their signed sum.
    torch.testing.assert_close(default, norms if name == "saliency" else summed)
    chunked = method_for(name, model, internal_batch_size=2).attribute(ids, target=1, attention_mask=mask)
    torch.testing.assert_close(chunked, default, atol=1e-5, rtol=1e-5)


def test_special_tokens_mask_and_special_ids_agree(model):
    ids, mask = token_batch()
    special = ((ids == CLS) | (ids == SEP)).long()
    by_ids = method_for("input_x_gradient", model).attribute(ids, target=0, attention_mask=mask)
    plain = get_method("input_x_gradient", model)
    by_mask = plain.attribute(ids, target=0, attention_mask=mask, special_tokens_mask=special, baseline_token_id=MASK)
    per_call = plain.attribute(ids, target=0, attention_mask=mask, special_token_ids=SPECIALS)
    torch.testing.assert_close(by_mask, by_ids)
    torch.testing.assert_close(per_call, by_ids)
    unmarked = plain.attribute(ids, target=0, attention_mask=mask)  # without special ids only padding is frozen
    assert bool((unmarked[:, 0] != 0).all())


@pytest.mark.parametrize("builder", list(MODELS))
@pytest.mark.parametrize("name", TOKEN_METHODS)
def test_model_and_global_state_untouched(name, builder):
    model = MODELS[builder]().train()
    list(model.children())[-1].eval()  # the head: mixed modes must come back module by module
    params = list(model.parameters())
    params[0].requires_grad_(False)
    for p in params[1:]:
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad for p in params]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    torch_rng, np_rng, py_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    ids, mask = token_batch()

    method = method_for(name, model)
    scores = method.attribute(ids, attention_mask=mask)

    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in params] == [i != 0 for i in range(len(params))]
    assert all(p.grad is g for p, g in zip(params, grads, strict=True))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert np.random.get_state()[1].tolist() == np_rng[1].tolist() and random.getstate() == py_rng
    assert method.forward_fn is model and method.input_bounds is None
    # Dropout was off (eval mode), inside no_grad and on inference tensors too.
    model.eval()
    torch.testing.assert_close(method.attribute(ids, attention_mask=mask), scores)
    with torch.inference_mode():
        inference_ids, inference_mask = ids.clone(), mask.clone()
    with torch.no_grad():
        torch.testing.assert_close(method.attribute(inference_ids, attention_mask=inference_mask), scores)


def test_hook_removed_when_the_model_raises():
    model = plain_transformer()
    calls = []

    def fail_on_second_forward(module, args, output):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom")

    handle = model.head.register_forward_hook(fail_on_second_forward)
    ids, mask = token_batch()
    with pytest.raises(RuntimeError, match="boom"):
        method_for("saliency", model).attribute(ids[:1], attention_mask=mask[:1])
    handle.remove()
    assert not model.embed._forward_hooks and all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("builder", [tiny_bert, plain_transformer])
def test_integrated_gradients_completeness_in_embedding_space(builder):
    model = builder(dtype=torch.float64)
    ids, mask = token_batch()
    method = method_for("integrated_gradients", model, n_steps=64)
    target = torch.tensor([0, 1, 2, 0])
    scores = method.attribute(ids, target=target, attention_mask=mask)
    assert scores.dtype == torch.float64
    frozen = (mask == 0) | (ids == CLS) | (ids == SEP)
    baseline_ids = torch.where(frozen, ids, torch.full_like(ids, MASK))  # the baseline: [MASK] on every word
    with torch.no_grad():
        delta = (logits_of(model, ids, mask) - logits_of(model, baseline_ids, mask)).gather(1, target[:, None])
    assert completeness_error(scores, delta).max() < 1e-2


@pytest.mark.parametrize("builder", [tiny_bert, plain_transformer])
def test_mfaba_identity_in_embedding_space(builder):
    model = builder(dtype=torch.float64)
    ids, mask = token_batch()
    method = method_for("mfaba", model, rule="trapezoid", step_size=0.01, max_steps=300)
    scores, info = method.attribute(ids, attention_mask=mask, return_info=True)
    assert set(info) == {"steps", "flipped", "score_drop"} and info["steps"].shape == (4,)
    assert bool((info["score_drop"] > 0).all())
    assert completeness_error(scores, info["score_drop"]).max() < 1e-2


@pytest.mark.parametrize("builder", [tiny_bert, plain_transformer])
def test_ig2_identity_with_references_of_their_own_length(builder):
    model = builder(dtype=torch.float64)
    ids, mask = token_batch((9, 6, 9, 6))
    refs, ref_mask = token_batch((4, 8, 5, 6, 9, 7, 3, 6), seed=5)  # two per sample, lengths unlike the inputs'
    refs, ref_mask = refs.view(4, 2, -1), ref_mask.view(4, 2, -1)
    target = torch.tensor([0, 1, 2, 1])
    scores, info = method_for("ig2", model, steps=100, eta=0.01).attribute(
        ids, target, attention_mask=mask, references=refs, reference_attention_mask=ref_mask, return_baseline=True
    )
    assert info["baseline"].shape == (4, 2, ids.shape[1], 32)
    layer = find_embedding_layer(model)
    for i, c in enumerate(target.tolist()):
        length = int(mask[i].sum())
        words = ids[i : i + 1, :length]
        with torch.no_grad():
            start = with_embeddings(model, layer, layer(words), words)[0, c]
            ends = [with_embeddings(model, layer, info["baseline"][i, b : b + 1, :length], words)[0, c] for b in (0, 1)]
        delta = start - torch.stack(ends).mean()
        assert completeness_error(scores[i : i + 1], delta.view(1)).item() < 1e-2
    # A reference enters through its representation only: padding it further changes nothing.
    method = method_for("ig2", model, steps=5, eta=0.01)
    short = method.attribute(ids, target, attention_mask=mask, references=refs, reference_attention_mask=ref_mask)
    padded = torch.cat([refs, torch.zeros_like(refs)], dim=-1)
    padded_mask = torch.cat([ref_mask, torch.zeros_like(ref_mask)], dim=-1)
    long = method.attribute(ids, target, attention_mask=mask, references=padded, reference_attention_mask=padded_mask)
    torch.testing.assert_close(long, short)


def test_fei_gates_relu_modules_of_a_transformer():
    model = plain_transformer(relu=True)
    ids, mask = token_batch()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    seen = []
    handles = [m.register_forward_hook(lambda mod, a, out: seen.append(mod)) for m in relus]
    scores, info = method_for("fei", model, gate="ibm").attribute(ids, attention_mask=mask, return_masks=True)
    for h in handles:
        h.remove()
    assert {id(m) for m in seen} == {id(m) for m in relus}  # every block's ReLU ran (and was gated)
    assert info["masks"].shape == (4, 2, ids.shape[1])
    assert bool((scores >= 0).all() and (scores <= 1).all())
    ungated = method_for("fei", model, gate="none").attribute(ids, attention_mask=mask)
    assert not torch.allclose(ungated, scores)


def test_fei_gates_the_gelus_of_a_hugging_face_bert(monkeypatch):
    from lit_attr.methods.fei import FEI

    model = tiny_bert(hidden_act="gelu")
    acts = [layer.intermediate.intermediate_act_fn for layer in model.bert.encoder.layer]
    assert [type(a).__name__ for a in acts] == ["GELUActivation"] * 2  # a module, but not an nn.GELU
    assert not any(isinstance(a, nn.GELU) for a in acts)
    chosen, inputs = [], []
    resolve = FEI.gated_modules
    monkeypatch.setattr(FEI, "gated_modules", lambda self, *a, **k: chosen.append(resolve(self, *a, **k)) or chosen[-1])
    ids, mask = token_batch()
    fei = get_method("fei", model, iterations=3, levels=(0.3, 0.6), lr=0.3)  # the default gate, "ibm"
    fei.token_options = TokenOptions(special_token_ids=SPECIALS, mask_token_id=MASK)
    handles = [a.register_forward_pre_hook(lambda mod, args: inputs.append(mod)) for a in acts]
    try:
        scores = fei.attribute(ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    assert [[id(m) for m in modules] for modules in chosen] == [[id(a) for a in acts]] * len(chosen) and chosen
    assert {id(m) for m in inputs} == {id(a) for a in acts}
    assert all(not a._forward_pre_hooks and not a._forward_hooks for a in acts)
    frozen = (mask == 0) | (ids == CLS) | (ids == SEP)
    assert bool((scores[frozen] == 0).all()) and bool((scores >= 0).all() and (scores <= 1).all())
    ungated = method_for("fei", model, gate="none", iterations=3, lr=0.3).attribute(ids, attention_mask=mask)
    assert not torch.allclose(ungated, scores)  # the gates changed the gradients


def test_fei_on_functional_activations_says_so_and_names_gate_none():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)  # default activation: F.relu, a function
    model = nn.Sequential(
        nn.Embedding(VOCAB, 16), nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), nn.Flatten(),
        nn.Linear(6 * 16, 2),
    ).eval()  # fmt: skip
    ids = torch.randint(5, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    message = r"forward calls none: its activations are applied as functions \(F.relu, F.gelu.*Pass gate='none'"
    with pytest.raises(ValueError, match=message):
        get_method("fei", model, iterations=2).attribute(ids, baseline_token_id=MASK)
    scores = get_method("fei", model, iterations=2, gate="none").attribute(ids, baseline_token_id=MASK)
    assert scores.shape == ids.shape


def test_errors_name_the_argument():
    model = tiny_bert()
    ids, mask = token_batch()
    method = method_for("saliency", model)
    with pytest.raises(TypeError, match="`input_ids` must hold integer token ids"):
        method.attribute(ids.float(), attention_mask=mask)
    with pytest.raises(ValueError, match=r"`attention_mask` must have the shape of input_ids \(N, L\) = \(4, 9\)"):
        method.attribute(ids, attention_mask=mask[:, :5])
    with pytest.raises(ValueError, match="`input_ids` holds ids up to 100"):
        method.attribute(torch.where(mask.bool(), ids, torch.full_like(ids, 100)), attention_mask=mask)
    with pytest.raises(ValueError, match="`baseline_token_id` must be a token id in the vocabulary"):
        method.attribute(ids, attention_mask=mask, baseline_token_id=100)
    with pytest.raises(ValueError, match=r"big needs the raw inputs \(it attacks inside L-inf balls"):
        get_method("big", model).attribute(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="agi needs the raw inputs"):
        get_method("agi", model).attribute(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="smoothgrad needs the raw inputs"):
        get_method("smoothgrad", model).attribute(ids, attention_mask=mask)
    too_long = torch.full((1, 2, 40), 7)
    with pytest.raises(ValueError, match="`references` has sequences of 40 tokens, but the model accepts at most 32"):
        method_for("ig2", model).attribute(ids, attention_mask=mask, references=too_long.expand(4, 2, 40))
    with pytest.raises(TypeError, match="`references`: not an option of saliency"):
        method.attribute(ids, attention_mask=mask, references=too_long.expand(4, 2, 40))


@pytest.mark.parametrize("builder", [tiny_bert, plain_transformer])
@pytest.mark.parametrize("name", ["saliency", "mfaba", "fei"])
def test_float_input_ids_without_token_keywords_name_input_ids(builder, name):
    model = builder()
    ids, _ = token_batch((6, 6))
    with pytest.raises(TypeError, match=r"`input_ids` must be integer token ids \(torch.long or torch.int\), got "
                                        r"dtype torch.float32.*Pass `input_ids.long\(\)`") as caught:  # fmt: skip
        get_method(name, model, **fast_kwargs(name)).attribute(ids.float())
    assert isinstance(caught.value.__cause__, RuntimeError)  # what torch raised, kept as the cause
    with pytest.raises(TypeError, match="`input_ids` must be integer"):  # given logits: the model fails later
        get_method(name, model, **fast_kwargs(name)).attribute(ids.float(), logits=torch.zeros(2, 3))


def test_whole_number_floats_stay_features_when_the_model_takes_them():
    class Categorical(nn.Module):  # float columns holding category codes, embedded inside the forward
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.embed(x.long()).mean(dim=1)) * x.sum(dim=1, keepdim=True)

    torch.manual_seed(0)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 5.0]])
    scores = get_method("saliency", Categorical()).attribute(x, target=0)
    assert scores.shape == x.shape and bool((scores != 0).any())


def test_model_without_a_single_embedding_layer_needs_a_name():
    class TwoTables(nn.Module):
        def __init__(self):
            super().__init__()
            self.words = nn.Embedding(100, 8)
            self.tags = nn.Embedding(100, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, input_ids):
            return self.head((self.words(input_ids) + self.tags(input_ids % 7)).mean(dim=1))

    model = TwoTables()
    ids, mask = token_batch()
    with pytest.raises(ValueError, match=r"2 nn.Embedding modules \(words, tags\).*embedding_layer='<name>'"):
        get_method("saliency", model).attribute(ids, attention_mask=mask, baseline_token_id=MASK)
    method = get_method("saliency", model)
    with pytest.raises(ValueError, match="`embedding_layer` 'word' is not a module of the model. Close names: words"):
        method.attribute(ids, attention_mask=mask, baseline_token_id=MASK, embedding_layer="word")
    scores = get_method("input_x_gradient", model).attribute(
        ids, attention_mask=mask, baseline_token_id=MASK, embedding_layer="words"
    )
    expected_rows = []
    for i in range(len(ids)):  # the closed form of a linear model: e_i * (W_c / L) summed over the embedding
        length = int(mask[i].sum())
        with torch.no_grad():
            c = int(model(ids[i : i + 1, :length]).argmax())
            expected = (model.words(ids[i, :length]) * model.head.weight[c] / length).sum(-1)
        expected_rows.append(torch.cat([expected, torch.zeros(ids.shape[1] - length)]))
    torch.testing.assert_close(scores, torch.stack(expected_rows))


class MeanOfAllPositions(nn.Module):
    """Embeddings averaged over every position, padding included: the output depends on the padding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.embed(input_ids).mean(dim=1))


def test_sentences_of_different_lengths_run_padded_only_where_padding_changes_nothing():
    from lit_attr.inputs.embedding import pads_invariantly

    ids, mask = token_batch()
    bert, mean = tiny_bert(), MeanOfAllPositions().eval()
    for model, invariant in ((bert, True), (mean, False)):
        method = method_for("saliency", model)
        def caller(i, a=None, fields=None, m=model):
            return logits_of(m, i, a)

        assert pads_invariantly(method, caller, ids, mask.bool()) is invariant
        scores = method.attribute(ids, target=1, attention_mask=mask)
        for i in range(len(ids)):  # either way a sentence's scores are those it gets alone, without padding
            length = int(mask[i].sum())
            alone = method.attribute(ids[i : i + 1, :length], target=1)
            torch.testing.assert_close(alone[0], scores[i, :length], rtol=1e-5, atol=1e-5 * float(scores.abs().max()))


def test_integrated_gradients_on_four_lengths_costs_no_more_forwards_than_captum_plus_one(model):
    from captum.attr import LayerIntegratedGradients

    ids, mask = token_batch()  # four sentences of four lengths
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(args))
    try:
        with torch.no_grad():
            logits = logits_of(model, ids, mask)
        base = torch.where(mask.bool() & (ids != CLS) & (ids != SEP), torch.full_like(ids, MASK), ids)
        calls.clear()
        LayerIntegratedGradients(lambda i, a: logits_of(model, i, a), find_embedding_layer(model)).attribute(
            ids, baselines=base, target=1, additional_forward_args=(mask,), n_steps=16, internal_batch_size=None
        )
        captum = len(calls)
        method = method_for("integrated_gradients", model)
        calls.clear()
        method.attribute(ids, target=1, attention_mask=mask, logits=logits)
        first = len(calls)  # with the once-per-model check of padding
        calls.clear()
        method.attribute(ids, target=1, attention_mask=mask, logits=logits)
    finally:
        handle.remove()
    assert first <= captum + 1 and len(calls) <= captum + 1
