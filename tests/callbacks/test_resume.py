"""Checkpoints carry the monitor's state (probe set, last epoch, history); several monitors coexist."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks._helpers import METRIC_KWARGS, fit
from lit_attr._probe import select_probe
from lit_attr.callbacks import AttributionMonitor, RandomizationCheck


def _monitor(methods=("saliency",), seed=0) -> AttributionMonitor:
    return AttributionMonitor(list(methods), num_samples=6, log_heatmaps=0, metric_kwargs=METRIC_KWARGS, seed=seed)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_restores_probe_set_and_history(tmp_path):
    first = _monitor()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    fit(tmp_path / "a", [first, checkpoints], logger=False, max_epochs=2, enable_checkpointing=True)
    assert sorted(first.history) == [0, 1]

    path = tmp_path / "ckpt" / "epoch=0.ckpt"
    saved = torch.load(path, weights_only=False)["callbacks"][first.state_key]
    assert saved["probe_indices"] == first.probe_indices
    assert saved["last_epoch"] == 0
    assert list(saved["history"]) == [0]

    # Another seed would draw another probe set; the checkpoint's must win so the history stays comparable.
    resumed = _monitor(seed=123)
    assert resumed.state_key == first.state_key
    fit(tmp_path / "b", [resumed], logger=False, max_epochs=2, ckpt_path=path)
    assert resumed.probe_indices == first.probe_indices
    assert sorted(resumed.history) == [0, 1]
    assert resumed.history[0] == first.history[0]  # restored, not recomputed
    assert resumed.last_epoch == 1


def test_probe_draw_depends_on_the_seed_only():
    rng = torch.get_rng_state()
    a, again, b = select_probe(100, 6, 0, "t"), select_probe(100, 6, 0, "t"), select_probe(100, 6, 1, "t")
    assert torch.equal(rng, torch.get_rng_state()), "a private generator, never the global one"
    assert a == again != b
    assert len(set(a)) == 6 and max(a) < 100
    # A larger probe set with the same seed extends the smaller one: RandomizationCheck's 16 samples are the first
    # 16 of the monitor's 64.
    assert select_probe(100, 20, 0, "t")[:6] == a


def test_two_monitors_with_different_methods_share_a_checkpoint(tmp_path):
    saliency, ixg = _monitor(("saliency",)), _monitor(("input_x_gradient",))
    check = RandomizationCheck(["saliency"], num_samples=2, stages="last", log_heatmaps=0)
    assert len({saliency.state_key, ixg.state_key, check.state_key}) == 3
    _, trainer, _ = fit(tmp_path, [saliency, ixg, check], logger=False, max_epochs=2)
    trainer.save_checkpoint(tmp_path / "both.ckpt")
    states = torch.load(tmp_path / "both.ckpt", weights_only=False)["callbacks"]
    assert states[saliency.state_key]["history"] == saliency.history
    assert states[ixg.state_key]["history"] == ixg.history
    assert set(states[saliency.state_key]["history"][1]) == {
        *(f"attr/saliency/insertion_deletion/{k}" for k in ("insertion", "deletion", "difference")),
        *(f"attr/saliency/localization/{k}" for k in ("pointing_game", "relevance_mass", "relevance_rank", "auroc")),
    }
    assert states[check.state_key]["history"] == check.history
    assert sorted(check.history) == [1]


def test_identical_monitors_collide():
    trainer_callbacks = [_monitor(), _monitor()]
    with pytest.raises(RuntimeError, match="more than one stateful callback"):
        L.Trainer(callbacks=trainer_callbacks, logger=False)
