"""Activation deviation: FEI's internal faithfulness (specs/metrics.md, "Activation deviation").

Insertion and deletion (:mod:`lit_attr.functional.insertion_deletion`) ask whether the model's *output* follows
the attribution map. Activation deviation asks whether the perturbed inputs keep the model's *computational
pathway*: along the same insertion and deletion schedules, it compares the activations of a few probe layers on
every perturbed input ``x_t`` with those on the clean ``x``:

* ``mse``: ``mean_units (a_l(x_t) - a_l(x))^2`` per probe layer ``l``, averaged over the steps t = 0..T (lower
  means the perturbation stays on the clean pathway);
* ``overlap``: the fraction of units whose on/off state (``a > 0``) is the same as on ``x``, averaged the same
  way (higher is better; 1 when nothing changes).

The perturbed inputs come from the insertion/deletion building blocks (:func:`rank_map`,
:func:`perturbation_schedule`, :func:`make_substrate`, :func:`iter_perturbed_batches`), so both metrics walk
exactly the same inputs for the same options.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, resolve_target
from lit_attr._hygiene import preserved_model_state
from lit_attr._memory import MemoryBackoff
from lit_attr.functional._transformer import transformer_blocks
from lit_attr.functional.perturbation import (
    DEFAULT_INTERNAL_BATCH_SIZE,
    GAMES,
    SubstrateType,
    make_substrate,
    perturbed_rows,
)
from lit_attr.functional.protocol import prepare_games

__all__ = ["ActivationDeviationResult", "activation_deviation", "resolve_probe_layers"]

_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)


class ActivationDeviationResult(NamedTuple):
    """Per-sample output of :func:`activation_deviation`; L = ``len(layers)``.

    Attributes:
        insertion_mse: ``(N, L)`` activation MSE to the clean input, averaged over the insertion steps.
        deletion_mse: ``(N, L)`` the same along the deletion game.
        insertion_overlap: ``(N, L)`` fraction of units with the clean on/off state, averaged over insertion steps.
        deletion_overlap: ``(N, L)`` the same along the deletion game.
        layers: names of the probe modules, in the order of the columns.
    """

    insertion_mse: Tensor
    deletion_mse: Tensor
    insertion_overlap: Tensor
    deletion_overlap: Tensor
    layers: tuple[str, ...]


# --------------------------------------------------------------------------------------------------- probe layers
def resolve_probe_layers(model: nn.Module, layers: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """Names of the modules whose outputs activation deviation compares, found from the model's structure alone.

    With ``layers=None`` the probes are the outputs of the model's top-level stages:

    1. a model with children ``layer1`` .. ``layer4`` (torchvision ResNets) probes those four;
    2. a transformer probes the output of each encoder block (a child of an ``nn.Sequential``/``nn.ModuleList``
       whose every child holds one attention module, found anywhere in the model): torchvision ViT's
       ``encoder.layers.encoder_layer_i``, timm's ``blocks.i``, ``nn.TransformerEncoder``'s ``layers.i``, Hugging
       Face BERT's ``encoder.layer.i``. A block that returns a tuple (BERT) is probed at its first tensor;
    3. otherwise every top-level child that contains an ``nn.ReLU`` contributes its last ReLU module, i.e. the
       stage's output activation (demo classifier: ``stem.2``, ``layer1.relu2``, ``layer2.relu2``). A child that
       is an ``nn.Sequential`` with pooling layers among its direct children is split into blocks at the pools
       and contributes the last ReLU of each block (VGG's ``features``). A child that is itself a ReLU is its own
       probe, so a flat ``nn.Sequential`` probes every ReLU;
    4. when exactly one top-level child contains ReLUs and it is not a ReLU itself (a wrapper, such as a
       LightningModule holding the network as ``self.net``), the rules are applied inside it instead.

    "Last" is taken in registration order (the order of assignment in ``__init__``), which is the forward order
    of ``nn.Sequential`` and of conventionally written modules; no forward pass is needed, so a metric can size
    its states when it is built. Pass explicit names when a model defines modules out of forward order.

    Args:
        model: the network.
        layers: ``None`` for the default above, or module names as in ``model.named_modules()`` (a single name
            may be given as a string).

    Returns:
        The probe module names, in order.

    Raises:
        TypeError: if ``model`` is not a module or ``layers`` is not a string or a sequence of strings.
        ValueError: for unknown names (the message lists close matches), duplicates, an empty list, or a model
            without default probes (no ReLU modules, no transformer blocks and no ``layer1`` .. ``layer4``).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten())
        >>> resolve_probe_layers(net)
        ('1', '3')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if layers is None:
        children = dict(model.named_children())
        blocks = transformer_blocks(model)
        if blocks and not all(stage in children for stage in _RESNET_STAGES):
            return tuple(blocks)
        return _default_probe_layers(model, prefix="")
    if isinstance(layers, str):
        layers = (layers,)
    if not isinstance(layers, Sequence) or not all(isinstance(name, str) for name in layers):
        raise TypeError(f"`layers` must be None, a module name or a sequence of module names, got {layers!r}.")
    layers = tuple(layers)
    if not layers:
        raise ValueError("`layers` must name at least one module, got an empty sequence.")
    duplicates = sorted({name for name in layers if layers.count(name) > 1})
    if duplicates:
        raise ValueError(f"`layers` must not repeat a module, got duplicates {duplicates}.")
    known = [name for name, _ in model.named_modules()]
    unknown = [name for name in layers if name not in set(known)]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
            hints.append(f"{name!r} (did you mean {', '.join(map(repr, close))}?)" if close else repr(name))
        top = [name for name, _ in model.named_children()]
        raise ValueError(
            f"`layers` must name modules of the model (as in model.named_modules()); unknown: {'; '.join(hints)}. "
            f"Top-level modules: {top}."
        )
    return layers


