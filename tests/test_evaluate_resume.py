"""Resumable evaluation (lit_attr/_resume.py): a killed `lit_attr evaluate` continues where it stopped.

The reference is always an uninterrupted run of the same configuration: a resumed run must give its numbers
(metrics.json, 1e-6), redo no finished sample, and refuse to mix in another configuration or number of processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.data import Dataset

from lit_attr._resume import WorkDirectory
from lit_attr.cli import CLIError, run_evaluate
from lit_attr.data import ShapesDataModule
from lit_attr.evaluate import EvaluationError, evaluate
from lit_attr.models import DemoClassifier
from lit_attr.runner import SampleRecord

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
GATE_ENV = "LIT_ATTR_TEST_GATE"

MODEL_ARGS = {"num_classes": 4, "width": 8}
DATA_ARGS = {"num_train": 8, "num_val": 16, "num_test": 4, "seed": 0}
# Batches of 2 over 9 samples: 5 batches. The randomisation check sees samples 0 and 1 only, all done in the first
# batch, so a resumed run never updates it again and must still report it (stage names included).
SETTINGS: dict[str, Any] = {
    "methods": ["saliency", "ig2"],
    "method_kwargs": {"ig2": {"steps": 3, "n_references": 2}},
    "metrics": ["insertion_deletion", "localization", "randomization"],
    "metric_kwargs": {"insertion_deletion": {"n_steps": 4}},
    "limit_samples": 9,
    "batch_size": 2,
    "randomization_samples": 2,
    "heatmap_samples": 3,
    "reference_pool_size": 2,  # samples 0 and 1, of two classes: IG2 finds references of another class
}


class _Watched(Dataset):
    """A dataset that logs the indices it is asked for, and stops at ``stop_at``: it raises, or waits for a gate."""

    def __init__(self, dataset: Dataset, stop_at: int | None, gate: str | None) -> None:
        self.dataset, self.stop_at, self.gate = dataset, stop_at, gate
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        if self.stop_at is not None and index >= self.stop_at:
            if self.gate is None:
                raise RuntimeError(f"simulated crash reading sample {index}")
            deadline = time.monotonic() + 300
            Path(f"{self.gate}.waiting").touch()  # tells the test that every earlier batch is done
            while not Path(self.gate).exists():  # the test kills the process while it waits here
                if time.monotonic() > deadline:
                    raise RuntimeError("the gate never opened")
                time.sleep(0.05)
        self.read.append(index)
        return self.dataset[index]


class GatedShapes(ShapesDataModule):
    """Shapes whose validation samples from index 2 ($LIT_ATTR_TEST_GATE_AT) on wait for the file named by
    $LIT_ATTR_TEST_GATE, if set."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.val_set is not None and not isinstance(self.val_set, _Watched):
            gate = os.environ.get(GATE_ENV)
            at = int(os.environ.get(f"{GATE_ENV}_AT", "2"))
            self.val_set = _Watched(self.val_set, at if gate else None, gate)


class CrashingShapes(ShapesDataModule):
    """Shapes whose validation samples from ``stop_at`` on raise: an evaluation that dies mid-way, in process."""

    def __init__(self, stop_at: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stop_at = stop_at

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.val_set is not None and not isinstance(self.val_set, _Watched):
            self.val_set = _Watched(self.val_set, self.stop_at, None)


def _model(seed: int = 0) -> DemoClassifier:
    torch.manual_seed(seed)
    return DemoClassifier(**MODEL_ARGS)


def _evaluate(output_dir: Path, data: ShapesDataModule | None = None, **overrides: Any) -> dict:
    options = {**SETTINGS, "checkpoint_every": 1, "progress": False, **overrides}
    model = options.pop("model", None) or _model()
    return evaluate(model, data or CrashingShapes(**DATA_ARGS), output_dir, **options)


def _flat(result: dict) -> dict[str, float]:
    """Every number of the ``methods`` section of a result, keyed by its path."""
    out: dict[str, float] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}/{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}/{i}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            out[key] = value

    walk(result["methods"], "")
    return out


def _assert_same_numbers(got: dict, expected: dict) -> None:
    a, b = _flat(got), _flat(expected)
    assert a.keys() == b.keys() and len(a) > 30
    for key, value in b.items():
        if isinstance(value, float):
            same = math.isclose(a[key], value, rel_tol=1e-6, abs_tol=1e-6)
            assert same or (math.isnan(value) and math.isnan(a[key])), key
        else:
            assert a[key] == value, key


