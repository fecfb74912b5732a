"""Delivery of the monitor's scalars, images, curves and tables to W&B, TensorBoard, CSV and no logger."""

import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks._helpers import (
    METHOD_KWARGS,
    METRIC_KWARGS,
    TRAINER_DEFAULTS,
    fit,
    read_metrics_csv,
    read_wandb_records,
    wait_for_wandb_exit,
    wandb_history,
)
from lit_attr.callbacks import AttributionMonitor
from lit_attr.metrics import AvgSensitivity, Complexity, Sparseness
from lit_attr.presenting import presentation_of

METHODS = ("saliency", "mfaba")
# The keys' scheme written out by hand: attr/<method>/<metric>/<score>.
SCALARS = {
    "insertion": "insertion_deletion",
    "deletion": "insertion_deletion",
    "difference": "insertion_deletion",
    "pointing_game": "localization",
    "relevance_mass": "localization",
    "relevance_rank": "localization",
    "auroc": "localization",
}


# The table heads a score's column with its key and direction, written out by hand: ↑ higher is better, ↓ lower.
COLUMNS = {
    "insertion": "insertion ↑",
    "deletion": "deletion ↓",
    "difference": "difference ↑",
    "pointing_game": "pointing_game ↑",
    "relevance_mass": "relevance_mass ↑",
    "relevance_rank": "relevance_rank ↑",
    "auroc": "auroc ↑",
}


def _monitor(**kwargs: Any) -> AttributionMonitor:
    options = {
        "num_samples": 8,
        "log_heatmaps": 3,
        "method_kwargs": {"mfaba": METHOD_KWARGS["mfaba"]},
        "metric_kwargs": METRIC_KWARGS,
    }
    return AttributionMonitor(list(METHODS), **{**options, **kwargs})


def _expected_keys() -> set[str]:
    return {f"attr/{method}/{metric}/{name}" for method in METHODS for name, metric in SCALARS.items()}