def _default_probe_layers(module: nn.Module, prefix: str) -> tuple[str, ...]:
    children = dict(module.named_children())
    if all(stage in children for stage in _RESNET_STAGES):
        return tuple(prefix + stage for stage in _RESNET_STAGES)
    with_relu = [(name, child) for name, child in children.items() if _relu_names(child)]
    if len(with_relu) == 1 and not isinstance(with_relu[0][1], nn.ReLU):
        name, child = with_relu[0]
        return _default_probe_layers(child, f"{prefix}{name}.")
    probes = []
    for name, child in with_relu:
        if isinstance(child, nn.ReLU):
            probes.append(prefix + name)
            continue
        for block in _blocks(child):
            relus = [relu for sub in block for relu in _relu_names(sub)]
            if relus:
                probes.append(f"{prefix}{name}.{relus[-1]}")
    if not probes:
        raise ValueError(
            f"Cannot choose default probe layers for {type(module).__name__}: it has no children layer1..layer4, "
            "no transformer blocks and no nn.ReLU modules (ReLU applied functionally?). Pass `layers` with module "
            "names."
        )
    return tuple(probes)


def _blocks(child: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """A stage's sub-blocks: a Sequential split after each pooling layer (VGG), anything else as one block."""
    if not isinstance(child, nn.Sequential):
        return [[("", child)]]
    blocks: list[list[tuple[str, nn.Module]]] = [[]]
    for name, sub in child.named_children():
        blocks[-1].append((name, sub))
        if isinstance(sub, _POOLS):
            blocks.append([])
    return blocks


def _relu_names(entry: nn.Module | tuple[str, nn.Module]) -> list[str]:
    """Names (relative to the entry's parent) of the ReLU modules inside ``entry``, in registration order."""
    prefix, module = entry if isinstance(entry, tuple) else ("", entry)
    return [
        ".".join(part for part in (prefix, name) if part)
        for name, sub in module.named_modules()
        if isinstance(sub, nn.ReLU)
    ]


# --------------------------------------------------------------------------------------------------- recording
@contextmanager
def recorded_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Forward hooks that store each probe's output by name; removed on exit, even on errors."""
    modules = dict(model.named_modules())
    store: dict[str, Tensor] = {}

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):  # transformer layers that also return attention or caches
                output = next((item for item in output if isinstance(item, Tensor)), output)
            if not isinstance(output, Tensor):
                raise TypeError(f"Probe layer {name!r} must output a tensor, got {type(output).__name__}.")
            # A clone, because the model may overwrite the tensor later in the same forward (an inplace ReLU
            # after a BatchNorm probe, `out += identity`). A module called several times per forward keeps its
            # last output (torchvision's shared block ReLU: the block output).
            store[name] = output.detach().clone()

        return hook

    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _forward(
    model: nn.Module, inputs: Tensor, names: Sequence[str], store: dict[str, Tensor]
) -> tuple[Any, list[Tensor]]:
    """Run the model on ``inputs`` and return its output and the probes' activations, checking both."""
    store.clear()
    output = model(inputs)
    missing = [name for name in names if name not in store]
    if missing:
        raise ValueError(f"Probe layers {missing} were not called in the model's forward; choose other `layers`.")
    activations = [store[name] for name in names]
    for name, activation in zip(names, activations, strict=True):
        if activation.ndim == 0 or activation.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"Probe layer {name!r} must output one row per input ({inputs.shape[0]}), got shape "
                f"{tuple(activation.shape)}."
            )
    return output, activations


