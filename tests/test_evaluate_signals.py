"""Pre-emption: SIGTERM (what SLURM, Kubernetes and spot instances send before a kill) and SIGINT stop
``lit_attr evaluate`` at once with its state saved, one line and exit code 128 + signal; ``--resume true`` then
gives the numbers of an uninterrupted run. Real processes, real signals, a timeout on every wait.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_evaluate_resume import DATA_ARGS, GATE_ENV, MODEL_ARGS, SETTINGS, _assert_same_numbers, _model

from lit_attr.cli import run_evaluate
from lit_attr.evaluate.preemption import Preemption, Stop, preemption_signals, requeue_slurm_job

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A checkpoint, an evaluation config over GatedShapes, and the uninterrupted result (in process)."""
    root = tmp_path_factory.mktemp("signals")
    torch.save(_model().state_dict(), root / "model.pt")
    config = {
        "seed_everything": 0,
        "model": {"class_path": "lit_attr.models.DemoClassifier", "init_args": MODEL_ARGS},
        "data": {"class_path": "test_evaluate_resume.GatedShapes", "init_args": DATA_ARGS},
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False},
        **SETTINGS,
    }
    (root / "evaluate.yaml").write_text(yaml.safe_dump(config))
    base = ["--config", str(root / "evaluate.yaml"), "--ckpt_path", str(root / "model.pt")]
    os.environ.pop(GATE_ENV, None)
    reference, _ = run_evaluate([*base, "--output_dir", str(root / "reference")], progress=False)
    return {"base": base, "reference": reference}


def _interrupt(tmp_path: Path, base: list[str], signum: int, every: int, gate_at: int) -> tuple[int, str]:
    """Start an evaluation that waits before sample ``gate_at``, send ``signum`` there; its exit code and stderr."""
    gate = tmp_path / "gate"
    env = {k: v for k, v in os.environ.items() if not k.startswith(GATE_ENV)}
    env.update({GATE_ENV: str(gate), f"{GATE_ENV}_AT": str(gate_at), "OMP_NUM_THREADS": "1",
                "WANDB_MODE": "disabled", "PYTHONPATH": f"{TESTS}{os.pathsep}{REPO}"})  # fmt: skip
    command = [sys.executable, "-m", "lit_attr.cli", "evaluate", *base, "--output_dir", str(tmp_path / "out"),
               "--checkpoint_every", str(every)]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not Path(f"{gate}.waiting").exists():  # every batch before the gate is done
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the evaluation never reached the gate"
            time.sleep(0.05)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, stderr


def _state(tmp_path: Path) -> dict:
    return torch.load(tmp_path / ".out.work" / "state" / "rank-0-of-1.pt", weights_only=True)


def _resumed(tmp_path: Path, base: list[str]) -> dict:
    os.environ.pop(GATE_ENV, None)
    result, _ = run_evaluate([*base, "--output_dir", str(tmp_path / "out"), "--resume", "true"], progress=False)
    return result


def test_sigterm_before_the_first_save_saves_at_once_and_resumes_to_the_uninterrupted_result(setup, tmp_path):
    # --checkpoint_every 10: no save would be due before the end; the signal comes after one batch of 2.
    code, stderr = _interrupt(tmp_path, setup["base"], signal.SIGTERM, every=10, gate_at=2)
    assert code == 143, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("lit_attr evaluate:")]
    assert lines == ["lit_attr evaluate: error: interrupted by SIGTERM after 2 of 9 samples; resume with --resume true"]
    assert "Traceback" not in stderr
    assert _state(tmp_path)["batches_done"] == 1 and not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.lock").exists()
    _assert_same_numbers(_resumed(tmp_path, setup["base"]), setup["reference"])


def test_sigint_between_saves_saves_the_last_finished_batch(setup, tmp_path):
    # Saves after batches 2 and 4 would be due; the signal comes after batch 3 (samples 0-5 done).
    code, stderr = _interrupt(tmp_path, setup["base"], signal.SIGINT, every=2, gate_at=6)
    assert code == 130, stderr[-3000:]
    assert "lit_attr evaluate: error: interrupted by SIGINT after 6 of 9 samples; resume with --resume true" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert _state(tmp_path)["batches_done"] == 3
    _assert_same_numbers(_resumed(tmp_path, setup["base"]), setup["reference"])


def test_slurm_requeue_signal_is_handled_and_the_job_requeued(tmp_path, monkeypatch):
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, plugins=[SLURMEnvironment(auto_requeue=True)])
    signums, environment = preemption_signals(trainer)
    assert signums == [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1] and environment.auto_requeue
    scontrol = tmp_path / "scontrol"  # records how it was called
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'called'}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert requeue_slurm_job() == "requeued SLURM job 4242"
    assert (tmp_path / "called").read_text().split() == ["requeue", "4242"]
    with Preemption(signums) as preemption, pytest.raises(Stop) as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(5)  # the handler interrupts this at once
    assert stop.value.signum == preemption.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is not preemption._handle  # the previous handler is back


def test_the_monitor_leaves_the_signal_handling_of_fit_as_it_is(tmp_path):
    import lightning as L
    from callbacks._helpers import METRIC_KWARGS, fit

    from lit_attr.callbacks import AttributionMonitor

    class Handlers(L.Callback):
        """The SIGTERM handler when training starts and after each validation epoch (after the monitor ran)."""

        def __init__(self) -> None:
            self.seen: list = []

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.seen.append(signal.getsignal(signal.SIGTERM))

        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    handlers = Handlers()
    monitor = AttributionMonitor(["saliency"], num_samples=4, metric_kwargs=METRIC_KWARGS)
    fit(tmp_path, [monitor, handlers], logger=False, max_epochs=2)
    assert sorted(monitor.history) == [0, 1] and len(handlers.seen) == 3
    assert all(handler is handlers.seen[0] for handler in handlers.seen)  # Lightning's, untouched by the monitor
    assert type(handlers.seen[0]).__name__ == "_HandlersCompose" and signal.getsignal(signal.SIGTERM) is before
