import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lit_attr.functional.insertion_deletion import insertion_deletion
from lit_attr.functional.perturbation import (
    auc,
    blur,
    iter_perturbed_batches,
    make_substrate,
    perturbation_schedule,
    rank_map,
    rise_blur_kernel,
)
from lit_attr.functional.protocol import PRESETS, resolve_protocol

TAPS_HALF = [
    0.08795814577727815,
    0.08889611977709484,
    0.09047419654910865,
    0.09219111781938806,
    0.09348938844291409,
    0.09398206326843249,
]
TAPS = TAPS_HALF + TAPS_HALF[-2::-1]


# ----------------------------------------------------------------------------------------------------- helpers
def tiny_cnn(num_classes: int = 4, seed: int = 0) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, num_classes),
    ).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.7)
    return net.eval()


def linear_model(weights: torch.Tensor, bias: float) -> nn.Module:
    """Logit 0 = <w, x> + bias, logit 1 = 0."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(weights.numel(), 2)).double()
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.zero_()
        net[1].weight[0] = weights.flatten()
        net[1].bias[0] = bias
    return net


def scipy_or_listed_kernel_2d() -> np.ndarray:
    """RISE's gkern(11, 5) for one channel: scipy's gaussian_filter of a delta when scipy is importable."""
    try:
        from scipy.ndimage import gaussian_filter
    except ImportError:
        return np.outer(TAPS, TAPS)
    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    return gaussian_filter(delta, 5)


def rise_blur_reference(img: np.ndarray) -> np.ndarray:
    """Full 11x11 per-channel convolution with zero padding 5, as RISE's blur lambda does."""
    channels = img.shape[0]
    kernel = np.zeros((channels, channels, 11, 11))
    for c in range(channels):
        kernel[c, c] = scipy_or_listed_kernel_2d()
    out = F.conv2d(torch.from_numpy(img[None]), torch.from_numpy(kernel), padding=5)
    return out[0].numpy()


def naive_game(model, img, saliency, substrate, mode, step, target, output="prob"):
    """One image, one step at a time, with flat numpy indexing into the image (RISE's evaluation.py style)."""
    channels, height, width = img.shape
    hw = height * width
    n_steps = (hw + step - 1) // step
    # A stable descending order: ties keep raster order (the documented rule).
    order = np.argsort(-saliency.reshape(-1), kind="stable")
    start, finish = (img.copy(), substrate.copy()) if mode == "del" else (substrate.copy(), img.copy())
    scores = np.empty(n_steps + 1)
    for i in range(n_steps + 1):
        with torch.no_grad():
            logits = model(torch.from_numpy(start[None].copy()))[0]
        scores[i] = float(logits[target] if output == "logit" else torch.softmax(logits, 0)[target])
        coords = order[step * i : step * (i + 1)]
        start.reshape(channels, hw)[:, coords] = finish.reshape(channels, hw)[:, coords]
    area = sum((scores[i] + scores[i + 1]) / 2 for i in range(n_steps)) / n_steps
    return scores, area


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 12, 12, generator=generator, dtype=torch.float64)
    a = torch.randn(3, 3, 12, 12, generator=generator, dtype=torch.float64)
    # Sample 2 has plateaus, so the tie rule matters for it.
    a[2] = torch.round(a[2] * 1.5) / 1.5
    return x, a


