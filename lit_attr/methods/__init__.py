"""Attribution methods behind one contract; see :func:`get_method` and :func:`available_methods`."""

from lit_attr.methods import captum as _captum  # noqa: F401  (registers the Captum baselines)
from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.captum import CaptumMethod
from lit_attr.methods.registry import available_methods, get_method, register_method

__all__ = ["AttributionMethod", "CaptumMethod", "available_methods", "get_method", "register_method"]
