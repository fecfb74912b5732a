"""Truthful counts: ``num_samples`` is what was scored, trainer limits are applied, said and recorded, and every
option that changes what is scored or how enters the resume check. More processes than samples work.

References: an evaluation of the same prefix chosen with ``limit_samples`` (no trainer limit), and a one-process
run of the same configuration.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from lit_attr.cli import run_evaluate
from lit_attr.data import ShapesDataModule
from lit_attr.evaluate import QUIET_TRAINER, EvaluationError, evaluate
from lit_attr.models import DemoClassifier

REPO = Path(__file__).resolve().parents[1]
MODEL_ARGS = {"num_classes": 4, "width": 8}
DATA_ARGS = {"num_train": 8, "num_val": 8, "num_test": 4, "seed": 0}
FAST: dict[str, Any] = {
    "methods": ["saliency"],
    "metrics": ["insertion_deletion", "localization"],
    "metric_kwargs": {"insertion_deletion": {"n_steps": 4}},
    "batch_size": 2,
    "heatmap_samples": 2,
    "reference_pool_size": 2,
    "progress": False,
}


def _model() -> DemoClassifier:
    torch.manual_seed(0)
    return DemoClassifier(**MODEL_ARGS)


def _trainer(**options: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, **QUIET_TRAINER, **options)


@pytest.mark.parametrize(
    ("options", "kept", "recorded"),
    [
        ({"limit_test_batches": 2}, 4, {"limit_test_batches": 2}),
        ({"limit_test_batches": 0.25}, 2, {"limit_test_batches": 0.25}),
        ({"fast_dev_run": True}, 2, {"limit_test_batches": 1, "fast_dev_run": True}),
    ],
    ids=["batches", "fraction", "fast_dev_run"],
)
def test_trainer_limits_score_a_prefix_and_say_so(tmp_path: Path, options, kept, recorded):
    with pytest.warns(UserWarning, match=rf"limits the evaluation to {kept} of the 8 samples") as warned:
        result = evaluate(_model(), ShapesDataModule(**DATA_ARGS), tmp_path / "limited", trainer=_trainer(**options),
                          **FAST)  # fmt: skip
    assert sum("limits the evaluation" in str(w.message) for w in warned) == 1
    assert result["num_samples"] == kept and result["trainer_limits"] == recorded
    written = json.loads((tmp_path / "limited" / "metrics.json").read_text())
    assert written["num_samples"] == kept and written["trainer_limits"] == recorded
    reference = evaluate(_model(), ShapesDataModule(**DATA_ARGS), tmp_path / "prefix", limit_samples=kept, **FAST)
    assert result["methods"] == reference["methods"] and reference["trainer_limits"] == {}


def test_a_limit_that_leaves_no_sample_is_refused(tmp_path: Path):
    with pytest.raises(EvaluationError, match=r"limit_test_batches=0.01 leaves none of the 8 samples"):
        evaluate(_model(), ShapesDataModule(**DATA_ARGS), tmp_path / "out", trainer=_trainer(limit_test_batches=0.01),
                 **FAST)  # fmt: skip
    assert not (tmp_path / "out").exists()


def _crashed_at_the_third_batch(out: Path) -> None:
    class Crashing(ShapesDataModule):
        def setup(self, stage: str | None = None) -> None:
            super().setup(stage)
            images = self.val_set

            class Reader(torch.utils.data.Dataset):
                def __len__(self) -> int:
                    return len(images)

                def __getitem__(self, index: int) -> Any:
                    if index >= 4:
                        raise RuntimeError("simulated crash")
                    return images[index]

            self.val_set = Reader()

    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(_model(), Crashing(**DATA_ARGS), out, checkpoint_every=1, **FAST)


@pytest.mark.parametrize(
    ("trainer_options", "named"),
    [({"limit_test_batches": 3}, "`num_samples`"), ({"precision": "64-true"}, "`precision`")],
    ids=["trainer_limit", "precision"],
)
@pytest.mark.filterwarnings("ignore:.*limits the evaluation to")  # the limit's warning is tested on its own
def test_a_resume_under_other_trainer_limits_or_precision_is_refused(tmp_path: Path, trainer_options, named):
    out = tmp_path / "out"
    _crashed_at_the_third_batch(out)
    with pytest.raises(EvaluationError, match="cannot resume") as error:
        evaluate(_model(), ShapesDataModule(**DATA_ARGS), out, resume=True, trainer=_trainer(**trainer_options),
                 **FAST)  # fmt: skip
    assert named in str(error.value)
    assert (tmp_path / ".out.work" / "state" / "rank-0-of-1.pt").is_file()


# ---------------------------------------------------------------------------------------------------- processes
def _flat(result: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for method, metrics in result["methods"].items():
        for metric, values in metrics.items():
            for key, value in values.items():
                for i, v in enumerate(value if isinstance(value, list) else [value]):
                    out[f"{method}/{metric}/{key}/{i}"] = float(v)
    return out


def test_two_processes_and_one_sample_equal_one_process(tmp_path: Path):
    """The rank without samples takes part in every collective call; the result is the one-process result."""
    checkpoint = tmp_path / "model.pt"
    torch.save(_model().state_dict(), checkpoint)
    config = {
        "model": {"class_path": "lit_attr.models.DemoClassifier", "init_args": MODEL_ARGS},
        "data": {"class_path": "lit_attr.data.ShapesDataModule", "init_args": DATA_ARGS},
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False},
        **{key: value for key, value in FAST.items() if key != "progress"},
        "methods": ["saliency", "ig2"],
        "method_kwargs": {"ig2": {"steps": 3, "n_references": 2}},
        "limit_samples": 1,
    }
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump(config))
    base = ["--config", str(tmp_path / "evaluate.yaml"), "--ckpt_path", str(checkpoint)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    two = subprocess.run(
        [sys.executable, "-m", "lit_attr.cli", "evaluate", *base, "--output_dir", str(tmp_path / "two"),
         "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Traceback" not in two.stderr
    one, _ = run_evaluate([*base, "--output_dir", str(tmp_path / "one")], progress=False)
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (double["world_size"], double["num_samples"], one["num_samples"]) == (2, 1, 1)
    a, b = _flat(one), _flat(double)
    assert a.keys() == b.keys() and len(a) > 10
    assert all(math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-6) for k in a), {k: (a[k], b[k]) for k in a}
