"""Storage faults: one line naming the path and the cause, before the work wherever possible, and no computed
result lost (a failed save or final write is completed by ``--resume true``). One run per ``output_dir`` at a time.

Real file systems: a read-only directory (a read-only bind mount as root, else chmod), tiny tmpfs mounts for a full
disk and an empty mount point (root only, skipped otherwise; always unmounted). The reference of every completed
run is an uninterrupted run of the same configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import Logger
from test_evaluate_resume import GATE_ENV, CrashingShapes, GatedShapes, _flat, _model

from lit_attr.evaluate import QUIET_TRAINER, EvaluationError, evaluate

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="mounts a tmpfs or a read-only bind mount: needs root")

DATA_ARGS = {"num_train": 8, "num_val": 12, "num_test": 4, "seed": 0}
FAST: dict[str, Any] = {
    "methods": ["saliency"],
    "metrics": ["insertion_deletion", "localization"],
    "metric_kwargs": {"insertion_deletion": {"n_steps": 4}},
    "limit_samples": 6,
    "batch_size": 2,
    "heatmap_samples": 2,
    "reference_pool_size": 2,
    "checkpoint_every": 1,
    "progress": False,
}


def _evaluate(out: Path, data: CrashingShapes | None = None, **overrides: Any) -> dict:
    return evaluate(_model(), data or CrashingShapes(**DATA_ARGS), out, **{**FAST, **overrides})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _evaluate(tmp_path_factory.mktemp("uninterrupted") / "out")


@contextlib.contextmanager
def _mounted(target: Path, *arguments: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *arguments, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


@contextlib.contextmanager
def _read_only(directory: Path) -> Iterator[Path]:
    """``directory`` made read-only: a read-only bind mount as root (root ignores permissions), else chmod."""
    directory.mkdir(parents=True, exist_ok=True)
    if not ROOT:
        directory.chmod(0o555)
        try:
            yield directory
        finally:
            directory.chmod(0o755)
        return
    with _mounted(directory, "--bind", str(directory)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True, capture_output=True)
        yield directory


def _fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` up to its last byte; the filler file is returned."""
    filler = directory / "filler"
    with open(filler, "wb") as stream, contextlib.suppress(OSError):
        while True:
            stream.write(b"\0" * 65536)
            stream.flush()
            os.fsync(stream.fileno())
    return filler


def _assert_same_numbers(got: dict, expected: dict) -> None:
    a, b = _flat(got), _flat(expected)
    assert a.keys() == b.keys() and len(a) > 10
    assert all(a[key] == pytest.approx(value, rel=1e-6, abs=1e-6) for key, value in b.items())


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------------------------------------------- before the work
def test_a_read_only_directory_is_refused_before_the_work(tmp_path: Path):
    data = CrashingShapes(**DATA_ARGS)
    with _read_only(tmp_path / "ro") as directory, pytest.raises(EvaluationError) as error:
        _evaluate(directory / "out", data)
    assert f"cannot write in {str(directory)!r}: " in _one_line(error)
    assert ("read-only file system" if ROOT else "permission denied") in str(error.value)
    assert data.val_set.read == [0, 0]  # only the sample that shows the model's output: no attribution ran


@pytest.mark.parametrize("obstacle", ["parent_is_a_file", "work_is_a_file", "state_is_a_file"])
def test_files_in_the_way_are_refused_before_the_work_and_left_alone(tmp_path: Path, obstacle: str):
    paths = {
        "parent_is_a_file": (tmp_path / "notes", tmp_path / "notes" / "out", "is a file, not a directory"),
        "work_is_a_file": (tmp_path / ".out.work", tmp_path / "out", "is in the way of the evaluation's work"),
        "state_is_a_file": (tmp_path / ".out.work" / "state", tmp_path / "out", "is in the way of the evaluation"),
    }
    mine, out, expected = paths[obstacle]
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("keep me")
    data = CrashingShapes(**DATA_ARGS)
    with pytest.raises(EvaluationError, match=expected) as error:
        _evaluate(out, data, resume=True)
    assert str(mine) in _one_line(error)
    assert mine.read_text() == "keep me" and data.val_set.read == [0, 0]


