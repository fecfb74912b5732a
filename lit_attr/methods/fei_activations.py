"""Which activation modules FEI gates, and where: activation families recognised by what they compute.

FEI's selective gradient clipping (Zhang & McMillan, arXiv 2509.04588) is defined for ReLU: a unit is *active* on
the clean input when its output is positive. Every activation module a model calls belongs to one of two families,
each with its gate rule (:data:`GATE_RULES`), or is not gated:

* ``"rectifier"``: ``f(z) > 0`` exactly where ``z > 0``, non-decreasing, and the identity (or a fixed multiple of
  it) above 0 up to a possible cap: ``nn.ReLU``, ``nn.ReLU6``, ``nn.LeakyReLU``, ``nn.PReLU``, ``nn.RReLU``,
  ``nn.ELU``, ``nn.SELU``, ``nn.CELU``. Gated at the output ``a = f(z)``: the paper's rule as written, a unit is
  active when ``a0 > 0``. Where ``f`` is strictly increasing this is the same gate as one at the input.
* ``"self_gated"``: ``f(z) = z * s(z)`` with a gate ``s`` rising from 0 (``z << 0``) to 1 (``z >> 0``): GELU
  (``s = Phi``, and its tanh approximations), SiLU/Swish (``s = sigmoid(z)``), QuickGELU (``sigmoid(1.702 z)``),
  Hardswish (``relu6(z + 3) / 6``), Mish (``tanh(softplus(z))``), HardMish (``clamp(z + 2, 0, 2) / 2``). None is
  monotonic (each has its minimum at a negative ``z``), so the output does not order a unit's states the way a
  ReLU's does; the input does. Gated at the input ``z``: a unit is active when ``z0 > 0``, where ``s`` is near 1 and
  the unit passes its input, the counterpart of an open ReLU (see :mod:`lit_attr.methods.fei` for each rule).

A module is recognised, in order: by its class, through :func:`register_activation` (the torch classes above are
registered; Hugging Face's GELU classes are known by name); else, for a parameter-free leaf module, by probing it on
a fixed grid of inputs (one call of its ``forward``, without its hooks) and comparing what it computes with each
family's definition. So timm's own activation classes (``timm.layers`` ``GELU``, ``Swish``, ``HardSwish``, ``Mish``,
``HardMish``, their memory-efficient ``...Me`` variants) and Hugging Face's are gated with no list to keep up to
date, while sigmoid gates (squeeze-and-excitation), ``tanh`` and identities are not. Activations applied as
functions (``F.relu``) or inside TorchScript modules cannot be hooked and are never gated.
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch import Tensor, nn

__all__ = ["GATE_RULES", "HF_GELU_NAMES", "gate_rule_of", "gated_types", "gelu_types", "register_activation"]

#: The gate rules: where a family's units are gated (``"rectifier"``: at the output, ``"self_gated"``: at the input).
GATE_RULES = ("rectifier", "self_gated")

_REGISTRY: dict[type, str | None] = {
    **dict.fromkeys((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU), "rectifier"),
    **dict.fromkeys((nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish), "self_gated"),
}

#: Hugging Face's GELU modules (``transformers.activations``: ``hidden_act="gelu"`` as in BERT, its tanh and sigmoid
#: approximations), self-gated like ``nn.GELU``. Names missing from the installed transformers are skipped.
HF_GELU_NAMES = (
    "GELUActivation",
    "GELUTanh",
    "PytorchGELUTanh",
    "NewGELUActivation",
    "FastGELUActivation",
    "AccurateGELUActivation",
    "QuickGELUActivation",
)

# Inputs of the probe: steps of 1/16 (exact in float32) over [-8, 8], where every self-gate is within 0.02 of its
# limits (Mish's and SiLU's slowest) and ReLU6 is distinguishable from ReLU.
_PROBE = torch.arange(-128, 129, dtype=torch.float32) / 16
_TOLERANCE = 1e-4


def register_activation(cls: type[nn.Module], gate_rule: str | None) -> type[nn.Module]:
    """Tell FEI how to gate the activation modules of class ``cls`` (and its subclasses).

    Classes recognised by probing need no registration; register a class whose modules the probe cannot judge
    (parameters, a non-elementwise signature) or judges wrongly for your purpose.

    Args:
        cls: an ``nn.Module`` subclass.
        gate_rule: ``"rectifier"`` (gated at the output, active when the clean output is positive),
            ``"self_gated"`` (gated at the input, active when the clean input is positive), or ``None`` (never
            gated, e.g. a gate that the probe would take for an activation).

    Returns:
        ``cls``, so that the function also works as a class decorator's body.

    Raises:
        TypeError: if ``cls`` is not an ``nn.Module`` subclass.
        ValueError: if ``gate_rule`` is not one of :data:`GATE_RULES` or ``None``.

    Example:
        >>> class Swish(nn.Module):
        ...     def forward(self, x):
        ...         return x * torch.sigmoid(x)
        >>> _ = register_activation(Swish, "self_gated")
        >>> gate_rule_of(Swish())
        'self_gated'
        >>> _ = _REGISTRY.pop(Swish)
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"`cls` must be an nn.Module subclass, got {cls!r}.")
    if gate_rule is not None and gate_rule not in GATE_RULES:
        raise ValueError(f"`gate_rule` must be one of {GATE_RULES} or None, got {gate_rule!r}.")
    _REGISTRY[cls] = gate_rule
    return cls


