"""MFABA against closed forms, its path-integral identity and per-sample reference loops."""

import pytest
import torch
from torch import nn

from lit_attr.functional import completeness_error
from lit_attr.methods import MFABA, get_method


def smooth_net(seed=0, d=6, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, k)).double()


def data(n=8, d=6, seed=1):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_path(model, x0, c, variant, step_size=0.1, alpha=0.001, eps=0.3, max_steps=50, bounds=None):
    """One sample, plainly: list of path points and the softmax-probability gradients at each."""
    points, grads = [x0.clone()], []
    clip = (lambda z: z.clamp(*bounds)) if bounds else (lambda z: z)
    misclassified = None
    for t in range(max_steps + 1):
        z = points[-1].clone().requires_grad_(True)
        logits = model(z[None])[0]
        s = logits.softmax(0)[c]
        (g,) = torch.autograd.grad(s, z)
        grads.append(g)
        if t == 0:
            misclassified = logits.argmax() != c
        if t == max_steps or (t > 0 and logits.argmax() != c) or (t == 1 and misclassified):
            break
        if variant == "sharp":
            nxt = clip(points[-1] - step_size * g / g.norm())
        else:
            nxt = clip(x0 + (points[-1] - alpha * g.sign() - x0).clamp(-eps, eps))
        points.append(nxt.detach())
    return points, grads


def test_left_and_trapezoid_match_reference_loop():
    model, x = smooth_net(), data()
    for variant in ("sharp", "smooth"):
        for rule in ("left", "trapezoid"):
            method = MFABA(model, variant=variant, rule=rule, step_size=0.05, alpha=0.003, max_steps=200)
            A, info = method.attribute(x, return_info=True)
            target = method.resolve_target(x, None)
            for i in range(len(x)):
                pts, gs = reference_path(model, x[i], int(target[i]), variant, 0.05, 0.003, 0.3, 200)
                if rule == "left":
                    ref = -sum((pts[t + 1] - pts[t]) * gs[t] for t in range(len(pts) - 1))
                else:
                    ref = -sum((pts[t + 1] - pts[t]) * (gs[t] + gs[t + 1]) / 2 for t in range(len(pts) - 1))
                torch.testing.assert_close(A[i], ref, rtol=1e-9, atol=1e-12)
                assert int(info["steps"][i]) == len(pts) - 1


