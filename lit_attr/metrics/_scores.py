"""The base of the metrics that average per-sample scores (and curves): sum states, NaN-aware counts, ``score()``.

Each breadth metric (sparseness, faithfulness correlation, local Lipschitz, ...) is a thin subclass: it declares the
keys of its per-sample scores and implements :meth:`MeanScores.score` with its functional; this base adds them to
``sum``-reduced states, so the result under DDP equals the single-process result. A score that is undefined for a
sample (NaN: a map without a unit that counts, a sample without neighbours) is left out of that key's mean, and the
count says how many samples it averages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr.metrics._model_ref import ModelRef

__all__ = ["MeanScores"]


class MeanScores(Metric):
    """Means over samples of the per-sample scores named by :attr:`keys`, and mean curves of :attr:`curve_keys`.

    Subclasses implement ``score(...) -> {key: (N,) tensor, curve key: (N, T + 1) tensor}``; ``update(...)`` takes
    the same arguments as ``score`` (plus ``scores=``, a ``score`` result the caller already has) and adds the batch.
    :meth:`compute` returns ``{key: mean over the samples where it is defined}`` (NaN before any) and every curve's
    mean over the samples that reached each point.

    Args:
        model: the evaluated model, held by reference (not a submodule, not in ``state_dict``); ``None`` for a
            metric of maps alone.
        curve_points: ``{curve key: most points}`` the curve states hold.
        kwargs: options of :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    full_state_update = False
    #: Keys of the per-sample scores, in the order of :meth:`compute`'s result.
    keys: ClassVar[tuple[str, ...]] = ()

    score_sum: Tensor
    score_count: Tensor

    def __init__(
        self, model: nn.Module | None = None, *, curve_points: Mapping[str, int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self._model_ref = None if model is None else ModelRef(model)
        self.curve_keys = tuple(curve_points or {})
        self.add_state("score_sum", torch.zeros(len(self.keys)), dist_reduce_fx="sum")
        self.add_state("score_count", torch.zeros(len(self.keys)), dist_reduce_fx="sum")
        for key, points in (curve_points or {}).items():
            self.add_state(f"{key}_sum", torch.zeros(points), dist_reduce_fx="sum")
            self.add_state(f"{key}_count", torch.zeros(points), dist_reduce_fx="sum")

    @property
    def model(self) -> nn.Module:
        """The evaluated model (held by reference, not a submodule)."""
        if self._model_ref is None:
            raise AttributeError(f"{type(self).__name__} scores maps alone; it has no model.")
        return self._model_ref.module

    def score(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """One batch's per-sample scores (and curves); the states are left as they are."""
        raise NotImplementedError

    def update(self, *args: Any, scores: Mapping[str, Tensor] | None = None, **kwargs: Any) -> None:
        """Add a batch: ``update`` takes :meth:`score`'s arguments, or its result as ``scores``."""
        if scores is None:
            scores = self.score(*args, **kwargs)
        device = self.score_sum.device
        for index, key in enumerate(self.keys):
            values = scores[key].detach().to(device=device, dtype=torch.float64)
            defined = torch.isfinite(values)
            self.score_sum[index] += values[defined].sum().to(self.score_sum.dtype)
            self.score_count[index] += defined.sum()
        for key in self.curve_keys:
            curve = scores[key].detach().to(device=device, dtype=torch.float64)
            total, count = getattr(self, f"{key}_sum"), getattr(self, f"{key}_count")
            if curve.shape[1] > total.numel():
                raise ValueError(
                    f"This batch's `{key}` has {curve.shape[1]} points but the states hold {total.numel()}; the "
                    "metric's options bound the points when it is built."
                )
            defined = torch.isfinite(curve)
            total[: curve.shape[1]] += torch.where(defined, curve, 0.0).sum(dim=0).to(total.dtype)
            count[: curve.shape[1]] += defined.sum(dim=0).to(count.dtype)

    def compute(self) -> dict[str, Tensor]:
        """The mean of every score over the samples where it is defined, and the mean curves (NaN before data)."""
        means = self.score_sum / self.score_count
        result = {key: means[index] for index, key in enumerate(self.keys)}
        for key in self.curve_keys:
            total, count = getattr(self, f"{key}_sum"), getattr(self, f"{key}_count")
            reached = count.nonzero()
            points = int(reached.max()) + 1 if reached.numel() else 0
            result[key] = total[:points] / count[:points]
        return result
