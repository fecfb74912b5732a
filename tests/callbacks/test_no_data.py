"""The callbacks say what they will not do, when ``fit`` starts: no validation data, validation switched off, data
that cannot be read by index. ``on_error="raise"`` refuses before any training step; ``"warn"`` warns once and
training goes on as without the callback.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from callbacks._helpers import METRIC_KWARGS, SEED, TRAINER_DEFAULTS, datamodule, model
from lit_attr.callbacks import AttributionMonitor, RandomizationCheck

# Lightning's own note on the missing loader these tests build on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


def _monitor(**kwargs) -> AttributionMonitor:
    return AttributionMonitor(["saliency"], num_samples=4, metric_kwargs=METRIC_KWARGS, **kwargs)


def _check(**kwargs) -> RandomizationCheck:
    return RandomizationCheck(["saliency"], num_samples=4, stages="last", log_heatmaps=0, **kwargs)


class _Stream(IterableDataset):
    """Validation samples as a stream: there is no fixed probe set to read by index."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __iter__(self):
        return (self.dataset[i] for i in range(len(self.dataset)))


def _fit(tmp_path, callback, val: str = "none", **trainer_options) -> L.Trainer:
    """Two epochs of the tiny demo; ``val``: "none" (no validation loader), "stream" or "loader" (given to fit)."""
    dm = datamodule(num_train=32, num_val=8)
    dm.setup("fit")
    train = DataLoader(dm.train_set, batch_size=16)
    loaders = {"none": None, "stream": DataLoader(_Stream(dm.val_set), batch_size=8),
               "loader": DataLoader(dm.val_set, batch_size=8)}  # fmt: skip
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False, callbacks=[callback],
                        **{**TRAINER_DEFAULTS, **trainer_options})  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        trainer.fit(model(), train_dataloaders=train, val_dataloaders=loaders[val])
    return trainer


@pytest.mark.parametrize(
    ("callback", "val", "options", "error", "reason"),
    [
        (_monitor, "none", {}, ValueError, "there is no validation data"),
        (_monitor, "loader", {"limit_val_batches": 0}, ValueError, "`limit_val_batches=0` switches validation off"),
        (_monitor, "stream", {}, TypeError, "the val data must be a map-style dataset"),
        (_check, "none", {}, ValueError, "there is no validation data"),
        (_check, "stream", {}, TypeError, "the val data must be a map-style dataset"),
    ],
    ids=["monitor-no_data", "monitor-limit_val_batches_0", "monitor-iterable", "check-no_data", "check-iterable"],
)
def test_a_callback_that_cannot_run_refuses_before_training_or_warns_and_stays_idle(
    tmp_path, callback, val, options, error, reason
):
    with pytest.raises(error, match=rf"{callback().__class__.__name__} will not run: {reason}") as refused:
        _fit(tmp_path / "raise", callback(), val, **options)
    assert "\n" not in str(refused.value)
    idle = callback(on_error="warn")
    with pytest.warns(UserWarning, match=rf"will not run: {reason}.*training goes on without it") as warned:
        trainer = _fit(tmp_path / "warn", idle, val, **options)
    assert sum("will not run" in str(w.message) for w in warned) == 1  # said once, not every epoch
    assert trainer.global_step == 4 and trainer.current_epoch == 2  # the whole fit ran
    assert idle.history == {} and not any(key.startswith("attr/") for key in trainer.callback_metrics)


def test_the_refusal_comes_before_any_training_step(tmp_path):
    net = model()
    before = {key: value.clone() for key, value in net.state_dict().items()}
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, callbacks=[_monitor()],
                        **TRAINER_DEFAULTS)  # fmt: skip
    dm = datamodule(num_train=32, num_val=8)
    dm.setup("fit")
    with pytest.raises(ValueError, match="no validation data"):
        trainer.fit(net, train_dataloaders=DataLoader(dm.train_set, batch_size=16))
    assert trainer.global_step == 0
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())


def test_the_check_finds_loaders_given_to_fit_even_when_validation_never_runs(tmp_path):
    check = _check()
    _fit(tmp_path, check, "loader", limit_val_batches=0)
    assert list(check.history) == [1] and set(check.results) == {"saliency"}
    assert sorted(check.probe_indices) == sorted(set(check.probe_indices)) and len(check.probe_indices) == 4
