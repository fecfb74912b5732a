"""Building blocks of the parameter-randomisation sanity check (Adebayo et al. 2018; specs/metrics.md).

How to re-initialise a unit (:func:`randomize_`, reproducibly and without touching the global random state), and
which units are randomised at each stage of a cascade (:func:`randomization_stages`, applied in place and undone by
:func:`iter_randomized`). Which units there are, and their forward order, is :mod:`.randomization_units`
(:func:`randomizable_layers`, re-exported here). Nothing here copies a model: callers
(:class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization`) work on a copy of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_attr._checks import check_seed
from lit_attr.functional.randomization_units import (
    FREE_PARAMETER_STD,
    GRANULARITIES,
    FreeParameter,
    Layer,
    randomizable_layers,
    reset_module,
    resettable_modules,
    sort_in_forward_order,
)

__all__ = [
    "FREE_PARAMETER_STD",
    "GRANULARITIES",
    "ORDERS",
    "STAGE_MODES",
    "FreeParameter",
    "Layer",
    "iter_randomized",
    "randomizable_layers",
    "randomization_stages",
    "randomize_",
    "sort_in_forward_order",
]

ORDERS: tuple[str, ...] = ("top_down", "bottom_up", "independent")
STAGE_MODES: tuple[str, ...] = ("all", "last")


def _forked_rng(tensors: Iterable[Tensor]) -> Any:
    """Fork the CPU generator and those of the accelerator the tensors live on."""
    kinds = {t.device.type for t in tensors} - {"cpu", "meta"}
    if len(kinds) > 1:
        raise ValueError(f"A layer's tensors must live on one kind of device, got {sorted(kinds)}.")
    if not kinds:
        return torch.random.fork_rng(devices=[])
    kind = kinds.pop()
    return torch.random.fork_rng(devices=list(range(torch.get_device_module(kind).device_count())), device_type=kind)


def _seed_forked(seed: int, tensors: Sequence[Tensor]) -> None:
    # torch.manual_seed would also queue a seed for CUDA when it is not initialised yet, altering the caller's CUDA
    # stream later; seed only the generators that are forked.
    torch.default_generator.manual_seed(seed)
    kinds = {t.device.type for t in tensors} - {"cpu", "meta"}
    if kinds:
        module = torch.get_device_module(kinds.pop())
        getattr(module, "manual_seed_all", module.manual_seed)(seed)


def randomize_(module: nn.Module | Sequence[nn.Module], seed: int, *, reset_running_stats: bool = True) -> None:
    """Re-initialise ``module`` in place with its own ``reset_parameters()``, reproducibly from ``seed``.

    Every submodule (the module itself included) that owns parameters or buffers and defines
    ``reset_parameters()`` is reset, in ``modules()`` order, from one generator stream seeded with ``seed``;
    ``nn.MultiheadAttention`` by its private ``_reset_parameters()``. Parameters held by a submodule without a
    re-initialiser (position embeddings, class tokens) are redrawn from ``N(0, FREE_PARAMETER_STD^2)``, like a
    :class:`FreeParameter`. The global random state is
    untouched: the CPU generator (and the accelerator's, for modules on one) is forked, seeded and restored. The
    same seed gives the same weights on the same kind of device; CPU and CUDA draw different numbers.

    Note that ``reset_parameters()`` of normalisation layers is deterministic: affine weights become 1, biases 0.

    Args:
        module: a module, or several re-initialised from one stream.
        seed: the seed (the randomisation check uses ``seed + layer index``).
        reset_running_stats: also reset BatchNorm/InstanceNorm running statistics (PyTorch's ``reset_parameters``
            does so, giving mean 0 and variance 1). ``False`` keeps every buffer as it was: only parameters change.

    Raises:
        TypeError: if ``module`` is not a module (sequence) or ``seed`` not an int, or if nothing in it can be
            re-initialised.

    Example:
        >>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> randomize_(a, seed=7)
        >>> randomize_(b, seed=7)
        >>> torch.equal(a.weight, b.weight)
        True
    """
    roots = [module] if isinstance(module, nn.Module) else list(module)
    if not roots or not all(isinstance(root, nn.Module) for root in roots):
        raise TypeError(f"`module` must be an nn.Module or a non-empty sequence of them, got {module!r}.")
    check_seed(seed)
    targets = list(dict.fromkeys(m for root in roots for m in resettable_modules(root)))
    if not targets:
        raise TypeError(
            f"Nothing in {[type(r).__name__ for r in roots]} has parameters and a `reset_parameters()` method."
        )
    tensors = [t for m in targets for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]
    kept = [] if reset_running_stats else [(b, b.detach().clone()) for m in targets for b in m.buffers(recurse=False)]
    with _forked_rng(tensors), torch.no_grad():
        _seed_forked(seed, tensors)
        for target in targets:
            reset_module(target)
        for buffer, saved in kept:
            buffer.copy_(saved)


def randomization_stages(
    names: Sequence[str],
    order: Literal["top_down", "bottom_up", "independent"] = "top_down",
    stages: Literal["all", "last"] = "all",
) -> list[tuple[str, tuple[int, ...]]]:
    """Which units are randomised at each stage of the check, for units listed in forward order.

    Stage 0 is ``"original"`` (nothing randomised). ``"top_down"`` cascades from the logits: the last unit, then
    the last two, ... up to all of them; ``"bottom_up"`` cascades from the input; ``"independent"`` randomises
    one unit at a time, the others original, going from the logits down like ``top_down`` so that both curves
    share an axis. A stage is named after the unit randomised last (cascades) or alone (independent).
    ``stages="last"`` keeps only the fully randomised stage of a cascade (the same network for both cascades), the
    cheap variant for per-epoch use; it does not exist for ``"independent"``.

    Args:
        names: unit names in forward order.
        order: ``"top_down"``, ``"bottom_up"`` or ``"independent"``.
        stages: ``"all"`` or ``"last"``.

    Returns:
        ``(stage name, indices of the randomised units, sorted)`` per stage, ``"original"`` first.

    Raises:
        ValueError: for an unknown ``order`` or ``stages``, no names, or ``stages="last"`` with
            ``order="independent"``.

    Example:
        >>> randomization_stages(["conv", "bn", "fc"])
        [('original', ()), ('fc', (2,)), ('bn', (1, 2)), ('conv', (0, 1, 2))]
        >>> randomization_stages(["conv", "bn", "fc"], "bottom_up", stages="last")
        [('original', ()), ('fc', (0, 1, 2))]
    """
    if order not in ORDERS:
        raise ValueError(f"`order` must be one of {ORDERS}, got {order!r}.")
    if stages not in STAGE_MODES:
        raise ValueError(f"`stages` must be one of {STAGE_MODES}, got {stages!r}.")
    if len(names) == 0:
        raise ValueError("`names` must list at least one layer.")
    count = len(names)
    sequence = list(range(count)) if order == "bottom_up" else list(range(count - 1, -1, -1))
    plan: list[tuple[str, tuple[int, ...]]] = [("original", ())]
    if stages == "last":
        if order == "independent":
            raise ValueError(
                "`stages='last'` (the fully randomised network) needs a cascading `order`, "
                "'top_down' or 'bottom_up'; 'independent' never randomises everything at once."
            )
        return [*plan, (names[sequence[-1]], tuple(range(count)))]
    for step, index in enumerate(sequence):
        randomised = (index,) if order == "independent" else tuple(sorted(sequence[: step + 1]))
        plan.append((names[index], randomised))
    return plan


def iter_randomized(
    layers: Sequence[Layer],
    order: Literal["top_down", "bottom_up", "independent"] = "top_down",
    *,
    seed: int = 0,
    stages: Literal["all", "last"] = "all",
    reset_running_stats: bool = True,
) -> Iterator[str]:
    """Walk the stages of :func:`randomization_stages`, putting the layers in each stage's state in place.

    Yields each stage's name while the model is in that state: unit ``i`` (its index in ``layers``, which should be
    in forward order) is re-initialised by :func:`randomize_` with ``seed + i``, so a unit gets the same weights in
    every stage, order and call. Moving to the next stage randomises only what is new and restores (from a
    snapshot taken before its first randomisation) what is no longer randomised. Every layer is restored when the
    iteration ends, also when it is abandoned early (``close()``) or the loop body raises.

    Args:
        layers: ``(name, module)`` units in forward order.
        order: see :func:`randomization_stages`.
        seed: base seed.
        stages: see :func:`randomization_stages`.
        reset_running_stats: see :func:`randomize_`.

    Yields:
        Stage names, ``"original"`` first.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> before = net[1].weight.clone()
        >>> for stage in iter_randomized([("0", net[0]), ("1", net[1])]):
        ...     print(stage, torch.equal(net[1].weight, before))
        original True
        1 False
        0 False
        >>> torch.equal(net[1].weight, before)
        True
    """
    plan = randomization_stages([name for name, _ in layers], order, stages)
    snapshots: dict[int, dict[str, Tensor]] = {}
    current: set[int] = set()

    def restore(index: int) -> None:
        layers[index][1].load_state_dict(snapshots[index])

    try:
        for name, wanted in plan:
            for index in sorted(current - set(wanted)):
                restore(index)
            for index in sorted(set(wanted) - current):
                module = layers[index][1]
                if index not in snapshots:
                    snapshots[index] = {key: value.detach().clone() for key, value in module.state_dict().items()}
                randomize_(module, seed + index, reset_running_stats=reset_running_stats)
            current = set(wanted)
            yield name
    finally:
        for index in sorted(current):
            restore(index)
