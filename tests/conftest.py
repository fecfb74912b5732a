"""Suite-wide fixtures.

``trained_demo`` trains the demo classifier once per test session; tests that need a realistic trained model
(attribution methods, metrics, callbacks) share it instead of training their own. ``trained_demo_vit`` and
``trained_text_demo`` do the same for the demo vision transformer and the text classifier, on small budgets.
"""

import logging
import os

# Set before anything can import wandb, so that no test ever tries to reach the network.
os.environ["WANDB_MODE"] = "disabled"

import pytest  # noqa: E402

from lit_attr.data import ShapesDataModule  # noqa: E402
from lit_attr.models import DemoClassifier, DemoViT, train_demo_classifier, train_demo_vit  # noqa: E402

DEMO_SEED = 0
#: A few seconds of training: enough for attention and gradients to carry signal, far from DemoViT's full accuracy.
DEMO_VIT_BUDGET = {"epochs": 6, "num_layers": 2}
DEMO_VIT_DATA = {"num_train": 1024, "num_val": 256, "num_test": 64}


@pytest.fixture(scope="session")
def trained_demo() -> tuple[DemoClassifier, ShapesDataModule]:
    """``(model, datamodule)``: DemoClassifier trained for DEMO_EPOCHS on the default data, in eval mode on CPU.

    The datamodule is set up for every stage. Treat both as read-only: they are shared by the whole session.
    """
    return train_demo_classifier(seed=DEMO_SEED)


@pytest.fixture(scope="session")
def trained_demo_vit() -> tuple[DemoViT, ShapesDataModule]:
    """``(model, datamodule)``: a two-block DemoViT trained on DEMO_VIT_DATA for DEMO_VIT_BUDGET, eval mode, CPU.

    Treat both as read-only: they are shared by the whole session.
    """
    return train_demo_vit(ShapesDataModule(seed=DEMO_SEED, **DEMO_VIT_DATA), seed=DEMO_SEED, **DEMO_VIT_BUDGET)


@pytest.fixture(scope="session")
def trained_text_demo():
    """``(model, datamodule)``: DemoTextClassifier trained briefly (1000 sentences, 4 epochs, ~10 s), eval mode, CPU.

    About 98% validation accuracy. Treat both as read-only: they are shared by the whole session.
    """
    from lit_attr.data import SyntheticTextDataModule
    from lit_attr.models import train_demo_text_classifier

    data = SyntheticTextDataModule(num_train=1000, num_val=256, num_test=256, seed=DEMO_SEED)
    return train_demo_text_classifier(data, seed=DEMO_SEED, epochs=4)


@pytest.fixture
def restored_process_state():
    """``lit_attr.cli.main`` quiets Lightning's loggers and sets W&B variables for the process; give them back."""
    names = ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    environment = dict(os.environ)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    os.environ.clear()
    os.environ.update(environment)
