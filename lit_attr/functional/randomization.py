"""Building blocks of the parameter-randomisation sanity check (Adebayo et al. 2018; specs/metrics.md).

Which layers to randomise (:func:`randomizable_layers`, in the order the forward pass calls them), how to
re-initialise one (:func:`randomize_`), and which layers are randomised at each stage of a cascade
(:func:`randomization_stages`, applied in place and undone by :func:`iter_randomized`). Nothing here copies a
model: callers (:class:`~lit_attr.metrics.parameter_randomization.ParameterRandomization`) work on a copy of their
own.

Transformers need two things CNNs do not: ``nn.MultiheadAttention`` re-initialises its projections only with a
private ``_reset_parameters()``, and position embeddings and class tokens are bare parameters of container modules
that no ``reset_parameters()`` covers. The first is called like any ``reset_parameters()``; the second become units
of their own (:class:`FreeParameter`), redrawn from ``N(0, FREE_PARAMETER_STD^2)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lit_attr._checks import check_seed
from lit_attr._hygiene import preserved_model_state
from lit_attr.functional._transformer import transformer_blocks

Layer = tuple[str, nn.Module]
"""A randomisation unit: its name in ``model.named_modules()`` and the module."""

ORDERS: tuple[str, ...] = ("top_down", "bottom_up", "independent")
GRANULARITIES: tuple[str, ...] = ("leaf", "block")
STAGE_MODES: tuple[str, ...] = ("all", "last")

#: Standard deviation of the normal distribution a :class:`FreeParameter` is redrawn from: the initialisation of the
#: position embeddings of ViT and BERT (torchvision and timm draw their position embeddings with it too).
FREE_PARAMETER_STD: float = 0.02

# Layers the automatic mode randomises: the weight-bearing building blocks of CNNs, MLPs and transformers. Torch's
# private base classes cover every convolution (incl. transposed) and every batch/instance norm in one check.
_AUTO_TYPES: tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.Bilinear,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
    nn.MultiheadAttention,
    nn.Embedding,
)


class FreeParameter(nn.Module):
    """A parameter that no module re-initialises (a position embedding, a class token), as a unit of its own.

    It holds the model's parameter itself, not a copy: re-initialising or loading this unit changes the model.
    ``reset_parameters()`` redraws it from ``N(0, FREE_PARAMETER_STD^2)``.

    Example:
        >>> token = nn.Parameter(torch.zeros(1, 1, 4))
        >>> FreeParameter(token).value is token
        True
    """

    def __init__(self, parameter: nn.Parameter) -> None:
        super().__init__()
        self.value = parameter

    def reset_parameters(self) -> None:
        """Redraw the parameter in place."""
        nn.init.normal_(self.value, mean=0.0, std=FREE_PARAMETER_STD)


def _has_direct_state(module: nn.Module) -> bool:
    return (
        next(module.parameters(recurse=False), None) is not None
        or next(module.buffers(recurse=False), None) is not None
    )


def _has_direct_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _reset_fn(module: nn.Module) -> Callable[[], None] | None:
    """The module's own re-initialiser, if it has one."""
    if isinstance(module, nn.MultiheadAttention):
        return module._reset_parameters  # its only re-initialiser is private
    reset = getattr(module, "reset_parameters", None)
    return reset if callable(reset) else None


def _reset(module: nn.Module) -> None:
    """Re-initialise the module's own parameters: with its re-initialiser, else as free parameters."""
    reset = _reset_fn(module)
    if reset is not None:
        reset()
        return
    for parameter in module.parameters(recurse=False):
        nn.init.normal_(parameter, mean=0.0, std=FREE_PARAMETER_STD)


def _resettable(root: nn.Module) -> list[nn.Module]:
    """Submodules of ``root`` (itself included) that :func:`randomize_` re-initialises.

    Those that own parameters or buffers and have a re-initialiser, and those that own parameters without one (their
    parameters are free, redrawn like a :class:`FreeParameter`).
    """
    return [
        m
        for m in root.modules()
        if (_reset_fn(m) is not None and _has_direct_state(m)) or _has_direct_parameters(m)
    ]


def _display_name(name: str) -> str:
    return name or "<root>"


