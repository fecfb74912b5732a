"""Attribution methods behind one contract; see :func:`get_method` and :func:`available_methods`."""

import warnings
from typing import Any

from lit_attr.methods import captum as _captum  # noqa: F401  (registers the Captum baselines)
from lit_attr.methods._independence import InputIndependenceWarning
from lit_attr.methods.agi import AGI
from lit_attr.methods.attention import AttentionRollout, GenericAttention
from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.big import BIG
from lit_attr.methods.captum import CaptumMethod
from lit_attr.methods.fei import FEI
from lit_attr.methods.fei_activations import register_activation
from lit_attr.methods.ig2 import IG2
from lit_attr.methods.mfaba import MFABA
from lit_attr.methods.perturbation import FeatureAblationMethod, KernelShapMethod
from lit_attr.methods.registry import available_methods, get_method, register_method
from lit_attr.methods.text_attention import TextAttentionRollout

__all__ = [
    "AGI",
    "BIG",
    "FEI",
    "IG2",
    "MFABA",
    "AttentionRollout",
    "AttributionMethod",
    "CaptumMethod",
    "FeatureAblationMethod",
    "GenericAttention",
    "InputIndependenceWarning",
    "KernelShapMethod",
    "TextAttentionRollout",
    "available_methods",
    "get_method",
    "register_activation",
    "register_method",
]

#: Names that moved: importing them from here still works, with a DeprecationWarning saying where they went.
_MOVED = {
    "TokenOptions": ("lit_attr.inputs.TokenOptions", lambda: __import__("lit_attr.inputs").inputs.TokenOptions),
    # Every method whose `raw_inputs_only` is empty takes token ids; this was the fixed list of the built-in ones.
    "TOKEN_METHODS": (
        "the methods whose `raw_inputs_only` is empty (every method written to the contract takes token ids)",
        lambda: ("saliency", "input_x_gradient", "integrated_gradients", "mfaba", "ig2", "fei"),
    ),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        where, value = _MOVED[name]
        warnings.warn(f"lit_attr.methods.{name} is deprecated; use {where}.", DeprecationWarning, stacklevel=2)
        return value()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
