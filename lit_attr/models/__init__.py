"""Models used by the demos and the test suite."""

from lit_attr.models.demo_classifier import DEMO_EPOCHS, DemoClassifier, train_demo_classifier

__all__ = ["DEMO_EPOCHS", "DemoClassifier", "train_demo_classifier"]
