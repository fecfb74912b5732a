"""The report answers "can I trust these maps": ground truth beside the maps, predictions and their probabilities,
the model's accuracy (warned under 0.8), one colour scale per map row with its legend, full method names, readable
randomisation stages, and the randomisation figure titled with the samples the check saw (#28 item 6, #27 item 4)."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib import image as mpimg
from matplotlib.colors import to_hex
from rich.console import Console

import lit_attr.viz as viz
from lit_attr.batch import Batch
from lit_attr.data import ShapesDataModule
from lit_attr.evaluate import evaluate
from lit_attr.inputs import get_input_kind
from lit_attr.models import DemoClassifier
from lit_attr.records import SampleRecord, keep_truths
from lit_attr.report import report_content, summary_table

N, SHOWN, CHECKED = 6, 3, 2
METHODS = ["saliency", "integrated_gradients"]
OPTIONS = {"methods": METHODS, "method_kwargs": {"integrated_gradients": {"n_steps": 4}},
           "metrics": ["insertion_deletion", "randomization"], "limit_samples": N, "batch_size": 3,
           "heatmap_samples": SHOWN, "randomization_samples": CHECKED, "reference_pool_size": 4,
           "progress": False}  # fmt: skip


class _Page(HTMLParser):
    """The parts of report.html the tests read: sections with their headings, images and legends; table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.paragraphs: dict[str, str] = {}
        self._stack: list[tuple[str, dict]] = []
        self._table: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._stack.append((tag, attrs))
        if tag == "section":
            self.sections.append({"class": attrs.get("class"), "h2": "", "images": [], "legends": []})
        elif tag == "img" and self.sections:
            self.sections[-1]["images"].append(attrs["src"])
        elif tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        self._text = []

    def handle_endtag(self, tag):
        text = "".join(self._text).strip()
        opened, attrs = self._stack.pop() if self._stack else (tag, {})
        inside = any(t == "section" for t, _ in self._stack)
        if tag == "h2" and inside:
            self.sections[-1]["h2"] = text
        elif tag == "p" and attrs.get("class") == "legend" and inside:
            self.sections[-1]["legends"].append(text)
        elif tag == "p" and attrs.get("id"):
            self.paragraphs[attrs["id"]] = text
        elif tag in ("td", "th") and self._table:
            self.tables[self._table][-1].append(text)
        elif tag == "table":
            self._table = None
        if tag not in ("b",):
            self._text = []

    def handle_data(self, data):
        self._text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _png(src: str) -> np.ndarray:
    return mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    net = DemoClassifier(num_classes=4, width=8).eval()
    data = {"num_train": 8, "num_val": 12, "seed": 0}
    with_masks = evaluate(net, ShapesDataModule(**data), out / "masks", **OPTIONS)
    unmasked = {"batch_adapter": lambda batch: Batch(batch[0], batch[1])}  # the same shapes without their masks
    without = evaluate(net, ShapesDataModule(**data), out / "plain", **unmasked, **OPTIONS)
    reference = ShapesDataModule(**data)
    reference.setup("validate")
    return net, reference, (out / "masks", with_masks), (out / "plain", without)


def test_the_report_states_the_accuracy_and_each_shown_samples_prediction(reports):
    net, data, (directory, result), _ = reports
    samples = [data.val_set[i] for i in range(N)]
    x, y = torch.stack([s[0] for s in samples]), torch.tensor([int(s[1]) for s in samples])
    with torch.no_grad():
        probabilities = net(x).softmax(dim=1)
    correct = int((probabilities.argmax(dim=1) == y).sum())
    assert result["model_accuracy"] == {"accuracy": correct / N, "correct": correct, "labelled": N}
    page = _parse(directory / "report.html")
    assert f"{correct / N:.3f} ({correct} of {N} predicted as labelled)" in page.paragraphs["accuracy"]
    # An untrained network: far below 0.8, so the reader is warned.
    assert correct / N < 0.8 and "below 0.8" in page.paragraphs["accuracy-warning"]
    names = data.class_names
    header, *rows = page.tables["samples"]
    assert header == ["sample", "label", "predicted class", "its probability", "explained class", "its probability",
                      "ground truth"]  # fmt: skip
    assert len(rows) == SHOWN
    for i, row in enumerate(rows):
        top = int(probabilities[i].argmax())
        expected = [f"#{i}", names[int(y[i])], names[top], f"{float(probabilities[i, top]):.3f}", names[int(y[i])],
                    f"{float(probabilities[i, y[i]]):.3f}", "drawn"]  # fmt: skip
        assert row == expected


