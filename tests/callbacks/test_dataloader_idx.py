"""Several validation loaders: ``dataloader_idx`` picks the one the probe set is drawn from."""

import lightning as L
import pytest
import torch

from callbacks._helpers import METRIC_KWARGS, TRAINER_DEFAULTS, datamodule, fit
from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
from lit_attr.methods import get_method
from lit_attr.metrics import InsertionDeletion
from lit_attr.models import DemoClassifier


class _ManyLoaders(DemoClassifier):
    """Lightning passes ``dataloader_idx`` to the step once there are several validation loaders."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return super().validation_step(batch, batch_idx)


def _two_val_sets():
    first, second = datamodule(), datamodule(seed=1)
    first.setup("fit")
    second.setup("fit")
    return first, second


@pytest.mark.parametrize(
    ("as_dict", "dataloader_idx"), [(False, 1), (True, "shifted"), (True, 1)], ids=["list", "key", "dict-position"]
)
def test_monitor_draws_from_the_chosen_loader_and_scores_it(as_dict, dataloader_idx):
    first, second = _two_val_sets()
    loaders = [first.val_dataloader(), second.val_dataloader()]
    if as_dict:
        loaders = dict(zip(("clean", "shifted"), loaders, strict=True))
    monitor = AttributionMonitor(
        ["saliency"], metrics="insertion_deletion", num_samples=6, log_heatmaps=0, metric_kwargs=METRIC_KWARGS,
        dataloader_idx=dataloader_idx,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = _ManyLoaders(width=4)
    trainer = L.Trainer(logger=False, callbacks=[monitor], inference_mode=False, **TRAINER_DEFAULTS)
    trainer.validate(net, dataloaders=loaders, verbose=False)

    # The probe samples are the second set's, and the logged score is theirs, recomputed here by hand.
    x = second.val_set.images[monitor.probe_indices]
    y = second.val_set.labels[monitor.probe_indices]
    assert not torch.equal(x, first.val_set.images[monitor.probe_indices])
    net.eval()
    attributions = get_method("saliency", net).attribute(x, y)
    expected = InsertionDeletion(net, **METRIC_KWARGS["insertion_deletion"])
    expected.update(x, attributions, y)
    logged = trainer.callback_metrics["attr/saliency/insertion_deletion/insertion"]
    torch.testing.assert_close(logged, expected.compute()["insertion"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("as_dict", "dataloader_idx", "match"),
    [
        (False, 2, r"`dataloader_idx` is 2, but there are 2 val loader\(s\), at positions 0 to 1"),
        (True, "test", r"`dataloader_idx` is 'test', but no val loader has that key: its keys are \['a', 'b'\]"),
        (False, "a", r"`dataloader_idx` is 'a', but no val loader has that key: they are not a dict"),
    ],
)
def test_a_loader_that_does_not_exist_is_named_when_validation_starts(as_dict, dataloader_idx, match):
    first, second = _two_val_sets()
    loaders = [first.val_dataloader(), second.val_dataloader()]
    if as_dict:
        loaders = dict(zip("ab", loaders, strict=True))
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", dataloader_idx=dataloader_idx)
    trainer = L.Trainer(logger=False, callbacks=[monitor], inference_mode=False, **TRAINER_DEFAULTS)
    with pytest.raises(ValueError, match=match):
        trainer.validate(_ManyLoaders(width=4), dataloaders=loaders, verbose=False)


def test_randomization_check_with_one_loader_refuses_position_1(tmp_path):
    check = RandomizationCheck(["saliency"], num_samples=4, stages="last", dataloader_idx=1)
    with pytest.raises(ValueError, match=r"`dataloader_idx` is 1, but there is 1 val loader\(s\), at positions 0 to 0"):
        fit(tmp_path, [check], logger=False, max_epochs=1)


@pytest.mark.parametrize("callback", [AttributionMonitor, RandomizationCheck])
def test_negative_position_is_refused(callback):
    with pytest.raises(ValueError, match=r"`dataloader_idx` must be an int >= 0, got -1"):
        callback(["saliency"], dataloader_idx=-1)



class _ManyLoadersForTest(_ManyLoaders):
    def test_step(self, batch, batch_idx, dataloader_idx=0):
        return super().test_step(batch, batch_idx)


def test_dataloader_idx_picks_a_validation_loader_and_test_uses_the_first_test_loader():
    first, second = _two_val_sets()
    second.setup("test")
    monitor = AttributionMonitor(["saliency"], metrics="insertion_deletion", num_samples=4, log_heatmaps=0,
                                 metric_kwargs=METRIC_KWARGS, dataloader_idx=1)  # fmt: skip
    trainer = L.Trainer(logger=False, callbacks=[monitor], inference_mode=False, **TRAINER_DEFAULTS)
    net = _ManyLoadersForTest(width=4)
    trainer.validate(net, dataloaders=[first.val_dataloader(), second.val_dataloader()], verbose=False)
    trainer.test(net, dataloaders=second.test_dataloader(), verbose=False)  # one test loader: position 0
    test_probes = monitor._probes["test"]
    torch.testing.assert_close(test_probes.batch.x, second.test_set.images[test_probes.indices])
