"""BIG and AGI against plain per-sample reference loops."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_attr.methods import AGI, BIG, get_method


def net(seed=0, d=5, k=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, k)).double()


def data(n=6, d=5, seed=2):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_big(model, x0, c, epsilons, steps, alpha, ig_steps):
    chosen = None
    for eps in epsilons:
        adv = x0.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv[None]), torch.tensor([c]))
            (g,) = torch.autograd.grad(loss, adv)
            adv = (x0 + (adv.detach() + alpha * g.sign() - x0).clamp(-eps, eps)).clamp(0, 1)
        chosen = adv
        if model(adv[None]).argmax() != c:
            break
    total = torch.zeros_like(x0)
    for k in range(ig_steps + 1):
        z = (chosen + k / ig_steps * (x0 - chosen)).requires_grad_(True)
        (g,) = torch.autograd.grad(model(z[None]).softmax(1)[0, c], z)
        total += g * (0.5 if k in (0, ig_steps) else 1.0) / ig_steps
    return (x0 - chosen) * total


@pytest.mark.parametrize("dedupe", [True, False])
def test_big_matches_reference(dedupe):
    model, x = net(), data()
    epsilons = (0.05, 0.1, 0.3, 0.5)
    method = BIG(model, epsilons=epsilons, attack_steps=20, alpha=0.01, ig_steps=16, dedupe_attacks=dedupe,
                 input_bounds=(0.0, 1.0))
    A = method.attribute(x)
    target = method.resolve_target(x, None)
    for i in range(len(x)):
        ref = reference_big(model, x[i], int(target[i]), epsilons, 20, 0.01, 16)
        torch.testing.assert_close(A[i], ref, rtol=1e-9, atol=1e-12)


def test_big_dedupe_runs_one_attack_per_reachable_radius():
    model, x = net(), data(2)
    rows = []
    model.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    # alpha * steps = 0.2: radii 0.3 and 0.5 both reach 0.2, so 3 distinct attacks instead of 4.
    BIG(model, epsilons=(0.05, 0.1, 0.3, 0.5), attack_steps=20, alpha=0.01, ig_steps=4)(x, target=0)
    assert rows[1] == 2 * 3
    rows.clear()
    BIG(model, epsilons=(0.05, 0.1, 0.3, 0.5), attack_steps=20, alpha=0.01, ig_steps=4, dedupe_attacks=False)(x, 0)
    assert rows[1] == 2 * 4


def reference_agi(model, x0, c, false, max_iter, eps):
    point, acc = x0.clone(), torch.zeros_like(x0)
    for _ in range(max_iter):
        point = point.detach().requires_grad_(True)
        logits = model(point[None])[0]
        if logits.argmax() == false:
            break
        probs = logits.softmax(0)
        (g_false,) = torch.autograd.grad(probs[false], point, retain_graph=True)
        (g_c,) = torch.autograd.grad(probs[c], point)
        nxt = (x0 + eps * g_false.sign()).clamp(0, 1)  # every step starts from the clean input
        acc -= g_c * (nxt - x0)
        point = nxt
    return acc


def test_agi_matches_reference_and_false_classes_are_valid():
    model, x = net(), data()
    method = AGI(model, n_classes=3, max_iter=10, eps=0.05, input_bounds=(0.0, 1.0), seed=7)
    A = method.attribute(x)
    target = method.resolve_target(x, None)
    false = method.false_classes(x, target, 4)
    assert false.shape == (6, 3)
    for i in range(len(x)):
        assert len(set(false[i].tolist())) == 3 and int(target[i]) not in false[i].tolist()
        ref = sum(reference_agi(model, x[i], int(target[i]), int(f), 10, 0.05) for f in false[i]) / 3
        torch.testing.assert_close(A[i], ref, rtol=1e-9, atol=1e-12)
    # draws are per sample: the same sample alone draws the same classes
    torch.testing.assert_close(method.false_classes(x[2:3], target[2:3], 4), false[2:3])
    assert not torch.equal(AGI(model, n_classes=1, seed=8).false_classes(x, target, 4),
                           AGI(model, n_classes=1, seed=7).false_classes(x, target, 4))


def test_agi_and_big_errors():
    with pytest.raises(ValueError, match=r"`n_classes` must be at most 3 for a model with 4 classes, got 4"):
        AGI(net(), n_classes=4).attribute(data(2))
    with pytest.raises(ValueError, match=r"`epsilons` must be a non-empty increasing sequence"):
        BIG(net(), epsilons=(0.3, 0.1))
    with pytest.raises(ValueError, match=r"`eps` must be a positive number"):
        get_method("agi", net(), eps=0)