# --------------------------------------------------------------------------------- (1) naive RISE-style reference
@pytest.mark.parametrize(
    ("insertion_substrate", "deletion_substrate", "step"),
    [("blur", "zero", 10), ("zero", "blur", 7), ("blur", "blur", 144)],
)
def test_matches_naive_per_image_per_step_reference(batch, insertion_substrate, deletion_substrate, step):
    x, a = batch
    model = tiny_cnn()
    result = insertion_deletion(
        model,
        x,
        a,
        pixels_per_step=step,
        insertion_substrate=insertion_substrate,
        deletion_substrate=deletion_substrate,
    )
    targets = model(x).argmax(1)
    for i in range(x.shape[0]):
        img, sal = x[i].numpy(), a[i].sum(0).numpy()
        substrates = {"zero": np.zeros_like(img), "blur": rise_blur_reference(img)}
        for mode, name, curve, area in (
            ("ins", insertion_substrate, result.insertion_curve[i], result.insertion_auc[i]),
            ("del", deletion_substrate, result.deletion_curve[i], result.deletion_auc[i]),
        ):
            scores, expected_auc = naive_game(model, img, sal, substrates[name], mode, step, int(targets[i]))
            np.testing.assert_allclose(curve.numpy(), scores, rtol=0, atol=1e-6)
            assert abs(float(area) - expected_auc) < 1e-6
    assert torch.equal(result.target, targets)


