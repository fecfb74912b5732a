"""FEI: faithfulness-guided ensemble interpretation (Zhang & McMillan, arXiv 2509.04588).

A mask that preserves the target logit is optimised at nested area budgets (ensemble quantile optimisation) while
activation gradients are gated so that the mask cannot win by switching on units the clean image never used
(selective gradient clipping, for internal faithfulness). The attribution is the mean of the nested masks.

The paper's gate is defined for ReLU. Rectifiers (ReLU, ReLU6, LeakyReLU, PReLU, ELU, ...) are gated at their output
as the paper says. Self-gated activations ``f(z) = z * s(z)`` (GELU in vision transformers and BERT, SiLU/Swish in
EfficientNet, Hardswish in MobileNetV3, Mish, QuickGELU, ...; :mod:`lit_attr.methods.fei_activations` says how each
module is recognised) are gated at their *input*, the pre-activation ``z``: a unit is active on the clean image when
``z0 > 0``, and every rule of :data:`GATES` reads ``a, a0`` as ``z, z0`` and ``g`` as the gradient with respect to
``z``. These functions are not monotonic (GELU's minimum is near ``z = -0.75``, SiLU's near ``-1.28``), so their
output does not order a unit's states the way a ReLU's does; their input does, and ``z > 0`` is where the gate
``s(z)`` is open and the unit passes its input almost unchanged, the counterpart of an open ReLU. So, per rule:
``ibm`` lets no gradient raise ``z`` of a unit whose clean ``z0 <= 0``; ``vm`` passes only gradients that move ``z``
back towards ``z0``; ``ivm`` lets no gradient raise ``z`` above ``z0``; ``avm`` lets no gradient lower ``z`` below
``z0``; ``none`` passes everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice, check_positive, check_seed
from lit_attr._hygiene import row_seed
from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods._common import SCORES
from lit_attr.methods._independence import warn_if_zero_gradient
from lit_attr.methods.base import AttributionMethod, BoundsType, ResultType, TargetType
from lit_attr.methods.fei_activations import (  # noqa: F401  (re-exported: the activation families' public names)
    GATE_RULES,
    HF_GELU_NAMES,
    gate_rule_of,
    gated_types,
    gelu_types,
    register_activation,
)
from lit_attr.methods.fei_gates import GATES, ActivationGates, ReluGates, gate_gradient  # noqa: F401  (re-exported)
from lit_attr.methods.registry import register_method

OBJECTIVES = ("preservation", "hybrid")


class FEI(AttributionMethod):
    """FEI attribution with selective gradient clipping.

    One mask value per feature of the input kind (``space.feature_shape``: per pixel ``(N, 1, H, W)`` for images,
    per token for token ids, one per element otherwise), in [0, 1], optimised directly with Adam (``lr``, cosine
    decay to 0 over ``iterations``) and clamped after every step. The preserved input is ``x * m + r * (1 - m)``
    with ``r`` a random flat colour per sample, redrawn every iteration, or the kind's own baseline where it has one
    (token ids: the [MASK] embedding). For each level ``q`` in ``levels`` (in order) the mask grows from the previous
    level's by a non-negative increment, minimising per sample ``beta * |sum(m) - q * units| - logit_c(preserved)``
    (``objective="hybrid"`` adds ``+ logit_c(x * (1 - m) + r * m)``), where ``units`` counts the features that may
    change (not padding or special tokens). The map is the mean of the nested masks.

    All masks of a batch optimise together; Adam is elementwise and the model runs in eval mode, so a sample's
    mask does not depend on its batch. Reference colours come from a generator seeded per sample.
    ``attribute(x, return_masks=True)`` also returns ``{"masks": (N, len(levels), ...)}``, the nested masks.

    Args:
        model: classifier returning logits, with its activations as modules when a gate is used: torch's
            (``nn.ReLU``, ``nn.GELU``, ``nn.SiLU``, ...), Hugging Face's, timm's, or any module recognised by what it
            computes or registered with :func:`~lit_attr.methods.fei_activations.register_activation`; activations
            applied as functions (``F.relu``) cannot be gated, use ``gate="none"`` there.
        gate: ``"ibm"`` (default), ``"vm"``, ``"none"``, or the ablations ``"ivm"``, ``"avm"`` (see ``GATES``).
        levels: increasing area fractions in (0, 1].
        iterations: Adam steps per level.
        lr: Adam learning rate (cosine-decayed to 0 within each level).
        beta: weight of the area term.
        objective: ``"preservation"`` (the released code) or ``"hybrid"``.
        gate_layers: activation modules to gate: ``None`` = every activation module the forward calls before the
            first ``nn.Linear`` (a CNN's feature extractor: ResNet's ReLUs, EfficientNet's SiLUs), else every one it
            calls before the last ``nn.Linear`` (the hidden layers of an MLP; on a vision transformer, ConvNeXt or
            BERT, the activations of the blocks' MLPs); a list of activation module names; or ``(start, stop)``, a
            window over the activation modules in forward order.
        seed: base seed of the reference colours.
        reduce: ``True`` broadcasts the map to the input's shape; ``False`` returns ``(N, 1, H, W)``.
        progress: ``True`` shows a rich progress bar over levels x iterations; a callable ``progress(done, total)``
            is called after every iteration instead (to drive a progress display of your own).
        forward_fn: see :class:`~lit_attr.methods.base.AttributionMethod`.
        input_bounds: the colour range of the references; ``None`` uses each sample's own channel range.
        internal_batch_size: samples per optimisation batch.
        token_options: defaults for token ids; see :class:`~lit_attr.methods.base.AttributionMethod`.
        return_masks: also return ``{"masks": (N, len(levels), ...)}``, the nested masks; a per-call
            ``attribute(x, return_masks=...)`` overrides it.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
        >>> FEI(net, iterations=5, input_bounds=(0.0, 1.0)).attribute(torch.rand(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        gate: str = "ibm",
        levels: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
        iterations: int = 100,
        lr: float = 0.1,
        beta: float = 0.1,
        objective: str = "preservation",
        gate_layers: Sequence[str] | tuple[int, int] | None = None,
        seed: int = 0,
        reduce: bool = True,
        progress: bool | Callable[[int, int], None] = False,
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        input_bounds: BoundsType = None,
        internal_batch_size: int | None = None,
        token_options: TokenOptions | Mapping[str, Any] | None = None,
        return_masks: bool = False,
    ) -> None:
        super().__init__(
            model,
            forward_fn=forward_fn,
            input_bounds=input_bounds,
            internal_batch_size=internal_batch_size,
            token_options=token_options,
        )
        self.gate = check_choice("gate", gate, GATES)
        self.levels = tuple(float(q) for q in levels)
        if not self.levels or any(not 0 < q <= 1 for q in self.levels) or list(self.levels) != sorted(self.levels):
            raise ValueError(f"`levels` must be increasing fractions in (0, 1], got {tuple(levels)!r}.")
        self.iterations = check_positive("iterations", iterations, int)
        self.lr = check_positive("lr", lr)
        self.beta = float(beta)
        if self.beta < 0:
            raise ValueError(f"`beta` must be >= 0, got {beta!r}.")
        self.objective = check_choice("objective", objective, OBJECTIVES)
        self.gate_layers = gate_layers
        self.seed = check_seed(seed)
        self.reduce = bool(reduce)
        if not (isinstance(progress, bool) or callable(progress)):
            raise TypeError(f"`progress` must be a bool or a callable(done, total), got {type(progress).__name__}.")
        self.progress = progress
        self.return_masks = bool(return_masks)

    @overload
    def attribute(
        self, x: Tensor, target: TargetType = None, *, logits: Tensor | None = None, return_masks: Literal[False]
    ) -> Tensor: ...

    @overload
    def attribute(
        self, x: Tensor, target: TargetType = None, *, logits: Tensor | None = None, return_masks: Literal[True]
    ) -> tuple[Tensor, dict[str, Tensor]]: ...

    @overload
    def attribute(
        self, x: Tensor, target: TargetType = None, *, logits: Tensor | None = None, return_masks: None = None
    ) -> ResultType: ...

    def attribute(
        self,
        x: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        return_masks: bool | None = None,
        **token_kwargs: Any,
    ) -> ResultType:
        """FEI attributions of ``x`` (see the class).

        Args:
            x: input batch ``(N, ...)``, or token ids ``(N, L)`` (see ``AttributionMethod.attribute``).
            target: class to explain (``None``: the prediction).
            logits: the model's logits for ``x`` if already computed (see the base class).
            return_masks: also return ``{"masks": (N, len(levels), ...)}``, the nested masks; ``None`` follows the
                constructor's ``return_masks``.
            **token_kwargs: keywords of token inputs (``attention_mask``, ``special_tokens_mask``, ...; see
                ``AttributionMethod.attribute``).
        """
        masks = self.return_masks if return_masks is None else bool(return_masks)
        return super().attribute(x, target, logits=logits, return_masks=masks, **token_kwargs)

    # ------------------------------------------------------------------ gated layers
    def gated_modules(self, x: Tensor, whole_model: bool = False) -> list[nn.Module]:
        """The activation modules to gate, resolved on a forward pass of ``x[:1]`` (forward order).

        ``whole_model=True`` makes the default every activation module the forward calls (see ``gate_layers`` for
        the default otherwise). Activation modules are those :func:`gate_rule_of` gives a rule.
        """
        order: list[tuple[str, nn.Module]] = []
        names = {m: n for n, m in self.model.named_modules()}
        gateable = {id(m) for m in self.model.modules() if gate_rule_of(m) is not None}

        def record(module: nn.Module, args: Any, output: Any) -> None:
            order.append((names[module], module))

        watched = [m for m in self.model.modules() if id(m) in gateable or isinstance(m, nn.Linear)]
        handles = [m.register_forward_hook(record) for m in watched]
        try:
            with torch.no_grad():
                self.logits(x[:1])
        finally:
            for h in handles:
                h.remove()
        activations: list[tuple[str, nn.Module]] = []
        for name, module in order:
            if id(module) in gateable and all(module is not m for _, m in activations):
                activations.append((name, module))
        if isinstance(self.gate_layers, (list, tuple)) and all(isinstance(v, str) for v in self.gate_layers):
            modules = dict(self.model.named_modules())
            missing = [n for n in self.gate_layers if n not in modules or id(modules[n]) not in gateable]
            if missing:
                raise ValueError(
                    f"`gate_layers` must name activation modules of the model (rectifiers such as nn.ReLU, self-gated "
                    f"ones such as nn.GELU or nn.SiLU, see lit_attr.methods.fei_activations); not such modules: "
                    f"{missing}."
                )
            return [modules[n] for n in self.gate_layers]
        if self.gate_layers is None:
            linears = [i for i, (_, m) in enumerate(order) if isinstance(m, nn.Linear)]
            before_first = {id(m) for _, m in order[: linears[0] if linears else len(order)]}
            before_last = {id(m) for _, m in order[: linears[-1] if linears else len(order)]}
            chosen = [m for _, m in activations if whole_model or id(m) in before_first]
            # An MLP, a transformer (ViT, BERT), ConvNeXt: the activations of every block, not of the head.
            chosen = chosen or [m for _, m in activations if id(m) in before_last]
        elif (
            isinstance(self.gate_layers, tuple)
            and len(self.gate_layers) == 2
            and all(isinstance(v, int) for v in self.gate_layers)
        ):
            chosen = [m for _, m in activations[slice(*self.gate_layers)]]
        else:
            raise ValueError(
                f"`gate_layers` must be None, a list of activation module names or a (start, stop) window, "
                f"got {self.gate_layers!r}."
            )
        if self.gate != "none" and not chosen:
            raise ValueError(self._nothing_to_gate([name for name, _ in activations]))
        return chosen

    def _nothing_to_gate(self, called: list[str]) -> str:
        """Why no module is gated: the forward calls no activation module at all, or none in the gated range."""
        if not called:
            return (
                f"FEI's gate={self.gate!r} hooks activation modules (rectifiers such as nn.ReLU, self-gated ones such "
                "as nn.GELU, nn.SiLU, Hugging Face's and timm's activation classes), but the model's forward calls "
                "none: its activations are applied as functions (F.relu, F.gelu; nn.TransformerEncoderLayer does so "
                "with its default activation) or inside TorchScript modules, which cannot be hooked. Pass "
                "gate='none' to run FEI without gating, or build the model with activation modules (e.g. "
                "nn.TransformerEncoderLayer(..., activation=nn.ReLU()))."
            )
        where = (
            "the default range (the activations before the first nn.Linear, else those before the last nn.Linear)"
            if self.gate_layers is None
            else f"gate_layers={self.gate_layers!r}"
        )
        return (
            f"FEI's gate={self.gate!r} found no activation module to gate in {where}; the forward calls {called}. "
            "Name the modules to gate with gate_layers=[...], or pass gate='none' to run FEI without gating."
        )

    #: The former name, from when only ReLUs were gated.
    relu_modules = gated_modules

    # ------------------------------------------------------------------ optimisation
    def _colours(self, x: Tensor, total: int, feature_shape: tuple[int, ...]) -> Tensor:
        """``(total, N, ...)`` flat reference colours: one per channel (the axes a mask does not resolve).

        Images get one colour per channel (a mask has one value per pixel), other inputs one value per sample. Each
        sample draws from its own generator, seeded by ``seed`` and its values, so draws do not depend on the batch.
        Colours are uniform in ``input_bounds``, or in the sample's own per-channel range without bounds.
        """
        shape = tuple(size if mask == 1 else 1 for size, mask in zip(x.shape[1:], feature_shape, strict=True))
        channels = math.prod(shape)
        draws = [
            torch.rand(total, channels, generator=torch.Generator().manual_seed(row_seed(self.seed, row)))
            for row in x
        ]
        u = torch.stack(draws, dim=1).to(x)  # (total, N, channels)
        if self.input_bounds is not None:
            low, high = (torch.as_tensor(b).to(x).reshape(-1) for b in self.input_bounds)
        else:
            over = [d + 1 for d, size in enumerate(shape) if size == 1]  # the axes a colour is constant over
            low, high = (x.amin(dim=over) if over else x, x.amax(dim=over) if over else x)
            low, high = low.reshape(x.shape[0], channels), high.reshape(x.shape[0], channels)
        colours = low + u * (high - low)
        return colours.reshape(total, x.shape[0], *shape)

    def _attribute(self, x: Tensor, target: Tensor, return_masks: bool = False) -> Any:
        space = self.space
        x = x.detach()
        n = x.shape[0]
        mask_shape = (n, *space.feature_shape)
        support = space.support
        units = support.flatten(1).sum(dim=1) if support is not None else float(math.prod(space.feature_shape))
        gated = self.gated_modules(x) if self.gate != "none" else []
        gates = ActivationGates(gated, self.gate)
        baseline = space.baseline
        if baseline is None:
            colours = self._colours(x, len(self.levels) * self.iterations, space.feature_shape)

        def blend(m: Tensor, step: int, preserve: bool) -> Tensor:
            r = colours[step] if baseline is None else baseline
            return x * m + r * (1 - m) if preserve else x * (1 - m) + r * m

        masks = self._nested_masks(x, blend, target, mask_shape, units, gates, support)
        heatmap = torch.stack(masks).mean(dim=0)
        heatmap = space.expand_features(heatmap) if self.reduce else heatmap
        return (heatmap, {"masks": torch.stack(masks, dim=1)}) if return_masks else heatmap

    def _nested_masks(
        self,
        clean: Tensor,
        blend: Callable[[Tensor, int, bool], Tensor],
        target: Tensor,
        mask_shape: tuple[int, ...],
        units: float | Tensor,
        gates: ReluGates,
        support: Tensor | None = None,
    ) -> list[Tensor]:
        """Optimise the nested masks, one per level, for a chunk (see the class docstring).

        ``blend(m, step, preserve)`` is the input that keeps (``preserve=True``) or deletes what mask ``m`` marks, at
        iteration ``step``;
        ``units`` is the area a mask of ones covers (per sample or shared); only entries where ``support`` is
        nonzero count towards the area (token inputs: the perturbable tokens).
        """
        score = SCORES["logit"]
        masks = []
        with gates.active(), _progress(self.progress, len(self.levels) * self.iterations) as advance:
            gates.new_forward(capture=True)
            # The clean forward also tells whether the target logit depends on the input at all: FEI's masks never
            # come out all zero (the area term moves them), so a zero head would otherwise pass unnoticed.
            clean_points = clean.detach().requires_grad_(True)
            clean_score = score(self.logits(clean_points), target).sum()
            warn_if_zero_gradient(self, torch.autograd.grad(clean_score, clean_points, allow_unused=True)[0])
            previous = torch.zeros(mask_shape, dtype=clean.dtype, device=clean.device)
            for level, q in enumerate(self.levels):
                delta = torch.zeros_like(previous, requires_grad=True)
                optimizer = torch.optim.Adam([delta], lr=self.lr)
                schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.iterations, eta_min=0.0)
                for it in range(self.iterations):
                    m, step = previous + delta, level * self.iterations + it
                    area = m if support is None else m * support
                    gates.new_forward()
                    loss = self.beta * (area.flatten(1).sum(dim=1) - q * units).abs()
                    loss = loss - score(self.logits(blend(m, step, True)), target)
                    if self.objective == "hybrid":
                        gates.new_forward()
                        loss = loss + score(self.logits(blend(m, step, False)), target)
                    (grad,) = torch.autograd.grad(loss.sum(), delta)
                    delta.grad = grad
                    optimizer.step()
                    schedule.step()
                    with torch.no_grad():
                        delta.copy_(torch.minimum(delta.clamp(min=0), 1 - previous))
                    advance()
                previous = (previous + delta).detach()
                masks.append(previous)
        return masks


@contextmanager
def _progress(progress: bool | Callable[[int, int], None], total: int) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable feeding ``progress`` (a callback, a rich bar, or nothing)."""
    if callable(progress):
        done = 0

        def advance() -> None:
            nonlocal done
            done += 1
            progress(done, total)

        yield advance
    elif progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("FEI masks (levels x iterations)", total=total)
            yield lambda: bar.advance(task)
    else:
        yield lambda: None


def _has_gateable_activation(model: nn.Module) -> bool:
    return any(gate_rule_of(module) is not None for module in model.modules())


# gate="none" runs on any model, but the default gate needs an activation module to hook.
@register_method("fei", applies_to=_has_gateable_activation)
def fei(model: nn.Module, **kwargs: Any) -> FEI:
    """FEI with the paper's defaults: ibm gate, levels 0.1 .. 0.9, 100 Adam steps each, preservation objective."""
    return FEI(model, **kwargs)
