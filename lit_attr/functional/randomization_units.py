"""The units of the parameter-randomisation check: which layers it re-initialises, and in which order.

:func:`randomizable_layers` picks them (automatically, by block, or by name) and :func:`sort_in_forward_order` puts
them in the order the forward pass enters them. Transformers need two things CNNs do not: ``nn.MultiheadAttention``
re-initialises its projections only with a private ``_reset_parameters()``, and position embeddings and class tokens
are bare parameters of container modules that no ``reset_parameters()`` covers. The first is called like any
``reset_parameters()``; the second become units of their own (:class:`FreeParameter`), redrawn from
``N(0, FREE_PARAMETER_STD^2)``. How a unit is re-initialised and the stages of a cascade are in
:mod:`lit_attr.functional.randomization`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lit_attr._hygiene import preserved_model_state
from lit_attr.functional._transformer import transformer_blocks

__all__ = [
    "FREE_PARAMETER_STD",
    "GRANULARITIES",
    "FreeParameter",
    "Layer",
    "randomizable_layers",
    "reset_module",
    "resettable_modules",
    "sort_in_forward_order",
]

Layer = tuple[str, nn.Module]
"""A randomisation unit: its name in ``model.named_modules()`` and the module."""

GRANULARITIES: tuple[str, ...] = ("leaf", "block")

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


def reset_module(module: nn.Module) -> None:
    """Re-initialise the module's own parameters with its re-initialiser, else draw them as free parameters.

    The global random state is used as it is; :func:`~lit_attr.functional.randomization.randomize_` seeds a fork.

    Example:
        >>> holder = nn.Module()
        >>> holder.token = nn.Parameter(torch.zeros(3))
        >>> reset_module(holder)
        >>> bool(holder.token.abs().sum() > 0)
        True
    """
    reset = _reset_fn(module)
    if reset is not None:
        reset()
        return
    for parameter in module.parameters(recurse=False):
        nn.init.normal_(parameter, mean=0.0, std=FREE_PARAMETER_STD)


def resettable_modules(root: nn.Module) -> list[nn.Module]:
    """Submodules of ``root`` (itself included) that :func:`~lit_attr.functional.randomization.randomize_` resets.

    Those that own parameters or buffers and have a re-initialiser, and those that own parameters without one (their
    parameters are free, redrawn like a :class:`FreeParameter`).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.BatchNorm1d(2))
        >>> [type(m).__name__ for m in resettable_modules(net)]
        ['Linear', 'BatchNorm1d']
    """
    return [
        m for m in root.modules() if (_reset_fn(m) is not None and _has_direct_state(m)) or _has_direct_parameters(m)
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
        if not resettable_modules(modules[name]):
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
