"""ROAD's noisy linear imputation against SciPy's direct sparse solve, and ROAD against a naive per-image loop."""

import math

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import nn

from lit_attr._hygiene import row_seed
from lit_attr.functional.road import noisy_linear_imputation, road


# ----------------------------------------------------------------------------------------------------- reference
def direct_imputation(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """ROAD's system for one (C, H, W) image, built entry by entry and solved with spsolve.

    Row of removed pixel i: (sum of the weights of its in-image neighbours) * u_i - sum over removed neighbours
    w_ij u_j = sum over kept neighbours w_ij x_j, with w = 1/6 (edge) and 1/12 (diagonal).
    """
    channels, height, width = image.shape
    removed = [(h, w) for h in range(height) for w in range(width) if not keep[h, w]]
    index = {pixel: k for k, pixel in enumerate(removed)}
    rows, cols, vals = [], [], []
    rhs = np.zeros((len(removed), channels))
    for k, (h, w) in enumerate(removed):
        diagonal = 0.0
        for dh in (-1, 0, 1):
            for dw in (-1, 0, 1):
                hh, ww = h + dh, w + dw
                if (dh, dw) == (0, 0) or not (0 <= hh < height and 0 <= ww < width):
                    continue
                weight = 1 / 6 if dh == 0 or dw == 0 else 1 / 12
                diagonal += weight
                if keep[hh, ww]:
                    rhs[k] += weight * image[:, hh, ww]
                else:
                    rows.append(k), cols.append(index[(hh, ww)]), vals.append(-weight)
        rows.append(k), cols.append(k), vals.append(diagonal)
    matrix = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(len(removed), len(removed)))
    solution = scipy.sparse.linalg.spsolve(matrix, rhs).reshape(len(removed), channels)
    out = image.astype(np.float64).copy()
    for k, (h, w) in enumerate(removed):
        out[:, h, w] = solution[k]
    return out


def random_masks(n, height, width, fraction, generator, blob=False):
    if blob:  # one disc-shaped hole around a random centre: the slowest case for an iterative solver
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        centres = torch.rand(n, 2, generator=generator) * torch.tensor([height, width])
        score = -((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2).double()
    else:
        score = torch.rand(n, height, width, generator=generator, dtype=torch.float64)
    count = int(fraction * height * width)
    order = score.flatten(1).argsort(dim=1, descending=True)
    removed = torch.zeros(n, height * width, dtype=torch.bool)
    removed.scatter_(1, order[:, :count], True)
    return ~removed.view(n, height, width)


# ------------------------------------------------------------------------------------------------- imputation
@pytest.mark.parametrize(
    ("size", "fraction", "blob"), [((9, 13), 0.3, False), ((16, 16), 0.9, False), ((24, 20), 0.85, True)]
)
def test_imputation_equals_the_direct_sparse_solve(size, fraction, blob):
    generator = torch.Generator().manual_seed(sum(size))
    x = torch.rand(3, 3, *size, generator=generator)
    keep = random_masks(3, *size, fraction, generator, blob)
    out = noisy_linear_imputation(x, keep, noise=0.0)
    expected = np.stack([direct_imputation(x[i].double().numpy(), keep[i].numpy()) for i in range(3)])
    assert out.dtype == x.dtype
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-4, rtol=0)
    # Kept pixels are returned exactly.
    assert torch.equal(out.permute(0, 2, 3, 1)[keep], x.permute(0, 2, 3, 1)[keep])


def test_imputation_noise_is_the_documented_draw_on_removed_pixels_only():
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 2, 6, 7, generator=generator, dtype=torch.float64)
    keep = random_masks(2, 6, 7, 0.5, generator)
    clean = noisy_linear_imputation(x, keep, noise=0.0)
    noisy = noisy_linear_imputation(x, keep, noise=0.01, seed=5)
    for i in range(2):
        draw = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(row_seed(5, x[i])), dtype=torch.float64)
        torch.testing.assert_close(noisy[i], clean[i] + 0.01 * draw * ~keep[i], rtol=0, atol=1e-12)
    # A sample's noise does not depend on its batch.
    torch.testing.assert_close(noisy_linear_imputation(x[1:], keep[1:], noise=0.01, seed=5), noisy[1:])


