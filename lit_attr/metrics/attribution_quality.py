"""Run an attribution method and score it, as one Metric for a LightningModule's own ``validation_step``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr.methods import AttributionMethod, get_method
from lit_attr.methods.base import TargetType
from lit_attr.metrics.activation_deviation import ActivationDeviation
from lit_attr.metrics.insertion_deletion import InsertionDeletion
from lit_attr.metrics.localization import Localization

#: Metric names accepted by :class:`AttributionQuality`, with the builder of each.
QUALITY_METRICS: dict[str, Callable[..., Metric]] = {
    "insertion_deletion": lambda model, **kw: InsertionDeletion(model, **kw),
    "localization": lambda model, **kw: Localization(**kw),
    "activation_deviation": lambda model, **kw: ActivationDeviation(model, **kw),
}


class AttributionQuality(Metric):
    """Attribute a batch with one method, then update faithfulness/localisation metrics with the result.

    ``update`` runs the method with gradients enabled, also under ``torch.no_grad()`` and on Lightning's
    inference tensors (the method core takes care of that), so the metric works inside ``validation_step``.
    ``compute`` returns a flat dict ``{"<method>/<value>": scalar tensor}`` ready for ``self.log_dict``. The
    wrapped metrics are child Metrics: ``reset``, DDP synchronisation and ``.to(device)`` reach them, and the
    evaluated model is held by reference, so it is never part of this metric's ``state_dict``.

    Args:
        model: classifier returning logits (may be the LightningModule that owns this metric).
        method: a registered method name or an :class:`~lit_attr.methods.AttributionMethod`.
        metrics: any of ``"insertion_deletion"``, ``"localization"`` (needs ``masks``), ``"activation_deviation"``.
        method_kwargs: options for :func:`~lit_attr.methods.get_method` when ``method`` is a name. For ``"ig2"``
            without a ``reference_pool``, each batch's own samples (with their labels, or predictions when no
            target is given) serve as the pool.
        metric_kwargs: ``{metric name: options}`` for the wrapped metrics.
        max_samples_per_update: attribute at most this many rows of each batch, chosen without replacement by a
            generator seeded with ``seed`` and the update count (the same rows on every run).
        seed: seed of that choice.
        kwargs: options of :class:`torchmetrics.Metric`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        >>> quality = AttributionQuality(net, "saliency", metric_kwargs={"insertion_deletion": {"n_steps": 4}})
        >>> quality.update(torch.rand(4, 3, 8, 8))
        >>> sorted(quality.compute())
        ['saliency/deletion', 'saliency/difference', 'saliency/insertion']
    """

    full_state_update = False
    higher_is_better = None

    def __init__(
        self,
        model: nn.Module,
        method: str | AttributionMethod,
        metrics: Sequence[str] = ("insertion_deletion",),
        method_kwargs: Mapping[str, Any] | None = None,
        metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        max_samples_per_update: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(metrics, str) or not metrics:
            raise ValueError(f"`metrics` must be a non-empty sequence of names, got {metrics!r}.")
        unknown = [m for m in metrics if m not in QUALITY_METRICS]
        if unknown:
            raise ValueError(f"Unknown metric(s) {unknown}; available: {', '.join(QUALITY_METRICS)}.")
        metric_kwargs = dict(metric_kwargs or {})
        stray = sorted(set(metric_kwargs) - set(metrics))
        if stray:
            raise ValueError(f"`metric_kwargs` has options for metrics not in `metrics`: {stray}.")
        if max_samples_per_update is not None and (
            not isinstance(max_samples_per_update, int) or max_samples_per_update < 1
        ):
            raise ValueError(f"`max_samples_per_update` must be a positive int or None, got {max_samples_per_update}.")
        if isinstance(method, AttributionMethod):
            if method_kwargs:
                raise ValueError("`method_kwargs` applies to a method given by name, not to an AttributionMethod.")
            self.method = method
        elif isinstance(method, str):
            self.method = get_method(method, model, **dict(method_kwargs or {}))
        else:
            raise TypeError(f"`method` must be a method name or an AttributionMethod, got {type(method).__name__}.")
        self.method_name = self.method.name or type(self.method).__name__.lower()
        self.scores = nn.ModuleDict({m: QUALITY_METRICS[m](model, **metric_kwargs.get(m, {})) for m in metrics})
        self.max_samples_per_update = max_samples_per_update
        self.seed = seed
        self._pool_from_batch = self.method_name == "ig2" and getattr(self.method, "reference_pool", None) is None
        self.add_state("updates", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, x: Tensor, target: TargetType = None, masks: Tensor | None = None) -> None:
        """Attribute ``x`` (optionally a seeded subset of its rows) and update every wrapped metric.

        Args:
            x: input batch on the model's device.
            target: classes to explain (``None``: the model's top-1 prediction).
            masks: ``(N, H, W)`` ground-truth masks; required when ``"localization"`` is among the metrics.
        """
        if "localization" in self.scores and masks is None:
            raise ValueError("`masks` are required: 'localization' is among the metrics of this AttributionQuality.")
        target = self.method.resolve_target(x, target)
        if self.max_samples_per_update is not None and x.shape[0] > self.max_samples_per_update:
            generator = torch.Generator().manual_seed(self.seed + int(self.updates))
            rows = torch.randperm(x.shape[0], generator=generator)[: self.max_samples_per_update].sort().values
            rows = rows.to(x.device)
            x, target = x[rows], target[rows]
            masks = masks[rows.to(masks.device)] if masks is not None else None
        extra = {}
        if self._pool_from_batch:
            extra = {"references": self.method.sample_references(x, target, pool=(x, target))}
        attributions = self.method.attribute(x, target, **extra)
        for name, metric in self.scores.items():
            if name == "localization":
                metric.update(attributions, masks)
            else:
                metric.update(x, attributions, target)
        self.updates += 1

    def compute(self) -> dict[str, Tensor]:
        """Scalar scores keyed ``"<method>/<value>"`` (mean AUCs, localisation means, mean activation deviation)."""
        out: dict[str, Tensor] = {}
        for name, metric in self.scores.items():
            values = metric.compute()
            if name == "activation_deviation":
                values = {
                    "activation_deviation": values["mean_mse"],
                    "insertion_overlap": values["insertion_overlap"].mean(),
                    "deletion_overlap": values["deletion_overlap"].mean(),
                }
            for key, value in values.items():
                if isinstance(value, Tensor) and value.numel() == 1:
                    out[f"{self.method_name}/{key}"] = value.reshape(())
        return out

    def reset(self) -> None:
        """Reset this metric and every wrapped metric."""
        super().reset()
        for metric in self.scores.values():
            metric.reset()
