"""Token inputs through the whole pipeline: the monitor, ``evaluate`` and ``AttributionQuality`` on the batches a
Hugging Face collator makes (``input_ids``, ``attention_mask``, ``labels``, ``rationale_mask``), with no adapter."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lit_attr.attribution_quality import AttributionQuality
from lit_attr.batch import Batch
from lit_attr.callbacks import AttributionMonitor
from lit_attr.data import SyntheticTextDataModule
from lit_attr.data.text import collate_tokens
from lit_attr.evaluate import check_logits, evaluate
from lit_attr.methods import get_method
from lit_attr.runner import AttributionRunner

N = 8
METHODS = ("saliency", "integrated_gradients", "mfaba", "ig2")
METHOD_KWARGS = {"integrated_gradients": {"n_steps": 8}, "mfaba": {"max_steps": 5},
                 "ig2": {"steps": 3, "n_references": 2, "return_baseline": True}}  # fmt: skip
METRICS = ("comprehensiveness", "sufficiency", "token_insertion_deletion", "token_localization")
METRIC_KWARGS = {"token_insertion_deletion": {"n_steps": 4}}
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def text(trained_text_demo):
    model, _ = trained_text_demo
    data = SyntheticTextDataModule(num_train=16, num_val=N, num_test=N, batch_size=4, seed=3)
    data.setup("validate")
    return model, data


def test_monitor_evaluate_and_quality_agree_on_token_batches(text, tmp_path):
    model, data = text
    # One batch of all N everywhere: rank-based scores (AUPRC) flip on float noise of 1e-8 between batch shapes.
    monitor = AttributionMonitor(list(METHODS), metrics=METRICS, num_samples=N, log_heatmaps=2, batch_size=N,
                                 method_kwargs=METHOD_KWARGS, metric_kwargs=METRIC_KWARGS,
                                 background_delivery=False)  # fmt: skip
    logger = L.pytorch.loggers.CSVLogger(tmp_path / "logs")
    trainer = L.Trainer(logger=logger, callbacks=[monitor], inference_mode=False, **TRAINER)
    trainer.validate(model, datamodule=data, verbose=False)
    monitored = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("attr/")}

    result = evaluate(model, data, tmp_path / "out", methods=list(METHODS), method_kwargs=METHOD_KWARGS,
                      metrics=list(METRICS), metric_kwargs=METRIC_KWARGS, limit_samples=N, batch_size=N,
                      reference_pool_size=N, input_bounds=None, progress=False, heatmap_samples=2)  # fmt: skip
    batch = collate_tokens([data.val_set[i] for i in range(N)])
    quality = {}
    for name in METHODS:
        metric = AttributionQuality(model, name, metrics=METRICS, method_kwargs=METHOD_KWARGS.get(name),
                                    metric_kwargs=METRIC_KWARGS)  # fmt: skip
        metric.update(batch["input_ids"], target=batch["labels"], masks=batch["rationale_mask"],
                      attention_mask=batch["attention_mask"], special_tokens_mask=batch["special_tokens_mask"])
        quality.update(metric.compute())

    scores = {"comprehensiveness": ("comprehensiveness",), "sufficiency": ("sufficiency",),
              "token_insertion_deletion": ("insertion", "deletion", "difference"),
              "token_localization": ("token_f1", "token_iou", "auprc")}  # fmt: skip
    keys = {f"attr/{m}/{metric}/{k}" for m in METHODS for metric, names in scores.items() for k in names}
    assert set(monitored) == set(quality) == keys
    for key in sorted(monitored):
        _, method, metric, score = key.split("/")
        value = torch.tensor(result["methods"][method][metric][score])
        torch.testing.assert_close(monitored[key].float(), value.float(), rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(quality[key].float(), value.float(), rtol=1e-5, atol=1e-6, msg=key)

    # The highlighting reached the report (as HTML) and the file logger (PNG and HTML), and the table's rows.
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('<section class="tokens">') == len(METHODS)
    assert "[CLS]" in page and "<span" in page
    media = tmp_path / "logs" / "lightning_logs" / "version_0" / "media" / "attr"
    for method in METHODS:
        assert list((media / method / "tokens").glob("*.png")) and list((media / method / "tokens").glob("*.html"))
    table = next((media / "samples").glob("*.csv")).read_text().splitlines()
    assert table[0].split(",")[8] == "tokens" and "[CLS]" in table[1]


def test_token_metrics_refuse_images_and_image_metrics_refuse_tokens(text):
    model, data = text
    batch = collate_tokens([data.val_set[i] for i in range(2)])
    runner = AttributionRunner(model, ["saliency"], ["insertion_deletion"])
    from lit_attr.batch import adapt_batch

    with pytest.raises(ValueError, match=r"metric 'insertion_deletion' does not take tokens inputs .* metrics for "
                                         r"them: .*comprehensiveness"):  # fmt: skip
        runner.run(adapt_batch(batch))


def test_text_report_metrics_json_is_plain(text, tmp_path):
    model, data = text
    evaluate(model, data, tmp_path / "out", methods=["saliency"], metrics=["comprehensiveness", "token_localization"],
             limit_samples=4, input_bounds=None, progress=False)  # fmt: skip
    result = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= result["methods"]["saliency"]["token_localization"]["token_f1"] <= 1.0
    assert len(result["methods"]["saliency"]["comprehensiveness"]["comprehensiveness_curve"]) == 5  # 5 bins


class _LogitsOnly(torch.nn.Module):
    """A Hugging Face classifier wrapped to return its logits tensor, as users used to have to."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids, attention_mask=attention_mask).logits


