"""Models used by the demos and the test suite."""

from lit_attr.models.demo_classifier import DEMO_EPOCHS, DemoClassifier, train_demo_classifier
from lit_attr.models.text import TEXT_DEMO_EPOCHS, DemoTextClassifier, train_demo_text_classifier

__all__ = [
    "DEMO_EPOCHS",
    "TEXT_DEMO_EPOCHS",
    "DemoClassifier",
    "DemoTextClassifier",
    "train_demo_classifier",
    "train_demo_text_classifier",
]