def _play_rows(
    model: nn.Module,
    x: Tensor,
    substrate: Tensor,
    ranks: Tensor,
    schedule: Tensor,
    game: str,
    names: Sequence[str],
    store: dict[str, Tensor],
    clean: list[Tensor],
    stats: Tensor,
    start: int,
    stop: int,
) -> None:
    """Fill ``stats[:, samples, steps]`` for the rows ``start .. stop - 1`` of one game."""
    samples, steps, inputs = perturbed_rows(x, substrate, ranks, schedule, game, start, stop)
    _, activations = _forward(model, inputs, names, store)
    for j, (activation, reference) in enumerate(zip(activations, clean, strict=True)):
        mse, overlap = _row_stats(activation, reference[samples], stats.dtype)
        stats[0, samples, steps, j] = mse
        stats[1, samples, steps, j] = overlap


def _row_stats(activation: Tensor, clean: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-row MSE to the clean activation and fraction of units whose on/off state is unchanged."""
    a, a0 = activation.flatten(1).to(dtype), clean.flatten(1).to(dtype)
    mse = (a - a0).square().mean(dim=1)
    overlap = ((a > 0) == (a0 > 0)).sum(dim=1).to(dtype) / a.shape[1]
    return mse, overlap


# ------------------------------------------------------------------------------------------------------- metric
def activation_deviation(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
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
) -> ActivationDeviationResult:
    """How far the insertion and deletion games push the probe layers' activations from the clean ones.

    For every sample, game and step t = 0..T the perturbed input ``x_t`` is exactly the one
    :func:`~lit_attr.functional.insertion_deletion.insertion_deletion` scores with the same options. Per probe
    layer ``l`` the function records ``MSE(a_l(x_t), a_l(x))`` (mean over the layer's units) and the fraction of
    units with ``(a_l(x_t) > 0) == (a_l(x) > 0)``, and averages both over the T + 1 steps (the endpoints included:
    the clean input is one of them, at t = T for insertion and t = 0 for deletion). The model runs in eval mode
    under ``torch.no_grad()``; its hooks, modes, flags and buffers are as before afterwards, even on errors.

    Options left as ``None`` come from ``preset`` (default ``"rise"``: insertion ``"blur"``, deletion ``"zero"``,
    ``n_steps=28``); explicit options override the preset.

    Args:
        model: the network (a classifier returning logits when ``target`` is given).
        x: ``(N, C, H, W)`` inputs in the model's input space, on the model's device.
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps; they only rank the units.
        target: accepted so that every metric shares the ``(x, attributions, target)`` signature; the result does
            not depend on the class (the games follow the map alone). When given it is checked against the
            model's logits like :func:`~lit_attr.functional.insertion_deletion.insertion_deletion` does.
        layers: probe modules, see :func:`resolve_probe_layers` (``None``: the output of each top-level stage).
        n_steps: number of steps (``pixels_per_step = ceil(units / n_steps)``).
        pixels_per_step: units changed per step; not together with ``n_steps``.
        insertion_substrate: what the insertion game starts from (see
            :func:`~lit_attr.functional.insertion_deletion.make_substrate`).
        deletion_substrate: what deleted units are replaced by.
        reduce: channel reduction of the map before ranking: ``"sum"``, ``"abs_sum"`` or ``"none"``.
        preset: ``"rise"``, ``"mfaba"``, ``"fei"`` or ``None``.
        internal_batch_size: most rows (samples x steps) per forward pass (default
            :data:`~lit_attr.functional.insertion_deletion.DEFAULT_INTERNAL_BATCH_SIZE`); ``None`` runs all
            ``N * (T + 1)`` rows of a game at once.
        substrate_value: the fill of a ``"constant"`` substrate.
        seed: seed of a ``"noise"`` substrate.

    Returns:
        :class:`ActivationDeviationResult` with ``(N, L)`` tensors (float64 for float64 activations, float32
        otherwise) and the probe layer names.

    Raises:
        TypeError: for a model that is not a module, non-tensor or integer inputs, probes that do not output
            tensors, or non-integer targets.
        ValueError: for mismatched shapes or devices, unknown option or layer names, both step options, bad
            targets, or probes that the forward does not call.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
        >>> result = activation_deviation(net, torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8), n_steps=4)
        >>> result.layers, result.insertion_mse.shape
        (('1',), torch.Size([2, 1]))
    """
    protocol, ranks, schedule, chunk = prepare_games(
        model,
        x,
        attributions,
        preset=preset,
        insertion_substrate=insertion_substrate,
        deletion_substrate=deletion_substrate,
        pixels_per_step=pixels_per_step,
        n_steps=n_steps,
        reduce=reduce,
        internal_batch_size=internal_batch_size,
        substrate_value=substrate_value,
        kinds={"images"},
    )
    names = resolve_probe_layers(model, layers)
    n, points = x.shape[0], schedule.numel()

    with (
        torch.no_grad(),
        preserved_model_state(model),
        recorded_outputs(model, names) as store,
        MemoryBackoff("activation_deviation", chunk) as backoff,
    ):
        outputs, per_chunk = [], []

        def clean_pass(start: int, stop: int) -> None:
            output, activations = _forward(model, x[start:stop], names, store)
            outputs.append(output)
            per_chunk.append(activations)

        backoff.chunks(n, clean_pass)
        clean = [torch.cat(layer) for layer in zip(*per_chunk, strict=True)]
        if target is not None:
            if not all(isinstance(out, Tensor) and out.ndim == 2 for out in outputs):
                raise ValueError("`target` needs a model that returns logits (N, K); pass target=None.")
            resolve_target(target, torch.cat(outputs))
        dtype = torch.promote_types(clean[0].dtype, torch.float32)
        for activation in clean[1:]:
            dtype = torch.promote_types(dtype, activation.dtype)
        results: dict[str, Tensor] = {}
        for game in GAMES:
            substrate = make_substrate(
                getattr(protocol, f"{game}_substrate"), x, substrate_value=substrate_value, seed=seed,
                name=f"{game}_substrate",
            )  # fmt: skip
            # (statistic, sample, step, layer) filled row by row: the mean over steps is then taken in one fixed
            # order, so a sample's result does not depend on the chunking or on the other samples of its batch.
            stats = torch.empty(2, n, points, len(names), dtype=dtype, device=x.device)
            play = functools.partial(_play_rows, model, x, substrate, ranks, schedule, game, names, store, clean, stats)
            backoff.chunks(n * points, play)
            results[f"{game}_mse"], results[f"{game}_overlap"] = stats.mean(dim=2)
    return ActivationDeviationResult(
        results["insertion_mse"],
        results["deletion_mse"],
        results["insertion_overlap"],
        results["deletion_overlap"],
        names,
    )
