"""``lit_attr demo`` in process, on a tiny budget: its directories, its refusal to rerun, its accuracy warning.

The full ``--fast`` demos run end to end (subprocesses) in ``tests/test_cli.py``; the tiny demo here trains one step
on 64 images and explains two of them with saliency, so that what the demo decides around the run is cheap to test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

import lit_attr.demo.driver as driver
from lit_attr.cli import main
from lit_attr.demo import DEMO_TABLE, MIN_ACCURACY, accuracy_warning, run_demo

# The demo shrunk to one step logs less often than Lightning's interval: its note is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:The number of training batches")

_TINY_BUDGET = driver.Budget(
    epochs=1, num_train=64, num_val=32, limit_samples=2, batch_size=2, randomization_samples=0,
    method_kwargs={"saliency": {}}, monitor_samples=2, model_kwargs={"width": 4},
)  # fmt: skip


@pytest.fixture
def tiny_cnn_demo(monkeypatch: pytest.MonkeyPatch, restored_process_state) -> None:
    """The CNN demo, shrunk to one optimiser step (an accuracy near chance) and one cheap method and metric."""
    tiny = dataclasses.replace(
        DEMO_TABLE["cnn"], methods=("saliency",), metrics=("localization",), monitor=("saliency",),
        monitor_metrics=("localization",), monitor_metric_kwargs={}, check=(), full=_TINY_BUDGET, fast=_TINY_BUDGET,
    )  # fmt: skip
    monkeypatch.setitem(DEMO_TABLE, "cnn", tiny)


def test_a_demo_below_the_accuracy_bar_warns_and_writes_to_its_own_directory(
    tiny_cnn_demo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
):
    monkeypatch.chdir(tmp_path)
    result = run_demo(fast=True, model="cnn")
    out = capsys.readouterr().out
    own = tmp_path / "lit_attr_demo" / "cnn"  # the default: one directory per demo, not one for all three
    assert sorted(p.name for p in (tmp_path / "lit_attr_demo").iterdir()) == ["cnn"]
    assert json.loads((own / "evaluation" / "metrics.json").read_text())["num_samples"] == result["num_samples"] == 2
    assert (own / "checkpoints" / "demo.ckpt").is_file()
    # One optimiser step on 64 images: the printed accuracy is far below the bar, and the warning says so.
    accuracy = float(out.split("validation accuracy after 1 epochs:")[1].split()[0])
    assert accuracy < MIN_ACCURACY
    assert "warning:" in out and f"reached {accuracy:.3f} validation accuracy (below {MIN_ACCURACY})" in " ".join(
        out.split()
    )


def test_a_rerun_into_a_demo_directory_refuses_in_one_line_and_overwrite_replaces_it(
    tiny_cnn_demo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
):
    monkeypatch.chdir(tmp_path)
    run_demo("mine", fast=True, model="cnn")  # a relative --output_dir is taken as it is, not under lit_attr_demo/
    own = tmp_path / "mine"
    stale = own / "evaluation" / "stale.txt"
    stale.write_text("from the first run")
    unrelated = own / "notes.txt"  # not the demo's: a rerun leaves it alone
    unrelated.write_text("mine")
    before = (own / "checkpoints" / "demo.ckpt").stat().st_mtime_ns
    capsys.readouterr()

    assert main(["demo", "--fast", "--output_dir", str(own)]) == 1
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("lit_attr demo: error:") and "--overwrite true" in stderr and str(own) in stderr
    assert (own / "checkpoints" / "demo.ckpt").stat().st_mtime_ns == before and stale.is_file()

    assert main(["demo", "--fast", "--output_dir", str(own), "--overwrite", "true"]) == 0
    assert not stale.exists() and unrelated.read_text() == "mine"
    assert [p.name for p in (own / "logs").iterdir()] == ["version_0"]  # the first run's logs went with it
    assert (own / "checkpoints" / "demo.ckpt").stat().st_mtime_ns != before


def test_overwrite_takes_the_spellings_evaluate_takes(capsys: pytest.CaptureFixture, restored_process_state):
    with pytest.raises(SystemExit) as exited:  # argparse's own usage error, as for every other bad option
        main(["demo", "--overwrite", "maybe"])
    assert exited.value.code == 2 and "expected true or false, got 'maybe'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("environment", "offline"), [("dryrun", True), ("offline", True), ("online", False), ("disabled", None)]
)
def test_the_evaluation_config_records_the_w_and_b_mode_the_run_has(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment: str, offline: bool | None
):
    pytest.importorskip("wandb")
    # "dryrun" is what Lightning's WandbLogger(offline=True) leaves in WANDB_MODE after the training run.
    monkeypatch.setenv("WANDB_MODE", environment)
    cfg = driver._evaluate_logger_cfg(tmp_path, driver._wandb_mode(), "demo-vit-DemoViT-evaluate")
    if offline is None:
        assert cfg is False
    else:
        assert cfg["init_args"]["offline"] is offline and cfg["init_args"]["name"] == "demo-vit-DemoViT-evaluate"
        assert yaml.safe_load(yaml.safe_dump(cfg)) == cfg  # what evaluate.yaml holds


def test_accuracy_warning_names_the_bar_and_the_advice():
    assert accuracy_warning(MIN_ACCURACY, "the demo CNN", fast=True) is None
    assert "without --fast" in accuracy_warning(0.79, "the demo CNN", fast=True)
    assert "train it longer" in accuracy_warning(0.79, "the demo CNN", fast=False)
    assert accuracy_warning(float("nan"), "the demo CNN", fast=False) is not None  # no accuracy measured: say so
