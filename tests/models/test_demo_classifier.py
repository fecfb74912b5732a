import math
import re
from collections import Counter

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

from lit_attr.data import ShapesDataModule
from lit_attr.models import DEMO_EPOCHS, DemoClassifier


class _CountRelu(TorchFunctionMode):
    """Counts every ReLU evaluated through the functional API (nn.ReLU itself goes through F.relu)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_):
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _fresh_model(**kwargs: object) -> DemoClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DemoClassifier(**kwargs)


def _quick_trainer(**kwargs: object) -> L.Trainer:
    params = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(**(params | kwargs))


def test_demo_epochs_is_a_positive_int() -> None:
    assert isinstance(DEMO_EPOCHS, int)
    assert DEMO_EPOCHS >= 1


def test_forward_returns_logits_of_final_linear() -> None:
    model = _fresh_model().eval()
    assert isinstance(model.fc, nn.Linear)
    assert model.fc.out_features == 4
    captured = {}
    handle = model.fc.register_forward_hook(lambda _m, _i, out: captured.setdefault("fc", out))
    with torch.no_grad():
        out = model(torch.rand(5, 3, 32, 32))
    handle.remove()
    assert out.shape == (5, 4)
    assert out.dtype == torch.float32
    # Logits come straight out of the linear layer: no softmax or other post-processing.
    assert torch.equal(out, captured["fc"])


@pytest.mark.parametrize("num_classes", [2, 7])
def test_num_classes_sets_output_width(num_classes: int) -> None:
    model = _fresh_model(num_classes=num_classes).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 3, 32, 32)).shape == (3, num_classes)


def test_normalisation_buffers_inside_model() -> None:
    model = _fresh_model(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    buffers = dict(model.named_buffers())
    assert torch.allclose(buffers["mean"].flatten(), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(buffers["std"].flatten(), torch.tensor([0.5, 0.5, 0.5]))
    assert "mean" in model.state_dict()
    assert not any(p is buffers["mean"] for p in model.parameters())


def test_every_relu_is_a_distinct_module_called_once() -> None:
    model = _fresh_model().eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) >= 5  # stem + two per residual block, at least two blocks
    assert len({id(m) for m in relus}) == len(relus)
    assert not any(m.inplace for m in relus)

    calls: Counter[int] = Counter()
    handles = [m.register_forward_hook(lambda mod, _i, _o: calls.update([id(mod)])) for m in relus]
    counter = _CountRelu()
    with torch.no_grad(), counter:
        model(torch.rand(2, 3, 32, 32))
    for handle in handles:
        handle.remove()
    assert all(calls[id(m)] == 1 for m in relus)
    # No ReLU is applied functionally outside an nn.ReLU module.
    assert counter.calls == len(relus)


def test_has_residual_blocks_with_batchnorm_and_downsampling() -> None:
    model = _fresh_model().eval()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) >= 3
    shapes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert min(s[-1] for s in shapes) < 32


def test_configure_optimizers_without_trainer() -> None:
    model = _fresh_model(lr=1e-2, weight_decay=0.0)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == 1e-2


class _LearningRates(L.Callback):
    """The learning rate each optimiser step uses."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def _expected_rates(schedule: str, peak: float, total: int) -> list[float]:
    """Closed forms: cosine from ``peak`` to 0 over ``total`` steps; OneCycle (torch's defaults, pct_start=0.25):
    cosine warm-up from ``peak / 25`` to ``peak`` over steps 0 .. 0.25 * total - 1, then cosine decay to
    ``peak / 25 / 1e4`` at step ``total - 1``."""

    def cosine(start: float, end: float, fraction: float) -> float:
        return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2

    if schedule == "none":
        return [peak] * total
    if schedule == "cosine":
        return [cosine(peak, 0.0, t / total) for t in range(total)]
    warmup_end, initial = 0.25 * total - 1, peak / 25
    return [
        cosine(initial, peak, t / warmup_end)
        if t <= warmup_end
        else cosine(peak, initial / 1e4, (t - warmup_end) / (total - 1 - warmup_end))
        for t in range(total)
    ]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "none"])
