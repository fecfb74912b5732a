"""What a model's structure says about the methods that can explain it, read without running it.

:func:`~lit_attr.methods.available_methods` lists a method for a model only if the method's ``applies_to`` predicate
(given to :func:`~lit_attr.methods.register_method`) accepts the model. The predicates shared by several methods live
here; each reads module types, attributes and the source of ``forward`` methods, and never calls the model.
"""

from __future__ import annotations

import functools
import inspect
import re

from torch import nn

from lit_attr.methods.text_attention import text_encoder

__all__ = ["has_linear", "reused_modules", "takes_raw_inputs", "takes_token_ids"]

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def takes_token_ids(model: nn.Module) -> bool:
    """Whether ``model`` classifies token ids.

    It does when it holds a Hugging Face text encoder, or an ``nn.Embedding`` and no convolution (a plain PyTorch text
    model; vision models embed patches with a convolution).

    Example:
        >>> takes_token_ids(nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2)))
        True
        >>> takes_token_ids(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 2)))
        False
    """
    if text_encoder(model) is not None:
        return True
    modules = list(model.modules())
    return any(isinstance(m, nn.Embedding) for m in modules) and not any(isinstance(m, _CONVOLUTIONS) for m in modules)


def takes_raw_inputs(model: nn.Module) -> bool:
    """Whether ``model`` is explained on its raw float inputs (images, features), not on token ids.

    Methods whose radii, noise or patches are in input units (``raw_inputs_only``) apply to these models only.

    Example:
        >>> takes_raw_inputs(nn.Linear(3, 2))
        True
    """
    return not takes_token_ids(model)


def has_linear(model: nn.Module) -> bool:
    """Whether ``model`` holds an ``nn.Linear`` (IG2's default representation is the input of the last one).

    Example:
        >>> has_linear(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten())), has_linear(nn.Linear(2, 2))
        (False, True)
    """
    return any(isinstance(m, nn.Linear) for m in model.modules())


def reused_modules(model: nn.Module, types: type | tuple[type, ...]) -> list[str]:
    """Names of the modules of ``types`` that one forward may call more than once, as far as the structure shows.

    A module counts as reused when it is registered under several names, or when the ``forward`` source of its
    parent names it (``self.<name>(``) more than once, as torchvision's ResNet blocks do with their ``relu``. Captum's
    DeepLift stores one input per module and fails on such modules. Calls in a loop are not seen.

    Example:
        >>> import torchvision
        >>> reused_modules(torchvision.models.resnet18(), nn.ReLU)[:2]
        ['layer1.0.relu', 'layer1.1.relu']
    """
    seen: dict[int, str] = {}
    reused: list[str] = []
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, types) and id(module) in seen and seen[id(module)] not in reused:
            reused.append(seen[id(module)])
        seen.setdefault(id(module), name)
    for parent_name, parent in model.named_modules():
        children = [child for child, module in parent.named_children() if isinstance(module, types)]
        counts = _self_calls(type(parent), tuple(children))
        prefix = f"{parent_name}." if parent_name else ""
        reused.extend(f"{prefix}{child}" for child in children if counts.get(child, 0) > 1)
    return list(dict.fromkeys(reused))


@functools.lru_cache(maxsize=512)
def _self_calls(cls: type, children: tuple[str, ...]) -> dict[str, int]:
    """How often the source of ``cls.forward`` calls ``self.<child>(`` for each child name (empty without source)."""
    if not children or cls.forward is nn.Module.forward:
        return {}
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return {}
    return {child: len(re.findall(rf"\bself\.{re.escape(child)}\s*\(", source)) for child in children}
