"""RandomizationCheck: when it runs, what it logs, and that it tells a weight-blind method from a real one."""

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from callbacks._helpers import fit, read_metrics_csv
from lit_attr.callbacks import RandomizationCheck
from lit_attr.functional.complexity import complexity, sparseness
from lit_attr.methods import AttributionMethod
from lit_attr.metrics import Complexity, ParameterRandomization, Sparseness


class _InputOnly(AttributionMethod):
    """An 'explanation' that never looks at the model: the input itself (an edge-detector-like baseline)."""

    def _attribute(self, x: Tensor, target: Tensor, **kwargs) -> Tensor:
        return x.clone()


def _stage_names(trainer) -> list[str]:
    # Every conv/linear/norm leaf of the demo network, plus "original".
    net = trainer.lightning_module
    leaves = [
        name
        for name, m in net.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d))
    ]
    return ["original", *leaves]


def test_runs_at_fit_end_and_logs_everything(tmp_path):
    check = RandomizationCheck({"saliency": "saliency", "input_only": _InputOnly}, num_samples=6, log_heatmaps=2)
    _, trainer, _ = fit(tmp_path, [check], max_epochs=2)
    assert sorted(check.history) == [1], "once, for the last epoch"

    blind = check.results["input_only"]
    # Randomising weights cannot change an input-only map: similarity 1 at every stage, the check fails.
    for measure in ("spearman_abs", "ssim"):
        torch.testing.assert_close(blind[measure]["curve"], torch.ones_like(blind[measure]["curve"]), atol=1e-4, rtol=0)
    assert check.history[1]["attr/input_only/randomization/passed"] is False
    saliency = check.results["saliency"]["spearman_abs"]
    assert sorted(saliency["stages"][1:]) == sorted(_stage_names(trainer)[1:])
    assert saliency["stages"][0] == "original"
    assert float(saliency["curve"][0]) == pytest.approx(1.0), "saliency is deterministic"
    assert float(saliency["curve"][-1]) < 0.9, "a fully random network gives a different saliency map"

    log_dir = Path(trainer.logger.log_dir)
    last = read_metrics_csv(log_dir / "metrics.csv")
    # The written keys, in the scheme attr/<method>/<metric>/<score> (the check runs the "randomization" metric).
    logged = {k: float(v) for row in last for k, v in row.items() if k.startswith("attr/") and v}
    assert set(logged) == {f"attr/{method}/randomization/{score}" for method in ("input_only", "saliency")
                           for score in ("spearman_abs", "ssim", "passed")}  # fmt: skip
    assert logged["attr/input_only/randomization/passed"] == 0.0
    assert logged["attr/input_only/randomization/spearman_abs"] == pytest.approx(1.0)
    assert math.isfinite(logged["attr/saliency/randomization/ssim"])
    media = log_dir / "media" / "randomization"
    summary = (media / "summary" / "step_0000008.csv").read_text().splitlines()
    assert summary[0] == "epoch,method,similarity,final,threshold,passed"
    assert "1,input_only,spearman_abs,1.0,0.5,False" in summary
    curves = (media / "curves" / "step_0000008.csv").read_text().splitlines()
    assert len(curves) == 1 + 2 * 2 * len(saliency["stages"])
    assert len(list((media / "similarity_curves").glob("*.png"))) == 1
    for name in ("saliency", "input_only"):
        assert len(list((media / name / "stages").glob("*.png"))) == 1


def test_map_metrics_score_every_stage_and_are_logged(tmp_path):
    scores = {"sparseness": Sparseness, "complexity": Complexity}
    check = RandomizationCheck(["saliency"], num_samples=5, log_heatmaps=0, similarity="spearman_abs",
                               map_metrics=list(scores))  # fmt: skip
    net, trainer, _ = fit(tmp_path, [check], max_epochs=1)
    entries = check.results["saliency"]["map_metrics"]
    assert set(entries) == set(scores)

    # The probe samples read from the dataset, their maps at every stage of the trained network, scored by the
    # functionals: the per-stage means the check reports.
    samples = [trainer.datamodule.val_set[index] for index in check.probe_indices]
    x, y = torch.stack([sample[0] for sample in samples]), torch.stack([sample[1] for sample in samples])
    stage_maps = dict(ParameterRandomization("saliency", net, similarity="spearman_abs").stage_attributions(x, y))
    expected = {"sparseness": sparseness, "complexity": complexity}
    for key, functional in expected.items():
        assert entries[key]["stages"] == list(stage_maps)
        reference = torch.stack([functional(maps).mean() for maps in stage_maps.values()])
        torch.testing.assert_close(entries[key]["curve"], reference, rtol=1e-5, atol=1e-6, msg=key)

    log_dir = Path(trainer.logger.log_dir)
    logged = {k: float(v) for row in read_metrics_csv(log_dir / "metrics.csv") for k, v in row.items() if v}
    for key in scores:
        assert logged[f"attr/saliency/randomization/{key}"] == pytest.approx(float(entries[key]["final"])), key
    (table,) = (log_dir / "media" / "randomization" / "map_metrics").glob("*.csv")
    rows = read_metrics_csv(table)
    assert len(rows) == len(scores) * len(stage_maps)
    arrow = {True: "↑", False: "↓"}
    for row in rows:  # each score with the direction its Metric class declares
        assert row["direction"] == arrow[scores[row["score"]].higher_is_better]
        assert float(row["value"]) == pytest.approx(float(entries[row["score"]]["curve"][int(row["stage_index"])]))
    assert len(list((log_dir / "media" / "randomization" / "map_metric_curves").glob("*.png"))) == 1


def test_map_metrics_must_be_metrics_of_the_maps_alone():
    with pytest.raises(ValueError, match=r"`map_metrics` takes metrics of the maps alone .*'local_lipschitz' also"):
        RandomizationCheck(["saliency"], map_metrics=["sparseness", "local_lipschitz"])
    with pytest.raises(ValueError, match=r"`map_metrics`: unknown metric 'entropy'"):
        RandomizationCheck(["saliency"], map_metrics="entropy")
    with pytest.raises(TypeError, match=r"`map_metrics` must be a metric or a sequence of metrics"):
        RandomizationCheck(["saliency"], map_metrics=3)


def test_every_n_epochs_and_last_stage_only(tmp_path):
    check = RandomizationCheck(["saliency"], num_samples=4, every_n_epochs=2, stages="last", log_heatmaps=0)
    fit(tmp_path, [check], logger=False, max_epochs=4)
    assert sorted(check.history) == [1, 3]
    assert check.results["saliency"]["spearman_abs"]["stages"][0] == "original"
    assert len(check.results["saliency"]["spearman_abs"]["stages"]) == 2


def test_on_error_warn(tmp_path):
    class _Failing(_InputOnly):
        def _attribute(self, x, target, **kwargs):
            raise RuntimeError("boom")

    check = RandomizationCheck({"failing": _Failing}, num_samples=2, log_heatmaps=0, on_error="warn")
    with pytest.warns(UserWarning, match=r"RandomizationCheck: the randomisation check failed at epoch 1 \(Runtime"):
        fit(tmp_path, [check], logger=False, max_epochs=2)
    assert check.history == {}
