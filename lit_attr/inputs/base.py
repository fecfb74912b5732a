"""The input-kind protocol: what differs between images, tabular features, token ids and a user's own inputs.

An :class:`InputKind` owns everything that depends on the kind of input and nothing else:

* the continuous space attribution methods work in (the input itself, or the model's token embeddings) and how a
  map in that space becomes per-feature scores (:meth:`InputKind.method_call`, :class:`Space`);
* which positions carry no information (padding, special tokens): they are held fixed and scored 0;
* the perturbation games' *units* (pixel, feature, token: :meth:`InputKind.unit_scores`), the units that count and
  what a perturbed row carries into the model call (:meth:`InputKind.game_inputs`: a sentence's real tokens that are
  not special, its attention mask and ``token_type_ids``) and *substrates* (:meth:`InputKind.substrate`, or
  :meth:`InputKind.game_substrate` where the substrate is the model's, as the [MASK] id of token ids);
* where robustness metrics move a sample (:meth:`InputKind.neighbourhood`) and how four samples tile one input of
  focus's mosaics (:meth:`InputKind.mosaic_tiles`);
* how a sample and its map are kept and rendered (:meth:`InputKind.render`).

Methods see only a continuous tensor and a ``forward`` on it; metrics declare the kinds' tags they accept (every
kind has the tag of its name, float kinds also ``"continuous"``); orchestration asks the batch for its kind. A new
input kind is one subclass registered with :func:`register_input_kind`, and every method, game and the monitor
work on it without an edit elsewhere.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from lit_attr._checks import check_device, check_seed
from lit_attr.inputs.mosaics import Tiles
from lit_attr.inputs.neighbourhood import Neighbourhood
from lit_attr.inputs.space import MethodCall, Rendering

__all__ = [
    "CONTINUOUS",
    "GENERIC_SUBSTRATES",
    "ContinuousKind",
    "GameInputs",
    "InputKind",
    "available_input_kinds",
    "available_substrates",
    "get_input_kind",
    "input_kind",
    "register_input_kind",
]

#: The tag of every kind whose inputs are floats that methods attribute directly and games blend with a substrate.
CONTINUOUS = "continuous"
#: Substrates every continuous kind offers: zeros, seeded N(0, 1) noise, a constant, or a callable of ``x``.
GENERIC_SUBSTRATES: tuple[str, ...] = ("zero", "noise", "constant")

SubstrateType = str | Callable[[Tensor], Tensor]


class GameInputs(NamedTuple):
    """What a unit game needs of a batch besides its values (:meth:`InputKind.game_inputs`).

    Attributes:
        valid: ``(N, *units)`` bool: the units a game may replace and that it counts (a sample's real tokens that
            are not special); ``None``: every unit of every sample.
        fields: per-sample tensors (first dimension N) that every perturbed row of a sample carries into
            :meth:`InputKind.model_logits` (the attention mask, ``token_type_ids``, ...).
    """

    valid: Tensor | None
    fields: Mapping[str, Tensor]


class InputKind(abc.ABC):
    """A kind of model input: how it is recognised, attributed, perturbed, kept and rendered.

    Subclass it for a new modality and register it with :func:`register_input_kind`; override what differs from
    the defaults (a continuous input attributed as it is, one unit per element, the generic substrates, no
    rendering).

    Example:
        >>> class Signals(ContinuousKind):
        ...     name = "signals"
        ...     @classmethod
        ...     def accepts(cls, x):
        ...         return x.is_floating_point() and x.ndim == 3
        >>> sorted(Signals().tags)
        ['continuous', 'signals']
    """

    #: The kind's name: its tag, the records' ``kind`` and what metrics name in their modalities.
    name: ClassVar[str] = ""
    #: Whether the inputs are floats that methods attribute directly and games blend (tag ``"continuous"``).
    continuous: ClassVar[bool] = True
    #: What methods attribute for this kind (named in errors of methods that need the raw inputs).
    space_name: ClassVar[str] = "the inputs themselves"
    #: Keywords of ``attribute`` that belong to this kind (e.g. ``attention_mask``): a call with one is of this kind.
    keywords: ClassVar[tuple[str, ...]] = ()
    #: The last part of the logged key of rendered maps: ``attr/<method>/<media_name>``.
    media_name: ClassVar[str] = "heatmaps"
    #: Substrate names :meth:`substrate` understands (a callable is accepted too).
    substrates: ClassVar[tuple[str, ...]] = GENERIC_SUBSTRATES
    #: The substrate used where a protocol names one this kind does not offer (RISE's blur for features).
    default_substrate: ClassVar[str] = "zero"

    @classmethod
    @abc.abstractmethod
    def accepts(cls, x: Tensor) -> bool:
        """Whether ``x`` (a batch of inputs, first dimension N) is of this kind."""

    @property
    def tags(self) -> frozenset[str]:
        """The kind's name, and ``"continuous"`` for float inputs: what metrics' modalities are matched against."""
        return frozenset({self.name, CONTINUOUS} if self.continuous else {self.name})

    # ------------------------------------------------------------------ batches
    def model_logits(self, model: Callable[..., Any], x: Tensor, fields: Mapping[str, Tensor | None]) -> Tensor:
        """The model's output on a batch, called as the methods call it (``fields``: the batch's other inputs)."""
        return model(x)

    def ground_truth(self, mask: Tensor, x: Tensor) -> Tensor:
        """A batch's ground-truth masks in the form the localisation metrics take (boolean, one per sample)."""
        return mask

    def kept_sample(self, x: Tensor, fields: Mapping[str, Tensor | None]) -> Tensor:
        """One sample as the records keep it (``x`` and ``fields`` without their batch dimension)."""
        return x.detach().float().cpu()

    def kept_map(self, attributions: Tensor, fields: Mapping[str, Tensor | None]) -> Tensor:
        """One sample's map as the records keep it, aligned with :meth:`kept_sample`."""
        return attributions.detach().float().cpu()

    # ------------------------------------------------------------------ methods
    @abc.abstractmethod
    def method_call(self, method: Any, x: Tensor, kwargs: dict[str, Any]) -> MethodCall:
        """Check ``x`` for ``method`` and prepare the call: take this kind's keywords out of ``kwargs``."""

    def neighbourhood(self, method: Any, x: Tensor, fields: Mapping[str, Any]) -> Neighbourhood:
        """The batch as points of a continuous space, where the robustness metrics move and shift samples.

        A continuous kind's points are its inputs (:class:`~lit_attr.inputs.neighbourhood.Neighbourhood`); a kind
        without a continuous change of its own overrides this (token ids: their embeddings). ``fields`` holds the
        batch's other inputs (``attention_mask``, ``special_tokens_mask``, ``model_inputs``; ``None`` where absent).
        """
        if not self.continuous:
            raise ValueError(
                f"{self.name} inputs have no continuous neighbourhood: override {type(self).__name__}.neighbourhood "
                "to say what a small change of them is."
            )
        return Neighbourhood(method, x)

    def mosaic_tiles(self, method: Any, x: Tensor, fields: Mapping[str, Any], tile: str) -> Tiles:
        """The batch's samples as tiles of focus's mosaics (:mod:`lit_attr.inputs.mosaics`); refused by default.

        A kind has mosaics where four of its samples tiled together make one input its models take (images in a
        2x2 grid, sentences one after another). ``fields`` as in :meth:`neighbourhood`; ``tile`` is focus's option.
        """
        raise ValueError(
            f"`x` must be of an input kind with mosaics, four samples tiled into one input of the model (images in a "
            f"2x2 grid, sentences one after another); {self.name} inputs have none (their model takes no input made "
            f"of four samples): override {type(self).__name__}.mosaic_tiles to tile them."
        )

    def feature_shape(self, x: Tensor) -> tuple[int, ...]:
        """The shape of one sample's per-feature mask (FEI's), broadcastable to a sample: one value per element."""
        return tuple(x.shape[1:])

    def failure_hint(self, method: Any, x: Tensor) -> str | None:
        """A clearer message for a model that failed on ``x`` (e.g. token ids cast to float); ``None``: none."""
        return None

    # ------------------------------------------------------------------ games
    def check_game_inputs(self, x: Tensor, attributions: Tensor) -> None:
        """Refuse inputs or maps the perturbation games cannot play on (maps have the shape of ``x`` by default)."""
        if attributions.shape != x.shape:
            raise ValueError(
                f"`attributions` of {self.name} inputs must have the shape of x {tuple(x.shape)}, got "
                f"{tuple(attributions.shape)}."
            )

    def unit_scores(self, attributions: Tensor, reduce: str) -> Tensor:
        """``(N, *units)``: one score per removal unit (an element by default; ``reduce`` is for channels)."""
        return attributions.abs() if reduce == "abs_sum" else attributions

    def unit_view(self, ranks: Tensor, x: Tensor) -> Tensor:
        """Per-unit ranks ``(N, *units)`` viewed to broadcast against ``x``."""
        return ranks

    def game_inputs(self, model: nn.Module, x: Tensor, fields: Mapping[str, Any]) -> GameInputs:
        """The units a unit game may replace and the per-sample inputs of its rows' model calls.

        ``fields`` holds the batch's other inputs (``attention_mask``, ``special_tokens_mask``, ``model_inputs``:
        a mapping name -> tensor), each ``None`` when absent. By default every unit counts and a row is ``x`` alone.
        """
        return GameInputs(None, {})

    def game_substrate(
        self,
        model: nn.Module,
        substrate: SubstrateType,
        x: Tensor,
        *,
        value: Any = None,
        seed: int = 0,
        argument: str = "substrate",
    ) -> Tensor:
        """The substrate of a unit game on ``model``: :meth:`substrate` unless the kind's depends on the model."""
        return self.substrate(substrate, x, value=value, seed=seed, argument=argument)

    def substrate(
        self,
        substrate: SubstrateType,
        x: Tensor,
        *,
        value: float | Sequence[float] | Tensor | None = None,
        seed: int = 0,
        argument: str = "substrate",
    ) -> Tensor:
        """The inputs that perturbed units are taken from, one per sample, with the shape, dtype and device of ``x``.

        Args:
            substrate: one of :attr:`substrates`, or a callable mapping ``x`` to a tensor broadcastable to it.
            x: the clean inputs.
            value: the fill of ``"constant"``: a scalar, or values broadcastable to one sample.
            seed: seed of ``"noise"`` (N(0, 1) drawn once on the CPU and shared by every sample, so a sample's
                result does not depend on its batch); the global random state is never used.
            argument: the argument named in errors.
        """
        if callable(substrate):
            out = substrate(x)
            if not isinstance(out, Tensor):
                raise TypeError(f"A callable `{argument}` must return a tensor, got {type(out).__name__}.")
            try:
                return torch.broadcast_to(out.to(dtype=x.dtype, device=x.device), x.shape)
            except RuntimeError as err:
                raise ValueError(
                    f"A callable `{argument}` must return a tensor broadcastable to x's shape {tuple(x.shape)}, "
                    f"got {tuple(out.shape)}."
                ) from err
        if substrate not in self.substrates:
            owners = [kind.name for kind in (*_KINDS, *_BUILT_IN) if substrate in kind.substrates]
            needs = f" needs {' or '.join(owners)} inputs" if owners else " is not a substrate"
            raise ValueError(
                f"`{argument}` {substrate!r}{needs}; for {self.name} inputs use one of {self.substrates} or a callable"
                + (" (e.g. 'constant' with the training mean per feature)." if "constant" in self.substrates else ".")
            )
        if substrate == "zero":
            return torch.zeros_like(x)
        if substrate == "noise":
            check_seed(seed)
            generator = torch.Generator().manual_seed(seed)  # on the CPU: the same substrate on every device
            return torch.randn((1, *x.shape[1:]), generator=generator, dtype=x.dtype).to(x.device).expand_as(x)
        if substrate == "constant":
            if value is None:
                raise ValueError(f'`substrate_value` must be given when `{argument}` is "constant", got None.')
            return self.constant(x, torch.as_tensor(value, dtype=x.dtype, device=x.device))
        return self.own_substrate(substrate, x)

    def constant(self, x: Tensor, fill: Tensor) -> Tensor:
        """A ``"constant"`` substrate: ``fill`` (a scalar or values broadcastable to one sample) everywhere."""
        try:
            return torch.broadcast_to(fill, x.shape)
        except RuntimeError as err:
            raise ValueError(
                f"`substrate_value` must be a scalar or broadcastable to one sample {tuple(x.shape[1:])}, got shape "
                f"{tuple(fill.shape)}."
            ) from err

    def own_substrate(self, substrate: str, x: Tensor) -> Tensor:
        """A substrate of this kind beyond :data:`GENERIC_SUBSTRATES` (override with :attr:`substrates`)."""
        raise ValueError(f"{type(self).__name__} lists substrate {substrate!r} but does not build it.")

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        samples: Sequence[Tensor],
        maps: Sequence[Tensor],
        *,
        captions: Sequence[str] | None = None,
        titles: Sequence[str] | None = None,
        title: str = "",
        decode: Callable[[Tensor], list[str]] | None = None,
        truths: Sequence[Tensor] | None = None,
    ) -> Rendering | None:
        """Draw kept samples (:meth:`kept_sample`) with their maps; ``None`` when this kind draws nothing.

        ``truths`` (the records' ``truth``: one ground truth per sample, aligned with its map) are drawn beside the
        maps where the kind can; kinds written before it existed may leave the keyword out (the report then
        passes none).
        """
        return None

    def render_cell(
        self, sample: Tensor, attributions: Tensor, decode: Callable[[Tensor], list[str]] | None = None
    ) -> str | None:
        """HTML for one sample and its map in a table cell, or ``None`` when this kind has none."""
        return None


