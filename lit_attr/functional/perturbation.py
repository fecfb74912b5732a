"""The perturbation toolkit every game shares: substrates, unit ranks, step schedules, perturbed rows, clean logits.

Insertion/deletion (:mod:`lit_attr.functional.insertion_deletion`), activation deviation, ROAD, infidelity and the
token games perturb inputs along the same schedules; this module holds what they share, so each game is its math
alone. A map ranks the input units (pixels after a channel reduction, or single elements, or the features of
tabular inputs); at step ``t`` the first ``n_t`` units are taken from a *substrate* (deletion) or from the input
(insertion), built at once with ``torch.where(rank < n_t, ...)`` and sent through the model in chunks of at most
``internal_batch_size`` (samples x steps) rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lit_attr._checks import check_choice, check_device, check_finite, check_names, check_optional_int, check_seed

__all__ = [
    "DEFAULT_INTERNAL_BATCH_SIZE",
    "DEFAULT_N_STEPS",
    "GAMES",
    "IMAGE_SUBSTRATES",
    "OUTPUTS",
    "PRESETS",
    "REDUCTIONS",
    "SUBSTRATES",
    "Protocol",
    "auc",
    "blur",
    "check_attributions",
    "check_clean_logits",
    "check_games",
    "check_images",
    "check_inputs",
    "check_substrate",
    "check_substrate_value",
    "iter_perturbed_batches",
    "make_substrate",
    "model_logits",
    "perturbation_schedule",
    "perturbed_rows",
    "prepare_games",
    "rank_map",
    "resolve_protocol",
    "rise_blur_kernel",
]

SubstrateType = str | Callable[[Tensor], Tensor]

#: Number of steps when neither ``pixels_per_step`` nor ``n_steps`` is given (1792 px per step at 224x224).
DEFAULT_N_STEPS = 28

#: Rows (samples x steps) per forward pass unless the caller says otherwise. All rows at once is ~3x slower on a
#: CPU (caches) and, at 224x224, runs a GPU out of memory; 128 rows keep a GPU busy (benchmarks/).
DEFAULT_INTERNAL_BATCH_SIZE = 128

#: Protocol defaults of the published evaluations. A preset only fills the options left as ``None``.
PRESETS: dict[str, dict[str, Any]] = {
    "rise": {"insertion_substrate": "blur", "deletion_substrate": "zero", "n_steps": DEFAULT_N_STEPS},
    "mfaba": {"insertion_substrate": "zero", "deletion_substrate": "zero", "n_steps": DEFAULT_N_STEPS},
    "fei": {"insertion_substrate": "blur", "deletion_substrate": "zero", "n_steps": DEFAULT_N_STEPS},
}

#: Substrate names understood by :func:`make_substrate` (a callable is accepted too).
SUBSTRATES = ("zero", "blur", "mean", "noise", "constant")
#: Substrates that need images (N, C, H, W); tabular inputs (N, D) accept the others.
IMAGE_SUBSTRATES = ("blur", "mean")
#: Scores a curve can track.
OUTPUTS = ("prob", "logit", "prob_ratio")
#: Channel reductions that turn a map into units.
REDUCTIONS = ("sum", "abs_sum", "none")
#: The two games, in the order they are played.
GAMES = ("insertion", "deletion")

# RISE's blur: scipy's gaussian_filter(sigma=5, mode="reflect") of an 11x11 delta. The reflection folds the
# truncated Gaussian back into the window, so these taps are flatter than a sampled Gaussian and cannot be
# reproduced with torchvision's gaussian_blur; the 2-D kernel is exactly their outer product.
_RISE_HALF_TAPS = (
    0.08795814577727815,
    0.08889611977709484,
    0.09047419654910865,
    0.09219111781938806,
    0.09348938844291409,
    0.09398206326843249,
)
_RISE_TAPS = _RISE_HALF_TAPS + _RISE_HALF_TAPS[-2::-1]


class Protocol(NamedTuple):
    """Resolved options of an insertion/deletion evaluation (see :func:`resolve_protocol`)."""

    insertion_substrate: SubstrateType
    deletion_substrate: SubstrateType
    pixels_per_step: int | None
    n_steps: int | None


# ---------------------------------------------------------------------------------------------- building blocks
def resolve_protocol(
    preset: str | None = None,
    *,
    insertion_substrate: SubstrateType | None = None,
    deletion_substrate: SubstrateType | None = None,
    pixels_per_step: int | None = None,
    n_steps: int | None = None,
) -> Protocol:
    """Combine a preset with explicitly given options; explicit (non-``None``) options win.

    Without a preset the defaults are RISE's: insertion ``"blur"``, deletion ``"zero"``, ``n_steps=28``. An
    explicit ``pixels_per_step`` replaces the preset's ``n_steps``; giving both ``pixels_per_step`` and
    ``n_steps`` explicitly is an error.

    Args:
        preset: ``"rise"``, ``"mfaba"`` (zeros for both games), ``"fei"`` (RISE protocol) or ``None``.
        insertion_substrate: substrate the insertion game starts from (see :func:`make_substrate`).
        deletion_substrate: substrate the deletion game replaces units with.
        pixels_per_step: units changed per step.
        n_steps: number of steps, turned into ``pixels_per_step = ceil(units / n_steps)``.

    Returns:
        The resolved :class:`Protocol`; exactly one of ``pixels_per_step`` and ``n_steps`` is set.

    Raises:
        ValueError: for an unknown preset or substrate name, or both step options given.

    Example:
        >>> resolve_protocol("mfaba", pixels_per_step=16)
        Protocol(insertion_substrate='zero', deletion_substrate='zero', pixels_per_step=16, n_steps=None)
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {tuple(PRESETS)} or None, got {preset!r}.")
    if pixels_per_step is not None and n_steps is not None:
        raise ValueError(
            f"Give at most one of `pixels_per_step` and `n_steps`, got pixels_per_step={pixels_per_step!r} and "
            f"n_steps={n_steps!r}."
        )
    check_optional_int("pixels_per_step", pixels_per_step)
    check_optional_int("n_steps", n_steps)
    defaults = PRESETS[preset or "rise"]
    insertion_substrate = defaults["insertion_substrate"] if insertion_substrate is None else insertion_substrate
    deletion_substrate = defaults["deletion_substrate"] if deletion_substrate is None else deletion_substrate
    check_substrate("insertion_substrate", insertion_substrate)
    check_substrate("deletion_substrate", deletion_substrate)
    if pixels_per_step is None and n_steps is None:
        n_steps = defaults["n_steps"]
    return Protocol(insertion_substrate, deletion_substrate, pixels_per_step, n_steps)