def test_matches_naive_reference_with_default_schedule_and_logits(batch):
    x, a = batch
    model = tiny_cnn(seed=3)
    result = insertion_deletion(model, x, a[:, 0], target=[0, 1, 2], output="logit")  # (N, H, W) maps
    step = math.ceil(144 / 28)
    assert result.insertion_curve.shape == (3, math.ceil(144 / step) + 1)
    for i in range(3):
        img, sal = x[i].numpy(), a[i, 0].numpy()
        ins, _ = naive_game(model, img, sal, rise_blur_reference(img), "ins", step, i, output="logit")
        dele, _ = naive_game(model, img, sal, np.zeros_like(img), "del", step, i, output="logit")
        np.testing.assert_allclose(result.insertion_curve[i].numpy(), ins, rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.deletion_curve[i].numpy(), dele, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------- (2) blur
def test_blur_kernel_equals_scipy_construction_and_listed_taps():
    taps = rise_blur_kernel()
    assert taps.dtype == torch.float64
    np.testing.assert_allclose(taps.numpy(), TAPS, rtol=0, atol=1e-17)
    assert abs(float(taps.sum()) - 1.0) < 1e-15
    assert torch.equal(taps, taps.flip(0))
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    expected = scipy_ndimage.gaussian_filter(delta, sigma=5)  # reflect mode, as RISE
    np.testing.assert_allclose(torch.outer(taps, taps).numpy(), expected, rtol=0, atol=1e-15)
    assert rise_blur_kernel(torch.float32).dtype == torch.float32


def test_blur_constant_image_and_zero_padding():
    x = torch.full((2, 3, 16, 16), 0.7, dtype=torch.float64)
    out = blur(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out[..., 5:-5, 5:-5], x[..., 5:-5, 5:-5], rtol=0, atol=1e-12)
    # Zero padding: at a corner only the taps 5..10 of both axes see the image.
    corner = 0.7 * sum(TAPS[5:]) ** 2
    torch.testing.assert_close(out[..., 0, 0], torch.full((2, 3), corner, dtype=torch.float64), rtol=0, atol=1e-12)
    edge = 0.7 * sum(TAPS[5:])  # middle of the top row: full horizontal support, half vertical
    assert abs(float(out[0, 0, 0, 8]) - edge) < 1e-12


def test_blur_equals_full_2d_convolution_per_channel():
    x = torch.rand(2, 3, 13, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = np.stack([rise_blur_reference(img) for img in x.numpy()])
    np.testing.assert_allclose(blur(x).numpy(), expected, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------- (3) ties
def test_ties_follow_raster_order():
    ranks = rank_map(torch.zeros(2, 3, 4, 5))
    assert torch.equal(ranks, torch.arange(20).view(4, 5).expand(2, 4, 5))
    ranks = rank_map(torch.tensor([[[1.0, 2.0, 1.0], [2.0, 1.0, 0.0]]]))
    assert ranks.tolist() == [[[2, 0, 3], [1, 4, 5]]]


def test_all_equal_map_deletes_pixels_in_raster_order():
    weights = torch.arange(1.0, 17.0, dtype=torch.float64).view(1, 4, 4)
    model = linear_model(weights, bias=0.0)
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    result = insertion_deletion(
        model, x, torch.zeros(1, 4, 4), target=0, pixels_per_step=1, deletion_substrate="zero", output="logit"
    )
    expected = [float(weights.flatten()[t:].sum()) for t in range(17)]
    assert result.deletion_curve[0].tolist() == expected


# ---------------------------------------------------------------------------------------- (4) closed form
def test_linear_model_closed_form_single_channel():
    w = torch.tensor([[[3.0, -1.0], [2.0, 0.5]]], dtype=torch.float64)
    model, x = linear_model(w, bias=1.0), torch.ones(1, 1, 2, 2, dtype=torch.float64)
    result = insertion_deletion(
        model, x, w * x, target=0, pixels_per_step=1, insertion_substrate="zero", output="logit"
    )
    # Units in order 3, 2, 0.5, -1; f(x) = 5.5, f(0) = 1.
    assert result.deletion_curve.tolist() == [[5.5, 2.5, 0.5, 0.0, 1.0]]
    assert result.insertion_curve.tolist() == [[1.0, 4.0, 6.0, 6.5, 5.5]]
    assert result.deletion_auc.tolist() == [1.5625]
    assert result.insertion_auc.tolist() == [4.9375]


def test_linear_model_closed_form_channel_sum_and_per_element_units():
    w = torch.tensor([[[1.0, 2.0], [0.0, -1.0]], [[0.5, -3.0], [1.0, 1.0]]], dtype=torch.float64)
    model, x = linear_model(w, bias=0.0), torch.ones(1, 2, 2, 2, dtype=torch.float64)
    kwargs = {"target": 0, "insertion_substrate": "zero", "output": "logit"}
    # Pixel sums 1.5, -1, 1, 0: pixels deleted two at a time in the order p0, p2 | p3, p1.
    pixels = insertion_deletion(model, x, w * x, pixels_per_step=2, reduce="sum", **kwargs)
    assert pixels.deletion_curve.tolist() == [[1.5, -1.0, 0.0]]
    assert pixels.insertion_curve.tolist() == [[0.0, 2.5, 1.5]]
    assert pixels.deletion_auc.tolist() == [-0.125]
    assert pixels.insertion_auc.tolist() == [1.625]
    # Elements 2 | 1, 1, 1 (ties in channel-major raster order) | 0.5 | 0 | -1 | -3, three per step.
    elements = insertion_deletion(model, x, w * x, pixels_per_step=3, reduce="none", **kwargs)
    assert elements.deletion_curve.tolist() == [[1.5, -2.5, -4.0, 0.0]]
    assert elements.insertion_curve.tolist() == [[0.0, 4.0, 5.5, 1.5]]
    torch.testing.assert_close(elements.deletion_auc, torch.tensor([-5.75 / 3], dtype=torch.float64))
    torch.testing.assert_close(elements.insertion_auc, torch.tensor([10.25 / 3], dtype=torch.float64))


def test_abs_sum_ranks_by_magnitude():
    a = torch.tensor([[[[-3.0, 1.0]], [[0.0, 1.5]]]])  # (1, 2, 1, 2): sums -3, 2.5; abs sums 3, 2.5
    assert rank_map(a, "sum").tolist() == [[[1, 0]]]
    assert rank_map(a, "abs_sum").tolist() == [[[0, 1]]]
    assert rank_map(a, "none").tolist() == [[[[3, 1]], [[2, 0]]]]


# -------------------------------------------------------------------------------------------- (5) chunking
@pytest.mark.parametrize("internal_batch_size", [1, 5, 16, 1000])
def test_chunking_gives_identical_results(batch, internal_batch_size):
    x, a = batch
    model = tiny_cnn()
    whole = insertion_deletion(model, x, a, n_steps=15, internal_batch_size=None)
    chunked = insertion_deletion(model, x, a, n_steps=15, internal_batch_size=internal_batch_size)
    for got, expected in zip(chunked, whole, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_default_runs_at_most_128_rows_per_forward(batch):
    x, a = batch
    x, a = x.repeat(4, 1, 1, 1), a.repeat(4, 1, 1, 1)  # 12 samples x 16 points = 192 rows per game
    model = tiny_cnn()
    rows: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    default = insertion_deletion(model, x, a, n_steps=15)
    # 12 clean rows, then per game 192 rows as 128 + 64.
    assert rows == [12, 128, 64, 128, 64]
    rows.clear()
    whole = insertion_deletion(model, x, a, n_steps=15, internal_batch_size=None)
    assert rows == [12, 192, 192]
    for got, expected in zip(default, whole, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_sample_results_do_not_depend_on_the_batch(batch):
    x, a = batch
    model = tiny_cnn()
    kwargs = {"n_steps": 9, "insertion_substrate": "noise", "deletion_substrate": "mean", "seed": 4}
    together = insertion_deletion(model, x, a, **kwargs)
    alone = insertion_deletion(model, x[1:2], a[1:2], **kwargs)
    torch.testing.assert_close(alone.insertion_curve[0], together.insertion_curve[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(alone.deletion_curve[0], together.deletion_curve[1], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------- schedule, auc, substrates
def test_perturbation_schedule():
    assert perturbation_schedule(10, pixels_per_step=4).tolist() == [0, 4, 8, 10]
    schedule = perturbation_schedule(224 * 224)
    assert schedule.numel() == 29 and int(schedule[1]) == 1792 and int(schedule[-1]) == 224 * 224
    assert perturbation_schedule(32 * 32).numel() == 29
    assert perturbation_schedule(16 * 16).numel() == 27  # ceil(256 / ceil(256 / 28)) = 26 steps
    assert perturbation_schedule(8 * 8).numel() == 23
    assert perturbation_schedule(5, n_steps=28).tolist() == [0, 1, 2, 3, 4, 5]


def test_auc_is_the_normalised_trapezoid():
    curve = torch.tensor([[0.9, 0.4, 0.3, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    expected = [sum((c[i] + c[i + 1]) / 2 for i in range(3)) / 3 for c in curve.tolist()]
    torch.testing.assert_close(auc(curve), torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2 points"):
        auc(torch.ones(1))


def test_substrates():
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(make_substrate("zero", x), torch.zeros_like(x))
    mean = make_substrate("mean", x)
    torch.testing.assert_close(mean[1, 2], torch.full((4, 4), float(x[1, 2].mean()), dtype=torch.float64))
    constant = make_substrate("constant", x, substrate_value=[0.1, 0.2, 0.3])
    assert constant[1, :, 3, 3].tolist() == [0.1, 0.2, 0.3]
    assert torch.equal(make_substrate(lambda t: t.flip(-1), x), x.flip(-1))
    assert torch.equal(make_substrate("blur", x), blur(x))


def test_noise_substrate_is_seeded_and_leaves_the_global_rng_alone():
    x = torch.zeros(2, 3, 6, 6)
    before = torch.get_rng_state()
    first, again, other = (make_substrate("noise", x, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first[0], first[1])  # one draw shared by the samples: batch-independent results
    assert abs(float(first.mean())) < 0.5 and 0.5 < float(first.std()) < 1.5


def test_end_points_are_the_clean_input_and_the_substrate(batch):
    x, a = batch
    model = tiny_cnn()
    result = insertion_deletion(
        model, x, a, n_steps=5, deletion_substrate="constant", insertion_substrate="mean", substrate_value=0.3
    )
    probs = lambda t: model(t).softmax(1).gather(1, result.target[:, None]).squeeze(1)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(result.deletion_curve[:, 0], probs(x))
        torch.testing.assert_close(result.insertion_curve[:, -1], probs(x))
        torch.testing.assert_close(result.deletion_curve[:, -1], probs(torch.full_like(x, 0.3)))
        torch.testing.assert_close(result.insertion_curve[:, 0], probs(make_substrate("mean", x)))


def test_outputs_and_targets(batch):
    x, a = batch
    model = tiny_cnn()
    prob = insertion_deletion(model, x, a, n_steps=6)
    assert torch.equal(prob.target, model(x).argmax(1))
    ratio = insertion_deletion(model, x, a, n_steps=6, output="prob_ratio")
    clean = prob.deletion_curve[:, :1]
    torch.testing.assert_close(ratio.deletion_curve, prob.deletion_curve / clean)
    torch.testing.assert_close(ratio.insertion_curve, prob.insertion_curve / clean)
    logit = insertion_deletion(model, x, a, target=torch.tensor([3, 0, 1]), n_steps=6, output="logit")
    assert logit.target.tolist() == [3, 0, 1]
    assert insertion_deletion(model, x, a, target=2, n_steps=6).target.tolist() == [2, 2, 2]


def test_presets_fill_defaults_and_explicit_options_win(batch):
    x, a = batch
    model = tiny_cnn()
    assert resolve_protocol().insertion_substrate == "blur" and resolve_protocol().n_steps == 28
    assert set(PRESETS) == {"rise", "mfaba", "fei"}
    default = insertion_deletion(model, x, a)
    for got, expected in zip(insertion_deletion(model, x, a, preset="fei"), default, strict=True):
        assert torch.equal(got, expected)
    mfaba = insertion_deletion(model, x, a, preset="mfaba")
    with torch.no_grad():
        zero_score = model(torch.zeros_like(x)).softmax(1).gather(1, mfaba.target[:, None]).squeeze(1)
    torch.testing.assert_close(mfaba.insertion_curve[:, 0], zero_score)
    overridden = insertion_deletion(model, x, a, preset="mfaba", insertion_substrate="blur")
    assert torch.equal(overridden.insertion_curve, default.insertion_curve)
    # An explicit step size replaces the preset's n_steps instead of conflicting with it.
    assert insertion_deletion(model, x, a, preset="rise", pixels_per_step=48).insertion_curve.shape == (3, 4)


def test_iter_perturbed_batches_rows():
    x = torch.arange(1.0, 5.0).view(1, 1, 2, 2).expand(2, 1, 2, 2).contiguous()
    ranks = torch.tensor([[[0, 1], [2, 3]], [[3, 2], [1, 0]]])
    chunks = list(iter_perturbed_batches(x, torch.zeros(1), ranks, torch.tensor([0, 2, 4]), "insertion", 4))
    assert [c[2].shape[0] for c in chunks] == [4, 2]
    samples = torch.cat([c[0] for c in chunks])
    steps = torch.cat([c[1] for c in chunks])
    rows = torch.cat([c[2] for c in chunks]).flatten(1)
    assert samples.tolist() == [0, 0, 0, 1, 1, 1] and steps.tolist() == [0, 1, 2, 0, 1, 2]
    assert rows.tolist() == [[0, 0, 0, 0], [1, 2, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 3, 4], [1, 2, 3, 4]]


# ------------------------------------------------------------------------------------------- model hygiene
def test_model_state_is_restored_and_inference_tensors_work():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).train()
    model[1].running_mean.fill_(0.25)
    buffers = [b.clone() for b in model.buffers()]
    flags = [p.requires_grad for p in model.parameters()]
    with torch.inference_mode():
        x = torch.rand(2, 3, 8, 8)
        a = torch.rand(2, 8, 8)
    rng = torch.get_rng_state()
    first = insertion_deletion(model, x, a, n_steps=4, insertion_substrate="noise")
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(b, saved) for b, saved in zip(model.buffers(), buffers, strict=True))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    # Eval mode: dropout is off, so the result is deterministic.
    assert torch.equal(insertion_deletion(model, x, a, n_steps=4, insertion_substrate="noise")[0], first[0])


# --------------------------------------------------------------------------------------------- (6) errors
def test_errors(batch):
    x, a = batch
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"`attributions` must have the shape of x \(3, 3, 12, 12\)"):
        insertion_deletion(model, x, a[:, :, :8])
    with pytest.raises(TypeError, match="`attributions` must be a torch.Tensor"):
        insertion_deletion(model, x, a.numpy())
    with pytest.raises(ValueError, match=r"`preset` must be one of \('rise', 'mfaba', 'fei'\)"):
        insertion_deletion(model, x, a, preset="lime")
    with pytest.raises(ValueError, match="`insertion_substrate` must be one of .* got 'gray'"):
        insertion_deletion(model, x, a, insertion_substrate="gray")
    with pytest.raises(TypeError, match="`deletion_substrate` must be one of"):
        insertion_deletion(model, x, a, deletion_substrate=0.5)
    with pytest.raises(ValueError, match="`output` must be one of .* got 'softmax'"):
        insertion_deletion(model, x, a, output="softmax")
    with pytest.raises(ValueError, match="`reduce` must be one of .* got 'max'"):
        insertion_deletion(model, x, a, reduce="max")
    with pytest.raises(ValueError, match="at most one of `pixels_per_step` and `n_steps`"):
        insertion_deletion(model, x, a, pixels_per_step=4, n_steps=4)
    with pytest.raises(ValueError, match="`n_steps` must be a positive int"):
        insertion_deletion(model, x, a, n_steps=0)
    with pytest.raises(ValueError, match="`internal_batch_size` must be a positive int"):
        insertion_deletion(model, x, a, internal_batch_size=0)
    with pytest.raises(ValueError, match=r"`target` must have one entry per sample \(N=3\), got 2"):
        insertion_deletion(model, x, a, target=[0, 1])
    with pytest.raises(ValueError, match=r"`target` values must be in \[0, 3\].*got values in \[0, 4\]"):
        insertion_deletion(model, x, a, target=[0, 4, 1])
    with pytest.raises(TypeError, match="`target` must be None, an int, or N integer class indices"):
        insertion_deletion(model, x, a, target=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r'`substrate_value` must be given .* "constant" \(insertion, deletion\)'):
        insertion_deletion(model, x, a, insertion_substrate="constant", deletion_substrate="constant")
    with pytest.raises(ValueError, match=r"`target` must be an int or N=3 class indices, .* got \(1, 3\)"):
        insertion_deletion(model, x, a, target=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"A callable `deletion_substrate` must return a tensor broadcastable"):
        insertion_deletion(model, x, a, deletion_substrate=lambda t: t[:, :1, :2])
    with pytest.raises(ValueError, match=r"`x` must be a non-empty image batch \(N, C, H, W\)"):
        insertion_deletion(model, x[0], a[0])
    with pytest.raises(TypeError, match="`x` must be a floating-point tensor"):
        insertion_deletion(model, x.long(), a)
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        insertion_deletion(lambda t: t, x, a)
    with pytest.raises(ValueError, match=r"`model` must return logits of shape \(N, K\)"):
        insertion_deletion(nn.Identity(), x, a)
    with pytest.raises(ValueError, match="`attributions` contains NaN"):
        insertion_deletion(model, x, torch.full_like(a, float("nan")))
    with pytest.raises(ValueError, match="callable `substrate` must return a tensor broadcastable"):
        make_substrate(lambda t: t[:, :1, :2], x)


def test_bf16_model_scores_in_float32_and_column_targets(batch):
    x, a = batch
    model = tiny_cnn().float()
    reference = insertion_deletion(model, x.float(), a.float(), n_steps=6, target=[0, 1, 2])
    column = torch.tensor([[0], [1], [2]])
    half = insertion_deletion(model.bfloat16(), x.bfloat16(), a.float(), n_steps=6, target=column)
    assert half.insertion_curve.dtype == half.insertion_auc.dtype == torch.float32
    assert torch.equal(half.target, torch.tensor([0, 1, 2]))
    # bf16 activations keep ~3 significant digits; the AUCs stay within that of the float32 model.
    torch.testing.assert_close(half.insertion_auc, reference.insertion_auc, rtol=0, atol=3e-2)
