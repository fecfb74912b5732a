"""Attribution methods behind one contract; see :func:`get_method` and :func:`available_methods`."""

from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods import captum as _captum  # noqa: F401  (registers the Captum baselines)
from lit_attr.methods._tokens import TOKEN_METHODS
from lit_attr.methods.agi import AGI
from lit_attr.methods.attention import AttentionRollout, GenericAttention
from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.big import BIG
from lit_attr.methods.captum import CaptumMethod
from lit_attr.methods.fei import FEI
from lit_attr.methods.ig2 import IG2
from lit_attr.methods.mfaba import MFABA
from lit_attr.methods.registry import available_methods, get_method, register_method

__all__ = [
    "AGI",
    "TOKEN_METHODS",
    "BIG",
    "FEI",
    "IG2",
    "MFABA",
    "AttentionRollout",
    "AttributionMethod",
    "CaptumMethod",
    "GenericAttention",
    "TokenOptions",
    "available_methods",
    "get_method",
    "register_method",
]
