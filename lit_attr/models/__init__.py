"""Models used by the demos and the test suite."""

from lit_attr.models.demo_classifier import DEMO_EPOCHS, DemoClassifier, train_demo_classifier
from lit_attr.models.demo_vit import DEMO_VIT_EPOCHS, DEMO_VIT_TRAIN_SIZE, DemoViT, train_demo_vit
from lit_attr.models.text import TEXT_DEMO_EPOCHS, DemoTextClassifier, train_demo_text_classifier

__all__ = [
    "DEMO_EPOCHS",
    "DEMO_VIT_EPOCHS",
    "DEMO_VIT_TRAIN_SIZE",
    "TEXT_DEMO_EPOCHS",
    "DemoClassifier",
    "DemoTextClassifier",
    "DemoViT",
    "train_demo_classifier",
    "train_demo_text_classifier",
    "train_demo_vit",
]
