"""Configuration errors, batch formats and the on_error policy."""

import lightning as L
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from callbacks._helpers import METRIC_KWARGS, TRAINER_DEFAULTS, datamodule, fit, model
from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
from lit_attr.methods import AttributionMethod


def _monitor(methods=("saliency",), **kwargs) -> AttributionMonitor:
    options = {"num_samples": 6, "log_heatmaps": 2, "metric_kwargs": METRIC_KWARGS}
    return AttributionMonitor(methods if isinstance(methods, dict) else list(methods), **{**options, **kwargs})


# ------------------------------------------------------------------ errors in setup
def test_unknown_method_name(tmp_path):
    with pytest.raises(ValueError, match=r"method 'nope'.*Unknown attribution method 'nope'; available: .*saliency"):
        fit(tmp_path, [_monitor(("saliency", "nope"))], logger=False)


def test_unknown_metric_name():
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['faithfulness_corr'\]; available: "):
        _monitor(metrics=("insertion_deletion", "faithfulness_corr"))  # refused when built, before any fit


def test_validation_set_smaller_than_num_samples_warns_and_uses_all(tmp_path):
    monitor = _monitor(num_samples=50)
    with pytest.warns(UserWarning, match=r"has 20 samples, fewer than `num_samples=50`; using all 20"):
        fit(tmp_path, [monitor], logger=False, dm=datamodule(num_val=20))
    assert sorted(monitor.probe_indices) == list(range(20))


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluation_under_inference_mode_is_refused(tmp_path, stage):
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, callbacks=[_monitor()], **TRAINER_DEFAULTS)
    with pytest.raises(ValueError) as refused:
        getattr(trainer, stage)(model(), datamodule=datamodule(), verbose=False)
    # One sentence naming the stage by its value (not Lightning's enum) and the fix.
    assert str(refused.value) == (
        f"AttributionMonitor needs gradients, but this Trainer runs `{stage}` under torch.inference_mode: build it "
        f"with `Trainer(inference_mode=False)` (`lit_attr {stage}` does this itself)."
    )


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluation_without_inference_mode_runs_on_its_split(tmp_path, stage):
    monitor = _monitor()
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, callbacks=[monitor], inference_mode=False, **TRAINER_DEFAULTS
    )
    dm = datamodule()
    getattr(trainer, stage)(model(), datamodule=dm, verbose=False)
    assert "attr/saliency/insertion_deletion/insertion" in trainer.callback_metrics
    split = monitor._probes["test" if stage == "test" else "val"]
    assert split.batch is not None
    expected = (dm.test_set if stage == "test" else dm.val_set).images[split.indices]
    torch.testing.assert_close(split.batch.x, expected, rtol=0, atol=0)
    assert monitor.history == {}, "only fit epochs enter the history"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 0}, ValueError, r"`num_samples` must be an int >= 1, got 0"),
        ({"num_samples": "8"}, TypeError, r"`num_samples` must be an int >= 1, got str '8'"),
        ({"log_heatmaps": True}, TypeError, r"`log_heatmaps` must be an int >= 0, got bool True"),
        ({"every_n_epochs": 0}, ValueError, r"`every_n_epochs` must be an int >= 1"),
        ({"on_error": "ignore"}, ValueError, r"`on_error` must be one of \('raise', 'warn'\), got 'ignore'"),
        ({"target": "logit"}, ValueError, r"`target` must be one of \('label', 'prediction'\), got 'logit'"),
        ({"method_kwargs": {"mfaba": {}}}, ValueError, r"options for \['mfaba'\], which are not among the methods"),
        ({"method_kwargs": {"saliency": 3}}, TypeError, r"`method_kwargs` must map method names to option dicts"),
        ({"batch_adapter": 3}, TypeError, r"`batch_adapter` must be callable"),
        ({"metric_kwargs": {"insertion": {}}}, ValueError, r"options for \['insertion'\], which are not among the"),
        ({"metrics": ()}, ValueError, r"`metrics` must name at least one metric"),
        ({"metrics": 3}, TypeError, r"`metrics` must be a metric or a sequence of metrics"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _monitor(**kwargs)


def test_bad_method_specs():
    with pytest.raises(ValueError, match="at least one"):
        AttributionMonitor([])
    with pytest.raises(ValueError, match="twice"):
        AttributionMonitor(["saliency", "saliency"])
    with pytest.raises(ValueError, match="cannot be used in logged keys"):
        AttributionMonitor([lambda model, **kw: None])
    with pytest.raises(TypeError, match="registered name or a factory"):
        AttributionMonitor({"x": 3})
    with pytest.raises(ValueError, match=r"`similarity` must be drawn from"):
        RandomizationCheck(["saliency"], similarity=("pearson",))
    with pytest.raises(ValueError, match=r"`order` must be one of"):
        RandomizationCheck(["saliency"], order="sideways")


# ------------------------------------------------------------------ on_error
class _Broken(AttributionMethod):
    """Fails on its second call, i.e. at the second epoch."""

    calls = 0

    def _attribute(self, x: Tensor, target: Tensor, **kwargs) -> Tensor:
        type(self).calls += 1
        if type(self).calls == 2:
            raise RuntimeError("attribution exploded")
        return x


def test_on_error_warn_skips_the_epoch_and_training_goes_on(tmp_path):
    _Broken.calls = 0
    monitor = _monitor({"broken": _Broken}, on_error="warn")
    with pytest.warns(UserWarning, match=r"attribution failed at epoch 1 \(RuntimeError: attribution exploded\)"):
        _, trainer, recorder = fit(tmp_path, [monitor], logger=False, max_epochs=3)
    assert len(recorder.losses) == 12, "all three epochs trained"
    assert sorted(monitor.history) == [0, 2], "epoch 1 skipped, epoch 2 ran again"
    # Fresh metric states after the failure: a later successful run would not mix in the failed batch.
    metrics = [metric for per_method in monitor.runner.metrics.values() for metric in per_method.values()]
    assert all(int(metric._update_count) == 0 for metric in metrics)


def test_on_error_raise_reraises(tmp_path):
    _Broken.calls = 0
    with pytest.raises(RuntimeError, match="attribution exploded"):
        fit(tmp_path, [_monitor({"broken": _Broken})], logger=False, max_epochs=2)


# ------------------------------------------------------------------ batch formats
class _DictDataset(Dataset):
    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y, mask = self.base[i]
        return {"image": x, "label": y, "mask": mask}


class _PairDataset(_DictDataset):
    def __getitem__(self, i):
        x, y, _ = self.base[i]
        return x, y


class _Sample:
    def __init__(self, x, y, mask) -> None:
        self.pixels, self.cls, self.segmentation = x, y, mask


class _ObjectDataset(_DictDataset):
    def __getitem__(self, i):
        return _Sample(*self.base[i])


def _collate_objects(samples):
    return [_Sample(*(torch.stack([getattr(s, a) for s in samples]) for a in ("pixels", "cls", "segmentation")))]


class _DictModel(L.LightningModule):
    """The demo network behind batches in any of the formats above (a list of one object for the custom one)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = model()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @staticmethod
    def _xy(batch):
        if isinstance(batch, dict):
            return batch["image"], batch["label"]
        if isinstance(batch, list) and isinstance(batch[0], _Sample):
            return batch[0].pixels, batch[0].cls
        return batch[0], batch[1]

    def training_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y), batch_size=x.shape[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _run_with(dataset_cls, monitor, tmp_path, collate_fn=None):
    dm = datamodule()
    dm.setup("fit")
    train = DataLoader(dataset_cls(dm.train_set), batch_size=32, collate_fn=collate_fn)
    val = DataLoader(dataset_cls(dm.val_set), batch_size=32, collate_fn=collate_fn)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, callbacks=[monitor], max_epochs=1, **TRAINER_DEFAULTS)
    trainer.fit(_DictModel(), train, val)
    return trainer, dm


def test_dict_batches_with_masks(tmp_path):
    monitor = _monitor()
    trainer, dm = _run_with(_DictDataset, monitor, tmp_path)
    expected = {"attr/saliency/insertion_deletion/insertion", "attr/saliency/localization/pointing_game"}
    assert expected <= set(trainer.callback_metrics)
    probe = monitor._probes["val"]
    torch.testing.assert_close(probe.batch.mask, dm.val_set.masks[probe.indices], rtol=0, atol=0)


def test_pairs_without_masks_skip_localization(tmp_path):
    monitor = _monitor()
    with pytest.warns(UserWarning, match=r"no ground-truth masks; skipping \['localization'\]"):
        trainer, _ = _run_with(_PairDataset, monitor, tmp_path)
    assert "attr/saliency/insertion_deletion/insertion" in trainer.callback_metrics
    assert not any("pointing_game" in key for key in trainer.callback_metrics)


def test_batch_adapter_reads_custom_batches(tmp_path):
    def adapter(batch):
        sample = batch[0]
        return sample.pixels, sample.cls, sample.segmentation

    monitor = _monitor(batch_adapter=adapter)
    trainer, _ = _run_with(_ObjectDataset, monitor, tmp_path, collate_fn=_collate_objects)
    expected = {"attr/saliency/insertion_deletion/insertion", "attr/saliency/localization/relevance_mass"}
    assert expected <= set(trainer.callback_metrics)


def test_custom_batches_without_adapter_say_what_to_do(tmp_path):
    with pytest.raises(TypeError, match=r"pass `batch_adapter=lambda batch: \(x, y, mask\)`"):
        _run_with(_ObjectDataset, _monitor(), tmp_path, collate_fn=_collate_objects)