def test_identity_trapezoid_and_left_convergence():
    model, x = smooth_net(), data()
    A, info = MFABA(model, rule="trapezoid", step_size=0.02, max_steps=400).attribute(x, return_info=True)
    assert bool(info["flipped"].all())
    assert completeness_error(A, info["score_drop"]).max() < 1e-2
    errors = []
    for step in (0.2, 0.05, 0.0125):
        A, info = MFABA(model, step_size=step, max_steps=2000).attribute(x, return_info=True)
        errors.append(float(completeness_error(A, info["score_drop"]).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2


def test_linear_two_class_closed_form():
    # logits = W x + b; with the logit score the sharp path is a straight line along -w_c / ||w_c||.
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, -1.0], [-0.5, 0.0, 0.5]]))
        model.bias.copy_(torch.tensor([0.3, -0.2]))
    x = torch.tensor([[0.7, 0.4, 0.1]], dtype=torch.float64)
    step = 0.1
    w_c, w_o = model.weight[0].detach(), model.weight[1].detach()
    margin = float((w_c - w_o) @ x[0] + 0.5)
    per_step = float(step * (w_c - w_o) @ w_c / w_c.norm())
    n_steps = int(margin // per_step) + 1  # first t with margin - t * per_step < 0
    A, info = MFABA(model, score="logit", step_size=step, max_steps=100).attribute(x, target=0, return_info=True)
    assert int(info["steps"][0]) == n_steps and bool(info["flipped"][0])
    torch.testing.assert_close(A[0], n_steps * step * w_c / w_c.norm() * w_c)
    assert float(info["score_drop"][0]) == pytest.approx(n_steps * step * float(w_c.norm()))


def test_recorded_paths_respect_geometry_and_bounds():
    model = smooth_net(k=1)  # one class never flips: the whole max_steps path is walked
    x = data(1) * 0.8 + 0.1
    seen = []

    def forward(z):
        seen.append(z.detach().clone())
        return model(z)

    smooth = MFABA(model, variant="smooth", score="logit", alpha=0.01, eps=0.05, max_steps=30, input_bounds=(0.0, 1.0))
    smooth.forward_fn = forward
    smooth(x)
    path = torch.cat(seen[1:])  # seen[0] is the target-resolving forward
    assert len(path) == 31
    assert (path - x).abs().max() == pytest.approx(0.05)  # the ball is reached and not left
    assert (path - x).abs().max() <= 0.05 + 1e-12
    assert path.min() >= 0 and path.max() <= 1
    seen.clear()
    MFABA(model, variant="sharp", score="logit", step_size=0.03, max_steps=30, forward_fn=forward)(x)
    path = torch.cat(seen[1:])
    lengths = (path[1:] - path[:-1]).norm(dim=1)
    torch.testing.assert_close(lengths, torch.full_like(lengths, 0.03))


def test_misclassified_sample_takes_one_step_and_unflipped_stops_at_max():
    model, x = smooth_net(), data(4)
    method = MFABA(model, step_size=1e-4, max_steps=7)
    pred = method.resolve_target(x, None)
    wrong = (pred + 1) % 3
    _, info = method.attribute(x, target=wrong, return_info=True)
    assert info["steps"].tolist() == [1, 1, 1, 1]
    _, info = method.attribute(x, return_info=True)
    assert info["steps"].tolist() == [7, 7, 7, 7] and not bool(info["flipped"].any())


@pytest.mark.parametrize("compact_below", [0.0, 0.5, 1.0])
def test_batch_independence_with_different_flip_steps(compact_below):
    model, x = smooth_net(), data(8)
    method = MFABA(model, step_size=0.05, max_steps=200, compact_below=compact_below)
    A, info = method.attribute(x, return_info=True)
    assert len(set(info["steps"].tolist())) > 3
    target = method.resolve_target(x, None)
    for i in range(8):
        alone = method.attribute(x[i : i + 1], target=int(target[i]))
        torch.testing.assert_close(alone[0], A[i], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", ["norm", "cos"])
def test_norm_and_cos_against_reference_loop(variant):
    model, x = smooth_net(), data(4)
    method = MFABA(model, variant=variant, step_size=0.05, max_steps=200)
    A = method.attribute(x)
    target = method.resolve_target(x, None)
    for i in range(4):
        pts, gs = reference_path(model, x[i], int(target[i]), "sharp", 0.05, max_steps=200)
        x0, xT = pts[0], pts[-1]
        if variant == "norm":
            tau = [float((p - x0).norm()) for p in pts]
        else:
            d = xT - x0
            tau = [float((p - x0) @ d / (d @ d)) for p in pts]
        top = max(tau)
        tau = [t / top for t in tau]
        integral = sum((tau[k + 1] - tau[k]) * (gs[k] + gs[k + 1]) / 2 for k in range(len(pts) - 1))
        torch.testing.assert_close(A[i], (x0 - xT) * integral, rtol=1e-9, atol=1e-12)


def test_images_per_channel_bounds_and_registry():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    low = torch.zeros(3, 1, 1, dtype=torch.float64)
    high = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64).view(3, 1, 1)
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * high
    x[:, 1] = 0.45 + x[:, 1] / 10  # just under its bound 0.5: the path runs into it
    with torch.no_grad():
        model[3].bias[0] += 0.3  # a margin for class 0: paths of several steps before the flip
    seen = []

    def forward(z):
        seen.append(z.detach().clone())
        return model(z)

    method = get_method("mfaba", model, input_bounds=(low, high), max_steps=20, step_size=0.2, forward_fn=forward)
    A, info = method.attribute(x, return_info=True)
    assert A.shape == x.shape and info["steps"].shape == (2,)
    assert int(info["steps"].min()) > 3 and bool(info["flipped"].all())
    path = torch.cat(seen[1:])  # seen[0] resolves the target
    # Every point lies inside its own channel's bounds, and the bounds bind: channel 1 is held at 0.5 where the
    # step pushes it up, while channels 0 and 2 go above 0.5 (a common bound min(high) would forbid that).
    assert bool((path >= low).all()) and bool((path <= high).all())
    assert int((path[:, 1] == 0.5).sum()) > int((x[:, 1] == 0.5).sum())
    assert bool((path[:, [0, 2]] > 0.5).any())
    # The attributions are those of a plain loop that clips each channel to its own bounds.
    target = method.resolve_target(x, None)
    for i in range(2):
        pts, gs = reference_path(model, x[i], int(target[i]), "sharp", 0.2, max_steps=20, bounds=(low, high))
        torch.testing.assert_close(A[i], -sum((pts[t + 1] - pts[t]) * gs[t] for t in range(len(pts) - 1)))
        assert int(info["steps"][i]) == len(pts) - 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "fast"}, r"`variant` must be one of \('sharp', 'smooth', 'norm', 'cos'\), got 'fast'"),
        ({"rule": "mid"}, r"`rule` must be one of \('left', 'trapezoid'\)"),
        ({"score": "p"}, r"`score` must be one of \('prob', 'logit', 'logprob'\)"),
        ({"step_size": 0}, r"`step_size` must be a positive number, got 0"),
        ({"alpha": -1.0}, r"`alpha` must be a positive number"),
        ({"max_steps": 2.5}, r"`max_steps` must be a positive int"),
        ({"variant": "cos", "rule": "trapezoid"}, r"`rule` applies to the sharp and smooth variants"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MFABA(smooth_net(), **kwargs)


def test_bounds_must_contain_input():
    with pytest.raises(ValueError, match="outside `input_bounds`"):
        MFABA(smooth_net(), input_bounds=(0.0, 0.5)).attribute(data(2) + 1)
