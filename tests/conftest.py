"""Suite-wide fixtures.

``trained_demo`` trains the demo classifier once per test session; tests that need a realistic trained model
(attribution methods, metrics, callbacks) share it instead of training their own. ``trained_text_demo`` does the
same for the text classifier, on a small budget.
"""

import os

# Set before anything can import wandb, so that no test ever tries to reach the network.
os.environ["WANDB_MODE"] = "disabled"

import pytest  # noqa: E402

from lit_attr.data import ShapesDataModule  # noqa: E402
from lit_attr.models import DemoClassifier, train_demo_classifier  # noqa: E402

DEMO_SEED = 0


@pytest.fixture(scope="session")
def trained_demo() -> tuple[DemoClassifier, ShapesDataModule]:
    """``(model, datamodule)``: DemoClassifier trained for DEMO_EPOCHS on the default data, in eval mode on CPU.

    The datamodule is set up for every stage. Treat both as read-only: they are shared by the whole session.
    """
    return train_demo_classifier(seed=DEMO_SEED)


@pytest.fixture(scope="session")
def trained_text_demo():
    """``(model, datamodule)``: DemoTextClassifier trained briefly (1000 sentences, 4 epochs, ~10 s), eval mode, CPU.

    About 98% validation accuracy. Treat both as read-only: they are shared by the whole session.
    """
    from lit_attr.data import SyntheticTextDataModule
    from lit_attr.models import train_demo_text_classifier

    data = SyntheticTextDataModule(num_train=1000, num_val=256, num_test=256, seed=DEMO_SEED)
    return train_demo_text_classifier(data, seed=DEMO_SEED, epochs=4)