def test_each_map_row_has_its_method_its_ground_truth_and_one_legend(reports):
    _, _, (directory, result), (plain_directory, plain) = reports
    page, plain_page = _parse(directory / "report.html"), _parse(plain_directory / "report.html")
    rows = [s for s in page.sections if s["class"] == "maps"]
    plain_rows = [s for s in plain_page.sections if s["class"] == "maps"]
    assert [s["h2"] for s in rows] == [f"{m} (heatmaps, beside the ground truth)" for m in METHODS]
    assert [s["h2"] for s in plain_rows] == [f"{m} (heatmaps)" for m in METHODS]  # full names, not cut
    for row, plain_row in zip(rows, plain_rows, strict=True):
        assert len(row["legends"]) == 1 and "One colour scale for the row" in row["legends"][0]
        # The ground truth is drawn: the same grid with one more row of 1.5-inch cells (and its 0.1-inch gap).
        height, plain_height = _png(row["images"][0]).shape[0], _png(plain_row["images"][0]).shape[0]
        assert height - plain_height == round(100 * (1.5 + 0.1))
    assert plain_page.tables["samples"][0][-1] == "its probability"  # no ground-truth column without masks
    # metrics.json keeps its keys and numbers: the masks change nothing but the figures and the table.
    assert plain["methods"]["saliency"]["insertion_deletion"] == result["methods"]["saliency"]["insertion_deletion"]


def test_the_randomisation_figure_counts_the_samples_the_check_saw(reports):
    _, _, (directory, result), _ = reports
    saved = json.loads((directory / "metrics.json").read_text())
    assert saved["num_samples"] == N and saved["randomization_samples"] == CHECKED
    stages = saved["methods"]["saliency"]["randomization"]["spearman_abs"]["stages"]
    assert stages[0] == "original" and stages[-1] != "fully randomised"  # stored names stay the layers'
    figures = report_content(saved, {}).figures
    assert figures["randomization_curves"]._suptitle.get_text().endswith(f"({CHECKED} samples)")
    assert figures["insertion_deletion_curves"]._suptitle.get_text().endswith(f"({N} samples)")
    ticks = [label.get_text() for label in figures["randomization_curves"].axes[0].get_xticklabels()]
    assert ticks == ["original", "fully randomised"]
    assert f"The sanity checks score the first {CHECKED} samples." in (directory / "report.html").read_text()


@pytest.mark.parametrize(
    ("order", "ticks", "blocks"),
    [
        ("top_down", ["original", "fc", "conv2", "conv1", "fully randomised"], [("layer1.0", 2, 3)]),
        # One layer at a time: the last stage is the first layer alone, named as such.
        ("independent", ["original", "fc", "conv2", "conv1", "0"], [("layer1.0", 2, 3), ("stem", 4, 4)]),
    ],
)
def test_stage_labels_name_the_fully_randomised_network_and_group_layers_by_block(order, ticks, blocks):
    stages = ["original", "fc", "layer1.0.conv2", "layer1.0.conv1", "stem.0"]
    labels = viz.stage_labels(stages, order)
    assert labels.ticks == ticks and labels.blocks == blocks
    result = {"spearman_abs": {"stages": stages, "curve": torch.linspace(1, 0, 5)}, "order": order}
    ax = viz.similarity_figure({"m": result}).axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == ticks
    top = [child for child in ax.child_axes]  # the block names along the top
    assert [label.get_text() for label in top[0].get_xticklabels()] == [name for name, *_ in blocks]


def test_randomisation_grid_titles_the_fully_randomised_stage():
    maps = {"original": torch.rand(1, 4, 4), "fc": torch.rand(1, 4, 4), "stem.0": torch.rand(1, 4, 4)}
    fig = viz.randomization_grid(torch.rand(1, 3, 4, 4), maps, order="top_down")
    assert [ax.get_title() for ax in fig.axes[:4]] == ["input", "original", "fc", "fully randomised"]


def test_attribution_grid_draws_the_masks_and_one_scale_for_the_row():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 6, 6, generator=generator)
    maps = torch.randn(2, 3, 6, 6, generator=generator)
    masks = torch.zeros(2, 6, 6)
    masks[0, 1:3, 1:4], masks[1, 4:, :2] = 1.0, 1.0
    fig = viz.attribution_grid(images, maps, masks=masks, scale="row")
    assert len(fig.axes) == 3 * 2 + 1  # inputs, ground truth, maps, colour bar
    shown = images.permute(0, 2, 3, 1).numpy()  # already in [0, 1]: displayed as they are
    for i in range(2):
        dimmed = shown[i] * np.where(masks[i].numpy()[..., None] > 0, 1.0, 0.25)
        np.testing.assert_allclose(fig.axes[2 + i].images[0].get_array(), dimmed, rtol=1e-6)
    # One scale for the row: the 99.5th percentile of |channel sum| over both maps, by numpy's own percentile.
    sums = maps.sum(dim=1).numpy()
    bound = np.percentile(np.abs(sums), 99.5)
    for i in range(2):
        overlay = fig.axes[4 + i].images[-1]
        assert overlay.norm.vmin == pytest.approx(-bound) and overlay.norm.vmax == pytest.approx(bound)
        np.testing.assert_allclose(overlay.get_array(), sums[i], rtol=1e-6)
    assert fig.axes[-1].get_ylim() == pytest.approx((-bound, bound))
    with pytest.raises(ValueError, match=r"`masks` must be \(N, H, W\)"):
        viz.attribution_grid(images, maps, masks=masks[:1])