def rise_blur_kernel(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """The 11 one-dimensional taps of RISE's blur; the 2-D kernel is ``torch.outer(taps, taps)``.

    Args:
        dtype: floating dtype of the result (the taps are exact in float64).
        device: device of the result.

    Returns:
        ``(11,)`` symmetric taps that sum to 1.

    Example:
        >>> taps = rise_blur_kernel()
        >>> taps.shape, round(float(taps.sum()), 12)
        (torch.Size([11]), 1.0)
    """
    return torch.tensor(_RISE_TAPS, dtype=torch.float64, device=device).to(dtype)


def blur(x: Tensor) -> Tensor:
    """RISE's blur substrate: the separable 11x11 kernel per channel, with zero padding 5 (same size output).

    Zero padding darkens a 5-pixel border, as in RISE's ``conv2d(..., padding=5)``; it is kept for fidelity.

    Args:
        x: ``(N, C, H, W)`` floating-point images.

    Returns:
        Blurred images with the shape, dtype and device of ``x``.

    Example:
        >>> x = torch.ones(1, 3, 32, 32, dtype=torch.float64)
        >>> round(float(blur(x)[0, 0, 16, 16]), 12)  # a constant stays constant away from the border
        1.0
    """
    check_images("x", x)
    channels = x.shape[1]
    taps = rise_blur_kernel(x.dtype, x.device)
    # Two 1-D depthwise passes instead of one 11x11 pass: 22 instead of 121 multiply-adds per value, and zero
    # padding commutes with separability, so the result equals the 2-D convolution.
    out = F.conv2d(x, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), padding=(5, 0), groups=channels)
    return F.conv2d(out, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), padding=(0, 5), groups=channels)


