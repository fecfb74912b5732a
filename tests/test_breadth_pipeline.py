"""Every metric of issue #26 by name in the monitor, ``evaluate`` (report and metrics.json) and ``AttributionQuality``,
with the same numbers in all three; those of maps alone also on token ids, through the runner."""

from __future__ import annotations

import json

import lightning as L
import torch
from breadth_helpers import FAST
from callbacks._helpers import TRAINER_DEFAULTS, datamodule, model
from text_helpers import MASK, SPECIALS, plain_transformer, token_metric_inputs

from lit_attr.attribution_quality import AttributionQuality
from lit_attr.batch import Batch
from lit_attr.callbacks import AttributionMonitor
from lit_attr.evaluate import evaluate
from lit_attr.inputs import TokenOptions
from lit_attr.metrics import get_metric_spec
from lit_attr.metrics.presentation import DEFAULT
from lit_attr.runner import AttributionRunner

METRICS = tuple(sorted(FAST))
# The demo's 32 x 32 images: Focus may keep its paper's full-size mosaics (the demo CNN pools globally).
OPTIONS = {**FAST, "focus": {}}


def test_every_new_metric_in_the_monitor_evaluate_quality_and_the_report(tmp_path):
    net, n = model().eval(), 6
    dm = datamodule(num_val=n)
    monitor = AttributionMonitor(["saliency"], metrics=METRICS, num_samples=n, log_heatmaps=0, metric_kwargs=OPTIONS,
                                 background_delivery=False)  # fmt: skip
    trainer = L.Trainer(logger=False, callbacks=[monitor], inference_mode=False, **TRAINER_DEFAULTS)
    trainer.validate(net, datamodule=dm, verbose=False)
    monitored = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("attr/")}
    result = evaluate(net, dm, tmp_path / "out", methods=["saliency"], metrics=list(METRICS), metric_kwargs=OPTIONS,
                      limit_samples=n, batch_size=n, input_bounds=None, progress=False)  # fmt: skip
    quality = AttributionQuality(net, "saliency", metrics=METRICS, metric_kwargs=OPTIONS)
    dm.setup("validate")
    quality.update(dm.val_set.images[:n], target=dm.val_set.labels[:n], masks=dm.val_set.masks[:n])
    scores = quality.compute()

    evaluated = result["methods"]["saliency"]
    assert set(evaluated) == set(METRICS)
    expected = set()
    for name in METRICS:
        for score in get_metric_spec(name).presentation.scores:
            if score.key in evaluated[name]:
                expected.add(f"attr/saliency/{name}/{score.key}")
    assert expected <= set(monitored) and expected <= set(scores)
    for key in sorted(expected):
        _, _, name, score = key.split("/")
        value = torch.tensor(float(evaluated[name][score]))
        # Focus builds its mosaics from the batch: the monitor's probe set holds the samples in another order.
        for source in (scores,) if name == "focus" else (monitored, scores):
            torch.testing.assert_close(source[key].float().cpu(), value.float(), rtol=1e-4, atol=1e-5, msg=key,
                                       equal_nan=True)  # fmt: skip
    page = (tmp_path / "out" / "report.html").read_text()
    document = json.loads((tmp_path / "out" / "metrics.json").read_text())
    written = document["methods"]["saliency"]
    # Per-sample values: one entry per sample, whose NaN-aware mean is the score metrics.json and evaluate report.
    assert [entry["index"] for entry in document["samples"]] == list(range(n))
    for key in sorted(expected):
        _, _, name, score = key.split("/")
        values = torch.tensor([sample["scores"]["saliency"][score] for sample in document["samples"]]).double()
        torch.testing.assert_close(values.nanmean(), torch.tensor(float(evaluated[name][score]), dtype=torch.float64),
                                   rtol=1e-4, atol=1e-5, msg=key, equal_nan=True)  # fmt: skip
    for name in METRICS:
        presentation = get_metric_spec(name).presentation
        assert presentation.scores is not DEFAULT and name in written
        for score in presentation.scores_in({"saliency": evaluated[name]}):
            assert score.title in page, (name, score.title)  # its label and its direction's arrow


def test_metrics_of_maps_alone_score_token_ids_through_the_runner():
    text = plain_transformer()
    ids, attention, _, rationale = token_metric_inputs(seed=2)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    names = [name for name in METRICS if get_metric_spec(name).accepts({"tokens"})
             and not {"model", "method"} & set(get_metric_spec(name).consumes)]  # fmt: skip
    assert set(names) == {"attribution_localisation", "complexity", "effective_complexity", "sparseness",
                          "top_k_intersection", "consistency", "sufficiency_dasgupta"}  # fmt: skip
    options = {name: {"k": 1} if name == "top_k_intersection" else {} for name in names}
    method_options = {"saliency": {"token_options": TokenOptions(special_token_ids=SPECIALS, mask_token_id=MASK)}}
    runner = AttributionRunner(text, ["saliency"], names, metric_kwargs=options, method_kwargs=method_options)
    batch = Batch(ids, None, rationale, attention_mask=attention, special_tokens_mask=special.long())
    records = runner.run(batch)
    maps = runner.methods["saliency"].attribute(ids, attention_mask=attention, special_tokens_mask=special.long())
    valid = attention.bool() & ~special
    for row, record in enumerate(records):
        real = maps[row][valid[row]].abs()
        p = real / real.sum()
        torch.testing.assert_close(torch.tensor(record.scores["saliency"]["complexity"]), -(p * p.log()).sum())
    computed = runner.compute()["saliency"]
    assert set(computed) == set(names)