def test_wandb_offline_run_has_media_tables_and_history(tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    # The suite disables W&B globally; this test wants real offline files (and never the network).
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="lit-attr-tests")
    try:
        fit(tmp_path, [_monitor()], logger=logger, max_epochs=2)
    finally:
        wandb.finish()

    (run_dir,) = tmp_path.glob("wandb/offline-run-*")
    images = run_dir / "files" / "media" / "images" / "attr"
    for method in METHODS:
        assert len(list((images / method).glob("heatmaps_*.png"))) == 2, f"one {method} grid per epoch"
    assert len(list(images.glob("insertion_deletion_curves_*.png"))) == 2
    tables = sorted((run_dir / "files" / "media" / "table" / "attr").glob("samples_*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[-1].read_text())
    assert {"method", "target", "insertion ↑", "deletion ↓", "pointing_game ↑"} <= set(table["columns"])
    assert len(table["data"]) == 8 * len(METHODS)  # every probe sample x methods (3 of them in the grids)

    (run_file,) = run_dir.glob("run-*.wandb")
    history = wandb_history(wait_for_wandb_exit(run_file))
    logged: dict[str, list[float]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith("attr/") and isinstance(value, (int, float)) and not isinstance(value, bool):
                logged.setdefault(key, []).append(value)
    assert _expected_keys() <= set(logged)
    for key in _expected_keys():
        assert len(logged[key]) == 2, f"{key} logged once per epoch"
        assert all(math.isfinite(v) for v in logged[key]), key
    # Images are logged with the trainer's step.
    steps = {row["trainer/global_step"] for row in history if "attr/saliency/heatmaps/filenames" in row}
    assert steps == {4, 8}


def test_csv_logger_gets_scalars_and_pngs(tmp_path):
    monitor = _monitor()
    _, trainer, _ = fit(tmp_path, [monitor], max_epochs=2)
    log_dir = Path(trainer.logger.log_dir)
    rows = read_metrics_csv(log_dir / "metrics.csv")
    for key in _expected_keys():
        values = [float(row[key]) for row in rows if row.get(key)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
    media = log_dir / "media" / "attr"
    for method in METHODS:
        assert sorted(p.name for p in (media / method / "heatmaps").glob("*.png")) == [
            "step_0000004.png",
            "step_0000008.png",
        ]
    assert len(list((media / "insertion_deletion_curves").glob("*.png"))) == 2
    assert len(list((media / "samples").glob("*.csv"))) == 2
    # The table has a row per probe sample and method; its means are the logged scalars.
    (last_table, *_) = sorted((media / "samples").glob("*.csv"), reverse=True)
    table = read_metrics_csv(last_table)
    for method in METHODS:
        method_rows = [row for row in table if row["method"] == method]
        assert sorted(int(row["dataset_index"]) for row in method_rows) == sorted(monitor.probe_indices)
        for name, metric in SCALARS.items():
            mean = sum(float(row[COLUMNS[name]]) for row in method_rows) / len(method_rows)
            logged = monitor.history[1][f"attr/{method}/{metric}/{name}"]
            assert mean == pytest.approx(logged, rel=1e-5, abs=1e-6), name
    # Scalars also reach callback_metrics, and the history keeps them per epoch.
    assert _expected_keys() <= set(trainer.callback_metrics)
    assert sorted(monitor.history) == [0, 1]
    key = "attr/saliency/insertion_deletion/insertion"
    assert monitor.history[1][key] == pytest.approx(float(rows[-1][key]))


def test_table_heads_scores_of_new_metrics_with_their_metric_classes_directions(tmp_path):
    # Metrics of #26 with opposite directions (sparser is better, simpler is better, steadier is better), and a
    # count that is no score (avg-sensitivity's method calls per sample): it keeps its bare key.
    directed = {"sparseness": Sparseness, "complexity": Complexity, "avg_sensitivity": AvgSensitivity}
    arrow = {True: "↑", False: "↓"}
    monitor = AttributionMonitor(["saliency"], metrics=list(directed), num_samples=4, log_heatmaps=0,
                                 metric_kwargs={"avg_sensitivity": {"n_perturb_samples": 2}})  # fmt: skip
    _, trainer, _ = fit(tmp_path, [monitor], max_epochs=1)
    (path,) = (Path(trainer.logger.log_dir) / "media" / "attr" / "samples").glob("*.csv")
    table = read_metrics_csv(path)
    header = list(table[0])
    expected = {key: f"{key} {arrow[metric.higher_is_better]}" for key, metric in directed.items()}
    assert {"sparseness ↑", "complexity ↓"} <= set(expected.values())  # both directions are shown
    assert set(expected.values()) <= set(header) and "avg_sensitivity_method_calls" in header
    assert not set(directed) & set(header), "no score column without its arrow"
    assert len(set(header)) == len(header)
    for key, metric in directed.items():  # the presentation the monitor reads agrees with the Metric class
        assert presentation_of(key).scores[0].arrow == arrow[metric.higher_is_better], key
        mean = sum(float(row[expected[key]]) for row in table) / len(table)  # the column is the score's
        assert mean == pytest.approx(monitor.history[0][f"attr/saliency/{key}/{key}"], rel=1e-5), key
    assert [float(row["avg_sensitivity_method_calls"]) for row in table] == [2.0] * len(table)


def test_validate_and_test_after_fit_keep_fit_files(tmp_path):
    monitor = _monitor(metrics=("insertion_deletion",))
    net, trainer, _ = fit(tmp_path, [monitor], max_epochs=1, inference_mode=False)
    heatmaps = Path(trainer.logger.log_dir) / "media" / "attr" / "saliency" / "heatmaps"
    fitted = (heatmaps / "step_0000004.png").read_bytes()
    trainer.validate(net, datamodule=trainer.datamodule, verbose=False)
    trainer.test(net, datamodule=trainer.datamodule, verbose=False)
    # Both run at fit's last global step; each writes its own file and fit's stays as it was.
    assert sorted(p.name for p in heatmaps.glob("*.png")) == [
        "step_0000004.png",
        "step_0000004_test.png",
        "step_0000004_validate.png",
    ]
    assert (heatmaps / "step_0000004.png").read_bytes() == fitted


def test_without_logger_only_scalars(tmp_path):
    _, trainer, _ = fit(tmp_path, [_monitor()], logger=False, max_epochs=2)
    assert _expected_keys() <= set(trainer.callback_metrics)
    assert not list(tmp_path.rglob("*.png"))


class _Writer:
    """Stands in for tensorboard's SummaryWriter and records what it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, int]] = []

    def add_image(self, tag, image, global_step=None, dataformats="CHW"):
        self.calls.append(("image", tag, (np.asarray(image).shape, dataformats), global_step))

    def add_figure(self, tag, figure, global_step=None, close=True):
        self.calls.append(("figure", tag, figure, global_step))

    def add_text(self, tag, text, global_step=None):
        self.calls.append(("text", tag, text, global_step))

    def add_scalar(self, tag, value, global_step=None):
        self.calls.append(("scalar", tag, value, global_step))

    def flush(self):
        pass

    def close(self):
        pass


class _RecordingTensorBoardLogger(TensorBoardLogger):
    """A TensorBoardLogger whose writer records calls, so the path is tested without tensorboard installed."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        with monkeypatch.context() as patch:
            patch.setattr("lightning.fabric.loggers.tensorboard._TENSORBOARD_AVAILABLE", True)
            super().__init__(root, name="tb")
        self._writer = _Writer()

    @property
    def experiment(self) -> _Writer:
        return self._writer

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_tensorboard_path_uses_add_image_add_figure_and_add_text(tmp_path, monkeypatch):
    logger = _RecordingTensorBoardLogger(tmp_path, monkeypatch)
    fit(tmp_path, [_monitor()], logger=logger, max_epochs=2)
    calls = logger.experiment.calls
    images = [(tag, shape, step) for kind, tag, shape, step in calls if kind == "image"]
    assert sorted((tag, step) for tag, _, step in images) == sorted(
        (f"attr/{method}/heatmaps", step) for method in METHODS for step in (4, 8)
    )
    assert all(shape[1] == "HWC" and shape[0][-1] == 3 for _, shape, _ in images)
    figures = [(tag, step) for kind, tag, _, step in calls if kind == "figure"]
    assert figures == [("attr/insertion_deletion_curves", 4), ("attr/insertion_deletion_curves", 8)]
    texts = [text for kind, tag, text, _ in calls if kind == "text" and tag == "attr/samples"]
    assert len(texts) == 2 and texts[0].startswith("| epoch |")
    scalars = {tag for kind, tag, _, _ in calls if kind == "scalar"}
    assert _expected_keys() <= scalars
    assert not list(tmp_path.rglob("*.png")), "TensorBoard gets the images, no PNG fallback"


def test_real_tensorboard_logger_writes_event_files(tmp_path):
    from matplotlib import image as mpimg
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = _monitor()
    fit(tmp_path, [monitor], logger=logger, max_epochs=2)
    assert list(Path(logger.log_dir).glob("events.out.tfevents.*"))
    # Read the event files back as TensorBoard does.
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert _expected_keys() <= set(tags["scalars"])
    for key in _expected_keys():  # one value per epoch: the monitor's own record of that epoch
        values = [event.value for event in events.Scalars(key)]
        assert values == pytest.approx([monitor.history[epoch][key] for epoch in (0, 1)], rel=1e-6), key
    images = {f"attr/{method}/heatmaps" for method in METHODS} | {"attr/insertion_deletion_curves"}
    assert set(tags["images"]) == images
    for tag in images:
        logged = events.Images(tag)
        assert [event.step for event in logged] == [4, 8], tag  # once per epoch, at the trainer's step
        for event in logged:
            pixels = mpimg.imread(io.BytesIO(event.encoded_image_string), format="png")
            assert pixels.shape[:2] == (event.height, event.width) and pixels.shape[2] in (3, 4), tag
            assert pixels[..., :3].std() > 0.05, f"{tag} is blank"
    (text_tag,) = [tag for tag in tags["tensors"] if tag.startswith("attr/samples")]
    texts = [event.tensor_proto.string_val[0].decode() for event in events.Tensors(text_tag)]
    assert len(texts) == 2 and all(text.startswith("| epoch |") for text in texts)


# ------------------------------------------------------------------------------------------------ token batches
TEXT_METHODS = ("saliency", "input_x_gradient")
SHOWN = 2  # log_heatmaps: the probe sentences whose highlighting is logged
_TOKEN_SPAN = re.compile(r'<span title="([^"]*)" style="background-color:[^"]*">([^<]*)</span>')


def _validate_text(logger: Any) -> tuple[Any, Any, AttributionMonitor]:
    """Validate an untrained DemoTextClassifier with the monitor on 8 sentences; ``(model, data, monitor)``."""
    from lit_attr.data import SyntheticTextDataModule
    from lit_attr.models import DemoTextClassifier

    data = SyntheticTextDataModule(num_train=16, num_val=8, num_test=8, batch_size=4, seed=3)
    data.setup()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DemoTextClassifier(vocab_size=data.vocab_size, num_classes=data.num_classes,
                                   pad_token_id=data.pad_token_id, mask_token_id=data.mask_token_id,
                                   special_token_ids=data.special_token_ids).eval()  # fmt: skip
    monitor = AttributionMonitor(list(TEXT_METHODS), metrics=["token_localization"], num_samples=4,
                                 log_heatmaps=SHOWN, batch_size=4, background_delivery=False)  # fmt: skip
    options = {**TRAINER_DEFAULTS, "logger": logger, "callbacks": [monitor], "inference_mode": False}
    L.Trainer(**options).validate(model, datamodule=data, verbose=False)
    return model, data, monitor


def _shown_words(data: Any, monitor: AttributionMonitor) -> list[list[str]]:
    """The tokens of the highlighted probe sentences, decoded from the dataset itself."""
    return [data.decode(data.val_set[index]["input_ids"]) for index in monitor.probe_indices[:SHOWN]]


def test_wandb_token_batches_log_html_highlights_and_html_table_cells(tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from lit_attr.methods import get_method

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tables = []
    log_table = WandbLogger.log_table

    def recording_log_table(self, key, columns=None, data=None, **kwargs):
        tables.append((key, columns, data))
        return log_table(self, key, columns=columns, data=data, **kwargs)

    monkeypatch.setattr(WandbLogger, "log_table", recording_log_table)
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="lit-attr-tests")
    try:
        model, data, monitor = _validate_text(logger)
    finally:
        wandb.finish()
    shown = _shown_words(data, monitor)

    # The samples table: an HTML cell (wandb.Html) per highlighted sentence and method, holding its words in order
    # with its scores, which are the method's own on that sentence alone; no cell for the other probe sentences.
    ((key, columns, rows),) = tables
    assert key == "attr/samples" and "tokens" in columns
    cells = {(row[columns.index("dataset_index")], row[columns.index("method")]): row[columns.index("tokens")]
             for row in rows}  # fmt: skip
    for index, words in zip(monitor.probe_indices[:SHOWN], shown, strict=True):
        sample = data.val_set[index]
        for method in TEXT_METHODS:
            cell = cells[index, method]
            assert isinstance(cell, wandb.Html)
            spans = _TOKEN_SPAN.findall(cell.html)
            assert [html.unescape(word) for _, word in spans] == words
            expected = get_method(method, model).attribute(sample["input_ids"][None], sample["labels"][None])[0]
            torch.testing.assert_close(torch.tensor([float(title) for title, _ in spans]), expected, rtol=1e-3, atol=0)
    assert all(cell is None for (index, _), cell in cells.items() if index not in monitor.probe_indices[:SHOWN])

    # The run: one HTML page per method with every highlighted sentence, and the table's artifact holds one HTML
    # file per highlighted cell.
    (run_dir,) = tmp_path.glob("wandb/offline-run-*")
    for method in TEXT_METHODS:
        (page,) = (run_dir / "files" / "media" / "html" / "attr" / method).glob("tokens_*.html")
        assert [html.unescape(word) for _, word in _TOKEN_SPAN.findall(page.read_text())] == sum(shown, [])
    (run_file,) = run_dir.glob("run-*.wandb")
    records = read_wandb_records(wait_for_wandb_exit(run_file))
    artifacts = [record.artifact for record in records if record.WhichOneof("record_type") == "artifact"]
    (table,) = [artifact for artifact in artifacts if artifact.type == "run_table"]
    paths = [entry.path for entry in table.manifest.contents]
    assert "attr/samples.table.json" in paths
    assert sum(path.startswith("media/html/") for path in paths) == SHOWN * len(TEXT_METHODS)


def test_tensorboard_token_batches_get_a_highlight_figure_and_plain_words_in_the_table(tmp_path, monkeypatch):
    logger = _RecordingTensorBoardLogger(tmp_path, monkeypatch)
    _, data, monitor = _validate_text(logger)
    shown = _shown_words(data, monitor)
    calls = logger.experiment.calls
    figures = {tag: figure for kind, tag, figure, _ in calls if kind == "figure"}
    assert {f"attr/{method}/tokens" for method in TEXT_METHODS} <= set(figures)
    for method in TEXT_METHODS:
        figure = figures[f"attr/{method}/tokens"]
        words = [text.get_text() for text in figure.texts if text.get_bbox_patch() is not None]  # the boxed tokens
        assert words == sum(shown, [])
    assert not [call for call in calls if call[0] == "image"]  # no image grid for token inputs
    (table,) = [text for kind, tag, text, _ in calls if kind == "text" and tag == "attr/samples"]
    assert "| tokens |" in table and "<span" not in table  # the cells' plain text, not their HTML
    for words in shown:
        assert " ".join(words) in table
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.html"))