def test_a_hugging_face_classifier_runs_as_it_is(tmp_path):
    """BertForSequenceClassification returns a SequenceClassifierOutput: every path reads its logits."""
    from text_helpers import tiny_bert, token_batch

    bert = tiny_bert()
    ids, mask = token_batch()
    special = torch.zeros_like(ids)
    special[:, 0] = 1
    special[torch.arange(len(ids)), mask.sum(dim=1) - 1] = 1
    options = {"metrics": ("comprehensiveness", "token_insertion_deletion"), "metric_kwargs": METRIC_KWARGS,
               "method_kwargs": {"n_steps": 4}}  # fmt: skip
    scores = {}
    for name, model in (("bert", bert), ("wrapped", _LogitsOnly(bert))):
        quality = AttributionQuality(model, "integrated_gradients", **options)
        quality.update(ids, attention_mask=mask, special_tokens_mask=special)
        scores[name] = quality.compute()
    torch.testing.assert_close(scores["bert"], scores["wrapped"])
    assert check_logits(bert, ids, mask) == 3


def test_two_forwards_per_runner_batch_of_equal_length_token_ids(text):
    """The runner's clean forward, then saliency's gradient pass: the embedding space reuses the runner's logits
    and takes the clean embeddings from one call of the embedding layer, as images reuse them (test_runner)."""
    model, data = text
    batch = collate_tokens([data.val_set[i] for i in range(N)])
    lengths = batch["attention_mask"].sum(dim=1)
    length = int(lengths.mode().values)
    keep = (lengths == length).nonzero()[:2, 0]
    ids, mask = batch["input_ids"][keep, :length], batch["attention_mask"][keep, :length]
    labels, rationales = batch["labels"][keep], batch["rationale_mask"][keep, :length]
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(args))
    try:
        runner = AttributionRunner(model, ["saliency"], ["token_localization"])
        runner.run(Batch(ids, labels, rationales, mask))
    finally:
        handle.remove()
    assert ids.shape[0] == 2 and bool(mask.all())  # two sentences of one length, no padding
    assert len(calls) == 2


def test_mfaba_on_token_ids_adds_up_to_the_score_drop_it_explains(trained_text_demo):
    """In embedding space MFABA takes steps of 0.06 mean token norms with the trapezoid rule: sum(A) follows the
    drop of the target probability along its path, where the raw defaults (steps of 0.1, left sums) miss much of it."""
    model, data = trained_text_demo
    batch = collate_tokens([data.val_set[i] for i in range(32)])
    inputs = {"attention_mask": batch["attention_mask"], "special_tokens_mask": batch["special_tokens_mask"]}
    gaps = {}
    for name, options in (("default", {}), ("raw defaults", {"step_size": 0.1, "rule": "left"})):
        maps, info = get_method("mfaba", model, **options).attribute(batch["input_ids"], batch["labels"],
                                                                   return_info=True, **inputs)  # fmt: skip
        gaps[name] = (maps.sum(dim=1) - info["score_drop"]).abs() / info["score_drop"].abs().clamp_min(1e-3)
        assert float(info["flipped"].float().mean()) > 0.5  # most paths reach the decision boundary
    assert float(gaps["default"].median()) < 0.1 < float(gaps["raw defaults"].median())
