"""When the callbacks prepare: after the module's own setup/configure_model, before any batch; precision; splits."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from callbacks._helpers import METHOD_KWARGS, METRIC_KWARGS, TRAINER_DEFAULTS, datamodule, fit, model
from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
from lit_attr.data import ShapesDataset
from lit_attr.methods import get_method


def _monitor(methods=("saliency",), **kwargs) -> AttributionMonitor:
    options = {"num_samples": 6, "log_heatmaps": 0, "metric_kwargs": METRIC_KWARGS}
    kwargs = {**options, **kwargs}
    kwargs.setdefault("method_kwargs", {m: METHOD_KWARGS[m] for m in methods if m in METHOD_KWARGS})
    return AttributionMonitor(list(methods), **kwargs)


class _LateParts(L.LightningModule):
    """Creates its data in ``setup`` and its layers in ``configure_model``, as Lightning recommends for big models."""

    def __init__(self) -> None:
        super().__init__()
        self.net: nn.Module | None = None

    def setup(self, stage: str) -> None:
        self.train_set, self.val_set = ShapesDataset(32, seed=0), ShapesDataset(12, seed=1)

    def configure_model(self) -> None:
        if self.net is None:
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)
            )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=16)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=16)


def test_data_from_module_setup_and_layers_from_configure_model(tmp_path):
    monitor = _monitor(("saliency", "ig2"))
    check = RandomizationCheck(["saliency"], num_samples=4, stages="last", log_heatmaps=0)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, callbacks=[monitor, check],
                        **TRAINER_DEFAULTS)  # fmt: skip
    module = _LateParts()
    trainer.fit(module)
    assert max(monitor.probe_indices) < 12 and len(monitor.probe_indices) == 6
    assert math.isfinite(monitor.history[0]["attr/ig2/insertion_deletion/insertion"])
    # The check randomised the layers that configure_model made: at its one ("last") stage, down to net.0.
    result = check.results["saliency"]["spearman_abs"]
    assert result["stages"] == ["original", "net.0"]
    assert math.isfinite(float(result["final"]))


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_onto_a_smaller_validation_set_draws_a_new_probe_set(tmp_path):
    first = _monitor()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, filename="{epoch}", save_top_k=-1)
    fit(tmp_path / "a", [first, checkpoints], logger=False, max_epochs=2, enable_checkpointing=True)
    assert max(first.probe_indices) >= 5  # some saved index lies outside a 5-sample set

    resumed = _monitor()
    with pytest.warns(UserWarning) as caught:
        fit(tmp_path / "b", [resumed], logger=False, max_epochs=2, ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt",
            dm=datamodule(num_val=5))  # fmt: skip
    messages = [str(w.message) for w in caught]
    assert any("the saved probe indices do not fit 5 samples; drawing a new probe set" in m for m in messages)
    assert any("the validation set has 5 samples, fewer than `num_samples=6`; using all 5" in m for m in messages)
    assert sorted(resumed.probe_indices) == list(range(5))
    assert math.isfinite(resumed.history[1]["attr/saliency/insertion_deletion/insertion"])


class _AttributionInputs(L.Callback):
    """The inputs of every forward the callbacks make: in eval mode, outside inference mode."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple) -> None:
        # Lightning's own forwards are training (train mode) or validation (inference mode): neither counts.
        if not module.training and not torch.is_inference_mode_enabled():
            self.inputs.append(args[0].detach())


def test_bf16_true_precision_feeds_the_model_bf16_inputs(tmp_path):
    monitor = _monitor()
    check = RandomizationCheck(["saliency"], num_samples=4, stages="last", log_heatmaps=2)
    seen = _AttributionInputs()
    net, trainer, _ = fit(tmp_path, [seen, monitor, check], max_epochs=1, precision="bf16-true")
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    # The probes (float32 in the dataset) reach the model as bf16, for every forward the attribution makes.
    assert len(seen.inputs) >= 3  # at least the monitor's prediction, saliency's target and gradient forwards
    assert {x.dtype for x in seen.inputs} == {torch.bfloat16}
    assert math.isfinite(monitor.history[0]["attr/saliency/insertion_deletion/insertion"])
    assert math.isfinite(check.results["saliency"]["spearman_abs"]["final"])


def test_sanity_check_is_skipped(tmp_path):
    calls = []

    def counted(net, **kwargs):
        method = get_method("saliency", net, **kwargs)
        attribute = method.attribute
        method.attribute = lambda *a, **k: calls.append(net.trainer.global_step) or attribute(*a, **k)
        return method

    monitor = AttributionMonitor({"saliency": counted}, metrics="insertion_deletion", num_samples=6, log_heatmaps=0,
                                 metric_kwargs=METRIC_KWARGS)  # fmt: skip
    _, trainer, _ = fit(tmp_path, [monitor], logger=False, max_epochs=1, num_sanity_val_steps=2)
    # One attribution call (6 probes, batch_size 64), after epoch 0 trained; none in the sanity check (step 0).
    assert calls == [trainer.global_step] and trainer.global_step > 0
    assert list(monitor.history) == [0]


class _MasksOnlyForTest(L.LightningDataModule):
    """Validation batches are (x, y); test batches are (x, y, mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes = datamodule()

    def setup(self, stage: str) -> None:
        self.shapes.setup(stage)

    def val_dataloader(self):
        data = self.shapes.val_set
        return DataLoader(TensorDataset(data.images, data.labels), batch_size=16)

    def test_dataloader(self):
        return self.shapes.test_dataloader()


def test_localization_skipped_on_validation_without_masks_still_runs_on_test_with_masks():
    monitor = _monitor(metrics=("insertion_deletion", "localization"))
    trainer = L.Trainer(logger=False, callbacks=[monitor], inference_mode=False, **TRAINER_DEFAULTS)
    net, data = model(), _MasksOnlyForTest()
    with pytest.warns(UserWarning, match=r"the val probe batches have no ground-truth masks; skipping"):
        trainer.validate(net, datamodule=data, verbose=False)
    assert not any("relevance" in key or "pointing" in key for key in trainer.callback_metrics)
    trainer.test(net, datamodule=data, verbose=False)
    assert math.isfinite(float(trainer.callback_metrics["attr/saliency/localization/relevance_mass"]))

