"""Run an attribution method and score it, as one Metric for a LightningModule's own ``validation_step``.

Like the monitor and ``evaluate``, :class:`AttributionQuality` is a thin user of the runner, so it lives above it
(it was ``lit_attr.metrics.AttributionQuality``, which still works with a ``DeprecationWarning``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr._checks import check_names, check_optional_int, check_seed, resolve_target
from lit_attr._hygiene import preserved_model_state
from lit_attr.batch import Batch, adapt_batch
from lit_attr.methods import AttributionMethod
from lit_attr.methods.base import TargetType
from lit_attr.runner import AttributionRunner

__all__ = ["AttributionQuality"]


class AttributionQuality(Metric):
    """Attribute a batch with one method, then update faithfulness/localisation metrics with the result.

    ``update`` runs the method with gradients enabled, also under ``torch.no_grad()`` and on Lightning's
    inference tensors (the method core takes care of that), so the metric works inside ``validation_step``.
    ``compute`` returns a flat dict ``{"attr/<method>/<metric>/<score>": scalar tensor}`` ready for
    ``self.log_dict``: the headline numbers of every metric, under the keys and with the values the
    ``AttributionMonitor`` and ``lit_attr evaluate`` log (:mod:`lit_attr.keys`).
    The wrapped metrics are child Metrics (:attr:`scores`): ``reset``, DDP synchronisation and ``.to(device)``
    reach them, and the evaluated model is held by reference, so it is never part of this metric's ``state_dict``.
    The work is done by :class:`~lit_attr.runner.AttributionRunner`.

    Args:
        model: classifier returning logits (may be the LightningModule that owns this metric).
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod` bound to ``model``.
        metrics: names from :func:`~lit_attr.metrics.available_metrics` (``"localization"`` needs ``masks``).
        method_kwargs: options for :func:`~lit_attr.methods.get_method` when ``method`` is a name.
        metric_kwargs: ``{metric name: options}`` for the wrapped metrics.
        max_samples_per_update: attribute at most this many rows of each batch, chosen without replacement by a
            generator seeded with ``seed`` and the update count (the same rows on every run).
        seed: seed of that choice.
        kwargs: options of :class:`torchmetrics.Metric`.

    Each update also hands the method the batch itself (``AttributionMethod.prepare``), with its targets as
    labels: ``"ig2"`` without a ``reference_pool`` draws its references from the batch's other-class samples.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        >>> quality = AttributionQuality(net, "saliency", metric_kwargs={"insertion_deletion": {"n_steps": 4}})
        >>> quality.update(torch.rand(4, 3, 8, 8))
        >>> sorted(quality.compute())  # doctest: +NORMALIZE_WHITESPACE
        ['attr/saliency/insertion_deletion/deletion', 'attr/saliency/insertion_deletion/difference',
         'attr/saliency/insertion_deletion/insertion']
    """

    full_state_update = False
    higher_is_better = None

    def __init__(
        self,
        model: nn.Module,
        method: str | AttributionMethod,
        metrics: str | Sequence[str] = ("insertion_deletion",),
        method_kwargs: Mapping[str, Any] | None = None,
        metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        max_samples_per_update: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(method, AttributionMethod):
            if method_kwargs:
                raise ValueError("`method_kwargs` applies to a method given by name, not to an AttributionMethod.")
            name = method.name or type(method).__name__.lower()
        elif isinstance(method, str):
            name = method
        else:
            raise TypeError(f"`method` must be a method name or an AttributionMethod, got {type(method).__name__}.")
        metrics = check_names("metrics", metrics, what="metric")
        self.max_samples_per_update = check_optional_int("max_samples_per_update", max_samples_per_update)
        self.seed = check_seed(seed)
        self._runner = AttributionRunner(
            model,
            {name: method},
            metrics,
            method_kwargs={name: method_kwargs} if method_kwargs else None,
            metric_kwargs=metric_kwargs,
            target="prediction",
        )
        self.method = self._runner.methods[name]
        self.method_name = name
        self.scores = nn.ModuleDict(self._runner.metrics[name])
        self.add_state("updates", torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self,
        x: Tensor,
        target: TargetType = None,
        masks: Tensor | None = None,
        attention_mask: Tensor | None = None,
        special_tokens_mask: Tensor | None = None,
    ) -> None:
        """Attribute ``x`` (optionally a seeded subset of its rows) and update every wrapped metric.

        Args:
            x: input batch on the model's device: images, features, or token ids ``(N, L)``.
            target: classes to explain (``None``: the model's top-1 prediction).
            masks: ``(N, H, W)`` ground-truth masks, or ``(N, L)`` token rationales; required by metrics that
                consume masks.
            attention_mask: ``(N, L)`` 1 on real tokens, 0 on padding (token ids).
            special_tokens_mask: ``(N, L)`` 1 on special tokens (token ids).
        """
        needs = [name for name, spec in self._runner.specs.items() if spec.needs_masks]
        if needs and masks is None:
            raise ValueError(f"`masks` are required: {', '.join(map(repr, needs))} among the metrics needs them.")
        batch = adapt_batch(Batch(x, None, masks, attention_mask, special_tokens_mask))
        model = self._runner.model
        # One clean forward: it resolves the targets (the labels of IG2's pool) and is handed on to the runner.
        with torch.no_grad(), torch.inference_mode(False), preserved_model_state(model):
            logits = batch.logits(model)
        target = resolve_target(target, logits)
        if self.max_samples_per_update is not None and x.shape[0] > self.max_samples_per_update:
            generator = torch.Generator().manual_seed(self.seed + int(self.updates))
            rows = torch.randperm(x.shape[0], generator=generator)[: self.max_samples_per_update].sort().values
            rows = rows.to(target.device)
            batch, target, logits = batch.select(rows), target[rows], logits[rows]
        batch = replace(batch, y=target)
        self._runner.prepare(batch)
        self._runner.run(batch, target=target, logits=logits)
        self.updates += 1

    def compute(self) -> dict[str, Tensor]:
        """Every metric's headline numbers keyed ``"attr/<method>/<metric>/<score>"`` (0-d tensors)."""
        return self._runner.scalars()

    def reset(self) -> None:
        """Reset this metric and every wrapped metric."""
        super().reset()
        self._runner.reset()
