"""Progress of `lit_attr evaluate` where stdout is not a terminal (CI, SLURM, nohup): plain lines with the facts."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest
import yaml

from lit_attr.data import ShapesDataModule
from lit_attr.evaluate.progress import PROGRESS_SECONDS, PlainProgress, progress_seconds
from lit_attr.models import DemoClassifier

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(
    r"evaluating: (\d+)/(\d+) samples \((\d+)%\)(?:, (.+?))?, elapsed (\d+):(\d\d):(\d\d), ETA (unknown|\d+:\d\d:\d\d)"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A demo classifier's checkpoint after one step, and an evaluation config of 7 samples in batches of 3."""
    root = tmp_path_factory.mktemp("progress")
    data = {"num_train": 8, "num_val": 16, "num_test": 16, "seed": 0}
    model = {"num_classes": 4, "width": 8}
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(DemoClassifier(**model), datamodule=ShapesDataModule(**data))
    trainer.save_checkpoint(root / "model.ckpt")
    config = {
        "model": {"class_path": "lit_attr.models.DemoClassifier", "init_args": model},
        "data": {"class_path": "lit_attr.data.ShapesDataModule", "init_args": data},
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False},
        "methods": ["saliency", "integrated_gradients"],
        "method_kwargs": {"integrated_gradients": {"n_steps": 4}},
        "metrics": ["insertion_deletion"],
        "metric_kwargs": {"insertion_deletion": {"n_steps": 4}},
        "limit_samples": 7,
        "batch_size": 3,
        "heatmap_samples": 2,
        "reference_pool_size": 0,
    }
    (root / "evaluate.yaml").write_text(yaml.safe_dump(config))
    return root / "evaluate.yaml", root / "model.ckpt"


def _evaluate(config: Path, ckpt: Path, output: Path, seconds: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO),
           PROGRESS_SECONDS: seconds}  # fmt: skip
    args = ["evaluate", "--config", str(config), "--ckpt_path", str(ckpt), "--output_dir", str(output)]
    # Pipes, as under CI or SLURM: neither stdout nor stderr is a terminal.
    return subprocess.run([sys.executable, "-m", "lit_attr.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def runs(setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """Both runs at once, by their seconds between time-due lines: each spends most of its time importing Lightning."""
    root = tmp_path_factory.mktemp("progress_runs")
    seconds = ("3600", "0.05")  # no line due to time; lines due to time between the lines due to samples
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda value: _evaluate(*setup, root / value, seconds=value), seconds)
        return dict(zip(seconds, done, strict=True))


def _lines(stderr: str) -> list[re.Match]:
    lines = [line for line in stderr.splitlines() if line.startswith("evaluating:")]
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    return matches  # type: ignore[return-value]


def test_non_terminal_progress_is_a_line_per_tenth_of_the_samples(runs: dict[str, subprocess.CompletedProcess]):
    out = runs["3600"]  # no line is due to time in this run
    assert out.returncode == 0, out.stderr[-3000:]
    lines = _lines(out.stderr)
    # 7 samples in batches of 3: a tenth of them is one sample, so every batch ends with a line.
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in lines] == [(3, 7, 42), (6, 7, 85), (7, 7, 100)]
    assert {m[4] for m in lines} == {"integrated_gradients"}  # the method that ran last on the batch
    assert lines[-1][8] == "0:00:00" and all(m[8] != "unknown" for m in lines)
    elapsed = [int(m[5]) * 3600 + int(m[6]) * 60 + int(m[7]) for m in lines]
    assert elapsed == sorted(elapsed)
    assert "evaluating:" not in out.stdout  # stdout keeps the results table alone


def test_non_terminal_progress_also_prints_a_line_when_time_passes(runs: dict[str, subprocess.CompletedProcess]):
    out = runs["0.05"]
    assert out.returncode == 0, out.stderr[-3000:]
    done = [int(m[1]) for m in _lines(out.stderr)]
    # The three lines due to samples, and lines due to time between them (the run lasts far longer than 0.05 s).
    assert done == sorted(done) and {3, 6, 7} <= set(done) and len(done) > 3 and done[-1] == 7


def test_timed_lines_without_samples_say_elapsed_and_an_unknown_eta():
    stream, ticks = io.StringIO(), iter(range(0, 10**6, 40))
    progress = PlainProgress(10, stream, interval=30, clock=lambda: float(next(ticks)))  # 40 s pass at every call
    progress.start()
    progress.update("fei: iteration 1/20", 0)
    threading.Event().wait(0.3)  # the thread waits 0.01 s between lines: this clock is always past due
    progress.stop()
    lines = _lines(stream.getvalue())
    assert len(lines) >= 2
    assert {(m[1], m[2], m[4], m[8]) for m in lines} == {("0", "10", "fei: iteration 1/20", "unknown")}
    elapsed = [int(m[5]) * 3600 + int(m[6]) * 60 + int(m[7]) for m in lines]
    assert all(seconds % 40 == 0 for seconds in elapsed) and elapsed == sorted(set(elapsed))


@pytest.mark.parametrize("given", ["0", "-1", "soon", "inf"])
def test_a_bad_interval_is_refused_naming_the_variable(given: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(PROGRESS_SECONDS, given)
    with pytest.raises(ValueError, match=rf"^{PROGRESS_SECONDS} must be a positive number of seconds, got '{given}'$"):
        progress_seconds()
