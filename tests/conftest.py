"""Suite-wide fixtures.

``trained_demo`` trains the demo classifier once per test session; tests that need a realistic trained model
(attribution methods, metrics, callbacks) share it instead of training their own.
"""

import os

# Set before anything can import wandb, so that no test ever tries to reach the network.
os.environ["WANDB_MODE"] = "disabled"

from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import lightning as L  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lit_attr.data import ShapesDataModule  # noqa: E402
from lit_attr.models import DEMO_EPOCHS, DemoClassifier  # noqa: E402

DEMO_SEED = 0


@contextmanager
def _restored_torch_flags() -> Iterator[None]:
    # Trainer(deterministic=True) flips process-wide switches and never flips them back; other tests must see
    # the defaults they would see when run alone.
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


@pytest.fixture(scope="session")
def trained_demo() -> tuple[DemoClassifier, ShapesDataModule]:
    """``(model, datamodule)``: DemoClassifier trained for DEMO_EPOCHS on the default data, in eval mode on CPU.

    The datamodule is set up for every stage. Treat both as read-only: they are shared by the whole session.
    """
    datamodule = ShapesDataModule(seed=DEMO_SEED)
    datamodule.setup()
    # fork_rng keeps weight initialisation reproducible without consuming the global RNG of other tests.
    with torch.random.fork_rng(devices=[]), _restored_torch_flags():
        torch.manual_seed(DEMO_SEED)
        model = DemoClassifier(num_classes=datamodule.num_classes)
        trainer = L.Trainer(
            max_epochs=DEMO_EPOCHS,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=True,
        )
        trainer.fit(model, datamodule=datamodule)
    return model.cpu().eval(), datamodule
