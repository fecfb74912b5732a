"""Models used by the demos and the test suite."""

from lit_attr.models.demo_classifier import DEMO_EPOCHS, DemoClassifier

__all__ = ["DEMO_EPOCHS", "DemoClassifier"]
