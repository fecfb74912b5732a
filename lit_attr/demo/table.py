"""The demos of ``lit_attr demo`` as data: what each trains and evaluates, and its full and ``--fast`` budgets.

One :class:`Demo` per entry of :data:`DEMO_TABLE`; the driver (:mod:`lit_attr.demo.driver`) and the help
(:mod:`lit_attr.demo.command`) read nothing else. :data:`DEMOS` and :data:`DEMO_BUDGETS` are the same table as
plain dicts (their form before the table existed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEMOS", "DEMO_BUDGETS", "DEMO_TABLE", "Budget", "Demo"]

Options = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Budget:
    """How much one run of a demo trains and evaluates.

    Attributes:
        epochs: training epochs.
        num_train: training samples.
        num_val: validation samples.
        limit_samples: validation samples evaluated.
        batch_size: samples attributed at once in the evaluation.
        randomization_samples: samples through the randomisation check in the evaluation (0: none).
        method_kwargs: the evaluated methods' options (every method of the demo has an entry).
        monitor_samples: the monitor's probe-set size.
        model_kwargs: constructor options of the model that differ from its defaults (e.g. a learning rate tuned
            for this budget).
        data_kwargs: options of the data module beyond the sample counts and the seed (e.g. ``batch_size``).
    """

    epochs: int
    num_train: int
    num_val: int
    limit_samples: int
    batch_size: int
    randomization_samples: int
    method_kwargs: Options
    monitor_samples: int
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    data_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Demo:
    """One demo: its model and data (class paths), what the evaluation and the callbacks run, its budgets.

    Attributes:
        title: what is trained, for the console.
        unit: what a sample is, for the help and the summary (``"images"``, ``"sentences"``).
        model: class path of the LightningModule (built with ``num_classes=``).
        data: class path of the data module (built with ``num_train``, ``num_val``, ``num_test`` and ``seed``).
        input_bounds: the inputs' valid range for every method (None: unbounded, e.g. token embeddings).
        methods: the evaluated methods.
        metrics: the evaluated metrics, with their options in ``metric_kwargs``.
        monitor: the monitor's methods, scored by ``monitor_metrics`` with ``monitor_metric_kwargs``.
        check: the methods of the randomisation check during training (empty: no check).
        callback_method_kwargs: the callbacks' options for their methods.
        full: the budget of ``lit_attr demo``.
        fast: the budget of ``lit_attr demo --fast``.
    """

    title: str
    unit: str
    model: str
    data: str
    input_bounds: tuple[float, float] | None
    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    metric_kwargs: Options
    monitor: tuple[str, ...]
    monitor_metrics: tuple[str, ...]
    monitor_metric_kwargs: Options
    check: tuple[str, ...]
    full: Budget
    fast: Budget
    callback_method_kwargs: Options = field(
        default_factory=lambda: {"integrated_gradients": {"n_steps": 16}, "mfaba": {"max_steps": 16}}
    )

    def budget(self, fast: bool) -> Budget:
        """The ``--fast`` budget or the full one."""
        return self.fast if fast else self.full


_IMAGES = {
    "unit": "images",
    "data": "lit_attr.data.ShapesDataModule",
    "input_bounds": (0.0, 1.0),
    "metrics": ("insertion_deletion", "localization", "activation_deviation", "randomization"),
    "metric_kwargs": {"insertion_deletion": {"preset": "rise"}, "activation_deviation": {"preset": "rise"}},
    "monitor_metrics": ("insertion_deletion", "localization"),
    "monitor_metric_kwargs": {"insertion_deletion": {"n_steps": 16}},
}

#: Every demo by the name ``run_demo(model=...)`` takes.
DEMO_TABLE: dict[str, Demo] = {
    "cnn": Demo(
        title="the demo CNN on synthetic shapes",
        model="lit_attr.models.DemoClassifier",
        methods=("mfaba", "ig2", "fei", "integrated_gradients"),
        monitor=("saliency", "integrated_gradients", "mfaba"),
        check=("saliency", "integrated_gradients"),
        full=Budget(
            epochs=6, num_train=4096, num_val=512, limit_samples=32, batch_size=8, randomization_samples=4,
            method_kwargs={
                "mfaba": {"max_steps": 50},
                # Rows per forward bounded: at 16 x 201 x 8 rows the CPU spends its time paging, not computing.
                "ig2": {"steps": 201, "n_references": 4, "internal_batch_size": 512},
                "fei": {"iterations": 100, "internal_batch_size": 512},
                "integrated_gradients": {"n_steps": 50},
            },
            monitor_samples=16,
        ),
        fast=Budget(
            epochs=3, num_train=2048, num_val=128, limit_samples=8, batch_size=8, randomization_samples=4,
            method_kwargs={
                "mfaba": {"max_steps": 20},
                "ig2": {"steps": 50, "n_references": 4, "internal_batch_size": 512},
                "fei": {"iterations": 20, "internal_batch_size": 512},
                "integrated_gradients": {"n_steps": 20},
            },
            monitor_samples=8,
        ),
        **_IMAGES,
    ),
    "vit": Demo(
        title="the demo ViT on synthetic shapes",
        model="lit_attr.models.DemoViT",
        methods=("mfaba", "ig2", "fei", "integrated_gradients", "attention_rollout", "generic_attention"),
        monitor=("saliency", "attention_rollout", "mfaba"),
        check=("saliency", "generic_attention"),
        full=Budget(
            epochs=5, num_train=8000, num_val=512, limit_samples=32, batch_size=8, randomization_samples=4,
            method_kwargs={
                "mfaba": {"max_steps": 50},
                "ig2": {"steps": 100, "n_references": 4, "internal_batch_size": 512},
                "fei": {"iterations": 50, "internal_batch_size": 512},
                "integrated_gradients": {"n_steps": 50},
                "attention_rollout": {},
                "generic_attention": {},
            },
            monitor_samples=16,
        ),
        # Two epochs at the full budget's settings (64 steps) left the ViT at 0.41 validation accuracy: it needs
        # optimiser steps more than images. Twice the images, half the batch and 5 epochs make 640 steps (about 15 s
        # more CPU); at that length OneCycle's peak 2e-3 overshoots: 0.84 at 1.5e-3, 0.90 at 1e-3 (0.88-0.89 for
        # seeds 1 and 2; 6000 images instead: 0.91 for 9 s more).
        fast=Budget(
            epochs=5, num_train=4096, num_val=128, limit_samples=8, batch_size=8, randomization_samples=4,
            model_kwargs={"lr": 1e-3},
            data_kwargs={"batch_size": 32},
            method_kwargs={
                "mfaba": {"max_steps": 20},
                "ig2": {"steps": 30, "n_references": 2, "internal_batch_size": 512},
                "fei": {"iterations": 10, "internal_batch_size": 512},
                "integrated_gradients": {"n_steps": 20},
                "attention_rollout": {},
                "generic_attention": {},
            },
            monitor_samples=8,
        ),
        **_IMAGES,
    ),
    "text": Demo(
        title="the demo text classifier (a small BERT) on synthetic sentences",
        unit="sentences",
        model="lit_attr.models.DemoTextClassifier",
        data="lit_attr.data.SyntheticTextDataModule",
        input_bounds=None,  # token ids: the methods move in embedding space, unbounded
        methods=("saliency", "integrated_gradients", "mfaba", "ig2", "fei"),
        metrics=(
            "comprehensiveness",
            "sufficiency",
            "token_insertion_deletion",
            "token_localization",
            "token_activation_deviation",
        ),
        metric_kwargs={"token_insertion_deletion": {"n_steps": 8}, "token_activation_deviation": {"n_steps": 8}},
        monitor=("saliency", "integrated_gradients", "mfaba"),
        monitor_metrics=("token_insertion_deletion", "token_localization"),
        monitor_metric_kwargs={"token_insertion_deletion": {"n_steps": 8}},
        check=(),  # the randomisation checks take image or feature inputs only
        full=Budget(
            epochs=3, num_train=4000, num_val=512, limit_samples=32, batch_size=8, randomization_samples=0,
            method_kwargs={
                "saliency": {},
                "integrated_gradients": {"n_steps": 32},
                "mfaba": {"max_steps": 50},
                "ig2": {"steps": 50, "n_references": 4},
                "fei": {"iterations": 20},
            },
            monitor_samples=16,
        ),
        fast=Budget(
            epochs=2, num_train=2000, num_val=128, limit_samples=8, batch_size=8, randomization_samples=0,
            method_kwargs={
                "saliency": {},
                "integrated_gradients": {"n_steps": 16},
                "mfaba": {"max_steps": 20},
                "ig2": {"steps": 20, "n_references": 2},
                "fei": {"iterations": 5},
            },
            monitor_samples=8,
        ),
    ),
}  # fmt: skip


def _as_dict(demo: Demo) -> dict[str, Any]:
    return {
        "title": demo.title,
        "model": demo.model,
        "data": demo.data,
        "input_bounds": None if demo.input_bounds is None else list(demo.input_bounds),
        "methods": list(demo.methods),
        "metrics": list(demo.metrics),
        "metric_kwargs": demo.metric_kwargs,
        "monitor": list(demo.monitor),
        "monitor_metrics": {"metrics": demo.monitor_metrics, "metric_kwargs": demo.monitor_metric_kwargs},
        "check": list(demo.check),
    }


#: :data:`DEMO_TABLE` without the budgets, as dicts (read-only use: the table is what the demo runs).
DEMOS: dict[str, dict[str, Any]] = {name: _as_dict(demo) for name, demo in DEMO_TABLE.items()}
#: The budgets of :data:`DEMO_TABLE` as dicts ``{demo: {"full": {...}, "fast": {...}}}`` (read-only use).
DEMO_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    name: {"full": asdict(demo.full), "fast": asdict(demo.fast)} for name, demo in DEMO_TABLE.items()
}
