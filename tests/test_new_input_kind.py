"""A modality defined in this file alone (1-D signals ``(N, C, T)``) runs through lit-attr without any edit to it.

The kind below is the whole definition: what a unit is (a time step, its channels summed), one mask value per time
step for FEI, a substrate of its own ("smooth", a moving average) and a renderer. Every method registered for the
model, the insertion/deletion game (against a naive loop written here), the runner with its metrics, and the monitor
during training (its scores equal to the functional's, its maps drawn by the renderer below) work on it.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from matplotlib.figure import Figure
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lit_attr.batch import Batch
from lit_attr.callbacks import AttributionMonitor
from lit_attr.functional import auc, insertion_deletion
from lit_attr.inputs import ContinuousKind, Rendering, input_kind, register_input_kind, unregister_input_kind
from lit_attr.inputs.base import GENERIC_SUBSTRATES
from lit_attr.methods import available_methods, get_method
from lit_attr.runner import AttributionRunner

C, T, K = 2, 12, 3


class Signals(ContinuousKind):
    """Multichannel 1-D signals: a time step is a unit; its substrate "smooth" is a 3-tap moving average."""

    name = "signals"
    substrates = (*GENERIC_SUBSTRATES, "smooth")
    rendered: list[int] = []

    @classmethod
    def accepts(cls, x):
        return x.is_floating_point() and x.ndim == 3

    def feature_shape(self, x):
        return (1, x.shape[2])

    def check_game_inputs(self, x, attributions):
        if attributions.shape not in (x.shape, (x.shape[0], x.shape[2])):
            raise ValueError(f"`attributions` must be (N, C, T) or (N, T), got {tuple(attributions.shape)}.")

    def unit_scores(self, attributions, reduce):
        scores = attributions.abs() if reduce == "abs_sum" else attributions
        return scores.sum(dim=1) if scores.ndim == 3 else scores

    def unit_view(self, ranks, x):
        return ranks[:, None]

    def own_substrate(self, substrate, x):
        return F.avg_pool1d(x, 3, stride=1, padding=1, count_include_pad=False)

    def render(self, samples, maps, *, captions=None, titles=None, title="", decode=None):
        figure = Figure(figsize=(2 * len(samples), 2))
        for i, (signal, scores) in enumerate(zip(samples, maps, strict=True)):
            axes = figure.add_subplot(1, len(samples), i + 1)
            axes.plot(signal.T.numpy())
            axes.plot(scores.sum(dim=0).numpy(), color="black")
        self.rendered.append(len(samples))
        return Rendering(figure)


@pytest.fixture(autouse=True)
def signals():
    register_input_kind(Signals)
    yield
    unregister_input_kind("signals")


def signal_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(C, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * T, K)).eval()


def signal_batch(n=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, C, T, generator=generator), torch.arange(n) % K


FAST = {
    "integrated_gradients": {"n_steps": 64},
    "smoothgrad": {"nt_samples": 4},
    "gradient_shap": {"n_samples": 4},
    "mfaba": {"max_steps": 10},
    "ig2": {"steps": 8, "n_references": 2, "eta": 0.05},
    "fei": {"iterations": 4, "levels": (0.3, 0.6)},
    "big": {"attack_steps": 3, "ig_steps": 8},
    "agi": {"max_iter": 3},
}


def test_a_batch_of_signals_is_of_the_kind_defined_here():
    x, _ = signal_batch()
    assert input_kind(x).name == "signals" and Batch(x).kind.tags == {"signals", "continuous"}


@pytest.mark.parametrize("name", available_methods(signal_model()))
def test_every_method_for_the_model_attributes_signals(name):
    model, (x, y) = signal_model(), signal_batch()
    options = {"input_bounds": (0.0, 1.0), **FAST.get(name, {})}
    if name == "ig2":
        options["reference_pool"] = signal_batch(9, seed=2)
    A = get_method(name, model, **options).attribute(x, target=y)
    assert A.shape == x.shape and A.dtype == x.dtype and bool(torch.isfinite(A).all())
    if name == "fei":  # one mask value per time step: the same on both channels
        assert torch.equal(A[:, 0], A[:, 1])


def test_integrated_gradients_on_signals_add_up_to_the_logit_change():
    model, (x, y) = signal_model(), signal_batch()
    A = get_method("integrated_gradients", model, n_steps=512).attribute(x, target=y)
    with torch.no_grad():
        change = (model(x) - model(torch.zeros_like(x))).gather(1, y[:, None])[:, 0]
    # The integral is exact up to the quadrature's error at the ReLUs' kinks: a small fraction of the change.
    torch.testing.assert_close(A.flatten(1).sum(dim=1), change, rtol=0, atol=2e-3 * float(change.abs().max()))


def naive_deletion(model, x, maps, target, substrate, per_step):
    """Delete time steps in order of their channel-summed score, ``per_step`` at a time, one input at a time."""
    curves = []
    for sample, scores, c, fill in zip(x, maps.sum(dim=1), target.tolist(), substrate, strict=True):
        order = sorted(range(T), key=lambda t: (-float(scores[t]), t))
        curve = []
        for step in range(math.ceil(T / per_step) + 1):
            perturbed = sample.clone()
            for t in order[: min(step * per_step, T)]:
                perturbed[:, t] = fill[:, t]
            with torch.no_grad():
                curve.append(float(model(perturbed[None]).softmax(dim=1)[0, c]))
        curves.append(curve)
    return torch.tensor(curves)


def test_deletion_on_signals_equals_a_naive_loop_with_the_kinds_units_and_substrate():
    model, (x, y) = signal_model(), signal_batch()
    A = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    result = insertion_deletion(model, x, A, y, pixels_per_step=5, deletion_substrate="smooth", games="deletion")
    smooth = F.avg_pool1d(x, 3, stride=1, padding=1, count_include_pad=False)
    expected = naive_deletion(model, x, A, y, smooth, per_step=5)
    torch.testing.assert_close(result.deletion_curve, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.deletion_auc, auc(expected), rtol=1e-5, atol=1e-6)
    # Left to the preset, the insertion game starts from the kind's default (zeros): RISE's blur needs images.
    full = insertion_deletion(model, x, A, y, pixels_per_step=5)
    with torch.no_grad():
        start = model(torch.zeros_like(x)).softmax(dim=1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(full.insertion_curve[:, 0], start)
    with pytest.raises(ValueError, match="'blur' needs images inputs; for signals inputs use one of"):
        insertion_deletion(model, x, A, y, insertion_substrate="blur")


def test_the_runner_scores_signals_with_the_metrics_that_take_them():
    model, (x, y) = signal_model(), signal_batch()
    options = {"method_kwargs": {"mfaba": FAST["mfaba"]}, "metric_kwargs": {"insertion_deletion": {"n_steps": 4}}}
    runner = AttributionRunner(model, ["saliency", "mfaba"], ["insertion_deletion"], keep_attributions=2, **options)
    records = runner.run(Batch(x, y))
    assert [record.kind for record in records] == ["signals"] * 4
    assert records[0].x.shape == (C, T) and records[0].attributions["saliency"].shape == (C, T)
    assert set(records[0].scores["saliency"]) >= {"insertion", "deletion"}
    curve = runner.compute()["mfaba"]["insertion_deletion"]["insertion_curve"]
    assert curve.shape == (5,) and bool(((curve >= 0) & (curve <= 1)).all())
    masks = torch.ones(4, C, T, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"metric 'localization' does not take signals inputs"):
        AttributionRunner(model, ["saliency"], ["localization"]).run(Batch(x, y, masks))


class SignalClassifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = signal_model().train()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SignalData(L.LightningDataModule):
    def setup(self, stage=None):
        self.train_set = TensorDataset(*signal_batch(16, seed=4))
        self.val_set = TensorDataset(*signal_batch(8, seed=5))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=8)


def test_the_monitor_scores_and_draws_signals_while_training(tmp_path):
    Signals.rendered.clear()
    games = {"insertion_deletion": {"n_steps": 4}}
    monitor = AttributionMonitor(["saliency"], metrics=["insertion_deletion"], num_samples=8, log_heatmaps=2,
                                 metric_kwargs=games, background_delivery=False)  # fmt: skip
    model, data = SignalClassifier(), SignalData()
    trainer = L.Trainer(max_epochs=1, logger=CSVLogger(tmp_path), callbacks=[monitor], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    x, y = data.val_set.tensors
    maps = get_method("saliency", model.net).attribute(x, target=y)
    expected = insertion_deletion(model.net, x, maps, y, n_steps=4)
    logged = trainer.callback_metrics
    for game, aucs in (("insertion", expected.insertion_auc), ("deletion", expected.deletion_auc)):
        torch.testing.assert_close(logged[f"attr/saliency/insertion_deletion/{game}"].float(), aucs.mean())
    assert Signals.rendered == [2]  # the monitor drew the first two probe samples with the kind's renderer
    assert list((tmp_path / "lightning_logs" / "version_0" / "media" / "attr" / "saliency" / "heatmaps").glob("*.png"))
