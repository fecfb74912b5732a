"""The callbacks under DDP (2 CPU processes): shards, synced values equal to one process, one image per grid."""

import lightning as L
import pytest
import torch

from callbacks._helpers import METHOD_KWARGS, METRIC_KWARGS, TRAINER_DEFAULTS, RankDirLogger, datamodule, model
from lit_attr.callbacks import AttributionMonitor, RandomizationCheck

METHODS = ("saliency", "mfaba")


def _monitor() -> AttributionMonitor:
    # 13 probe samples: shards of 7 and 6, so a mean of per-rank means would differ from the global mean.
    return AttributionMonitor(
        list(METHODS),
        num_samples=13,
        log_heatmaps=3,
        method_kwargs={"mfaba": METHOD_KWARGS["mfaba"]},
        metric_kwargs=METRIC_KWARGS,
    )


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_matches_single_process_and_logs_images_once(tmp_path):
    dm = datamodule(num_train=256, num_val=64)
    net = model()
    monitor = _monitor()
    check = RandomizationCheck(["saliency"], num_samples=5, stages="last", log_heatmaps=2)
    options = {**TRAINER_DEFAULTS, "devices": 2, "strategy": "ddp_spawn"}
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=2, logger=RankDirLogger(tmp_path), callbacks=[monitor, check], **options
    )
    trainer.fit(net, datamodule=dm)
    ddp_values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("attr/")}
    assert {f"attr/{m}/insertion_deletion/insertion" for m in METHODS} <= set(ddp_values)

    # Only rank 0 wrote media: one grid per method and epoch, one curve plot and one table per epoch.
    logged = tmp_path / "lightning_logs"
    assert not list(logged.glob("rank1/**/*.png")), "rank 1 must not log images"
    media = logged / "rank0" / "media" / "attr"
    for method in METHODS:
        assert len(list((media / method / "heatmaps").glob("*.png"))) == 2
    assert len(list((media / "insertion_deletion_curves").glob("*.png"))) == 2
    tables = sorted((media / "samples").glob("*.csv"))
    assert len(tables) == 2
    # The table holds all 13 probe samples (7 from rank 0's shard, 6 from rank 1's) for each method.
    assert len(tables[-1].read_text().strip().splitlines()) == 1 + 13 * len(METHODS)
    # The randomisation check ran once at fit end, its results reduced over both shards and logged by rank 0.
    randomization = logged / "rank0" / "media" / "randomization"
    assert len(list((randomization / "saliency" / "stages").glob("*.png"))) == 1
    (summary,) = (randomization / "summary").glob("*.csv")
    assert summary.read_text().splitlines()[1].startswith("1,saliency,spearman_abs,")

    # ddp_spawn hands rank 0's final weights back; the last validation saw exactly these weights.
    single = _monitor()
    reference = L.Trainer(
        default_root_dir=tmp_path / "single",
        logger=False,
        callbacks=[single],
        inference_mode=False,
        **{**TRAINER_DEFAULTS, "devices": 1},
    )
    reference.validate(net, datamodule=dm, verbose=False)
    single_values = {k: float(v) for k, v in reference.callback_metrics.items() if k.startswith("attr/")}
    assert single.probe_indices is not None and len(single.probe_indices) == 13
    assert set(single_values) == set(ddp_values)
    for key, value in single_values.items():
        assert ddp_values[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
