"""A metric registered here, with no edit to lit-attr, shows up everywhere its presentation says (issue #23, item 2).

``Spread`` declares nothing but its Metric class's ``higher_is_better = False`` and returns a curve: the report gives
its score a column with the ↓ arrow and draws its curve, the monitor logs it under ``attr/<method>/spread/spread``
and delivers the curve figure.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from callbacks._helpers import TRAINER_DEFAULTS, datamodule, model, read_metrics_csv
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torchmetrics import Metric

from lit_attr.callbacks import AttributionMonitor
from lit_attr.evaluate import evaluate
from lit_attr.methods import get_method
from lit_attr.metrics import register_metric, unregister_metric
from lit_attr.report import score_rows

POINTS = 5


def spread_of(attributions: Tensor) -> Tensor:
    """The spread of a sample's |A|: their standard deviation (the test's own definition)."""
    return attributions.abs().flatten(1).std(dim=1)


class Spread(Metric):
    """Per sample, the spread of |A| (lower is better); in all, also the mean sorted-|A| profile (a curve)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("profile", torch.zeros(POINTS), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def score(self, attributions: Tensor) -> dict[str, Tensor]:
        return {"spread": spread_of(attributions)}

    def update(self, attributions: Tensor, *, scores: dict[str, Tensor] | None = None) -> None:
        scores = self.score(attributions) if scores is None else scores
        values = attributions.abs().flatten(1).sort(dim=1, descending=True).values
        positions = torch.linspace(0, values.shape[1] - 1, POINTS).long().to(values.device)
        self.total += scores["spread"].sum()
        self.profile += values[:, positions].sum(dim=0)
        self.count += values.shape[0]

    def compute(self) -> dict[str, Tensor]:
        return {"spread": self.total / self.count, "profile": self.profile / self.count}


@pytest.fixture
def spread():
    register_metric("spread", Spread, consumes=("attributions",), per_sample=True)
    yield "spread"
    unregister_metric("spread")


def test_the_report_shows_its_direction_and_draws_its_curve(spread, tmp_path):
    net, dm = model().eval(), datamodule(num_val=6)
    result = evaluate(net, dm, tmp_path / "out", methods=["saliency"], metrics=[spread], limit_samples=6,
                      progress=False)  # fmt: skip
    dm.setup("validate")
    x, y = dm.val_set.images[:6], dm.val_set.labels[:6]
    expected = spread_of(get_method("saliency", net, input_bounds=(0.0, 1.0)).attribute(x, y)).mean()
    assert result["methods"]["saliency"][spread]["spread"] == pytest.approx(float(expected), rel=1e-5)

    header, rows = score_rows(result)
    (column,) = [name for name in header if "spread" in name]
    assert column.endswith("↓")  # from Spread.higher_is_better, declared nowhere else
    assert rows[0][header.index(column)] == pytest.approx(float(expected), rel=1e-5)
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert f"<th>{column}</th>" in page
    assert '<section><h2>spread curves</h2><img alt="spread curves" src="data:image/png;base64,' in page
    assert (tmp_path / "out" / "spread_curves.png").read_bytes()[1:4] == b"PNG"


def test_the_monitor_logs_it_under_the_key_scheme_and_delivers_its_curve(spread, tmp_path):
    net, dm = model().eval(), datamodule(num_val=8)
    monitor = AttributionMonitor(["saliency"], metrics=[spread], num_samples=4, log_heatmaps=2,
                                 background_delivery=False)  # fmt: skip
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(logger=logger, callbacks=[monitor], inference_mode=False, **TRAINER_DEFAULTS)
    trainer.validate(net, datamodule=dm, verbose=False)

    dm.setup("validate")
    probe = monitor.probe_indices
    x, y = dm.val_set.images[probe], dm.val_set.labels[probe]
    expected = spread_of(get_method("saliency", net).attribute(x, y)).mean()
    logged = trainer.callback_metrics["attr/saliency/spread/spread"]
    torch.testing.assert_close(logged, expected, rtol=1e-5, atol=1e-7)
    rows = read_metrics_csv(f"{logger.log_dir}/metrics.csv")
    written = [float(row["attr/saliency/spread/spread"]) for row in rows if row.get("attr/saliency/spread/spread")]
    assert written == [pytest.approx(float(expected), rel=1e-5)]
    media = tmp_path / "lightning_logs" / "version_0" / "media" / "attr"
    assert len(list((media / "spread_curves").glob("*.png"))) == 1