def _state(output_dir: Path, rank: int = 0, world_size: int = 1) -> Path:
    return output_dir.parent / f".{output_dir.name}.work" / "state" / f"rank-{rank}-of-{world_size}.pt"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Counter]:
    """The result of an uninterrupted run, and how often it read each sample."""
    data = CrashingShapes(**DATA_ARGS)
    return _evaluate(tmp_path_factory.mktemp("uninterrupted") / "out", data), Counter(data.val_set.read)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The work directory of an evaluation that died reading sample 6 (the fourth batch)."""
    out = tmp_path_factory.mktemp("crashed") / "out"
    with pytest.raises(RuntimeError, match="simulated crash reading sample 6"):
        _evaluate(out, CrashingShapes(stop_at=6, **DATA_ARGS))
    assert not out.exists()
    return out


def _copy_of(crashed: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(crashed.parent / ".out.work", tmp_path / ".out.work")
    return out


# ---------------------------------------------------------------------------------------------------- in process
def test_resume_after_a_crash_equals_an_uninterrupted_run_and_redoes_nothing(crashed, uninterrupted, tmp_path):
    out = _copy_of(crashed, tmp_path)
    saved = torch.load(_state(out), weights_only=True)
    # The crash came while fetching the fourth batch, after the third was saved.
    assert saved["batches_done"] == 3 and [r["index"] for r in saved["records"]] == [0, 1, 2, 3, 4, 5]
    data = CrashingShapes(**DATA_ARGS)
    result = _evaluate(out, data, resume=True)
    expected, reads = uninterrupted
    _assert_same_numbers(result, expected)
    assert json.loads((out / "metrics.json").read_text())["methods"] == result["methods"]
    # The finished samples 0-5 are read once less than in the uninterrupted run (the logits check and IG2's pool
    # still read samples 0 and 1); the others as often.
    assert Counter(data.val_set.read) == reads - Counter(range(6))
    assert {p.stem for p in out.glob("heatmaps_*.png")} == {"heatmaps_saliency", "heatmaps_ig2"}
    assert result["timing"].keys() == {"saliency", "ig2"} and all(
        t["seconds_per_sample"] > 0 for t in result["timing"].values()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the work directory is gone


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"methods": ["saliency"]}, "`methods`"),
        ({"metric_kwargs": {"insertion_deletion": {"n_steps": 5}}}, "`metric_kwargs.insertion_deletion.n_steps`"),
        ({"method_kwargs": {"ig2": {"steps": 4, "n_references": 2}}}, "`method_kwargs.ig2.steps`"),
        ({"batch_size": 3}, "`batch_size`"),
        ({"limit_samples": 8}, "`num_samples`"),
        ({"target": "prediction"}, "`target`"),
        ({"input_bounds": (0.0, 2.0)}, "`input_bounds`"),
        ({"split": "test", "limit_samples": 4}, "`split`"),
        ({"model": "other weights"}, "`model`"),
    ],
    ids=["methods", "metric_option", "method_option", "batch_size", "limit", "target", "bounds", "split", "weights"],
)
def test_resume_with_another_configuration_is_refused_with_the_reason(crashed, tmp_path, change, named):
    out = _copy_of(crashed, tmp_path)
    if change.get("model") == "other weights":
        change = {"model": _model(seed=1)}
    with pytest.raises(EvaluationError, match="cannot resume") as error:
        _evaluate(out, resume=True, **change)
    message = str(error.value)
    assert named in message and "--overwrite true" in message and "\n" not in message
    assert _state(out).is_file() and not out.exists()  # nothing was touched


def test_resume_with_another_number_of_processes_is_refused(crashed, tmp_path):
    out = _copy_of(crashed, tmp_path)
    for rank in (0, 1):  # as if two processes had saved
        shutil.copy(_state(out), _state(out, rank, 2))
    _state(out).unlink()
    with pytest.raises(EvaluationError, match=r"it ran with 2 process\(es\), this run has 1"):
        _evaluate(out, resume=True)
    assert _state(out, 1, 2).is_file()


def test_an_unfinished_run_needs_resume_or_overwrite(crashed, uninterrupted, tmp_path):
    out = _copy_of(crashed, tmp_path)
    with pytest.raises(EvaluationError, match="an unfinished evaluation") as error:
        _evaluate(out)
    assert "--resume true" in str(error.value) and "--overwrite true" in str(error.value)
    assert _state(out).is_file()
    result = _evaluate(out, CrashingShapes(**DATA_ARGS), overwrite=True)  # starts over
    _assert_same_numbers(result, uninterrupted[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_finished_output_is_only_replaced_with_overwrite(tmp_path):
    out = tmp_path / "out"
    fast = {"methods": ["saliency"], "metrics": ["localization"], "limit_samples": 2}
    assert _evaluate(out, resume=True, **fast)["num_samples"] == 2  # nothing to resume: a normal run
    with pytest.raises(EvaluationError, match="holds a finished evaluation; pass --overwrite true"):
        _evaluate(out, **{**fast, "limit_samples": 3})
    with pytest.raises(EvaluationError, match="holds a finished evaluation"):
        _evaluate(out, resume=True, **{**fast, "limit_samples": 3})
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 2
    _evaluate(out, overwrite=True, **{**fast, "limit_samples": 3})
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_directory_that_is_not_an_evaluation_is_never_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(EvaluationError, match="not an evaluation's result"):
            _evaluate(mine, overwrite=overwrite, methods=["saliency"], metrics=["localization"], limit_samples=2)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------------------------------------------- the CLI
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != GATE_ENV}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=f"{TESTS}{os.pathsep}{REPO}", **extra)
    return env


def test_cli_run_killed_after_its_first_saved_state_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    monkeypatch.delenv(GATE_ENV, raising=False)
    checkpoint = tmp_path / "model.pt"
    torch.save(_model().state_dict(), checkpoint)
    config = {
        "seed_everything": 0,
        "model": {"class_path": "lit_attr.models.DemoClassifier", "init_args": MODEL_ARGS},
        "data": {"class_path": "test_evaluate_resume.GatedShapes", "init_args": DATA_ARGS},
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False},
        **SETTINGS,
        "checkpoint_every": 1,
    }
    config_path = tmp_path / "evaluate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    base = ["--config", str(config_path), "--ckpt_path", str(checkpoint)]  # after `lit_attr evaluate`
    out = tmp_path / "out"

    # The first run saves its first batch, then waits at sample 2 for a gate that never opens: it is killed there.
    killed = subprocess.Popen(
        [sys.executable, "-m", "lit_attr.cli", "evaluate", *base, "--output_dir", str(out)],
        cwd=REPO, env=_env(**{GATE_ENV: str(tmp_path / "never")}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not _state(out).exists():
            assert killed.poll() is None, killed.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "no partial state was saved"
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.kill()
        killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    assert torch.load(_state(out), weights_only=True)["batches_done"] == 1

    # no --resume: one line, no change; the killed run's lock is stale and taken over with a warning
    with pytest.raises(CLIError, match="an unfinished evaluation") as error:
        with pytest.warns(UserWarning, match=f"left by PID {killed.pid}, which is no longer running"):
            run_evaluate([*base, "--output_dir", str(out)], progress=False)
    assert "\n" not in str(error.value) and _state(out).is_file()

    resumed = subprocess.run(
        [sys.executable, "-m", "lit_attr.cli", "evaluate", *base, "--output_dir", str(out), "--resume", "true"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference, _ = run_evaluate([*base, "--output_dir", str(tmp_path / "reference")], progress=False)
    result = json.loads((out / "metrics.json").read_text())
    _assert_same_numbers(result, reference)
    assert result["num_samples"] == 9 and result["config"]["resume"] is True
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["evaluate.yaml", "model.pt", "never.waiting", "out", "reference"]  # .waiting: the gate's marker
    with pytest.raises(CLIError, match="holds a finished evaluation; pass --overwrite true"):
        run_evaluate([*base, "--output_dir", str(out)], progress=False)


# ---------------------------------------------------------------------------------------------------- integrity
def _refused_resume(out: Path) -> str:
    with pytest.raises(EvaluationError, match="cannot resume from") as error:
        _evaluate(out, resume=True)
    message = str(error.value)
    assert str(_state(out)) in message and "\n" not in message and "--overwrite true" in message
    return message


def test_a_flipped_bit_in_a_saved_state_is_refused_and_the_state_kept(crashed, tmp_path):
    out = _copy_of(crashed, tmp_path)
    data = bytearray(_state(out).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle of the metric states' bytes
    _state(out).write_bytes(data)
    assert "its SHA-256 does not match 'rank-0-of-1.pt.sha256'" in _refused_resume(out)
    assert _state(out).read_bytes() == data and not out.exists()  # refused, not deleted


def test_a_state_of_another_schema_or_without_its_integrity_record_is_refused(crashed, tmp_path):
    out = _copy_of(crashed, tmp_path)
    record_path = _state(out).with_name("rank-0-of-1.pt.sha256")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "schema": 99}))
    assert "it has schema 99, this version of lit-attr reads schema 2" in _refused_resume(out)
    record_path.unlink()
    assert "its integrity record 'rank-0-of-1.pt.sha256' is missing" in _refused_resume(out)
    assert _state(out).is_file()


def test_an_impossible_position_is_refused_even_in_a_whole_file(crashed, tmp_path):
    out = _copy_of(crashed, tmp_path)
    saved = torch.load(_state(out), weights_only=True)
    work = WorkDirectory(out, json.loads(saved["fingerprint"]))
    records = [SampleRecord(**record) for record in saved["records"]]
    # A whole, checksummed file (as a writer with a bug would leave it) that claims more batches than the shard has.
    work.save(0, 1, 7, records, saved["runner"])
    assert "it says 7 batches are done, but this process's shard has 5" in _refused_resume(out)
    work.save(0, 1, 2, records, saved["runner"])  # 6 records for 2 batches of 2
    assert "its records are not the first 2 batches" in _refused_resume(out)
    assert torch.load(_state(out), weights_only=True)["batches_done"] == 2  # kept as it was


def test_a_death_between_the_two_renames_leaves_the_earlier_state_usable(crashed, tmp_path):
    out = _copy_of(crashed, tmp_path)
    saved = torch.load(_state(out), weights_only=True)
    work = WorkDirectory(out, json.loads(saved["fingerprint"]))
    earlier = _state(out).read_bytes()
    records = [SampleRecord(**record) for record in saved["records"]]
    work.save(0, 1, 2, records[:4], saved["runner"])  # the next save: its record first, then the file ...
    _state(out).write_bytes(earlier)  # ... whose rename never happened
    state, refusal = work.load(0, 1)
    assert refusal is None and state["batches_done"] == 3  # the earlier state, whole and accepted
