"""`lit_attr validate`/`test` with an attribution callback: the command keeps gradients, and says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest

from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
from lit_attr.cli import _gradients_for_callbacks
from lit_attr.data import ShapesDataModule
from lit_attr.demo import save_cli_checkpoint
from lit_attr.models import DemoClassifier

REPO = Path(__file__).resolve().parents[1]
NOTE = "running with --trainer.inference_mode false, since AttributionMonitor needs gradients"


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of configs/demo.yaml's model after one step, saved as `lit_attr demo` saves its own."""
    L.seed_everything(0, verbose=False)
    model = DemoClassifier(num_classes=4, width=16)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=ShapesDataModule(num_train=8, num_val=8, batch_size=8))
    path = tmp_path_factory.mktemp("validate") / "demo.ckpt"
    save_cli_checkpoint(trainer, model, path)  # as `lit_attr demo` saves its checkpoint
    assert "_class_path" not in model.hparams  # the model's own hyperparameters are left alone
    return path


def _run(command: str, checkpoint: Path, cwd: Path) -> subprocess.CompletedProcess:
    split = "val" if command == "validate" else "test"
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--ckpt_path", str(checkpoint),
            "--trainer.logger", "false", f"--data.num_{split}", "16", "--data.batch_size", "16",
            f"--trainer.limit_{split}_batches", "1"]  # fmt: skip
    # Wide enough for rich to print the metric names whole.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lit_attr.cli", command, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def runs(demo_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """`lit_attr validate` and `lit_attr test` at once: each spends most of its time importing Lightning."""
    commands = ("validate", "test")
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda command: _run(command, demo_checkpoint, tmp_path_factory.mktemp(command)), commands)
        return dict(zip(commands, done, strict=True))


@pytest.mark.parametrize("command", ["validate", "test"])
def test_validate_and_test_with_the_demo_config_run_the_monitor(command: str, runs: dict):
    out = runs[command]
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line for line in out.stderr.splitlines() if "inference_mode" in line] == [f"lit_attr {command}: {NOTE}"]
    # The monitor ran on the split: its scores are in Lightning's table of the logged metrics, for every method.
    for method in ("saliency", "integrated_gradients", "mfaba"):
        assert f"attr/{method}/insertion_deletion/insertion " in out.stdout, out.stdout


def _trainer(callbacks: list, inference_mode: bool = True) -> L.Trainer:
    return L.Trainer(callbacks=callbacks, inference_mode=inference_mode, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False)  # fmt: skip


def test_only_callbacks_that_need_gradients_switch_inference_mode_off(capsys: pytest.CaptureFixture):
    monitor = AttributionMonitor(["saliency"], num_samples=4)
    trainer = _trainer([monitor])
    _gradients_for_callbacks(trainer, "test")
    assert (trainer.test_loop.inference_mode, trainer.validate_loop.inference_mode) == (False, True)
    assert capsys.readouterr().err == f"lit_attr test: {NOTE}\n"

    # Already off: nothing to say. RandomizationCheck runs in fit only, where Lightning keeps gradients.
    for trainer in (_trainer([monitor], inference_mode=False), _trainer([RandomizationCheck(["saliency"])])):
        before = trainer.validate_loop.inference_mode
        _gradients_for_callbacks(trainer, "validate")
        assert trainer.validate_loop.inference_mode is before
    assert capsys.readouterr().err == ""
