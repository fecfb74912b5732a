"""Robustness and input invariance on token ids (#26), against per-sentence loops in the embedding space.

Every reference takes one sentence alone (cut to its real tokens, no padding), embeds it with the model's own
``nn.Embedding``, draws the documented noise for its real tokens (a float64 generator seeded by ``row_seed(seed, its
real ids)``, scaled by the root mean square of its word embeddings and kept on the words only), and computes the
saliency map at the moved embeddings with autograd on a hand-written forward of the model. It shares nothing with
the library but ``row_seed`` and the model's weights.
"""

import pytest
import torch
from text_helpers import CLS, SEP, declared_pair_classifier, pair_batch

from lit_attr._hygiene import row_seed
from lit_attr.functional import avg_sensitivity, continuity, input_invariance, local_lipschitz, relative_stability
from lit_attr.methods import get_method


@pytest.fixture(scope="module")
def model():
    return declared_pair_classifier()


@pytest.fixture(scope="module")
def batch():
    ids, mask, special, types, _ = pair_batch()
    return ids, mask, special, types


def fields(batch):
    ids, mask, special, types = batch
    return {"attention_mask": mask, "special_tokens_mask": special, "model_inputs": {"token_type_ids": types}}


class Sentence:
    """Sentence ``i`` alone: its real ids, word positions, embeddings, and the model's forward from embeddings."""

    def __init__(self, model, batch, i):
        ids, mask, _, types = batch
        real = mask[i].bool()
        self.model, self.ids, self.types = model, ids[i][real], types[i][real]
        self.words = (self.ids != CLS) & (self.ids != SEP)
        with torch.no_grad():
            self.embeddings = model.embed(self.ids)
        self.logits = self.forward(self.embeddings)
        self.target = int(self.logits.argmax())
        words = self.embeddings[self.words]
        self.scale = float(words.square().mean().sqrt())

    def forward(self, embeddings):
        h = embeddings + 2 * self.model.types(self.types) + self.model.pos[: self.ids.shape[0]]
        return self.model.head(torch.tanh(h).mean(dim=0))

    def offsets(self, seed, n, distribution, noise):
        generator = torch.Generator().manual_seed(row_seed(seed, self.ids))
        shape = (n, *self.embeddings.shape)
        if distribution == "gaussian":
            draws = torch.randn(shape, generator=generator, dtype=torch.float64)
        else:
            draws = 2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1
        return noise * self.scale * draws * self.words[None, :, None]

    def saliency(self, offset):
        """Per-token L2 norm of the gradient of the target's logit at the moved embeddings (0 off the words)."""
        moved = (self.embeddings + offset).requires_grad_(True)
        self.forward(moved)[self.target].backward()
        return moved.grad.norm(dim=1) * self.words


@pytest.mark.parametrize(
    ("functional", "distribution", "reduce"),
    [(local_lipschitz, "gaussian", "lipschitz"), (continuity, "uniform", "continuity"),
     (avg_sensitivity, "uniform", "average")],  # fmt: skip
)
def test_robustness_moves_each_sentence_words_in_the_embedding_space(model, batch, functional, distribution, reduce):
    method = get_method("saliency", model)
    state = torch.get_rng_state()
    got = functional(method, batch[0], n_perturb_samples=3, noise=0.2, distribution=distribution, seed=7,
                     **fields(batch))  # fmt: skip
    assert torch.equal(torch.get_rng_state(), state)  # seeded generators only: the global random state untouched
    for i in range(batch[0].shape[0]):
        s = Sentence(model, batch, i)
        clean = s.saliency(torch.zeros_like(s.embeddings))
        ratios = []
        for offset in s.offsets(7, 3, distribution, 0.2):
            change = s.saliency(offset) - clean
            if reduce == "lipschitz":
                ratios.append(float(change.norm() / offset.norm()))
            elif reduce == "continuity":
                ratios.append(float(change.abs().sum() / offset.norm()))
            else:
                ratios.append(float(change.norm()))
        expected = sum(ratios) / len(ratios) if reduce == "average" else max(ratios)
        assert got[i].item() == pytest.approx(expected, rel=1e-6)
    assert float(got.min()) > 1e-3 * float(got.max())  # every sentence's map moves: the ratios are not noise


def test_relative_stability_divides_by_the_embeddings_and_logits_change(model, batch):
    method = get_method("saliency", model)
    got = relative_stability(method, batch[0], variants=("input", "output"), n_perturb_samples=3, noise=0.1, seed=3,
                             **fields(batch))  # fmt: skip
    eps = 1e-6
    for i in range(batch[0].shape[0]):
        s = Sentence(model, batch, i)
        clean = s.saliency(torch.zeros_like(s.embeddings))
        best = {"input": [], "output": []}
        for offset in s.offsets(3, 3, "gaussian", 0.1):
            moved_logits = s.forward(s.embeddings + offset).detach()
            if int(moved_logits.argmax()) != s.target:
                continue
            explained = ((clean - s.saliency(offset)) / torch.where(clean == 0, eps, clean)).norm()
            points = s.embeddings * s.words[:, None]
            relative_input = (offset / torch.where(points == 0, eps, points)).norm()
            best["input"].append(float(explained / max(float(relative_input), eps)))
            best["output"].append(float(explained / max(float((s.logits.detach() - moved_logits).norm()), eps)))
        for variant, values in best.items():
            assert values, "every copy changed the prediction: the test's noise is too large"
            assert got[variant][i].item() == pytest.approx(max(values), rel=1e-6)