def make_substrate(
    substrate: SubstrateType,
    x: Tensor,
    *,
    substrate_value: float | Sequence[float] | Tensor | None = None,
    seed: int = 0,
    name: str = "substrate",
) -> Tensor:
    """The image (or feature vector) that perturbed units are taken from, one per sample.

    Tabular inputs ``(N, D)`` accept ``"zero"``, ``"noise"``, ``"constant"`` (a scalar or ``D`` per-feature values,
    e.g. the training mean) and callables; ``"blur"`` and ``"mean"`` need images.

    Args:
        substrate: ``"zero"`` (zeros in the model's input space: the dataset mean colour when the model expects
            normalised inputs), ``"blur"`` (:func:`blur`), ``"mean"`` (per-image channel mean), ``"noise"``
            (N(0, 1) from a ``torch.Generator`` seeded with ``seed``; one draw shared by all samples, so a
            sample's result does not depend on its batch), ``"constant"`` (``substrate_value``), or a callable
            mapping ``x`` to a tensor broadcastable to ``x``.
        x: ``(N, C, H, W)`` floating-point images or ``(N, D)`` features.
        substrate_value: for ``"constant"``: a scalar, ``C`` per-channel values, or a tensor broadcastable to
            ``(C, H, W)``; for features, a scalar or ``D`` values.
        seed: seed of the ``"noise"`` substrate; the global random state is never used.
        name: the argument named in error messages (e.g. ``"deletion_substrate"``).

    Returns:
        A tensor with the shape, dtype and device of ``x`` (possibly an expanded view).

    Raises:
        ValueError: for an unknown name, a missing ``substrate_value``, or a callable returning the wrong shape.
        TypeError: for a substrate that is neither a name nor a callable.

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> make_substrate("mean", x).flatten().tolist()
        [1.5, 1.5, 1.5, 1.5]
    """
    check_inputs("x", x)
    check_substrate(name, substrate)
    if x.ndim == 2 and not callable(substrate) and substrate in IMAGE_SUBSTRATES:
        raise ValueError(
            f"`{name}` {substrate!r} needs images (N, C, H, W); for features (N, D) use 'zero', 'constant' (e.g. "
            "the training mean per feature), 'noise' or a callable."
        )
    if callable(substrate):
        out = substrate(x)
        if not isinstance(out, Tensor):
            raise TypeError(f"A callable `{name}` must return a tensor, got {type(out).__name__}.")
        try:
            return torch.broadcast_to(out.to(dtype=x.dtype, device=x.device), x.shape)
        except RuntimeError as err:
            raise ValueError(
                f"A callable `{name}` must return a tensor broadcastable to x's shape {tuple(x.shape)}, "
                f"got {tuple(out.shape)}."
            ) from err
    if substrate == "zero":
        return torch.zeros_like(x)
    if substrate == "blur":
        return blur(x)
    if substrate == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if substrate == "noise":
        check_seed(seed)
        # Drawn on the CPU so that a seed gives the same substrate on every device.
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((1, *x.shape[1:]), generator=generator, dtype=x.dtype)
        return noise.to(x.device).expand_as(x)
    # "constant"
    if substrate_value is None:
        raise ValueError(f'`substrate_value` must be given when `{name}` is "constant", got None.')
    fill = torch.as_tensor(substrate_value, dtype=x.dtype, device=x.device)
    if x.ndim == 4 and fill.ndim == 1 and fill.numel() == x.shape[1]:
        fill = fill.view(-1, 1, 1)
    try:
        return torch.broadcast_to(fill, x.shape)
    except RuntimeError as err:
        per = "per-channel values" if x.ndim == 4 else "per-feature values"
        raise ValueError(
            f"`substrate_value` must be a scalar, {x.shape[1]} {per} or broadcastable to "
            f"{tuple(x.shape[1:])}, got shape {tuple(fill.shape)}."
        ) from err