def test_imputation_refuses_bad_input():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="at least one pixel"):
        noisy_linear_imputation(x, torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        noisy_linear_imputation(x, torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        noisy_linear_imputation(x, torch.ones(1, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_imputation(x, torch.ones(1, 4, 4, dtype=torch.bool), noise=-1.0)


# ------------------------------------------------------------------------------------------------------- ROAD
def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(54, 5)
    ).double().eval()  # fmt: skip


def naive_road(model, x, attributions, percentiles):
    """One image and one percentile at a time, imputing with the direct solve; target = clean prediction."""
    morf, lerf = torch.zeros(len(x), len(percentiles)), torch.zeros(len(x), len(percentiles))
    for i in range(len(x)):
        with torch.no_grad():
            target = int(model(x[i : i + 1]).argmax())
        heat = attributions[i].sum(dim=0).flatten()
        order = sorted(range(heat.numel()), key=lambda k: (-float(heat[k]), k))  # descending, ties in raster order
        for j, p in enumerate(percentiles):
            count = math.floor(p * heat.numel() / 100)
            for curve, removed in ((morf, order[:count]), (lerf, order[heat.numel() - count :])):
                keep = np.ones(heat.numel(), dtype=bool)
                keep[removed] = False
                image = direct_imputation(x[i].numpy(), keep.reshape(x.shape[2:]))
                with torch.no_grad():
                    curve[i, j] = model(torch.from_numpy(image)[None]).softmax(dim=1)[0, target]
    return morf, lerf


def test_road_equals_a_naive_loop_over_images_with_the_direct_solve():
    model = small_cnn()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 10, 10, generator=generator, dtype=torch.float64)
    attributions = torch.randn(3, 3, 10, 10, generator=generator, dtype=torch.float64)
    attributions[0, :, :4, :] = 0.0  # a plateau: ties go in raster order
    percentiles = (10, 35, 60, 90)
    # A small internal batch size splits samples across chunks.
    result = road(model, x, attributions, percentiles=percentiles, noise=0.0, internal_batch_size=5)
    morf, lerf = naive_road(model, x, attributions, percentiles)
    torch.testing.assert_close(result.morf_curve.float(), morf, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.lerf_curve.float(), lerf, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.road.float(), (lerf.mean(dim=1) - morf.mean(dim=1)) / 2, atol=1e-5, rtol=0)


def test_road_noise_depends_on_the_sample_only():
    model = small_cnn()
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 8, 8, generator=generator, dtype=torch.float64)
    attributions = torch.randn(3, 8, 8, generator=generator, dtype=torch.float64)
    together = road(model, x, attributions, percentiles=(20, 70), internal_batch_size=3)
    alone = road(model, x[2:], attributions[2:], percentiles=(20, 70))
    torch.testing.assert_close(alone.morf_curve, together.morf_curve[2:])
    torch.testing.assert_close(alone.lerf_curve, together.lerf_curve[2:])
    # The noise does change the scores (it is not silently off).
    noiseless = road(model, x, attributions, percentiles=(20, 70), noise=0.0)
    assert not torch.allclose(noiseless.morf_curve, together.morf_curve, atol=1e-9, rtol=0)


def test_road_refuses_bad_percentiles():
    model = small_cnn()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    for bad in ((0, 50), (50, 100), (), (10, 10), "10"):
        with pytest.raises(ValueError, match="percentiles"):
            road(model, x, torch.rand(1, 8, 8), percentiles=bad)
    with pytest.raises(ValueError, match="reduce"):
        road(model, x, torch.rand(1, 8, 8), reduce="none")
