"""Context managers that keep a user's model and global state exactly as they were.

Every attribution method runs inside :func:`preserved_model_state` and :func:`preserved_rng_state`, so that
explaining a model can never leak into training: modes, parameter gradients, ``requires_grad`` flags, buffers
(BatchNorm running statistics) and the global random number generators are restored on exit, even when the
method raises. :func:`row_seed` gives each sample its own seed, so that random draws never depend on the batch.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn


@contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode and restore every piece of its state afterwards.

    Parameters stop requiring gradients for the duration, so a backward pass through the model computes
    gradients with respect to the inputs only (and is cheaper). Buffers are snapshotted and copied back, which
    also undoes any statistics update a method might trigger. Hooks and attributes that appear on a module
    during the block are removed, so a method interrupted between registering and removing them (Captum's
    DeepLift stores ``input``/``output`` on every ReLU until its backward pass) leaves nothing behind.

    Args:
        model: the module to protect.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> with preserved_model_state(net):
        ...     assert not net.training
        >>> net.training
        True
    """
    modes = [(module, module.training) for module in model.modules()]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    attributes = [(module, set(vars(module))) for module in model.modules()]
    hooks = [(table, set(table)) for module in model.modules() for table in _hook_tables(module)]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        for p, flag, grad in zip(params, requires_grad, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        with torch.no_grad():
            for buffer, saved in buffers:
                if buffer.shape == saved.shape:
                    buffer.copy_(saved)
        for table, keys in hooks:
            for key in set(table) - keys:
                del table[key]
        for module, names in attributes:
            for name in set(vars(module)) - names:
                delattr(module, name)


def _hook_tables(module: nn.Module) -> list[dict]:
    """The module's hook registries (``_forward_hooks``, ``_forward_hooks_with_kwargs``, ...), keyed by handle id."""
    return [value for name, value in vars(module).items() if "hooks" in name and isinstance(value, dict)]


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore the global torch (CPU and initialised CUDA devices), NumPy and Python RNG states on exit.

    Third-party code (Captum draws noise and baselines from the global generators) may consume random numbers;
    the user's training must not see the difference.

    Example:
        >>> before = torch.get_rng_state()
        >>> with preserved_rng_state():
        ...     _ = torch.rand(3)
        >>> torch.equal(before, torch.get_rng_state())
        True
    """
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)


def seed_everything_locally(seed: int) -> None:
    """Seed the global torch, NumPy and Python generators (only ever call inside :func:`preserved_rng_state`)."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def row_seed(seed: int, row: Tensor) -> int:
    """A seed derived from ``seed`` and a sample's values, so a sample's random draws do not depend on its batch."""
    return seed + zlib.crc32(row.detach().cpu().contiguous().numpy().tobytes())


def keyed_draws(keys: Iterable[Tensor], n: int, seed: int, draw: Callable[..., Tensor]) -> Tensor:
    """``draw((n, *key.shape), generator)`` for every key, from a CPU generator seeded by ``row_seed(seed, key)``.

    The draws of every key, concatenated: a sample's draws depend on its values (the key) and the seed alone.

    Example:
        >>> keys = torch.zeros(2, 3)
        >>> draws = keyed_draws(keys, 4, 0, lambda shape, g: torch.rand(shape, generator=g))
        >>> draws.shape, torch.equal(draws[:4], draws[4:])
        (torch.Size([8, 3]), True)
    """
    return torch.cat([draw((n, *key.shape), torch.Generator().manual_seed(row_seed(seed, key))) for key in keys])