@needs_root
def test_an_empty_mount_point_is_refused_as_output_dir(tmp_path: Path):
    with _mounted(tmp_path / "mnt", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as mount:
        with pytest.raises(EvaluationError, match="is a mount point") as error:
            _evaluate(mount)
        assert str(mount / "evaluation") in _one_line(error) and not any(mount.iterdir())


@needs_root
def test_a_disk_too_small_for_the_evaluation_is_refused_before_the_work(tmp_path: Path):
    data = CrashingShapes(**DATA_ARGS)
    with _mounted(tmp_path / "tiny", "-t", "tmpfs", "-o", "size=256k", "tmpfs") as mount:
        with pytest.raises(EvaluationError, match=rf"not enough space in '{mount!s}'.*KiB free, about .* MiB needed"):
            _evaluate(mount / "out", data)
        assert not any(mount.iterdir())
    assert data.val_set.read == [0, 0]


# ---------------------------------------------------------------------------------------------------- during the run
class _Filling(torch.utils.data.Dataset):
    """A dataset that fills the disk of ``directory`` when sample ``at`` is read (between two saves)."""

    def __init__(self, dataset: Any, directory: Path, at: int) -> None:
        self.dataset, self.directory, self.at = dataset, directory, at

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if index == self.at and not (self.directory / "filler").exists():
            _fill(self.directory)
        return self.dataset[index]


class _FillingDisk(CrashingShapes):
    def __init__(self, directory: Path, at: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.directory, self.at = directory, at

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if not isinstance(self.val_set, _Filling):
            self.val_set = _Filling(self.val_set, self.directory, self.at)


class _FillingLogger(Logger):
    """A logger that fills the disk when evaluate logs its scalars: after the last save, before the final write."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    name, version = "filling", 0

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        _fill(self.directory)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


@needs_root
def test_a_disk_that_fills_at_a_save_keeps_the_last_state_and_resumes(tmp_path: Path, uninterrupted: dict):
    with _mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=16m", "tmpfs") as mount:
        out = mount / "out"
        with pytest.raises(EvaluationError) as error:
            # Sample 4 opens the third batch: the state of the second is saved, the third's save finds a full disk.
            _evaluate(out, _FillingDisk(mount, 4, **DATA_ARGS))
        message = _one_line(error)
        state = mount / ".out.work" / "state" / "rank-0-of-1.pt"
        assert f"cannot save the partial state {str(state)!r}: no space left on the device" in message
        assert "the state saved after 2 of 3 batches stays" in message and "--resume true" in message
        assert torch.load(state, weights_only=True)["batches_done"] == 2
        (mount / "filler").unlink()
        data = CrashingShapes(**DATA_ARGS)
        _assert_same_numbers(_evaluate(out, data, resume=True), uninterrupted)
        assert sorted(data.val_set.read) == [0, 0, 0, 1, 4, 5]  # probe, pool, the third batch: nothing redone
        assert sorted(p.name for p in mount.iterdir()) == ["out"]


@needs_root
def test_a_disk_that_fills_before_the_final_write_loses_nothing(tmp_path: Path, uninterrupted: dict):
    with _mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=16m", "tmpfs") as mount:
        out = mount / "out"
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=_FillingLogger(mount), default_root_dir=tmp_path,
                            **QUIET_TRAINER)  # fmt: skip  (the logger has no directory: media go to the root dir)
        with pytest.raises(EvaluationError) as error:
            _evaluate(out, trainer=trainer)
        message = _one_line(error)
        assert f"cannot write the result {str(out)!r}: no space left on the device" in message
        assert f"every sample is scored and saved in {str(mount / '.out.work')!r}" in message
        assert not out.exists()
        assert torch.load(mount / ".out.work" / "state" / "rank-0-of-1.pt", weights_only=True)["batches_done"] == 3
        (mount / "filler").unlink()
        data = CrashingShapes(**DATA_ARGS)
        _assert_same_numbers(_evaluate(out, data, resume=True), uninterrupted)
        assert sorted(data.val_set.read) == [0, 0, 0, 1]  # the first sample's check and the pool: no batch redone
        assert json.loads((out / "metrics.json").read_text())["num_samples"] == 6


# ---------------------------------------------------------------------------------------------------- one run at a time
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != GATE_ENV}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=f"{TESTS}{os.pathsep}{REPO}", **extra)
    return env


def test_a_second_run_on_the_same_output_is_refused_with_the_holders_pid(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(GATE_ENV, raising=False)
    checkpoint = tmp_path / "model.pt"
    torch.save(_model().state_dict(), checkpoint)
    config = {
        "model": {"class_path": "lit_attr.models.DemoClassifier", "init_args": {"num_classes": 4, "width": 8}},
        "data": {"class_path": "test_evaluate_resume.GatedShapes", "init_args": DATA_ARGS},
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False},
        **{key: value for key, value in FAST.items() if key != "progress"},
    }
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump(config))
    out, gate = tmp_path / "out", tmp_path / "gate"
    first = subprocess.Popen(
        [sys.executable, "-m", "lit_attr.cli", "evaluate", "--config", str(tmp_path / "evaluate.yaml"), "--ckpt_path",
         str(checkpoint), "--output_dir", str(out)],
        cwd=REPO, env=_env(**{GATE_ENV: str(gate)}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / ".out.work" / "state" / "rank-0-of-1.pt").exists():  # it holds the lock, waits at 2
            assert first.poll() is None, first.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the first run saved nothing"
            time.sleep(0.05)
        with pytest.raises(EvaluationError) as error:
            evaluate(_model(), GatedShapes(**DATA_ARGS), out, **{**FAST, "overwrite": True})
        assert f"another evaluation (PID {first.pid}) is working on `output_dir` {str(out)!r}" in _one_line(error)
        gate.touch()
        _, stderr = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, stderr.decode()[-3000:]
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 6
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["evaluate.yaml", "gate", "gate.waiting", "model.pt", "out"]  # no lock left; .waiting: the gate's


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path: Path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / ".out.lock").write_text(f"{pid}\n")
    with pytest.warns(UserWarning, match=rf"took over the lock .* left by PID {pid}, which is no longer running"):
        result = _evaluate(tmp_path / "out", limit_samples=2)
    assert result["num_samples"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("output_exists", [False, True], ids=["died_between_the_renames", "died_after_them"])
def test_the_old_result_of_an_interrupted_overwrite_is_restored_or_removed(tmp_path: Path, output_exists: bool):
    old = tmp_path / ".out.old-4242"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({"num_samples": "old"}))
    out = tmp_path / "out"
    if output_exists:
        out.mkdir()
        (out / "metrics.json").write_text(json.dumps({"num_samples": "new"}))
    expected = "removed the previous result" if output_exists else "restored the previous result"
    with pytest.warns(UserWarning, match=expected), pytest.raises(EvaluationError, match="holds a finished"):
        _evaluate(out, limit_samples=2)  # the next run recovers; without --overwrite it keeps the result
    kept = json.loads((out / "metrics.json").read_text())["num_samples"]
    assert kept == ("new" if output_exists else "old") and not old.exists()
    assert _evaluate(out, limit_samples=2, overwrite=True)["num_samples"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_storage_errors_name_the_path_and_the_cause():
    from errno import EBUSY, ENOSPC

    from lit_attr.evaluate.storage import storage_error

    assert storage_error(OSError(ENOSPC, "x", "/d/f.tmp-1"), "save", Path("/d/f")) == (
        "cannot save '/d/f': no space left on the device"
    )
    busy = storage_error(OSError(EBUSY, "x", "/m"), "rename")
    assert busy == "cannot rename '/m': device or resource busy (a mount point?)"