def _auto_layers(model: nn.Module, granularity: str) -> list[Layer]:
    leaves: list[Layer] = []
    covered: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in covered or not _has_direct_parameters(module):
            continue
        if isinstance(module, _AUTO_TYPES) or _reset_fn(module) is not None:
            leaves.append((name, module))
            # A unit is re-initialised as a whole: nn.MultiheadAttention's out_proj is never called on its own.
            covered.update(id(sub) for sub in module.modules())
        else:
            prefix = f"{name}." if name else ""
            leaves.extend((prefix + key, FreeParameter(p)) for key, p in module.named_parameters(recurse=False))
    if granularity == "leaf":
        return [(_display_name(name), module) for name, module in leaves]
    children = dict(model.named_children())
    modules = dict(model.named_modules())
    stacked = transformer_blocks(model)
    holders = {name.split(".", 1)[0] for name in stacked}
    blocks: dict[str, nn.Module] = {}
    for name, module in leaves:
        top = name.split(".", 1)[0]
        block = next((b for b in stacked if name == b or name.startswith(f"{b}.")), None)
        if block is not None:
            blocks.setdefault(block, modules[block])
        elif top in holders or top not in children:
            # The rest of a transformer's encoder (position embedding, final norm) and free parameters of the
            # root are units of their own; a leaf that is the model itself (a bare nn.Linear) too.
            blocks.setdefault(_display_name(name), module)
        else:
            blocks.setdefault(top, children[top])
    return list(blocks.items())


def _named_layers(model: nn.Module, names: Sequence[str]) -> list[Layer]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"`layers` must be 'auto' or a sequence of module names, got {names!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"`layers` must not repeat a name, got {list(names)!r}.")
    modules = dict(model.named_modules())
    result = []
    for name in names:
        if name not in modules:
            known = ", ".join(n for n, m in modules.items() if n and next(m.parameters(), None) is not None)
            raise ValueError(
                f"`layers` names {name!r}, which is not a submodule of the model; modules with parameters: {known}."
            )
        if not _resettable(modules[name]):
            raise ValueError(
                f"`layers` names {name!r}, but neither it nor its submodules have parameters and a "
                "`reset_parameters()` method, so there is nothing to re-initialise."
            )
        result.append((name, modules[name]))
    for outer in names:
        for inner in names:
            if outer != inner and inner.startswith(f"{outer}."):
                raise ValueError(f"`layers` lists both {outer!r} and its submodule {inner!r}; list only one.")
    return result


