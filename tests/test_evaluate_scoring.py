"""Models that cannot be scored honestly are refused by evaluate, the runner and the callbacks (one check).

A single logit under a softmax is 1 for every input, so every score would be 1.0; outputs that already are
probabilities would be squashed by a second softmax; float labels with a fraction would be truncated to another
class. A binary classifier's single logit ``z`` is scored honestly once the user names the convention
(``model_output="sigmoid"``): class 1 by ``sigmoid(z)``, class 0 by ``1 - sigmoid(z)``. The references are closed
forms on a linear model and the same games played on an equivalent two-logit model ``[0, z]``.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from callbacks._helpers import TRAINER_DEFAULTS, datamodule
from torch import Tensor, nn

from lit_attr._binary import BinaryLogits
from lit_attr.batch import Batch, adapt_batch
from lit_attr.callbacks import AttributionMonitor
from lit_attr.data import ShapesDataModule
from lit_attr.evaluate import EvaluationError, evaluate
from lit_attr.metrics import InsertionDeletion
from lit_attr.models import DemoClassifier
from lit_attr.runner import AttributionRunner


def _linear(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, outputs))


class _ZeroAndLogit(nn.Module):
    """``[0, z]``: the softmax of which is ``[1 - sigmoid(z), sigmoid(z)]``, the binary convention spelled out."""

    def __init__(self, single: nn.Module) -> None:
        super().__init__()
        self.single = single

    def forward(self, x: Tensor) -> Tensor:
        z = self.single(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def _images(n: int = 4) -> Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_a_single_logit_is_refused_by_the_runner_naming_the_convention():
    runner = AttributionRunner(_linear(1), ["saliency"], ["insertion_deletion"])
    with pytest.raises(ValueError, match=r"one output per sample .*pass model_output='sigmoid'") as error:
        runner.run(Batch(_images(), torch.tensor([0, 1, 0, 1])))
    assert "\n" not in str(error.value)


def test_a_single_logit_with_model_output_sigmoid_scores_both_classes_honestly():
    single = _linear(1)
    x, y = _images(), torch.tensor([0, 1, 1, 0])
    options = {"metric_kwargs": {"insertion_deletion": {"n_steps": 4}}, "keep_attributions": 4}
    runner = AttributionRunner(single, ["input_x_gradient"], ["insertion_deletion"], model_output="sigmoid", **options)
    records = runner.run(Batch(x, y))
    with torch.no_grad():
        p = single(x)[:, 0].sigmoid()
    weights = single[1].weight.detach().reshape(3, 8, 8)
    for row, record in enumerate(records):
        # The target class's probability: sigmoid(z) for class 1, 1 - sigmoid(z) for class 0 (closed form).
        expected = float(p[row] if y[row] == 1 else 1 - p[row])
        assert record.target_probability == pytest.approx(expected, abs=1e-6)
        # input x gradient of the class logit +-z/2 of a linear model: +-x * w / 2.
        sign = 1.0 if y[row] == 1 else -1.0
        torch.testing.assert_close(record.attributions["input_x_gradient"], sign * x[row] * weights / 2)
    # The games on those maps equal the games on the two-logit model [0, z] (same probabilities, no wrapper).
    maps = torch.stack([record.attributions["input_x_gradient"] for record in records])
    reference = InsertionDeletion(_ZeroAndLogit(single), n_steps=4).score(x, maps, y)
    for row, record in enumerate(records):
        for key in ("insertion", "deletion"):
            assert record.scores["input_x_gradient"][key] == pytest.approx(float(reference[key][row]), abs=1e-5)
    assert min(r.scores["input_x_gradient"]["insertion"] for r in records) < 0.99  # not the constant 1.0 any more


def test_the_binary_wrapper_copies_with_its_module_and_shows_its_attributes():
    wrapped = BinaryLogits(nn.Linear(5, 1))
    twin = copy.deepcopy(wrapped)  # the randomisation checks copy the model, then change the copy's weights
    with torch.no_grad():
        twin.module.weight.zero_()
        twin.module.bias.fill_(2.0)
    x = torch.rand(2, 5)
    torch.testing.assert_close(twin(x), torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]))  # [-z/2, z/2] with z = 2
    with torch.no_grad():
        z = wrapped.module(x)
    torch.testing.assert_close(wrapped(x), torch.cat([-z / 2, z / 2], dim=1))  # the original is untouched
    assert wrapped.in_features == 5  # attributes of the wrapped module (config, embeddings, ...) are reachable


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        (nn.Sequential(_linear(4), nn.Softmax(dim=1)), {}, "look like probabilities"),
        (_linear(4), {"model_output": "sigmoid"}, "binary classifier with one logit per sample"),
    ],
    ids=["probabilities", "sigmoid_with_four_logits"],
)
def test_outputs_that_cannot_be_scored_are_refused_by_the_runner(model, options, message):
    with pytest.raises(ValueError, match=message):
        AttributionRunner(model, ["saliency"], **options).run(Batch(_images()))


class _SoftmaxDemo(DemoClassifier):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).softmax(dim=1)


def test_the_monitor_refuses_a_softmax_model_at_its_first_run(tmp_path):
    monitor = AttributionMonitor(["saliency"], metrics=["insertion_deletion"], num_samples=4,
                                 metric_kwargs={"insertion_deletion": {"n_steps": 4}})  # fmt: skip
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, callbacks=[monitor],
                        limit_train_batches=1, limit_val_batches=1, **TRAINER_DEFAULTS)  # fmt: skip
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="look like probabilities"):
        trainer.fit(_SoftmaxDemo(width=4), datamodule=datamodule(num_train=32, num_val=8))


class _BinaryDemo(DemoClassifier):
    """The demo CNN with one logit: ``z = logit(circle) - logit(square)`` style binary head."""

    def forward(self, x: Tensor) -> Tensor:
        logits = super().forward(x)
        return logits[:, 1:2] - logits[:, :1]


def test_evaluate_refuses_a_single_logit_and_scores_it_with_model_output_sigmoid(tmp_path):
    torch.manual_seed(0)
    model = _BinaryDemo(num_classes=2, width=4)
    data = ShapesDataModule(num_train=8, num_val=8, num_test=4)  # four labels: the predictions are explained
    options = {"methods": ["saliency"], "metrics": ["insertion_deletion"], "limit_samples": 4, "progress": False,
               "metric_kwargs": {"insertion_deletion": {"n_steps": 4}}, "target": "prediction"}  # fmt: skip
    with pytest.raises(EvaluationError, match="model_output='sigmoid'"):
        evaluate(model, data, tmp_path / "refused", **options)
    assert not (tmp_path / "refused").exists()
    result = evaluate(model, data, tmp_path / "out", model_output="sigmoid", **options)
    assert result["num_classes"] == 2
    scores = result["methods"]["saliency"]["insertion_deletion"]
    assert 0.0 < scores["deletion"] < 1.0 and scores["insertion"] != scores["deletion"]


def test_float_labels_with_a_fraction_are_refused_and_whole_ones_read():
    x = _images(2)
    with pytest.raises(ValueError, match=r"`labels` must be integer class indices.*e\.g\. 1\.9"):
        adapt_batch((x, torch.tensor([0.0, 1.9])))
    assert adapt_batch((x, torch.tensor([1.0, 0.0]))).y.tolist() == [1, 0]


def test_the_insertion_deletion_metric_alone_refuses_a_single_logit_under_a_softmax():
    maps = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="model_output='sigmoid'"):
        InsertionDeletion(_linear(1), n_steps=4).update(_images(), maps, 0)
    # Tracking the raw logit is honest for any number of outputs: its curve starts at the clean logit.
    logit = InsertionDeletion(_linear(1), n_steps=4, output="logit").score(_images(), maps, 0)
    with torch.no_grad():
        clean = _linear(1)(_images())[:, 0]
    torch.testing.assert_close(logit["deletion_curve"][:, 0], clean)
