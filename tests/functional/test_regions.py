"""Region perturbation, selectivity and IROF against straightforward per-sample loops over patches, closed forms of
a linear model, and the optional SLIC dependency."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from breadth_helpers import linear_model, tiny_cnn
from torch import nn

from lit_attr.functional import irof, region_perturbation, selectivity
from lit_attr.functional.regions import patch_labels
from lit_attr.metrics import RegionPerturbation

PATCH = 4  # 8x8 images: a 2x2 grid of 4x4 patches


def _patches(h: int = 8, w: int = 8):
    """The 4x4 patches of an 8x8 image in raster order, as boolean masks."""
    masks = []
    for top in range(0, h, PATCH):
        for left in range(0, w, PATCH):
            mask = torch.zeros(h, w, dtype=torch.bool)
            mask[top : top + PATCH, left : left + PATCH] = True
            masks.append(mask)
    return masks


def _curve(model, sample, fill, order, target, logit=False):
    """Scores of the target as the patches of ``order`` take ``fill``, one after the other (t = 0 .. len(order))."""
    removed, curve = torch.zeros(sample.shape[1:], dtype=torch.bool), []
    for patch in [None, *order]:
        if patch is not None:
            removed |= patch
        out = model(torch.where(removed, fill, sample)[None])[0]
        curve.append(float(out[target] if logit else out.softmax(dim=0)[target]))
    return curve


def _ordered(maps, statistic, descending=True):
    patches = _patches()
    values = [float(getattr(maps.sum(dim=0)[p], statistic)()) for p in patches]
    order = sorted(range(len(patches)), key=lambda k: -values[k] if descending else values[k])  # stable: ties by index
    return [patches[k] for k in order]


@torch.no_grad()
def test_region_perturbation_selectivity_and_irof_equal_per_sample_loops():
    model = tiny_cnn()
    gen = torch.Generator().manual_seed(0)
    x, a = torch.rand(3, 3, 8, 8, generator=gen), torch.randn(3, 3, 8, 8, generator=gen)
    noise = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(5))[0]  # the "noise" substrate, seed 5
    result = region_perturbation(model, x, a, patch_size=PATCH, regions=3, orders=("morf", "lerf"), seed=5)
    areas = selectivity(model, x, a, patch_size=PATCH)
    iro = irof(model, x, a, patch_size=PATCH)
    for i, (sample, maps) in enumerate(zip(x, a, strict=True)):
        target = int(model(sample[None]).argmax())
        for order, descending in (("morf", True), ("lerf", False)):
            curve = _curve(model, sample, noise, _ordered(maps, "sum", descending)[:3], target)
            torch.testing.assert_close(result[f"{order}_curve"][i], torch.tensor(curve))
            aopc = sum(curve[0] - value for value in curve) / len(curve)
            assert float(result[order][i]) == pytest.approx(aopc, abs=1e-6)
        curve = _curve(model, sample, torch.zeros(()), _ordered(maps, "sum"), target)
        trapezoid = (sum(curve) - (curve[0] + curve[-1]) / 2) / (len(curve) - 1)
        assert float(areas[i]) == pytest.approx(trapezoid, abs=1e-6)
        mean = sample.mean(dim=(1, 2), keepdim=True)  # IROF's substrate: the image's channel means
        curve = _curve(model, sample, mean, _ordered(maps, "mean"), target)
        ratio = [value / curve[0] for value in curve]
        area = (sum(ratio) - (ratio[0] + ratio[-1]) / 2) / (len(ratio) - 1)
        assert float(iro[i]) == pytest.approx(1 - area, abs=1e-6)


def test_linear_model_aopc_is_the_mean_removed_attribution():
    # Logits of a linear model fall by exactly the removed integrated gradients: AOPC_k = mean over k of the
    # summed attributions of the first k blocks (blocks of 3 features in index order, ranked by their sums).
    model, gen = linear_model(9), torch.Generator().manual_seed(1)
    x = torch.rand(4, 9, generator=gen, dtype=torch.float64)
    target = model(x).argmax(dim=1)
    a = x * model.weight[target].detach()
    result = region_perturbation(model, x, a, patch_size=3, substrate="zero", output="logit")
    blocks = a.view(4, 3, 3).sum(dim=2)
    ranked = blocks.sort(dim=1, descending=True).values
    removed = torch.cat([torch.zeros(4, 1, dtype=torch.float64), ranked.cumsum(dim=1)], dim=1)
    torch.testing.assert_close(result["morf"], removed.mean(dim=1))
    # Most relevant first drops at least as much as least relevant first.
    lerf = region_perturbation(model, x, a, patch_size=3, substrate="zero", output="logit", orders="lerf")["lerf"]
    assert bool((result["morf"] >= lerf).all())


def test_patch_labels_and_the_metric_curves_over_uneven_batches():
    assert patch_labels((5,), 2).tolist() == [0, 0, 1, 1, 2]
    model = tiny_cnn()
    gen = torch.Generator().manual_seed(2)
    x, a = torch.rand(5, 3, 8, 8, generator=gen), torch.randn(5, 3, 8, 8, generator=gen)
    metric = RegionPerturbation(model, patch_size=PATCH, regions=10)
    metric.update(x[:2], a[:2])
    metric.update(x[2:], a[2:])
    expected = region_perturbation(model, x, a, patch_size=PATCH, regions=10)
    result = metric.compute()
    torch.testing.assert_close(result["region_perturbation_curve"], expected["morf_curve"].mean(dim=0))  # 4 + 1 points
    torch.testing.assert_close(result["region_perturbation"], expected["morf"].mean())


def test_segmentations_a_callable_and_slic():
    model = nn.Sequential(nn.Flatten(), linear_model(3 * 8 * 8, dtype=torch.float32)).eval()
    gen = torch.Generator().manual_seed(3)
    x, a = torch.rand(2, 3, 8, 8, generator=gen), torch.randn(2, 8, 8, generator=gen)

    def grid(images):  # the default grid as a user's callable, numbered from 10 (relabelled per sample)
        return 10 + patch_labels((8, 8), PATCH).expand(images.shape[0], 8, 8)

    torch.testing.assert_close(irof(model, x, a, segmentation=grid), irof(model, x, a, patch_size=PATCH))
    with pytest.raises(ValueError, match="`segmentation`"):
        irof(model, x, a, segmentation=lambda images: torch.zeros(2, 4, 4, dtype=torch.long))
    if importlib.util.find_spec("skimage") is None:
        with pytest.raises(ImportError, match=r"lit-attr\[segmentation\]"):
            irof(model, x, a, segmentation="slic")
    else:
        assert irof(model, x, a, segmentation="slic").shape == (2,)
    with pytest.raises(ValueError, match="slic"):
        irof(linear_model(6, dtype=torch.float32), torch.rand(2, 6), torch.rand(2, 6), segmentation="slic")


def test_bad_input_names_the_argument():
    model, x, a = tiny_cnn(), torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8)
    with pytest.raises(ValueError, match="`orders`"):
        region_perturbation(model, x, a, orders="middle")
    with pytest.raises(ValueError, match="`regions`"):
        RegionPerturbation(model, regions=0)
    with pytest.raises(ValueError, match="`patch_size`"):
        selectivity(model, x, a, patch_size=0)
    with pytest.raises(ValueError, match="`segmentation`"):
        irof(model, x, a, segmentation="quickshift")
    with pytest.raises(ValueError, match="`attributions`"):
        irof(model, x, torch.randn(2, 4, 4))
