"""Attaching a callback never changes training: bit-identical weights and losses with and without it."""

import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from callbacks._helpers import METHOD_KWARGS, METRIC_KWARGS, fit, read_metrics_csv, state_equal
from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
from lit_attr.methods import AttributionMethod


def _monitor() -> AttributionMonitor:
    # Methods that draw random numbers (ig2's reference sampler, smoothgrad's noise) and one that optimises (fei)
    # are the likeliest to leak into the training run.
    return AttributionMonitor(
        ["saliency", "mfaba", "ig2", "smoothgrad", "fei"],
        num_samples=12,
        log_heatmaps=3,
        input_bounds=(0.0, 1.0),
        method_kwargs={**{k: METHOD_KWARGS[k] for k in ("mfaba", "ig2")}, "fei": {"iterations": 2}},
        metric_kwargs=METRIC_KWARGS,
        batch_size=5,
    )


def _check() -> RandomizationCheck:
    return RandomizationCheck(["saliency", "smoothgrad"], num_samples=4, every_n_epochs=1, log_heatmaps=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[float], list[str]]:
    root = tmp_path_factory.mktemp("reference")
    net, trainer, recorder = fit(root, max_epochs=3)
    logged = [row["train_loss"] for row in read_metrics_csv(Path(trainer.logger.log_dir) / "metrics.csv")]
    return net.state_dict(), recorder.losses, [v for v in logged if v]


@pytest.mark.parametrize("make_callback", [_monitor, _check], ids=["AttributionMonitor", "RandomizationCheck"])
def test_weights_and_losses_are_bit_identical(tmp_path, reference, make_callback):
    callback = make_callback()
    net, trainer, recorder = fit(tmp_path, [callback], max_epochs=3)
    assert sorted(callback.history) == [0, 1, 2], "the callback must actually have run at every epoch"
    state, losses, logged = reference
    assert state_equal(net.state_dict(), state)
    assert recorder.losses == losses
    rows = read_metrics_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    assert [row["train_loss"] for row in rows if row["train_loss"]] == logged


class _FailsAtItsSecondCall(AttributionMethod):
    """Input x gradient, except that its second call (epoch 1) vandalises what it can reach, then raises.

    Before raising it draws from every global generator, switches the model to train mode and lets parameters
    require gradients, overwrites their ``.grad``, and runs a train-mode forward (BatchNorm statistics move).
    """

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.calls = 0

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(self.logits(x).gather(1, target[:, None]).sum(), x)
        if self.calls == 2:
            torch.rand(3), np.random.rand(3), random.random()
            self.model.train()
            for p in self.model.parameters():
                p.requires_grad_(True)
                p.grad = torch.ones_like(p)
            self.logits(x.detach() * 0.5)
            raise RuntimeError("attribution failed half-way")
        return (g * x).detach()


def test_a_method_failing_in_one_epoch_with_on_error_warn_leaves_training_bit_identical(tmp_path, reference):
    monitor = AttributionMonitor(
        {"flaky": _FailsAtItsSecondCall, "saliency": "saliency"},
        num_samples=8,
        log_heatmaps=2,
        input_bounds=(0.0, 1.0),
        metric_kwargs=METRIC_KWARGS,
        on_error="warn",
    )
    with pytest.warns(UserWarning, match=r"attribution failed at epoch 1 \(RuntimeError: attribution failed half"):
        net, trainer, recorder = fit(tmp_path, [monitor], max_epochs=3)
    assert sorted(monitor.history) == [0, 2], "epoch 1 failed and was skipped; the others ran"
    state, losses, logged = reference
    assert state_equal(net.state_dict(), state)
    assert recorder.losses == losses
    rows = read_metrics_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    assert [row["train_loss"] for row in rows if row["train_loss"]] == logged


class _Spy(L.Callback):
    """Records the global RNG state, the model's modes and gradients when its hook runs."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        self.seen.append(
            (
                torch.get_rng_state(),
                [m.training for m in pl_module.modules()],
                [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in pl_module.parameters()],
                [b.clone() for b in pl_module.buffers()],
            )
        )


def test_monitor_leaves_rng_model_state_and_grads_alone(tmp_path):
    before, after = _Spy(), _Spy()
    monitor = _monitor()
    fit(tmp_path, [before, monitor, after], max_epochs=2)
    assert monitor.history and len(before.seen) == len(after.seen) == 2
    (rng_a, modes_a, grads_a, buffers_a), (rng_b, modes_b, grads_b, buffers_b) = before.seen[-1], after.seen[-1]
    assert torch.equal(rng_a, rng_b)
    assert modes_a == modes_b
    assert len(grads_a) == len(grads_b)
    for (flag_a, grad_a), (flag_b, grad_b) in zip(grads_a, grads_b, strict=True):
        assert flag_a == flag_b
        assert (grad_a is None) == (grad_b is None)
        assert grad_a is None or torch.equal(grad_a, grad_b)
    assert all(torch.equal(a, b) for a, b in zip(buffers_a, buffers_b, strict=True))