def rank_map(attributions: Tensor, reduce: str = "sum") -> Tensor:
    """Rank of every unit by descending attribution: 0 is the most important unit.

    The sort is stable, so tied units (plateaus, common in FEI maps; an all-zero map) are ranked in raster
    order: row by row, left to right (channel-major for ``reduce="none"``); features of a 2-D map in index order.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)``, or ``(N, D)`` for features (each feature is a unit).
        reduce: how channels become units: ``"sum"`` (signed channel sum), ``"abs_sum"`` (sum of absolute
            values) or ``"none"`` (every element is a unit). A 3-D map already has one value per pixel.

    Returns:
        ``(N, H, W)`` long ranks, ``(N, C, H, W)`` for ``reduce="none"`` on a 4-D map, ``(N, D)`` for a 2-D map.

    Raises:
        ValueError: for an unknown ``reduce``, a map that is not 2-D/3-D/4-D, or non-finite values.

    Example:
        >>> rank_map(torch.tensor([[[0.5, 2.0], [0.5, -1.0]]]))
        tensor([[[1, 0],
                 [2, 3]]])
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`attributions` must be a torch.Tensor, got {type(attributions).__name__}.")
    check_choice("reduce", reduce, REDUCTIONS)
    if attributions.ndim not in (2, 3, 4) or attributions.shape[0] == 0:
        raise ValueError(
            f"`attributions` must be a non-empty (N, C, H, W), (N, H, W) or (N, D) tensor, got shape "
            f"{tuple(attributions.shape)}."
        )
    if attributions.is_floating_point() and not bool(torch.isfinite(attributions).all()):
        raise ValueError("`attributions` contains NaN or infinite values; ranking needs finite values.")
    scores = attributions.abs() if reduce == "abs_sum" else attributions
    if attributions.ndim == 4 and reduce != "none":
        scores = scores.sum(dim=1)
    flat = scores.reshape(scores.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions).view(scores.shape)


def perturbation_schedule(
    num_units: int,
    pixels_per_step: int | None = None,
    n_steps: int | None = None,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Number of perturbed units after each step: ``n_t = min(t * pixels_per_step, num_units)``, t = 0..T.

    ``T = ceil(num_units / pixels_per_step)``. With ``n_steps``, ``pixels_per_step = ceil(num_units / n_steps)``,
    so T can be smaller than ``n_steps`` on small inputs (28 steps at 224x224 or 32x32, 26 at 16x16, 22 at
    8x8); T never exceeds ``n_steps``. With neither, ``n_steps=28``.

    Args:
        num_units: units in one sample (H*W pixels, or C*H*W elements for ``reduce="none"``).
        pixels_per_step: units changed per step.
        n_steps: number of steps instead of ``pixels_per_step``.
        device: device of the result.

    Returns:
        ``(T + 1,)`` long tensor from 0 to ``num_units``.

    Raises:
        ValueError: for non-positive values or both step options given.

    Example:
        >>> perturbation_schedule(10, pixels_per_step=4)
        tensor([ 0,  4,  8, 10])
    """
    check_optional_int("num_units", num_units)
    check_optional_int("pixels_per_step", pixels_per_step)
    check_optional_int("n_steps", n_steps)
    if pixels_per_step is not None and n_steps is not None:
        raise ValueError(
            f"Give at most one of `pixels_per_step` and `n_steps`, got pixels_per_step={pixels_per_step!r} and "
            f"n_steps={n_steps!r}."
        )
    if pixels_per_step is None:
        pixels_per_step = math.ceil(num_units / (n_steps or DEFAULT_N_STEPS))
    num_steps = math.ceil(num_units / pixels_per_step)
    return (torch.arange(num_steps + 1, device=device) * pixels_per_step).clamp(max=num_units)


