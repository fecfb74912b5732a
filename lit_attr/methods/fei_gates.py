"""Selective gradient clipping at activation modules, FEI's gate (Zhang & McMillan, arXiv 2509.04588).

GELU networks (vision transformers, BERT) are gated at the GELU's *input*, the pre-activation ``z``: a unit is active
on the clean input when ``z0 > 0``, and every rule of :data:`GATES` reads ``a, a0`` as ``z, z0`` and ``g`` as the
gradient with respect to ``z`` (see :mod:`lit_attr.methods.fei` for why). ReLUs are gated at their output.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice

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


#: Hugging Face's GELU modules (``transformers.activations``: ``hidden_act="gelu"`` as in BERT, its tanh and sigmoid
#: approximations), gated like ``nn.GELU`` at their input: each is close to the identity for ``z > 0`` and to 0 for
#: ``z << 0``, as GELU is. Names missing from the installed transformers are skipped.
HF_GELU_NAMES = (
    "GELUActivation",
    "GELUTanh",
    "PytorchGELUTanh",
    "NewGELUActivation",
    "FastGELUActivation",
    "AccurateGELUActivation",
    "QuickGELUActivation",
)


def gelu_types() -> tuple[type, ...]:
    """``nn.GELU`` and, when transformers is loaded, its GELU modules (:data:`HF_GELU_NAMES`).

    A model holding a Hugging Face activation has imported ``transformers.activations``, so FEI looks the classes up
    there and never imports transformers itself.

    Example:
        >>> nn.GELU in gelu_types()
        True
    """
    hf = sys.modules.get("transformers.activations")
    return (nn.GELU, *(getattr(hf, name) for name in HF_GELU_NAMES if hasattr(hf, name)))


def gated_types() -> tuple[type, ...]:
    """Every activation module type FEI can gate: ``nn.ReLU`` (at its output) and :func:`gelu_types` (at the input)."""
    return (nn.ReLU, *gelu_types())


class ActivationGates:
    """Hooks that gate chosen ReLU and GELU modules, keyed by module and call order within one forward.

    A ReLU is gated at its output (a forward hook), a GELU (``nn.GELU`` or one of Hugging Face's, see
    :func:`gelu_types`) at its input (a forward pre-hook), so ``clean`` holds
    ReLU outputs and GELU inputs. ``capture(x)`` records clean activations; inside ``active()`` every forward must
    be preceded by ``new_forward()`` so that a module called several times per forward (torchvision's Bottleneck
    ReLU) is matched call by call. ``inplace`` flags are switched off while hooked and restored on exit, even on
    errors.
    """

    def __init__(self, modules: Sequence[nn.Module], gate: str) -> None:
        self.modules = list(modules)
        self.gate = gate
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
            gelus = gelu_types()
            for m in self.modules:
                if isinstance(m, gelus):
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
            self.clean[key] = value.detach()
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