def sort_in_forward_order(
    layers: Sequence[Layer], forward_fn: Callable[[Tensor], Any], example_input: Tensor
) -> list[Layer]:
    """Sort ``layers`` by when the forward pass first enters them, found with forward pre-hooks on one pass.

    Definition order (``named_modules``) often differs from the order of computation (a head defined before the
    trunk, a shortcut defined after the branch it is added to), so the cascade from the logits needs the real one.
    A layer counts as entered when it or any of its submodules is called. Layers the pass never calls keep their
    relative order and go last, with a warning: their parameters may still be used (e.g. ``out_proj`` of
    ``nn.MultiheadAttention``), but they are not on the call path. A layer called several times (shared weights)
    is placed at its first call. A :class:`FreeParameter` is never called; it counts as entered when an operation
    first reads its parameter (seen through a ``TorchFunctionMode`` during the pass).

    The pass runs under ``torch.no_grad()`` and in whatever mode the model is in; the caller chooses the mode (see
    :func:`randomizable_layers`).

    Args:
        layers: ``(name, module)`` pairs, e.g. from :func:`randomizable_layers` without an input.
        forward_fn: runs the model on a batch (the model itself, or an attribution method's ``forward_fn``).
        example_input: a batch the model accepts; one sample is enough.

    Returns:
        The same pairs, in forward order.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> layers = [("2", net[2]), ("0", net[0])]
        >>> [name for name, _ in sort_in_forward_order(layers, net, torch.zeros(1, 3))]
        ['0', '2']
    """
    first_call: dict[int, int] = {}

    def hook_for(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            first_call.setdefault(index, len(first_call))

        return hook

    handles = [
        module.register_forward_pre_hook(hook_for(index))
        for index, (_, layer) in enumerate(layers)
        for module in layer.modules()
    ]
    free = {id(layer.value): index for index, (_, layer) in enumerate(layers) if isinstance(layer, FreeParameter)}
    try:
        with torch.no_grad(), _FirstRead(free, first_call) if free else nullcontext():
            forward_fn(example_input)
    finally:
        for handle in handles:
            handle.remove()
    called = sorted(first_call, key=first_call.__getitem__)
    uncalled = [index for index in range(len(layers)) if index not in first_call]
    if uncalled:
        warnings.warn(
            f"The forward pass never called {[layers[i][0] for i in uncalled]}; they are placed after every called "
            "layer (so top_down randomises them first). Pass `layers=` explicitly to leave them out.",
            UserWarning,
            stacklevel=2,
        )
    return [layers[index] for index in called + uncalled]


class _FirstRead(TorchFunctionMode):
    """Enters ``index`` into ``first_call`` (the hooks' shared order) when an operation first reads a watched tensor."""

    def __init__(self, watched: dict[int, int], first_call: dict[int, int]) -> None:
        super().__init__()
        self.watched = watched
        self.first_call = first_call

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for value in (*args, *kwargs.values()):
            for item in value if isinstance(value, (list, tuple)) else (value,):
                index = self.watched.get(id(item))
                if index is not None:
                    self.first_call.setdefault(index, len(self.first_call))
        return func(*args, **kwargs)


def randomizable_layers(
    model: nn.Module,
    layers: Literal["auto"] | Sequence[str] = "auto",
    granularity: Literal["leaf", "block"] = "leaf",
    example_input: Tensor | None = None,
    forward_fn: Callable[[Tensor], Any] | None = None,
) -> list[Layer]:
    """The units the randomisation check re-initialises, in forward order when an input is given.

    ``layers="auto"`` takes every convolution, linear, normalisation, attention (``nn.MultiheadAttention``, its
    ``out_proj`` included) and embedding layer that has parameters, and any other module with parameters of its
    own and a ``reset_parameters()`` (leaves of the model); parameters that no module re-initialises (torchvision's
    ``class_token`` and ``encoder.pos_embedding``, timm's ``cls_token`` and ``pos_embed``) are units of their own,
    :class:`FreeParameter`, named after the parameter. So every parameter of the model belongs to one unit. With
    ``granularity="block"`` the units are grouped by the model's top-level child that contains them (a ResNet's
    ``layer1`` ... ``layer4``), except in a transformer: the child holding its encoder blocks (see
    ``transformer_blocks``: torchvision's ``encoder.layers.encoder_layer_i``, timm's ``blocks.i``) is split into one
    unit per block plus its remaining leaves (position embedding, final norm). A block is re-initialised as a whole,
    i.e. every submodule of it that has a re-initialiser, and its free parameters. Alternatively ``layers`` lists
    module names (as in ``named_modules()``); each is one unit, a container being re-initialised as a whole
    (``granularity`` must stay ``"leaf"``).

    The order of the result is the order in which a forward pass on ``example_input`` first enters each unit (see
    :func:`sort_in_forward_order`; the model runs in eval mode and its modes and state are restored). Without
    ``example_input`` it is the registration order of ``named_modules()`` (auto) or the order given (names), either
    of which can differ from the forward order: pass an input whenever the order matters.

    Args:
        model: the model (returns logits).
        layers: ``"auto"`` or a sequence of module names.
        granularity: ``"leaf"`` or ``"block"`` (auto mode only).
        example_input: a batch the model accepts, to sort the units in forward order.
        forward_fn: what to run on ``example_input`` (default: ``model``).

    Returns:
        ``(name, module)`` pairs; the root module is named ``"<root>"``.

    Raises:
        TypeError: if ``layers`` is neither ``"auto"`` nor a sequence of names.
        ValueError: if a name is unknown, repeated, nested in another, has nothing to re-initialise, if
            ``granularity`` is unknown or combined with explicit names, or if no layer qualifies.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 2))
        >>> [name for name, _ in randomizable_layers(net, example_input=torch.zeros(1, 3, 5, 5))]
        ['0', '1', '4']
        >>> [name for name, _ in randomizable_layers(net, ["4", "0"])]  # the given order without an input
        ['4', '0']
        >>> from torchvision.models import VisionTransformer
        >>> vit = VisionTransformer(8, 4, num_layers=2, num_heads=1, hidden_dim=4, mlp_dim=4, num_classes=2)
        >>> [name for name, _ in randomizable_layers(vit, granularity="block", example_input=torch.zeros(1, 3, 8, 8))]
        ['conv_proj', 'class_token', 'encoder.pos_embedding', 'encoder.layers.encoder_layer_0', \
'encoder.layers.encoder_layer_1', 'encoder.ln', 'heads']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if granularity not in GRANULARITIES:
        raise ValueError(f"`granularity` must be one of {GRANULARITIES}, got {granularity!r}.")
    if isinstance(layers, str):
        if layers != "auto":
            raise ValueError(f"`layers` must be 'auto' or a sequence of module names, got {layers!r}.")
        units = _auto_layers(model, granularity)
        if not units:
            raise ValueError(
                "`layers='auto'` found no convolution, linear or normalisation layer with parameters (the model has "
                "no parameters at all)."
            )
    else:
        if granularity != "leaf":
            raise ValueError("`granularity` applies to `layers='auto'` only; explicit names are units as given.")
        units = _named_layers(model, layers)
        if not units:
            raise ValueError("`layers` must name at least one module.")
    if example_input is None:
        return units
    with preserved_model_state(model):
        return sort_in_forward_order(units, forward_fn if forward_fn is not None else model, example_input)


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
    targets = list(dict.fromkeys(m for root in roots for m in _resettable(root)))
    if not targets:
        raise TypeError(
            f"Nothing in {[type(r).__name__ for r in roots]} has parameters and a `reset_parameters()` method."
        )
    tensors = [t for m in targets for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]
    kept = [] if reset_running_stats else [(b, b.detach().clone()) for m in targets for b in m.buffers(recurse=False)]
    with _forked_rng(tensors), torch.no_grad():
        _seed_forked(seed, tensors)
        for target in targets:
            _reset(target)
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
