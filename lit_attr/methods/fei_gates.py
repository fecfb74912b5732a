"""Selective gradient clipping at activation modules, FEI's gate (Zhang & McMillan, arXiv 2509.04588).

Rectifiers (ReLU and its kin) are gated at their output. Self-gated activations (GELU, SiLU, Hardswish, Mish, ...:
vision transformers, BERT, ConvNeXt, EfficientNet) are gated at their *input*, the pre-activation ``z``: a unit is
active on the clean input when ``z0 > 0``, and every rule of :data:`GATES` reads ``a, a0`` as ``z, z0`` and ``g`` as
the gradient with respect to ``z``. Which module belongs to which family: :mod:`lit_attr.methods.fei_activations`;
why: :mod:`lit_attr.methods.fei`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice
from lit_attr.methods.fei_activations import HF_GELU_NAMES, gate_rule_of, gated_types, gelu_types

__all__ = ["GATES", "HF_GELU_NAMES", "ActivationGates", "ReluGates", "gate_gradient", "gated_types", "gelu_types"]


#: Which incoming gradients ``g`` a gated ReLU lets through, given its clean (``a0``) and current (``a``) output.
#: Gradient descent moves ``a`` against ``g``: ``g > 0`` pushes the unit down. At a GELU, ``a``, ``a0`` and ``g`` are
#: its current and clean input (pre-activation) and the gradient with respect to that input (see the module text).
GATES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "none": lambda a, a0, g: torch.ones_like(g, dtype=torch.bool),
    "ibm": lambda a, a0, g: (g > 0) | (a0 > 0),
    "vm": lambda a, a0, g: ((g > 0) & (a >= a0)) | ((g <= 0) & (a < a0)),
    "ivm": lambda a, a0, g: (g > 0) | (a <= a0),
    "avm": lambda a, a0, g: (g < 0) | (a >= a0),
}


class _GatedIdentity(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass zeroes the gradients the gate rejects."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, a0: Tensor, gate: str) -> Tensor:
        ctx.save_for_backward(a, a0)
        ctx.gate = gate
        return a.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        a, a0 = ctx.saved_tensors
        return g * GATES[ctx.gate](a, a0, g).to(g.dtype), None, None


def gate_gradient(a: Tensor, a0: Tensor, gate: str) -> Tensor:
    """Apply the selective gradient clipping ``gate`` to activation ``a`` with clean activation ``a0``.

    Example:
        >>> a = torch.tensor([1.0, 0.0], requires_grad=True)
        >>> gate_gradient(a, torch.tensor([0.0, 0.0]), "ibm").mul(torch.tensor([-1.0, 2.0])).sum().backward()
        >>> a.grad.tolist() == [0.0, 2.0]  # unit 0 was off on the clean image and may not be pushed up (g = -1 < 0)
        True
    """
    check_choice("gate", gate, GATES)
    return _GatedIdentity.apply(a, a0, gate)


class ActivationGates:
    """Hooks that gate chosen activation modules, keyed by module and call order within one forward.

    A rectifier (ReLU and its kin) is gated at its output (a forward hook), a self-gated activation (GELU, SiLU,
    Hardswish, Mish, ...; see :func:`~lit_attr.methods.fei_activations.gate_rule_of`) at its input (a forward
    pre-hook), so ``clean`` holds rectifier outputs and self-gated inputs; a module of neither family is gated at
    its output. ``new_forward(capture=True)`` before a forward records clean activations; inside ``active()`` every
    forward must be preceded by ``new_forward()`` so that a module called several times per forward (torchvision's
    Bottleneck ReLU) is matched call by call. ``inplace`` flags are switched off while hooked and restored on exit,
    even on errors.
    """

    def __init__(self, modules: Sequence[nn.Module], gate: str) -> None:
        self.modules = list(modules)
        self.gate = gate
        self._at_input = {id(m) for m in self.modules if gate_rule_of(m) == "self_gated"}
        self.clean: dict[tuple[int, int], Tensor] = {}
        self.calls: defaultdict[int, int] = defaultdict(int)
        self._capturing = False

    @contextmanager
    def active(self) -> Iterator[ActivationGates]:
        """Install the hooks (and no-inplace) for the duration of the block."""
        flags = [(m, m.inplace) for m in self.modules if hasattr(m, "inplace")]
        handles = []
        try:
            for m, _ in flags:
                m.inplace = False
            for m in self.modules:
                if id(m) in self._at_input:
                    handles.append(m.register_forward_pre_hook(self._pre_hook))
                else:
                    handles.append(m.register_forward_hook(self._hook))
            yield self
        finally:
            for h in handles:
                h.remove()
            for m, flag in flags:
                m.inplace = flag

    def new_forward(self, capture: bool = False) -> None:
        """Reset call counters before a forward; ``capture=True`` records clean activations in it."""
        self.calls.clear()
        self._capturing = capture

    def _gated(self, module: nn.Module, value: Tensor) -> Tensor | None:
        """``value`` with its gradient gated against the clean value of this call (``None``: leave it)."""
        key = (id(module), self.calls[id(module)])
        self.calls[id(module)] += 1
        if self._capturing:
            # A copy: an in-place operation after the hook (a residual sum) must not change the clean value.
            self.clean[key] = value.detach().clone()
            return None
        if self.gate == "none":
            return None
        return _GatedIdentity.apply(value, self.clean[key], self.gate)

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        return self._gated(module, output)

    def _pre_hook(self, module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        gated = self._gated(module, args[0])
        return None if gated is None else (gated, *args[1:])


#: The former name, from when only ReLUs were gated.
ReluGates = ActivationGates
