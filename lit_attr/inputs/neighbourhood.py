"""The continuous neighbourhood of a batch: where robustness and invariance metrics move samples and explain them.

Local Lipschitz, average sensitivity, continuity, relative stability and input invariance compare a method's maps at
nearby or shifted points. What a point is belongs to the input kind (:meth:`~lit_attr.inputs.InputKind.neighbourhood`):

* a continuous kind's points are its inputs: a sample moves by an offset (clipped to the method's ``input_bounds``)
  and a shift of every input is undone by a copy of the method whose model takes it off first (Kindermans et al.);
* token ids have no continuous change of their own; their points are the token embeddings that every method
  attributes in (:mod:`lit_attr.inputs.token_neighbourhood`).

Random draws are keyed by each sample's own values (its real token ids), so a sample moves alike in any batch and
under any padding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lit_attr._checks import check_number
from lit_attr._hygiene import keyed_draws, preserved_model_state

__all__ = ["Moved", "Neighbourhood", "Sampler", "shifted_method"]

#: ``draw(shape, generator)``: float64 random values (``torch.rand`` or ``torch.randn`` with a generator).
Sampler = Callable[[tuple[int, ...], torch.Generator], Tensor]


class Moved(NamedTuple):
    """Rows of a batch moved in its neighbourhood.

    Attributes:
        inputs: what ``attribute`` and the model take for them (the moved inputs, or the same token ids).
        kwargs: ``attribute``'s keywords for them (token ids: the offset and the rows' masks and model inputs).
        points: ``(rows, *P)`` the moved points (clipped), in the space of :attr:`Neighbourhood.points`.
        rows: ``(rows,)`` the samples (positions in the batch) they are moves of.
    """

    inputs: Tensor
    kwargs: dict[str, Any]
    points: Tensor
    rows: Tensor

    def part(self, start: int, stop: int) -> Moved:
        """Rows ``start:stop`` of these moves (every keyword holds one entry per row)."""
        kwargs = {key: value[start:stop] for key, value in self.kwargs.items()}
        return Moved(self.inputs[start:stop], kwargs, self.points[start:stop], self.rows[start:stop])


class _Shifted:
    """``forward(z - shift)``: a model that undoes a constant shift of its inputs (picklable)."""

    def __init__(self, forward: Callable[[Tensor], Tensor], shift: float) -> None:
        self.forward = forward
        self.shift = shift

    def __call__(self, z: Tensor) -> Tensor:
        return self.forward(z - self.shift)


def shifted_method(method: Any, shift: float) -> Any:
    """A copy of ``method`` whose model sees inputs shifted by ``shift`` and undoes the shift first.

    Kindermans et al. absorb the shift into the first layer's bias; undoing it before the model is the same function
    for any architecture. The copy shares the method's model (read, never changed: its forward is wrapped, so the
    copy follows the model's current weights) and its ``input_bounds`` move with the inputs.

    Example:
        >>> from torch import nn
        >>> from lit_attr.methods import get_method
        >>> net = nn.Linear(3, 2)
        >>> shifted = shifted_method(get_method("saliency", net, input_bounds=(0.0, 1.0)), -1.0)
        >>> shifted.input_bounds, torch.allclose(shifted.forward_fn(torch.zeros(1, 3) - 1), net(torch.zeros(1, 3)))
        ((-1.0, 0.0), True)
    """
    shift = check_number("shift", shift)
    # Everything the method holds is copied (Captum's objects are bound to the copy) except the model itself.
    copied = copy.deepcopy(method, memo={id(method.model): method.model})
    copied.forward_fn = _Shifted(copied.forward_fn, shift)
    if copied.input_bounds is not None:
        copied.input_bounds = tuple(bound + shift for bound in copied.input_bounds)
    return copied


class Neighbourhood:
    """The samples of a continuous batch as points (the inputs themselves), moved and shifted for a method.

    Args:
        method: the attribution method (its ``clip``, ``forward_fn`` and model).
        x: ``(N, ...)`` the batch.

    Example:
        >>> from torch import nn
        >>> from lit_attr.methods import get_method
        >>> hood = Neighbourhood(get_method("saliency", nn.Linear(3, 2), input_bounds=(0.0, 1.0)), torch.ones(1, 3))
        >>> hood.move(torch.tensor([0]), torch.full((1, 3), 0.5)).points
        tensor([[1., 1., 1.]])
    """

    def __init__(self, method: Any, x: Tensor) -> None:
        self.method = method
        self.x = x
        #: ``(N, *P)`` the samples as points.
        self.points = x
        #: ``(N,)`` the unit of a sample's noise (1: input units).
        self.scale = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)

    def fields(self, rows: Tensor) -> dict[str, Any]:
        """``attribute``'s keywords of these rows besides the inputs (none for a continuous kind)."""
        return {}

    def draws(self, rows: Tensor, n: int, seed: int, sampler: Sampler) -> Tensor:
        """``(rows * n, *P)`` float64 draws, ``n`` per row in place, from a generator keyed by the sample's values."""
        return keyed_draws(self.x[rows], n, seed, sampler).to(self.points.device)

    def move(self, rows: Tensor, offsets: Tensor) -> Moved:
        """Rows ``rows`` (repeats allowed) moved by ``offsets`` ``(rows, *P)``, clipped to the method's bounds."""
        moved = self.method.clip(self.points[rows] + offsets)
        return Moved(moved, {}, moved, rows)

    def logits(self, moved: Moved, record: Callable[[Tensor], None] | None = None) -> Tensor:
        """The model's logits at moved rows (no gradient; the model's state restored).

        ``record(rows)`` is called after every forward with the rows (of ``moved``) it ran, so that a hook installed
        by the caller reads what that forward computed; here one forward runs them all.
        """
        with torch.no_grad(), preserved_model_state(self.method.model):
            out = getattr(self.method, "forward_fn", self.method.model)(moved.inputs)
        if record is not None:
            record(torch.arange(moved.inputs.shape[0], device=out.device))
        return out

    def unmoved(self) -> Moved:
        """The batch as it is, as moves."""
        rows = torch.arange(self.x.shape[0], device=self.x.device)
        return Moved(self.x, self.fields(rows), self.points, rows)

    def clean_logits(self) -> Tensor:
        """The model's logits of the batch as it is."""
        return self.logits(self.unmoved())

    def shifted(self, shift: float) -> tuple[Any, Tensor, dict[str, Any]]:
        """``(method, inputs, keywords)`` that explain every input shifted by ``shift`` for a model undoing it."""
        return shifted_method(self.method, shift), self.x + shift, {}
