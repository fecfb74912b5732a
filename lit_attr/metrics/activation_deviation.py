"""Activation deviation as a torchmetrics ``Metric`` (the math is in ``lit_attr.functional.activation_deviation``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr._checks import TargetType, check_choice, check_optional_int
from lit_attr.functional.activation_deviation import activation_deviation, resolve_probe_layers
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, REDUCTIONS, SubstrateType
from lit_attr.functional.protocol import check_substrate_value, resolve_protocol
from lit_attr.metrics._model_ref import ModelRef
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["ActivationDeviation"]

_PER_LAYER = ("insertion_mse", "deletion_mse", "insertion_overlap", "deletion_overlap")


class ActivationDeviation(Metric):
    """Mean activation deviation of the probe layers along the insertion and deletion games (FEI's metric).

    Every :meth:`update` runs :func:`~lit_attr.functional.activation_deviation.activation_deviation` on a batch
    and adds its per-sample, per-layer values to ``sum``-reduced states of fixed size, so the result under DDP
    equals the single-process result. The probe layers are resolved from the model's structure when the metric
    is built (:func:`~lit_attr.functional.activation_deviation.resolve_probe_layers`; default: the output of
    each top-level stage), which fixes the size of the states before any data is seen.

    :meth:`compute` returns a dict: ``"insertion_mse"`` and ``"deletion_mse"`` ``(L,)`` (per layer, lower is
    better), ``"mean_mse"`` (their mean over layers and both games, the headline number),
    ``"insertion_overlap"`` and ``"deletion_overlap"`` ``(L,)`` (fraction of units whose on/off state is kept;
    higher is better, 1 at most) and ``"layers"`` (the probe names, in column order). As everywhere in
    torchmetrics, one-element results are squeezed: with a single probe layer the per-layer entries are scalars
    (``value.reshape(-1)`` restores the layer axis).

    The model is held by reference, outside the metric's submodules: it is not in ``state_dict()``,
    ``metric.to(...)`` does not move it, and the metric can be an attribute of the LightningModule it evaluates.
    Its modes, hooks and buffers are restored after every update.

    Args:
        model: the network (logits when targets are passed to :meth:`update`).
        layers: probe module names, or ``None`` for the default probes.
        n_steps: number of steps; with neither step option, the preset's (28).
        pixels_per_step: units changed per step; not together with ``n_steps``.
        insertion_substrate: see :func:`~lit_attr.functional.insertion_deletion.make_substrate`.
        deletion_substrate: see :func:`~lit_attr.functional.insertion_deletion.make_substrate`.
        reduce: channel reduction of the maps before ranking: ``"sum"``, ``"abs_sum"`` or ``"none"``.
        preset: ``"rise"``, ``"mfaba"``, ``"fei"`` or ``None``; explicit options override it.
        internal_batch_size: most rows (samples x steps) per forward pass (default 128); ``None``: all at once.
        substrate_value: the fill of a ``"constant"`` substrate.
        seed: seed of a ``"noise"`` substrate.
        kwargs: options of :class:`torchmetrics.Metric` (``dist_sync_on_step``, ``sync_on_compute``, ...).

    Raises:
        TypeError: if ``model`` is not a module or ``layers`` has the wrong type.
        ValueError: for unknown option or layer names, or both step options.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        >>> metric = ActivationDeviation(net, n_steps=8)
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8))
        >>> scores = metric.compute()
        >>> scores["layers"], scores["insertion_mse"].shape, scores["mean_mse"].shape
        (('1', '3'), torch.Size([2]), torch.Size([]))
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    insertion_mse_sum: Tensor
    deletion_mse_sum: Tensor
    insertion_overlap_sum: Tensor
    deletion_overlap_sum: Tensor
    count: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: str | Sequence[str] | None = None,
        n_steps: int | None = None,
        pixels_per_step: int | None = None,
        insertion_substrate: SubstrateType | None = None,
        deletion_substrate: SubstrateType | None = None,
        reduce: str = "sum",
        preset: str | None = None,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        substrate_value: float | Sequence[float] | Tensor | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.layers = resolve_probe_layers(model, layers)
        protocol = resolve_protocol(
            preset,
            insertion_substrate=insertion_substrate,
            deletion_substrate=deletion_substrate,
            pixels_per_step=pixels_per_step,
            n_steps=n_steps,
        )
        check_choice("reduce", reduce, REDUCTIONS)
        check_optional_int("internal_batch_size", internal_batch_size)
        check_substrate_value(protocol, substrate_value)
        self._model_ref = ModelRef(model)
        self._options: dict[str, Any] = {
            "layers": self.layers,
            "n_steps": protocol.n_steps,
            "pixels_per_step": protocol.pixels_per_step,
            "insertion_substrate": protocol.insertion_substrate,
            "deletion_substrate": protocol.deletion_substrate,
            "reduce": reduce,
            "internal_batch_size": internal_batch_size,
            "substrate_value": substrate_value,
            "seed": seed,
        }
        num_layers = len(self.layers)
        for name in _PER_LAYER:
            self.add_state(f"{name}_sum", torch.zeros(num_layers), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    @property
    def model(self) -> nn.Module:
        """The evaluated model (held by reference, not a submodule)."""
        return self._model_ref.module

    def score(self, x: Tensor, attributions: Tensor, target: TargetType = None) -> dict[str, Tensor]:
        """Play both games on a batch and return its per-sample deviations; the states are left as they are.

        Args:
            x: ``(N, C, H, W)`` inputs on the model's device.
            attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps.
            target: accepted for the common metric signature; checked, but the result does not depend on it.

        Returns:
            ``"mean_mse"`` ``(N,)`` (each sample's mean over layers and both games) and ``{"insertion_mse",
            "deletion_mse", "insertion_overlap", "deletion_overlap"}`` ``(N, L)``.
        """
        result = activation_deviation(self.model, x, attributions, target, **self._options)
        return {
            "mean_mse": torch.cat([result.insertion_mse, result.deletion_mse], dim=1).mean(dim=1),
            **{name: getattr(result, name) for name in _PER_LAYER},
        }

    def update(
        self,
        x: Tensor,
        attributions: Tensor,
        target: TargetType = None,
        *,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Add a batch's per-layer deviations to the states.

        Args:
            x: ``(N, C, H, W)`` inputs on the model's device.
            attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps.
            target: accepted for the common metric signature; checked, but the result does not depend on it.
            scores: this batch's :meth:`score`, if the caller already has it (the games are not played again).
        """
        if scores is None:
            scores = self.score(x, attributions, target)
        dtype, device = self.insertion_mse_sum.dtype, self.insertion_mse_sum.device
        for name in _PER_LAYER:
            state = getattr(self, f"{name}_sum")
            state += scores[name].sum(dim=0).to(dtype=dtype, device=device)
        self.count += scores["insertion_mse"].shape[0]

    def compute(self) -> dict[str, Any]:
        """Per-layer means over every sample seen (on all processes), and the mean MSE over layers and games.

        Returns:
            ``{"insertion_mse", "deletion_mse", "insertion_overlap", "deletion_overlap"}`` of shape ``(L,)``,
            ``"mean_mse"`` (scalar) and ``"layers"`` (tuple of L names); NaN values before any update. torchmetrics
            squeezes one-element tensors, so with L = 1 the per-layer entries are scalars.
        """
        count = self.count.to(self.insertion_mse_sum.dtype)
        insertion_mse = self.insertion_mse_sum / count
        deletion_mse = self.deletion_mse_sum / count
        return {
            "insertion_mse": insertion_mse,
            "deletion_mse": deletion_mse,
            "mean_mse": torch.cat([insertion_mse, deletion_mse]).mean(),
            "insertion_overlap": self.insertion_overlap_sum / count,
            "deletion_overlap": self.deletion_overlap_sum / count,
            "layers": self.layers,
        }


def _summary(values: Mapping[str, Any], per_sample: bool) -> dict[str, Tensor]:
    # The headline is the mean MSE; the overlaps are averaged over layers (one number per sample, or in all).
    return {
        "activation_deviation": values["mean_mse"],
        "insertion_overlap": values["insertion_overlap"].mean(dim=-1),
        "deletion_overlap": values["deletion_overlap"].mean(dim=-1),
    }


register_metric(
    "activation_deviation",
    ActivationDeviation,
    consumes=("model", "x", "attributions", "target"),
    summary=_summary,
    per_sample=True,
    modalities={"images"},  # its games (functional.activation_deviation) take image batches only
    # The per-layer entries run over layers, not along a game: no curves.
    presentation=Presentation(
        display_name="activation deviation",
        scores=(Score("mean_mse", "activation dev. MSE", header="act.dev"),),
        curves=None,
    ),
)