def test_trains_on_triplets_and_logs_metrics(schedule: str) -> None:
    # 8 steps: the smallest run that gets a schedule (configure_optimizers skips it below 8).
    dm = ShapesDataModule(num_train=64, num_val=32, num_test=32, batch_size=8)
    model = _fresh_model(schedule=schedule, lr=1e-2)
    rates = _LearningRates()
    trainer = _quick_trainer(limit_train_batches=8, callbacks=[rates])
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 8
    assert len(trainer.lr_scheduler_configs) == (0 if schedule == "none" else 1)
    assert rates.rates == pytest.approx(_expected_rates(schedule, 1e-2, 8), rel=1e-9, abs=1e-15)
    assert {"train_loss", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    trainer.test(model, datamodule=dm, verbose=False)
    assert "test_acc" in trainer.callback_metrics
    assert 0.0 <= float(trainer.callback_metrics["test_acc"]) <= 1.0


def test_accepts_pairs_without_masks() -> None:
    x = torch.rand(32, 3, 32, 32)
    y = torch.arange(32) % 4
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = _fresh_model()
    trainer = _quick_trainer()
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    predictions = trainer.predict(model, dataloaders=loader)
    assert torch.cat(predictions).shape == (32, 4)


def test_rejects_batches_of_wrong_arity() -> None:
    model = _fresh_model()
    with pytest.raises(ValueError, match=re.escape("batch must be (x, y) or (x, y, mask), got 1 elements")):
        model.training_step((torch.rand(2, 3, 32, 32),), 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"width": 0}, "width must be >= 1, got 0"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0, got -1.0"),
        ({"schedule": "step"}, "schedule must be one of"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be positive"),
        ({"mean": (0.5, 0.5)}, "mean and std must have 3 entries, got 2 and 3"),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        DemoClassifier(**kwargs)


def test_hparams_are_saved() -> None:
    model = _fresh_model(width=8, lr=1e-3)
    assert model.hparams.width == 8
    assert model.hparams.lr == 1e-3
    assert model.hparams.num_classes == 4


# ------------------------------------------------------------------------------------------- trained model


def test_trained_demo_is_in_eval_mode_on_cpu(trained_demo: tuple[DemoClassifier, ShapesDataModule]) -> None:
    model, _ = trained_demo
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_trained_demo_reaches_95_percent_on_val(trained_demo: tuple[DemoClassifier, ShapesDataModule]) -> None:
    model, dm = trained_demo
    correct = total = 0
    with torch.no_grad():
        for x, y, _ in dm.val_dataloader():
            correct += (model(x).argmax(dim=1) == y).sum().item()
            total += y.numel()
    assert total == dm.hparams.num_val
    assert correct / total >= 0.95


def test_trained_demo_outputs_unnormalised_logits(trained_demo: tuple[DemoClassifier, ShapesDataModule]) -> None:
    model, dm = trained_demo
    x = dm.test_set.images[:64]
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (64, 4)
    # Probabilities would be non-negative and sum to one per row.
    assert (logits < 0).any()
    assert not torch.allclose(logits.sum(dim=1), torch.ones(64), atol=1e-3)


def test_trained_demo_restores_global_torch_flags(trained_demo: tuple[DemoClassifier, ShapesDataModule]) -> None:
    # Trainer(deterministic=True) inside the fixture must not leak into the rest of the suite.
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_few_steps_of_training_run_without_a_schedule():
    import lightning as L

    from lit_attr.data import ShapesDataModule

    model = DemoClassifier()
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, datamodule=ShapesDataModule(num_train=96, num_val=16, batch_size=32))
    assert trainer.global_step == 3


def test_train_demo_classifier_leaves_the_global_rng_alone() -> None:
    from lit_attr.models import train_demo_classifier

    state = torch.get_rng_state()
    small = ShapesDataModule(num_train=64, num_val=16, batch_size=32)
    first, _ = train_demo_classifier(small, seed=3, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)
    second, _ = train_demo_classifier(ShapesDataModule(num_train=64, num_val=16, batch_size=32), seed=3, epochs=1)
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