def gate_rule_of(module: nn.Module) -> str | None:
    """The gate rule FEI applies to ``module`` (one of :data:`GATE_RULES`), or ``None`` if it is not gated.

    Example:
        >>> gate_rule_of(nn.ReLU()), gate_rule_of(nn.GELU()), gate_rule_of(nn.Sigmoid()), gate_rule_of(nn.Linear(2, 2))
        ('rectifier', 'self_gated', None, None)
    """
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    if isinstance(module, gelu_types()):
        return "self_gated"
    return _probed_rule(module)


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
    """The activation classes FEI gates by class: the registered ones and :func:`gelu_types`.

    Other classes are recognised by what their modules compute (see the module text, :func:`gate_rule_of`).

    Example:
        >>> nn.ReLU in gated_types(), nn.SiLU in gated_types(), nn.Sigmoid in gated_types()
        (True, True, False)
    """
    registered = tuple(cls for cls, rule in _REGISTRY.items() if rule is not None)
    return (*registered, *(cls for cls in gelu_types() if cls not in registered))


def _probed_rule(module: nn.Module) -> str | None:
    """The family of a parameter-free leaf module, from what its ``forward`` computes on :data:`_PROBE`."""
    if isinstance(module, torch.jit.ScriptModule) or next(module.children(), None) is not None:
        return None
    if next(module.parameters(), None) is not None or next(module.buffers(), None) is not None:
        return None
    z = _PROBE.view(1, 1, 1, -1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The class's forward, not the module's __call__: no hooks of the user's (or ours) see the probe.
            out = type(module).forward(module, z.clone())
    except Exception:  # noqa: BLE001 - whatever cannot take a plain tensor is no elementwise activation
        return None
    if not isinstance(out, Tensor) or out.shape != z.shape or not out.is_floating_point():
        return None
    f = out.detach().to(torch.float32).flatten()
    if not bool(torch.isfinite(f).all()):
        return None
    if _is_rectifier(f):
        return "rectifier"
    return "self_gated" if _is_self_gated(f) else None


def _is_rectifier(f: Tensor) -> bool:
    """``f`` is ``z`` above 0 (up to a cap of 6 or more) and ``slope * z`` below, with ``0 <= slope < 1``."""
    z = _PROBE
    slope = float(-f[z == -1])
    if not 0 <= slope < 1:
        return False
    expected = torch.where(z > 0, z, slope * z)
    capped = torch.where(z > 6, torch.full_like(z, 6.0), expected)
    return any(bool(torch.allclose(f, e, atol=_TOLERANCE, rtol=0)) for e in (expected, capped))


def _is_self_gated(f: Tensor) -> bool:
    """``f(z) = z * s(z)`` with ``s`` non-decreasing in [0, 1], below 0.02 at ``z = -8`` and above 0.98 at 8."""
    z = _PROBE
    if abs(float(f[z == 0])) > _TOLERANCE:
        return False
    s = f[z != 0] / z[z != 0]
    in_range = bool((s >= -_TOLERANCE).all() and (s <= 1 + _TOLERANCE).all())
    rising = bool((s.diff() >= -_TOLERANCE).all())
    return in_range and rising and float(s[0]) < 0.02 and float(s[-1]) > 0.98
