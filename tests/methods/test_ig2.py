"""IG2 against its identity, an unfused two-pass reference, and hand-checkable cases."""

import pytest
import torch
from torch import nn

from lit_attr.functional import completeness_error
from lit_attr.methods import IG2, get_method


class TwoBranch(nn.Module):
    """Features use inputs 0-2 only; input 3 reaches the logits through a side branch."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(3, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)
        self.side = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x):
        return self.head(self.features(x[:, :3])) + x[:, 3:4] * self.side


def smooth_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Softplus(), nn.Linear(8, 3)).double()


def pool(n=60, d=6, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=torch.float64), torch.arange(n) % 3


def data(n=5, d=6, seed=1):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identity_logit_drop_to_gradcf():
    model, x = smooth_net(), data()
    method = IG2(model, steps=150, eta=0.01, reference_pool=pool(), n_references=4)
    A, info = method.attribute(x, return_baseline=True)
    target = method.resolve_target(x, None)
    with torch.no_grad():
        start = model(x).gather(1, target[:, None])[:, 0]
        ends = model(info["baseline"].flatten(0, 1)).view(5, 4, 3)
        end = ends.gather(2, target[:, None, None].expand(5, 4, 1))[..., 0].mean(dim=1)
    assert completeness_error(A, start - end).max() < 2e-2


def two_pass_reference(model, penultimate, x, c, refs, steps, eta):
    """The authors' structure: search the whole path first (storing it), then integrate over stored points."""
    out = torch.zeros_like(x)
    for r in refs:
        with torch.no_grad():
            target_rep = penultimate(r[None])
        points = [x.clone()]
        for _ in range(steps):
            z = points[-1].clone().requires_grad_(True)
            (u,) = torch.autograd.grad(((penultimate(z[None]) - target_rep) ** 2).sum(), z)
            points.append(points[-1] - eta * u / u.norm())
        for z, nxt in zip(points[:-1], points[1:], strict=True):
            z = z.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(z[None])[0, c], z)
            out += g * (z.detach() - nxt)
    return out / len(refs)