class ContinuousKind(InputKind):
    """A kind of float inputs that methods attribute as they are (the input is the space)."""

    def method_call(self, method: Any, x: Tensor, kwargs: dict[str, Any]) -> MethodCall:
        """Check ``x`` (a finite float batch on the model's device, inside ``input_bounds``); no keywords of its own."""
        check_float_batch(x, method.model, method.input_bounds)
        return MethodCall(method, x, kwargs, self.feature_shape(x))


def check_float_batch(x: Any, model: nn.Module, bounds: Any = None) -> None:
    """Refuse anything but a non-empty finite float batch ``(N, ...)`` on ``model``'s device, inside ``bounds``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got dtype {x.dtype}. Convert with `x.float()`.")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"`x` must be a non-empty batch (N, ...) with N >= 1, got shape {tuple(x.shape)}.")
    check_device("x", x, model)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("`x` contains NaN or infinite values; attribution needs finite inputs.")
    if bounds is not None:
        low, high = (torch.as_tensor(b.to(x) if isinstance(b, Tensor) else b, dtype=x.dtype) for b in bounds)
        tol = 1e-6
        if bool((x < low.to(x.device) - tol).any()) or bool((x > high.to(x.device) + tol).any()):
            raise ValueError(
                f"`x` has values in [{float(x.min()):.4g}, {float(x.max()):.4g}], outside `input_bounds`; pass the "
                "bounds of the space the model sees (e.g. (0, 1) when normalisation is inside it)."
            )


# ---------------------------------------------------------------------------------------------------- registry
_KINDS: list[type[InputKind]] = []
_BUILT_IN: list[type[InputKind]] = []


def register_input_kind(kind: type[InputKind], *, built_in: bool = False) -> type[InputKind]:
    """Register an :class:`InputKind` subclass; kinds registered by users are asked before the built-in ones.

    Usable as a class decorator. Registering a kind under a name already taken replaces the earlier one.

    Example:
        >>> @register_input_kind
        ... class Signals(ContinuousKind):
        ...     name = "signals"
        ...     @classmethod
        ...     def accepts(cls, x):
        ...         return x.is_floating_point() and x.ndim == 3
        >>> input_kind(torch.zeros(2, 1, 5)).name
        'signals'
        >>> unregister_input_kind("signals")
    """
    if not (isinstance(kind, type) and issubclass(kind, InputKind)) or not kind.name:
        raise TypeError(f"`kind` must be an InputKind subclass with a `name`, got {kind!r}.")
    unregister_input_kind(kind.name, missing_ok=True)
    (_BUILT_IN if built_in else _KINDS).append(kind)
    return kind


def unregister_input_kind(name: str, *, missing_ok: bool = False) -> None:
    """Remove the kind registered as ``name`` (for tests and plugins that register temporarily)."""
    for table in (_KINDS, _BUILT_IN):
        for kind in table:
            if kind.name == name:
                table.remove(kind)
                return
    if not missing_ok:
        raise ValueError(f"No input kind named {name!r} is registered; registered: {available_input_kinds()}.")


def available_input_kinds() -> list[str]:
    """Names of the registered input kinds, in the order they are asked.

    Example:
        >>> available_input_kinds()[-4:]
        ['tokens', 'images', 'tabular', 'tensors']
    """
    return [kind.name for kind in (*_KINDS, *_BUILT_IN)]


def available_substrates() -> tuple[str, ...]:
    """Every substrate name a registered kind offers, in registration order (the built-in kinds' last).

    Example:
        >>> available_substrates()
        ('mask', 'constant', 'noise', 'zero', 'blur', 'mean')
    """
    names = (name for kind in (*_KINDS, *_BUILT_IN) for name in kind.substrates)
    return tuple(dict.fromkeys(names))


def input_kind(x: Any, keywords: Mapping[str, Any] | None = None) -> InputKind:
    """The kind of a batch of inputs: the first registered kind that accepts ``x`` (or owns one of ``keywords``).

    Args:
        x: the batch's inputs.
        keywords: keywords given with them (``attribute``'s): a kind owning one of them is chosen, and checks ``x``.

    Raises:
        TypeError: for ``x`` that is not a tensor, or an integer tensor that is not token ids ``(N, L)``.
        ValueError: for a tensor that no kind accepts (e.g. one without a batch dimension).

    Example:
        >>> input_kind(torch.zeros(2, 3, 8, 8)).name, input_kind(torch.zeros(2, 5)).name
        ('images', 'tabular')
    """
    kinds = (*_KINDS, *_BUILT_IN)
    for kind in kinds:
        if keywords and any(key in keywords for key in kind.keywords):
            return kind()
    if isinstance(x, Tensor):
        for kind in kinds:
            if kind.accepts(x):
                return kind()
    if isinstance(x, Tensor) and not x.is_floating_point():
        raise TypeError(
            f"`x` must be a floating-point tensor, got dtype {x.dtype}. Convert with `x.float()` (integer inputs are "
            f"read as token ids of shape (N, L); this one has shape {tuple(x.shape)})."
        )
    what = f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
    raise (ValueError if isinstance(x, Tensor) else TypeError)(
        f"`x` must be a non-empty batch (N, ...) of a registered input kind ({available_input_kinds()}: images "
        f"(N, C, H, W), features (N, D), token ids (N, L), any float batch), got {what}; register an InputKind "
        "(lit_attr.inputs) for other inputs."
    )


def get_input_kind(name: str) -> InputKind:
    """The registered kind named ``name`` (what records and results carry).

    Example:
        >>> get_input_kind("tokens").media_name
        'tokens'
    """
    for kind in (*_KINDS, *_BUILT_IN):
        if kind.name == name:
            return kind()
    raise ValueError(f"Unknown input kind {name!r}; registered: {available_input_kinds()}.")
