"""lit_attr.viz: heatmap scaling, image preparation, and figures that leave pyplot alone."""

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib import colormaps

from lit_attr import viz
from lit_attr.report import curve_figures


def test_heatmaps_sum_channels():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    torch.testing.assert_close(viz.heatmaps(a), a[:, 0] + a[:, 1] + a[:, 2])
    torch.testing.assert_close(viz.heatmaps(a[:, 0]), a[:, 0])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(N, H, W\)"):
        viz.heatmaps(torch.zeros(2, 3))


def test_normalize_heatmaps_per_sample_against_hand_computed_values():
    maps = torch.tensor([[[-4.0, 2.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    signed = viz.normalize_heatmaps(maps, signed=True, percentile=100)
    np.testing.assert_allclose(signed[0], [[-1.0, 0.5], [0.25, 0.0]])
    np.testing.assert_array_equal(signed[1], np.zeros((2, 2)))  # an all-zero map stays zero, no NaN
    np.testing.assert_allclose(viz.normalize_heatmaps(maps, signed=False, percentile=100)[0], [[1, 0.5], [0.25, 0]])
    # Robust scale: one huge pixel is clipped instead of washing out the others.
    spike = torch.ones(1, 10, 10)
    spike[0, 0, 0] = 1000.0
    scaled = viz.normalize_heatmaps(spike, signed=False, percentile=90)
    assert scaled[0, 0, 0] == 1.0 and scaled[0, 5, 5] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="percentile"):
        viz.normalize_heatmaps(maps, signed=True, percentile=0)


def test_to_display_images():
    inside = torch.rand(2, 3, 4, 4)
    np.testing.assert_allclose(viz.to_display_images(inside), inside.permute(0, 2, 3, 1).numpy())
    normalised = torch.linspace(-2, 3, 16).view(1, 1, 4, 4)
    shown = viz.to_display_images(normalised)
    assert shown.shape == (1, 4, 4, 3)
    assert shown.min() == 0.0 and shown.max() == 1.0
    np.testing.assert_allclose(shown[..., 0], shown[..., 2])  # one channel -> grey


def _pixel_colours(fig):
    return viz.figure_to_array(fig).reshape(-1, 3).astype(int)


def test_attribution_grid_layout_captions_and_colour_maps():
    import matplotlib.pyplot as plt

    figures_before = plt.get_fignums()
    images = torch.full((3, 3, 8, 8), 0.5)
    signed = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fig = viz.attribution_grid(images, signed, captions=["a", "b", "c"], titles=["1", "2", "3"], title="T")
    axes = fig.axes
    assert len(axes) == 2 * 3 + 1  # inputs, overlays, colour bar
    assert [ax.get_xlabel() for ax in axes[3:6]] == ["a", "b", "c"]
    assert [ax.get_title() for ax in axes[:3]] == ["1", "2", "3"]
    colourbar = axes[-1]
    assert colourbar.get_ylim() == pytest.approx((-1.0, 1.0))
    overlay = axes[3].images[-1]
    assert overlay.get_cmap().name == viz.DIVERGING_CMAP
    positive = viz.attribution_grid(images, signed.abs())
    assert positive.axes[3].images[-1].get_cmap().name == viz.SEQUENTIAL_CMAP
    assert positive.axes[-1].get_ylim() == pytest.approx((0.0, 1.0))
    # Rendering: a real RGB image, and pyplot never learnt about these figures.
    array = viz.figure_to_array(fig)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    assert plt.get_fignums() == figures_before


def test_signed_map_uses_both_ends_of_the_diverging_map():
    images = torch.zeros(1, 3, 8, 8)
    maps = torch.zeros(1, 8, 8)
    maps[0, :, :4], maps[0, :, 4:] = -1.0, 1.0
    fig = viz.attribution_grid(images, maps, alpha=1.0)
    colours = _pixel_colours(fig)
    cmap = colormaps[viz.DIVERGING_CMAP]
    low, high = (np.round(np.array(cmap(v)[:3]) * 255).astype(int) for v in (0.0, 1.0))
    assert (np.abs(colours - low).sum(axis=1) <= 6).any()
    assert (np.abs(colours - high).sum(axis=1) <= 6).any()


def test_shape_errors():
    with pytest.raises(ValueError, match="one \\(H, W\\)"):
        viz.attribution_grid(torch.rand(2, 3, 8, 8), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="`captions` must have one entry per image"):
        viz.attribution_grid(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), captions=["x"])
    with pytest.raises(ValueError, match="images"):
        viz.to_display_images(torch.rand(3, 8, 8))


def test_randomization_grid():
    images = torch.rand(2, 3, 8, 8)
    maps = {"original": torch.rand(2, 3, 8, 8), "fc": torch.rand(2, 8, 8), "conv": -torch.rand(2, 8, 8)}
    fig = viz.randomization_grid(images, maps, title="t")
    assert [ax.get_title() for ax in fig.axes[:4]] == ["input", "original", "fc", "conv"]
    assert len(fig.axes) == 2 * 4 + 1
    # Magnitudes: the negative stage is shown like its absolute value.
    np.testing.assert_allclose(fig.axes[3].images[0].get_array(), viz.normalize_heatmaps(maps["conv"].abs(), False)[0])


def test_insertion_deletion_figure_plots_the_curves():
    curve = torch.tensor([1.0, 0.5, 0.25])
    result = {"insertion_curve": curve.flip(0), "deletion_curve": curve, "insertion": 0.4, "deletion": 0.3}
    fig = viz.insertion_deletion_figure({"a": result, "b": result}, title="x")
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    lines = fig.axes[0].get_lines()
    np.testing.assert_allclose(lines[0].get_xdata(), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(lines[0].get_ydata(), curve.flip(0).numpy())
    np.testing.assert_allclose(lines[1].get_ydata(), curve.numpy())
    assert "insertion AUC 0.400" in lines[0].get_label()


def test_similarity_figure_one_panel_per_measure():
    result = {
        "spearman_abs": {"stages": ["original", "fc", "conv"], "curve": torch.tensor([1.0, 0.4, 0.1])},
        "ssim": {"stages": ["original", "fc", "conv"], "curve": torch.tensor([1.0, 0.6, 0.2])},
        "threshold": 0.5,
    }
    fig = viz.similarity_figure({"m": result})
    assert [ax.get_title() for ax in fig.axes] == ["spearman_abs", "ssim"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["original", "fc", "conv"]
    threshold = [line for line in fig.axes[0].get_lines() if "threshold" in line.get_label()]
    assert threshold and threshold[0].get_ydata()[0] == 0.5


def test_agg_backend_untouched():
    backend = matplotlib.get_backend()
    viz.figure_to_array(viz.attribution_grid(torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8)))
    assert matplotlib.get_backend() == backend


def _rgb(hex_colour):
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def test_token_colors_follow_the_sign_on_a_per_sample_scale():
    colours = viz.token_colors(torch.tensor([3.0, 1.5, 0.0, -3.0]))
    red, half, white, blue = map(_rgb, colours)
    assert red[0] > red[2] and blue[2] > blue[0]  # positive is red, negative is blue
    assert half[0] > half[2] and sum(half) > sum(red)  # half the sample's maximum: a lighter red
    assert white == _rgb(viz.token_colors([0.0])[0])  # zero is the neutral centre, also for an all-zero sample
    assert colours == viz.token_colors(torch.tensor([30.0, 15.0, 0.0, -30.0]))  # only relative size matters
    assert colours[0] == matplotlib.colors.to_hex(colormaps[viz.DIVERGING_CMAP](1.0))


def test_token_highlights_html_escapes_and_colours_every_token():
    tokens = [["the", "<script>", "good"], ["not", "a&b"]]
    scores = [torch.tensor([0.0, -1.0, 2.0]), torch.tensor([1.0, 0.5])]
    page = viz.token_highlights_html(tokens, scores, captions=['"quoted" <caption>', "second"], title="IG <x>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "a&amp;b" in page
    assert "&lt;caption&gt;" in page and "IG &lt;x&gt;" in page
    for word, colour in (("&lt;script&gt;", viz.token_colors(scores[0])[1]), ("good", viz.token_colors(scores[0])[2])):
        assert f"background-color:{colour};" in page.split(f">{word}</span>")[0].rsplit("<span", 1)[1]
    assert 'title="+2"' in page and 'title="-1"' in page  # the score on hover
    assert "lit-attr-legend" in page and "linear-gradient" in page
    assert page.count('class="lit-attr-sample"') == 2
    with pytest.raises(ValueError, match="Sample 1 has 2 tokens but only 1 scores"):
        viz.token_highlights_html(tokens, [scores[0], scores[1][:1]])
    with pytest.raises(ValueError, match="`scores` must have one row per sample"):
        viz.token_highlights_html(tokens, torch.zeros(1, 3))


def test_token_highlights_figure_renders_at_its_documented_size():
    short = viz.token_highlights_figure([["a", "b"]], torch.tensor([[1.0, -1.0]]), width=6.0)
    image = viz.figure_to_array(short)
    assert image.shape[1] == 600 and image.shape[2] == 3
    assert image.shape[0] == round(short.get_figheight() * 100)
    long = viz.token_highlights_figure([["word"] * 60, ["x"]], torch.randn(2, 60), captions=["one", "two"], width=6.0)
    assert viz.figure_to_array(long).shape[0] > image.shape[0]  # wrapped lines and captions make it taller


def test_curve_figures_draw_the_games_that_were_played():
    curve = torch.linspace(1.0, 0.0, 5)
    deletion_only = {"deletion_curve": curve, "deletion": torch.tensor(0.5)}
    figures = curve_figures({"saliency": {"insertion_deletion": deletion_only}}, "epoch 0")
    (ax,) = figures["insertion_deletion_curves"].axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["deletion AUC 0.500"] and ax.get_lines()[0].get_color() == "tab:red"
    both = {**deletion_only, "insertion_curve": curve.flip(0), "insertion": torch.tensor(0.25)}
    (ax,) = curve_figures({"saliency": {"insertion_deletion": both}}, "epoch 0")["insertion_deletion_curves"].axes
    assert [line.get_label() for line in ax.get_lines()] == ["insertion AUC 0.250", "deletion AUC 0.500"]