def test_fused_equals_unfused_two_pass_reference():
    model, x = smooth_net(), data(3)
    refs = torch.stack([pool()[0][i * 7 : i * 7 + 3] for i in range(3)])  # (N, B=3, D)
    method = IG2(model, steps=30, eta=0.05)
    A = method.attribute(x, target=torch.tensor([0, 1, 2]), references=refs)
    penultimate = model[:4]  # input of the last nn.Linear
    for i in range(3):
        ref = two_pass_reference(model, penultimate, x[i], i, refs[i], 30, 0.05)
        torch.testing.assert_close(A[i], ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(IG2(model, steps=30, eta=0.05, fused=False)(x, [0, 1, 2], references=refs), A)


def test_batch_independence_determinism_and_chunking():
    model, x = smooth_net(), data(6)
    method = IG2(model, steps=20, eta=0.05, reference_pool=pool(), n_references=3, seed=3)
    A = method.attribute(x)
    torch.testing.assert_close(method.attribute(x), A)
    target = method.resolve_target(x, None)
    for i in (0, 4):
        torch.testing.assert_close(method.attribute(x[i : i + 1], target=int(target[i]))[0], A[i])
    chunked = IG2(model, steps=20, eta=0.05, reference_pool=pool(), n_references=3, seed=3, internal_batch_size=4)
    torch.testing.assert_close(chunked.attribute(x), A)
    other = IG2(model, steps=20, eta=0.05, reference_pool=pool(), n_references=3, seed=4).attribute(x)
    assert not torch.allclose(other, A)


def test_samplers_use_pool_labels():
    model, x = smooth_net(), data(6)
    pool_x, pool_y = pool()
    pool_y = (pool_y + 1) % 3  # labels deliberately differ from anything the model says
    lookup = {tuple(row.tolist()): int(y) for row, y in zip(pool_x, pool_y, strict=True)}
    other = IG2(model, reference_pool=(pool_x, pool_y), n_references=5)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    refs = other.sample_references(x, target)
    assert refs.shape == (6, 5, 6)
    for i in range(6):
        labels = [lookup[tuple(r.tolist())] for r in refs[i]]
        assert target[i].item() not in labels
        assert len({tuple(r.tolist()) for r in refs[i]}) == 5  # distinct when the pool allows
    confusers = IG2(model, references="confusers", reference_pool=(pool_x, pool_y), n_references=1)
    with torch.no_grad():
        ranked = model(x).argsort(dim=1, descending=True).tolist()
    refs = confusers.sample_references(x, target)
    # The highest-scoring class other than the target (top-2 when the target is the prediction).
    expected = [next(k for k in ranked[i] if k != target[i]) for i in range(6)]
    assert [lookup[tuple(r[0].tolist())] for r in refs] == expected


def test_confusers_never_take_the_target_class():
    model, x = smooth_net(), data(6)
    pool_x, pool_y = pool()
    lookup = {tuple(row.tolist()): int(y) for row, y in zip(pool_x, pool_y, strict=True)}
    with torch.no_grad():
        ranked = model(x).argsort(dim=1, descending=True)
    second = ranked[:, 1]  # explain the runner-up: the prediction is then the one confuser of 3 classes left
    refs = IG2(model, references="confusers", reference_pool=(pool_x, pool_y), n_references=2).sample_references(
        x, second
    )
    for i in range(6):
        labels = {lookup[tuple(r.tolist())] for r in refs[i]}
        assert int(second[i]) not in labels
        assert labels <= {int(ranked[i, 0]), int(ranked[i, 2])}


def test_given_references_are_split_with_the_batch():
    model, x = smooth_net(), data(5)
    refs = torch.stack([pool()[0][i * 4 : i * 4 + 2] for i in range(5)])  # (N=5, B=2, D)
    whole = IG2(model, steps=12, eta=0.05).attribute(x, references=refs, return_baseline=True)
    for size in (1, 3, 4):  # samples per chunk (rows_per_sample is 1): the references must follow them
        chunked = IG2(model, steps=12, eta=0.05, internal_batch_size=size, return_baseline=True)
        A, info = chunked.attribute(x, references=refs)
        torch.testing.assert_close(A, whole[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(info["baseline"], whole[1]["baseline"], rtol=0, atol=1e-12)


def test_tiny_distance_gradient_still_steps_eta():
    # Weights of 1e-12 give a distance gradient of ~1e-24, whose squares underflow in float32; the step must
    # keep length eta and its direction.
    torch.manual_seed(0)
    features = nn.Linear(6, 4, bias=False)  # a bias would swamp 1e-12 features in float32
    with torch.no_grad():
        features.weight.mul_(1e-12)
    model = nn.Sequential(features, nn.Linear(4, 3))
    x = torch.rand(3, 6)
    refs = torch.rand(3, 1, 6)
    _, info = IG2(model, steps=1, eta=0.05).attribute(x, target=0, references=refs, return_baseline=True)
    step = info["baseline"][:, 0] - x
    torch.testing.assert_close(step.norm(dim=1), torch.full((3,), 0.05), rtol=1e-5, atol=0)
    # The direction is -W^T (W x - W r) up to scale, computed here in float64 with the weights scaled back up.
    w = features.weight.double() * 1e12
    u = (x.double() - refs[:, 0].double()) @ w.T @ w
    torch.testing.assert_close(step.double(), -0.05 * u / u.norm(dim=1, keepdim=True), rtol=1e-4, atol=1e-7)


def test_representation_of_a_module_called_with_keywords():
    class KeywordHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Sequential(nn.Linear(6, 8), nn.Tanh()), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(input=self.body(x))

    torch.manual_seed(0)
    model, x = KeywordHead().double(), data(2)
    refs = pool()[0][:4].view(2, 2, 6)
    A = IG2(model, steps=8, eta=0.05).attribute(x, target=1, references=refs)
    plain = nn.Sequential(model.body, model.head)
    torch.testing.assert_close(A, IG2(plain, steps=8, eta=0.05).attribute(x, target=1, references=refs))


def test_feature_outside_representation_gets_zero():
    torch.manual_seed(0)
    model = TwoBranch().double()
    x = data(4, d=4)
    p = (torch.rand(30, 4, dtype=torch.float64), torch.arange(30) % 3)
    A = IG2(model, steps=25, eta=0.05, reference_pool=p, n_references=2, layer="features").attribute(x)
    assert torch.all(A[:, 3] == 0)
    assert A[:, :3].abs().sum() > 0


def test_vanishing_distance_gradient_gives_no_nan():
    model, x = smooth_net(), data(2)
    A = IG2(model, steps=10, eta=0.05).attribute(x, references=x[:, None])  # reference = the input itself
    assert torch.isfinite(A).all() and torch.all(A == 0)


def test_resnet18_fc_hook_and_layer_output():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=5).eval()
    x = torch.rand(2, 3, 32, 32)
    p = (torch.rand(6, 3, 32, 32), torch.arange(6) % 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def layer4_by_hand(z):
        z = model.maxpool(model.relu(model.bn1(model.conv1(z))))
        return model.layer4(model.layer3(model.layer2(model.layer1(z))))

    def spy(module, io):
        """Record (input, representation, logits) of every forward of the model; the representation is `module`'s."""
        seen, rep = [], []

        def record_rep(m, args, output):
            rep.append((args[0] if io == "input" else output).detach().flatten(1).clone())

        def record(m, args, output):
            seen.append((args[0].detach().clone(), rep.pop(), output.detach().clone()))

        module.register_forward_hook(record_rep)
        model.register_forward_hook(record)
        return seen

    default = get_method("ig2", model, steps=3, n_references=2, reference_pool=p, input_bounds=(0.0, 1.0))
    assert default.module is model.fc and default.layer_io == "input"
    seen = spy(model.fc, "input")
    A = default.attribute(x)
    assert A.shape == x.shape and torch.isfinite(A).all() and A.abs().sum() > 0
    assert len(seen) == 1 + 1 + 3  # the clean inputs (the target), the references, then one per path step
    with torch.no_grad():
        for z, rep, logits in seen:  # the fc input: pooled, flattened layer4 features, which fc maps to the logits
            torch.testing.assert_close(rep, torch.flatten(model.avgpool(layer4_by_hand(z)), 1))
            torch.testing.assert_close(logits, model.fc(rep))
    for module in model.modules():
        module._forward_hooks.clear()
    on_layer4 = IG2(model, steps=3, n_references=2, reference_pool=p, layer="layer4", layer_io="output")
    seen = spy(model.layer4, "output")
    B = on_layer4.attribute(x)
    assert B.shape == x.shape and not torch.allclose(A, B)
    with torch.no_grad():
        for z, rep, _ in seen:
            torch.testing.assert_close(rep, layer4_by_hand(z).flatten(1))
    for module in model.modules():
        module._forward_hooks.clear()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_default_eta_scales_with_size_and_range():
    from lit_attr.methods.ig2 import default_eta

    assert default_eta(torch.zeros(1, 3, 224, 224), (0.0, 1.0)) == pytest.approx(0.7521, abs=1e-4)
    assert default_eta(torch.zeros(1, 3, 112, 112), (0.0, 255.0)) == pytest.approx(0.7521 / 2 * 255, rel=1e-4)


def test_errors():
    model, x = smooth_net(), data(2)
    with pytest.raises(ValueError, match=r"`layer` '4x' is not a module of the model\. Close names: 4"):
        IG2(model, layer="4x")
    with pytest.raises(ValueError, match=r"`eta` must be a positive number, got 0"):
        IG2(model, eta=0)
    with pytest.raises(ValueError, match=r"`steps` must be a positive number"):
        IG2(model, steps=-1)
    with pytest.raises(ValueError, match=r"no sample of a class other than 0"):
        IG2(model, reference_pool=(x, torch.zeros(2, dtype=torch.long))).attribute(x, target=0)
    with pytest.raises(ValueError, match=r"`references` must be a tensor \(2, B, 6\), got \(2, 6\)"):
        IG2(model).attribute(x, references=x)
    with pytest.raises(ValueError, match=r"`references` must be a tensor \(2, B, 6\), got \(4, 2, 6\)"):
        IG2(model, internal_batch_size=2).attribute(x, references=torch.rand(4, 2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"B >= 1 references per sample, got \(2, 0, 6\)"):
        IG2(model).attribute(x, references=x[:, :0, None].expand(2, 0, 6))
    with pytest.raises(TypeError, match=r"pass a tensor of references \(N, B, \.\.\.\) per call"):
        IG2(model, references=x[:, None])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"`eta` must be a positive number, got (nan|inf)"):
            IG2(model, eta=bad)
    with pytest.raises(ValueError, match=r"`layer` 'zzz' is not a module of the model\. Its modules are: 0, 1, 2, 3"):
        IG2(model, layer="zzz")
    method = IG2(model)
    with pytest.raises(ValueError, match=r"`reference_pool` must be a pair"):
        method.reference_pool = (x, torch.zeros(3))
    method.reference_pool = (x, torch.tensor([0.0, 1.0]))
    assert method.reference_pool[1].dtype == torch.long
    with pytest.raises(ValueError, match=r"draws from `reference_pool`"):
        IG2(model).attribute(x)
    with pytest.raises(ValueError, match=r"`reference_pool` must be a pair"):
        IG2(model, reference_pool=x)