def test_the_copies_do_not_depend_on_the_batch_or_its_padding(model, batch):
    ids, mask, special, types = batch
    method = get_method("saliency", model)
    whole = local_lipschitz(method, ids, n_perturb_samples=2, **fields(batch))
    width = ids.shape[1] + 3  # sentence 1 alone, with more padding
    given = {"ids": ids, "mask": mask, "special": special, "types": types}
    one = {key: torch.zeros(1, width, dtype=value.dtype) for key, value in given.items()}  # PAD = 0
    length = int(mask[1].sum())
    for key, value in given.items():
        one[key][0, :length] = value[1, :length]
    tokens = {"attention_mask": one["mask"], "special_tokens_mask": one["special"],
              "model_inputs": {"token_type_ids": one["types"]}}  # fmt: skip
    alone = local_lipschitz(method, one["ids"], n_perturb_samples=2, **tokens)
    assert alone.item() == pytest.approx(whole[1].item(), rel=1e-9)


def test_input_invariance_shifts_every_embedding_and_the_model_takes_the_shift_off(model, batch):
    ids = batch[0]
    shift = -0.5
    saliency, ig = get_method("saliency", model), get_method("integrated_gradients", model, n_steps=16)
    ixg = get_method("input_x_gradient", model)
    # Gradients do not see the shift; the [MASK] baseline moves with it, so integrated gradients do not either.
    assert float(input_invariance(saliency, ids, shift=shift, **fields(batch)).max()) < 1e-12
    assert float(input_invariance(ig, ids, shift=shift, **fields(batch)).max()) < 1e-9
    got = input_invariance(ixg, ids, shift=shift, **fields(batch))
    for i in range(ids.shape[0]):
        s = Sentence(model, batch, i)
        e = s.embeddings.clone().requires_grad_(True)
        s.forward(e)[s.target].backward()
        own = (e.grad * s.embeddings).sum(dim=1) * s.words
        moved = (e.grad * (s.embeddings + shift)).sum(dim=1) * s.words  # g(e + c) = f(e): the same gradient
        expected = (moved - own).abs().sum() / (moved.abs().sum() + own.abs().sum())
        assert got[i].item() == pytest.approx(float(expected), rel=1e-9)
    assert float(got.min()) > 0.05


def test_token_offsets_are_checked(model, batch):
    ids, mask, special, types = batch
    method = get_method("saliency", model)
    with pytest.raises(ValueError, match="`embedding_offset`"):
        method.attribute(ids, 0, attention_mask=mask, embedding_offset=torch.zeros(ids.shape[0], 3, 8))
    with pytest.raises(ValueError, match="`embedding_offset`.*width E = 8"):
        method.attribute(ids, 0, attention_mask=mask, embedding_offset=torch.zeros(*ids.shape, 5))


def left_padded(batch):
    """The same sentences with their padding on the left (a model with absolute positions sees other inputs)."""
    ids, mask, special, types = batch
    out = [torch.zeros_like(t) for t in (ids, mask, special, types)]
    for i, length in enumerate(mask.sum(dim=1).tolist()):
        for new, old in zip(out, (ids, mask, special, types), strict=True):
            new[i, ids.shape[1] - length :] = old[i, :length]
    return tuple(out)


def test_left_padding_after_right_padding_changes_no_sentence_score(batch):
    """Logits, targets and the same-prediction filter come from each sentence's own tokens, whatever the padding."""
    model = declared_pair_classifier(seed=3)  # absolute positions: left padding moves them
    method = get_method("saliency", model)
    options = {"n_perturb_samples": 3, "noise": 0.3, "seed": 1}
    right = relative_stability(method, batch[0], **options, **fields(batch))  # the right padding is seen first
    left = left_padded(batch)
    got = relative_stability(method, left[0], **options, **fields(left))
    lipschitz = local_lipschitz(method, left[0], **options, **fields(left))
    for i, length in enumerate(batch[1].sum(dim=1).tolist()):
        alone = tuple(t[i : i + 1, :length] for t in batch)
        expected = relative_stability(method, alone[0], **options, **fields(alone))
        for variant, values in got.items():
            assert values[i].item() == pytest.approx(expected[variant].item(), rel=1e-9, nan_ok=True), variant
            assert right[variant][i].item() == pytest.approx(expected[variant].item(), rel=1e-9, nan_ok=True)
        single = local_lipschitz(method, alone[0], **options, **fields(alone))
        assert lipschitz[i].item() == pytest.approx(single.item(), rel=1e-9)


def test_ids_of_any_integer_dtype_and_a_composite_embedding_layer():
    from lit_attr.models import DemoTextClassifier

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DemoTextClassifier(vocab_size=100, num_classes=3, hidden_size=16, intermediate_size=32).eval()
    ids, mask, special, _, _ = pair_batch()
    tokens = {"attention_mask": mask, "special_tokens_mask": special}
    method = get_method("saliency", model)
    longs = local_lipschitz(method, ids, n_perturb_samples=2, **tokens)
    torch.testing.assert_close(local_lipschitz(method, ids.int(), n_perturb_samples=2, **tokens), longs)
    # The whole BERT embedding module (words, positions, types, LayerNorm) as the layer the points live in.
    composite = get_method("saliency", model, token_options={"embedding_layer": "bert.bert.embeddings"})
    moved = local_lipschitz(composite, ids, n_perturb_samples=2, **tokens)
    for i, length in enumerate(mask.sum(dim=1).tolist()):
        alone = {"attention_mask": mask[i : i + 1, :length], "special_tokens_mask": special[i : i + 1, :length]}
        single = local_lipschitz(composite, ids[i : i + 1, :length], n_perturb_samples=2, **alone)
        assert moved[i].item() == pytest.approx(single.item(), rel=1e-4)
    assert float(moved.min()) > 0