def test_token_rows_underline_the_rationale_on_one_scale():
    tokens = [["a", "b", "c"], ["d", "e"]]
    scores = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([4.0, 0.0])]
    rationales = [torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 0.0])]
    page = viz.token_highlights_html(tokens, scores, rationales=rationales, scale=4.0)
    marked = re.findall(r'<span class="lit-attr-rationale"[^>]*>([^<]*)</span>', page)
    assert marked == ["b", "c", "d"]
    cmap = colormaps[viz.DIVERGING_CMAP]
    colours = re.findall(r"background-color:(#[0-9a-f]{6})", page)
    # score / 4 for every sentence: 1.0 in the first is a quarter of the way, 4.0 in the second the end.
    assert colours[0] == to_hex(cmap((1.0 / 4 + 1) / 2)) and colours[3] == to_hex(cmap(1.0))
    assert "one scale: ±4" in page and "underlined: the rationale" in page


def test_keep_truths_aligns_a_rationale_with_the_kept_tokens():
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0]])
    attention = (ids != 0).long()
    rationale = torch.tensor([[0, 1, 0, 0, 0], [0, 1, 0, 0, 0]])
    batch = Batch(x=ids, y=torch.tensor([0, 1]), mask=rationale, attention_mask=attention)
    kind = get_input_kind("tokens")
    records = [SampleRecord(i, 0, 0, 0, 1.0, 1.0, x=kind.kept_sample(ids[i], {"attention_mask": attention[i]}))
               for i in range(2)]  # fmt: skip
    records[1].x = None  # not kept: no truth either
    keep_truths(kind, batch, records)
    assert records[0].truth.tolist() == [0.0, 1.0, 0.0, 0.0] and records[1].truth is None


def test_the_console_table_prints_method_names_in_full():
    scores = {"insertion_deletion": {"insertion": 0.5, "deletion": 0.2, "difference": 0.3},
              "localization": {"pointing_game": 1.0, "relevance_mass": 0.4, "relevance_rank_accuracy": 0.3},
              "road": {"road_morf": 0.1, "road_lerf": 0.2}, "activation_deviation": {"mean_mse": 0.1},
              "randomization": {"spearman_abs": {"final": 0.1, "passed": True}, "passed": True}}  # fmt: skip
    methods = ["integrated_gradients", "generic_attention", "attention_rollout"]
    result = {"methods": {m: scores for m in methods}, "timing": {m: {"seconds_per_sample": 0.01} for m in methods}}
    console = Console(width=80, record=True, color_system=None)
    console.print(summary_table(result, "demo"))
    text = console.export_text()
    assert all(method in text for method in methods) and "…" not in text.split("\n", 3)[3]


def test_the_report_underlines_a_texts_rationale_beside_its_scores():
    samples = {
        i: {"x": torch.tensor(ids), "target": 1, "label": 1, "prediction": 1, "confidence": 0.9,
            "target_probability": 0.9, "kind": "tokens", "truth": torch.tensor(truth),
            "maps": {"saliency": torch.tensor(scores)}}
        for i, (ids, truth, scores) in enumerate([([5, 6, 7], [0.0, 1.0, 0.0], [0.1, 2.0, -0.5]),
                                                  ([8, 9], [1.0, 1.0], [1.0, 0.5])])
    }  # fmt: skip
    words = {5: "the", 6: "great", 7: "plot", 8: "loved", 9: "it"}
    content = report_content(
        {"methods": {"saliency": {}}}, samples, ["neg", "pos"], lambda ids: [words[int(i)] for i in ids]
    )
    page = content.html["tokens_saliency"]
    assert re.findall(r'<span class="lit-attr-rationale"[^>]*>([^<]*)</span>', page) == ["great", "loved", "it"]
    assert content.titles == {"tokens_saliency": "saliency (tokens, beside the ground truth)"}
    assert "-2 to +2" in content.legends["tokens_saliency"] and "Underlined" in content.legends["tokens_saliency"]
    assert "<td>pos</td><td>0.900</td>" in content.samples
