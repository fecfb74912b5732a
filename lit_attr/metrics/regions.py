"""Region games as torchmetrics ``Metric`` classes: region perturbation (AOPC), selectivity and IROF.

The math lives in :mod:`lit_attr.functional.regions`; the regions are a grid of patches over the units of any
input kind (runs of tokens of token ids; IROF also SLIC superpixels of images).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from lit_attr._checks import check_int, check_names
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, SubstrateType
from lit_attr.functional.regions import ORDERS, Segmentation, irof, region_perturbation, selectivity
from lit_attr.metrics.faithfulness import GAME_INPUTS, GAME_MODALITIES, GameMetric
from lit_attr.metrics.presentation import Presentation, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["IROF", "RegionPerturbation", "Selectivity"]

_KEYS = {"morf": "region_perturbation", "lerf": "region_perturbation_lerf"}


class RegionPerturbation(GameMetric):
    """Mean AOPC of region perturbation (Samek et al. 2017) and the mean perturbation curves.

    ``"region_perturbation"``: AOPC most relevant regions first (higher is better); with ``orders`` naming
    ``"lerf"`` also ``"region_perturbation_lerf"``, least relevant first (lower is better); the curves
    ``"<key>_curve"`` hold the mean scores over the ``regions + 1`` points. See
    :func:`~lit_attr.functional.regions.region_perturbation` for the options. Cost: ``L + 1`` forwards per sample and
    order, ``L = min(regions, number of patches)``.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        >>> metric = RegionPerturbation(net, patch_size=4, orders=("morf", "lerf"))
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8))
        >>> {key: tuple(value.shape) for key, value in metric.compute().items()}  # doctest: +NORMALIZE_WHITESPACE
        {'region_perturbation': (), 'region_perturbation_lerf': (), 'region_perturbation_curve': (5,),
         'region_perturbation_lerf_curve': (5,)}
    """

    higher_is_better = True
    function = region_perturbation

    def __init__(
        self,
        model: nn.Module,
        *,
        patch_size: int = 9,
        regions: int = 100,
        orders: str | Sequence[str] = ("morf",),
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        output: str = "prob",
        reduce: str = "sum",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        check_int("patch_size", patch_size, 1)
        check_int("regions", regions, 1)
        played = check_names("orders", orders, ORDERS, what="order")
        self.orders = tuple(order for order in ORDERS if order in played)
        self.keys = tuple(_KEYS[order] for order in self.orders)
        options = dict(patch_size=patch_size, regions=regions, orders=self.orders, substrate=substrate,
                       substrate_value=substrate_value, output=output, reduce=reduce, seed=seed,
                       internal_batch_size=internal_batch_size)  # fmt: skip
        curves = {f"{key}_curve": regions + 1 for key in self.keys}
        super().__init__(model, options, curve_points=curves, **kwargs)

    def values(self, result: dict[str, Tensor]) -> dict[str, Tensor]:
        """The AOPC and the curve of every order, under this metric's keys."""
        values = {}
        for order in self.orders:
            values[_KEYS[order]] = result[order]
            values[f"{_KEYS[order]}_curve"] = result[f"{order}_curve"]
        return values


class Selectivity(GameMetric):
    """Mean selectivity (Montavon et al. 2018); lower is better.

    The area under the score curve as the most relevant patches go; see
    :func:`~lit_attr.functional.regions.selectivity`. Cost: ``S + 1`` forwards for ``S`` patches.

    Example:
        >>> import torch
        >>> metric = Selectivity(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), patch_size=4)
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8))
        >>> sorted(metric.compute())
        ['selectivity']
    """

    higher_is_better = False
    keys = ("selectivity",)
    function = selectivity

    def __init__(
        self,
        model: nn.Module,
        *,
        patch_size: int = 8,
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        output: str = "prob",
        reduce: str = "sum",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        check_int("patch_size", patch_size, 1)
        options = dict(patch_size=patch_size, substrate=substrate, substrate_value=substrate_value, output=output,
                       reduce=reduce, seed=seed, internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(model, options, **kwargs)


class IROF(GameMetric):
    """Mean IROF (Rieger & Hansen 2020); higher is better.

    The area over the relative probability curve as regions go, most relevant (by mean attribution) first; see
    :func:`~lit_attr.functional.regions.irof`. Cost: ``S + 1`` forwards for ``S`` regions.

    Example:
        >>> import torch
        >>> metric = IROF(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), patch_size=4)
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8))
        >>> sorted(metric.compute())
        ['irof']
    """

    higher_is_better = True
    keys = ("irof",)
    function = irof

    def __init__(
        self,
        model: nn.Module,
        *,
        segmentation: Segmentation = "grid",
        patch_size: int = 8,
        substrate: SubstrateType | None = None,
        substrate_value: object = None,
        reduce: str = "sum",
        seed: int = 0,
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        check_int("patch_size", patch_size, 1)
        if not (callable(segmentation) or segmentation in ("grid", "slic")):
            raise ValueError(f"`segmentation` must be 'grid', 'slic' or a callable, got {segmentation!r}.")
        options = dict(segmentation=segmentation, patch_size=patch_size, substrate=substrate,
                       substrate_value=substrate_value, reduce=reduce, seed=seed,
                       internal_batch_size=internal_batch_size)  # fmt: skip
        super().__init__(model, options, **kwargs)


register_metric(
    "region_perturbation",
    RegionPerturbation,
    consumes=GAME_INPUTS,
    per_sample=True,
    modalities=GAME_MODALITIES,
    presentation=Presentation(
        display_name="region perturbation",
        scores=(
            Score("region_perturbation", "AOPC (MoRF)", caption="aopc {:.2f}"),
            Score("region_perturbation_lerf", "AOPC (LeRF)", higher_is_better=False),
        ),
    ),
)
register_metric(
    "selectivity",
    Selectivity,
    consumes=GAME_INPUTS,
    per_sample=True,
    modalities=GAME_MODALITIES,
    presentation=Presentation(scores=(Score("selectivity", "selectivity AUC"),), curves=None),
)
register_metric(
    "irof",
    IROF,
    consumes=GAME_INPUTS,
    per_sample=True,
    modalities=GAME_MODALITIES,
    presentation=Presentation(scores=(Score("irof", "IROF (area over curve)"),), curves=None),
)
