"""Kinds of model input: images, tabular features, token ids, and any kind a user registers.

Everything that differs between modalities lives here, one file per kind (:mod:`~lit_attr.inputs.images`,
:mod:`~lit_attr.inputs.tabular`, :mod:`~lit_attr.inputs.text` with :mod:`~lit_attr.inputs.tokens` and
:mod:`~lit_attr.inputs.embedding`), behind the protocol of :mod:`~lit_attr.inputs.base`: the space methods work in,
the positions held fixed, the games' units and substrates, and the rendering of maps. ``input_kind(x)`` finds a
batch's kind; kinds registered with :func:`register_input_kind` are asked before the built-in ones.
"""

from lit_attr.inputs.base import (
    CONTINUOUS,
    ContinuousKind,
    InputKind,
    available_input_kinds,
    available_substrates,
    get_input_kind,
    input_kind,
    register_input_kind,
    unregister_input_kind,
)
from lit_attr.inputs.images import Images
from lit_attr.inputs.space import MethodCall, Rendering, Space
from lit_attr.inputs.tabular import Tabular, Tensors
from lit_attr.inputs.text import Tokens
from lit_attr.inputs.tokens import TokenOptions

# Built-in kinds, in the order they are asked (after the users'): token ids, images, features, any float batch.
for _kind in (Tokens, Images, Tabular, Tensors):
    register_input_kind(_kind, built_in=True)

__all__ = [
    "CONTINUOUS",
    "ContinuousKind",
    "Images",
    "InputKind",
    "MethodCall",
    "Rendering",
    "Space",
    "Tabular",
    "Tensors",
    "TokenOptions",
    "Tokens",
    "available_input_kinds",
    "available_substrates",
    "get_input_kind",
    "input_kind",
    "register_input_kind",
    "unregister_input_kind",
]
