"""Unit tests of lit_attr.evaluate's building blocks (in process, fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from lit_attr._resume import write_result
from lit_attr.batch import Batch
from lit_attr.data import ShapesDataModule
from lit_attr.evaluate import EvaluationError, check_logits, evaluate, flat_scalars, split_dataset
from lit_attr.models import DemoClassifier
from lit_attr.report import render_html, score_rows, summary_table


def test_check_logits_accepts_logits_and_rejects_probabilities_and_bad_shapes():
    assert check_logits(nn.Linear(3, 5), torch.rand(2, 3)) == 5
    with pytest.raises(EvaluationError, match="probabilities"):
        check_logits(nn.Sequential(nn.Linear(3, 5), nn.Softmax(dim=1)), torch.rand(2, 3))
    with pytest.raises(EvaluationError, match="shape"):
        check_logits(nn.Linear(3, 1), torch.rand(2, 3))
    with pytest.raises(EvaluationError, match="logits tensor"):
        check_logits(_DictOut(), torch.rand(2, 3))


class _DictOut(nn.Module):
    def forward(self, x):
        return {"logits": x}


def test_split_dataset_finds_splits_and_names_missing_ones():
    dm = ShapesDataModule(num_train=4, num_val=3, num_test=2)
    assert len(split_dataset(dm, "val")) == 3
    assert len(split_dataset(dm, "test")) == 2
    with pytest.raises(EvaluationError, match="split must be one of"):
        split_dataset(dm, "train")


def test_failed_write_leaves_the_previous_result_untouched(tmp_path: Path):
    target = tmp_path / "out"
    write_result(target, lambda d: (d / "metrics.json").write_text("old"))

    def crash(directory: Path) -> None:
        (directory / "metrics.json").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_result(target, crash)
    assert (target / "metrics.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no work directory left behind
    write_result(target, lambda d: (d / "metrics.json").write_text("new"))
    assert (target / "metrics.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_write_keeps_the_partial_states_of_an_evaluation(tmp_path: Path):
    """A resumable evaluation whose final write fails stays resumable: its saved states are not removed."""
    state = tmp_path / ".out.work" / "state" / "rank-0-of-1.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"saved")
    with pytest.raises(RuntimeError, match="boom"):
        write_result(tmp_path / "out", lambda d: (_ for _ in ()).throw(RuntimeError("boom")))
    assert state.read_bytes() == b"saved" and sorted(p.name for p in state.parent.parent.iterdir()) == ["state"]
    write_result(tmp_path / "out", lambda d: (d / "metrics.json").write_text("done"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the states go with the finished run


def test_score_table_and_flat_scalars_agree():
    result = {
        "methods": {
            "saliency": {
                "insertion_deletion": {"insertion": 0.75, "deletion": 0.25, "difference": 0.5},
                "randomization": {"spearman_abs": {"final": 0.1, "passed": 1.0, "curve": [1.0, 0.1]}},
            }
        },
        "timing": {"saliency": {"seconds_per_sample": 0.002}},
    }
    header, rows = score_rows(result)
    assert rows == [["saliency", 0.75, 0.25, 0.5, 0.1, "passed", 2.0]]
    assert header[0] == "method" and len(header) == len(rows[0])
    assert flat_scalars(result) == {
        "attr/saliency/insertion_deletion/insertion": 0.75,
        "attr/saliency/insertion_deletion/deletion": 0.25,
        "attr/saliency/insertion_deletion/difference": 0.5,
        "attr/saliency/randomization/spearman_abs": 0.1,
    }
    page = render_html(result, {"curves": b"\x89PNG"})
    assert "<td>0.750</td>" in page and 'src="data:image/png;base64,iVBORw==' in page


def test_the_sanity_section_shows_mprt_smprt_and_emprt_with_their_verdicts():
    def check(final, passed):
        return {"spearman_abs": {"final": final, "passed": passed}, "passed": passed}

    result = {
        "methods": {
            "saliency": {"randomization": check(0.1, True), "smprt": check(0.7, False),
                         "emprt": {"emprt": 0.3, "threshold": 0.05, "passed": True}},
            "fei": {"emprt": {"emprt": 0.01, "threshold": 0.05, "passed": False}},
        },
        "timing": {"saliency": {"seconds_per_sample": 0.002}, "fei": {"seconds_per_sample": 0.004}},
    }  # fmt: skip
    header, rows = score_rows(result)
    assert header == ["method", "MPRT (final spearman |A|) ↓", "MPRT check", "sMPRT (final spearman |A|) ↓",
                      "sMPRT check", "eMPRT (entropy rise) ↑", "eMPRT check", "ms / sample"]  # fmt: skip
    assert rows[0] == ["saliency", 0.1, "passed", 0.7, "FAILED", 0.3, "passed", 2.0]
    assert rows[1][0] == "fei" and rows[1][2] == rows[1][4] == "" and rows[1][5:] == [0.01, "FAILED", 4.0]
    table = summary_table(result, "demo")
    assert list(table.columns[1].cells) == ["FAIL sMPRT", "FAIL eMPRT"]


class _Renamed(Dataset):
    """The shapes samples under other names, as a user's dataset might give them."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        x, y, mask = self.dataset[index]
        return {"pixels": x, "cls": y, "object": mask}


class _RenamedData(ShapesDataModule):
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.val_set = _Renamed(self.val_set)


def test_evaluate_reads_a_split_through_the_batch_adapter(tmp_path: Path):
    def adapter(batch: dict) -> Batch:
        return Batch(x=batch["pixels"], y=batch["cls"], mask=batch["object"])

    options = {"methods": ["saliency", "ig2"], "method_kwargs": {"ig2": {"steps": 3, "n_references": 2}},
               "metrics": ["insertion_deletion", "localization"], "limit_samples": 6, "batch_size": 4,
               "heatmap_samples": 2, "reference_pool_size": 8, "progress": False}  # fmt: skip
    torch.manual_seed(0)
    net = DemoClassifier(num_classes=4, width=8).eval()
    data = {"num_train": 8, "num_val": 12, "seed": 0}
    plain = evaluate(net, ShapesDataModule(**data), tmp_path / "plain", **options)
    adapted = evaluate(net, _RenamedData(**data), tmp_path / "adapted", batch_adapter=adapter, **options)
    assert adapted["methods"] == plain["methods"] and "localization" in adapted["methods"]["saliency"]
    with pytest.raises(TypeError, match="`batch_adapter` must be callable or None, got str"):
        evaluate(net, ShapesDataModule(**data), tmp_path / "bad", batch_adapter="pixels", **options)