def iter_perturbed_batches(
    x: Tensor,
    substrate: Tensor,
    ranks: Tensor,
    schedule: Tensor,
    game: str,
    chunk_size: int | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield the perturbed inputs of one game for all (sample, step) rows, ``chunk_size`` rows at a time.

    Rows are ordered sample-major (all steps of sample 0, then sample 1, ...). A row (i, t) is
    ``where(ranks[i] < schedule[t], substrate[i], x[i])`` for deletion and
    ``where(ranks[i] < schedule[t], x[i], substrate[i])`` for insertion.

    Args:
        x: ``(N, C, H, W)`` clean inputs, or ``(N, D)`` features.
        substrate: tensor broadcastable to ``x`` (see :func:`make_substrate`).
        ranks: ``(N, H, W)`` or ``(N, C, H, W)`` unit ranks from :func:`rank_map` (``(N, D)`` for features).
        schedule: ``(T + 1,)`` units perturbed per step from :func:`perturbation_schedule`.
        game: ``"insertion"`` or ``"deletion"``.
        chunk_size: most rows per yielded batch; ``None`` yields all ``N * (T + 1)`` rows at once.

    Yields:
        ``(samples, steps, inputs)``: the sample and step index of every row (long ``(R,)``) and the
        ``(R, ...)`` perturbed inputs.

    Example:
        >>> x = torch.ones(1, 1, 2, 2)
        >>> ranks = rank_map(torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]))
        >>> _, steps, rows = next(iter_perturbed_batches(x, torch.zeros_like(x), ranks, torch.tensor([0, 2, 4]),
        ...                                              "deletion"))
        >>> rows.flatten(1).tolist()
        [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    """
    check_choice("game", game, GAMES)
    total = x.shape[0] * schedule.numel()
    chunk_size = total if chunk_size is None else chunk_size
    for start in range(0, total, chunk_size):
        yield perturbed_rows(x, substrate, ranks, schedule, game, start, min(start + chunk_size, total))


def perturbed_rows(
    x: Tensor, substrate: Tensor, ranks: Tensor, schedule: Tensor, game: str, start: int, stop: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The rows ``start .. stop - 1`` of :func:`iter_perturbed_batches` (same arguments, same order of rows).

    The games call it from :class:`~lit_attr._memory.MemoryBackoff`, which may shrink the chunks mid-game.

    Example:
        >>> x = torch.ones(1, 1, 2, 2)
        >>> ranks = rank_map(torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]))
        >>> _, steps, rows = perturbed_rows(x, torch.zeros_like(x), ranks, torch.tensor([0, 2, 4]), "deletion", 1, 3)
        >>> steps.tolist(), rows.flatten(1).tolist()
        ([1, 2], [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    """
    substrate = torch.broadcast_to(substrate, x.shape)
    if ranks.ndim == 3 and x.ndim == 4:
        ranks = ranks.unsqueeze(1)
    points = schedule.numel()
    head, tail = (x, substrate) if game == "insertion" else (substrate, x)
    rows = torch.arange(start, stop, device=x.device)
    samples, steps = rows // points, rows % points
    keep_head = ranks[samples] < schedule.to(x.device)[steps].view(-1, *([1] * (x.ndim - 1)))
    return samples, steps, torch.where(keep_head, head[samples], tail[samples])


def auc(curve: Tensor) -> Tensor:
    """Normalised trapezoidal area under curves sampled at T + 1 equally spaced points.

    ``auc = (sum_t s_t - s_0 / 2 - s_T / 2) / T``, i.e. the trapezoid rule on [0, 1].

    Args:
        curve: ``(..., T + 1)`` with T >= 1.

    Returns:
        ``(...)`` areas.

    Raises:
        ValueError: for curves with fewer than two points.

    Example:
        >>> auc(torch.tensor([1.0, 0.5, 0.0]))
        tensor(0.5000)
    """
    if not isinstance(curve, Tensor) or curve.ndim == 0 or curve.shape[-1] < 2:
        shape = tuple(curve.shape) if isinstance(curve, Tensor) else type(curve).__name__
        raise ValueError(f"`curve` must be a tensor (..., T + 1) with at least 2 points, got {shape}.")
    steps = curve.shape[-1] - 1
    return (curve.sum(dim=-1) - (curve[..., 0] + curve[..., -1]) / 2) / steps


def prepare_games(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    *,
    preset: str | None,
    insertion_substrate: SubstrateType | None,
    deletion_substrate: SubstrateType | None,
    pixels_per_step: int | None,
    n_steps: int | None,
    reduce: str,
    internal_batch_size: int | None,
    substrate_value: object = None,
    tabular: bool = False,
) -> tuple[Protocol, Tensor, Tensor, int]:
    """Validate the inputs of a perturbation game and resolve its protocol, unit ranks, schedule and chunk size.

    Shared by every metric that plays the insertion/deletion games (insertion/deletion, activation deviation), so
    they see the same perturbed inputs and reject the same bad input. ``tabular=True`` also accepts ``(N, D)``
    features with ``(N, D)`` attributions.

    Returns:
        ``(protocol, ranks, schedule, chunk)``: the resolved :class:`Protocol`, per-unit ranks from
        :func:`rank_map`, units changed at each step from :func:`perturbation_schedule`, and the most rows per
        forward pass.
    """
    protocol = resolve_protocol(
        preset,
        insertion_substrate=insertion_substrate,
        deletion_substrate=deletion_substrate,
        pixels_per_step=pixels_per_step,
        n_steps=n_steps,
    )
    check_substrate_value(protocol, substrate_value)
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if tabular:
        check_inputs("x", x)
    else:
        check_images("x", x)
    check_attributions(attributions, x)
    check_choice("reduce", reduce, REDUCTIONS)
    check_optional_int("internal_batch_size", internal_batch_size)
    check_device("x", x, model)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("`x` contains NaN or infinite values; the games need finite inputs.")
    ranks = rank_map(attributions.to(x.device), reduce)
    schedule = perturbation_schedule(ranks[0].numel(), protocol.pixels_per_step, protocol.n_steps, device=x.device)
    return protocol, ranks, schedule, internal_batch_size or x.shape[0] * schedule.numel()


# ------------------------------------------------------------------------------------------------- validation
def check_games(games: object) -> tuple[str, ...]:
    """The games to play, in the order of :data:`GAMES`: ``"insertion"``, ``"deletion"`` or both.

    Example:
        >>> check_games(["deletion", "insertion"])
        ('insertion', 'deletion')
    """
    names = check_names("games", games, GAMES, what="game")
    return tuple(game for game in GAMES if game in names)


def check_substrate_value(protocol: Protocol, substrate_value: object) -> None:
    """Refuse a ``"constant"`` substrate without ``substrate_value`` (at construction, not at the first update)."""
    games = [g for g in GAMES if getattr(protocol, f"{g}_substrate") == "constant"]
    if games and substrate_value is None:
        raise ValueError(
            f'`substrate_value` must be given when a substrate is "constant" ({", ".join(games)}), got None.'
        )


def check_substrate(name: str, value: object) -> None:
    """Refuse a substrate that is neither one of :data:`SUBSTRATES` nor a callable; ``name`` is the argument."""
    if callable(value):
        return
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be one of {SUBSTRATES} or a callable, got {type(value).__name__}.")
    if value not in SUBSTRATES:
        raise ValueError(f"`{name}` must be one of {SUBSTRATES} or a callable, got {value!r}.")


def check_images(name: str, x: object) -> None:
    """Refuse anything but a non-empty floating-point image batch ``(N, C, H, W)``; ``name`` is the argument."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}.")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty image batch (N, C, H, W), got shape {tuple(x.shape)}.")


def check_inputs(name: str, x: object) -> None:
    """Images ``(N, C, H, W)`` or features ``(N, D)``."""
    if isinstance(x, Tensor) and x.ndim == 2:
        if not x.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}.")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"`{name}` must be a non-empty feature batch (N, D), got shape {tuple(x.shape)}.")
        return
    try:
        check_images(name, x)
    except ValueError as err:
        raise ValueError(f"{err} Features (N, D) are accepted too.") from None


def check_attributions(attributions: object, x: Tensor) -> None:
    """Refuse maps that are not floats of the shape of ``x`` (or ``(N, H, W)`` for images)."""
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`attributions` must be a torch.Tensor, got {type(attributions).__name__}.")
    if not attributions.is_floating_point():
        raise TypeError(f"`attributions` must be a floating-point tensor, got dtype {attributions.dtype}.")
    if x.ndim == 2:
        if attributions.shape != x.shape:
            raise ValueError(
                f"`attributions` of features must have the shape of x {tuple(x.shape)}, got "
                f"{tuple(attributions.shape)}."
            )
        return
    per_pixel = (x.shape[0], *x.shape[2:])
    if attributions.shape != x.shape and attributions.shape != per_pixel:
        raise ValueError(
            f"`attributions` must have the shape of x {tuple(x.shape)} or (N, H, W) = {per_pixel}, got "
            f"{tuple(attributions.shape)}."
        )


def check_clean_logits(logits: object, x: Tensor) -> None:
    """Refuse ``logits`` that are not finite ``(N, K)`` logits of the batch ``x`` (the runner's clean forward)."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"`logits` must be the model's logits (N, K) = ({x.shape[0]}, K) for `x`, got {shape}.")
    check_finite("logits", logits)


def model_logits(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)``, refused unless it is logits ``(N, K)`` for the ``N`` rows of ``x``."""
    out = model(x)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"`model` must return logits of shape (N, K) = ({x.shape[0]}, K), got {shape}.")
    return out
