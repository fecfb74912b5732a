"""Batches as lit-attr reads them: one adapter for the callbacks, ``evaluate`` and the runner.

A user's dataloader may yield a tensor, a tuple or a dict; :func:`default_batch_adapter` turns each of the
common forms into a :class:`Batch` of inputs, labels and ground-truth masks, and a ``batch_adapter`` callable
handles anything else. Every orchestrator (``AttributionMonitor``, ``RandomizationCheck``, ``evaluate``,
``AttributionRunner``) reads batches through :func:`adapt_batch`, so they all accept the same forms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from lit_attr._checks import check_labels
from lit_attr.inputs import InputKind, input_kind
from lit_attr.inputs.tokens import forward_parameters

__all__ = ["INPUT_KEYS", "LABEL_KEYS", "MASK_KEYS", "Batch", "BatchAdapter", "adapt_batch", "default_batch_adapter"]

#: Dict keys that hold the inputs, labels and ground-truth masks, in the order they are looked up. Token batches
#: as Hugging Face data collators produce them (``input_ids``, ``attention_mask``, ``labels``, ``rationale_mask``,
#: ``special_tokens_mask``) are read as they are.
INPUT_KEYS: tuple[str, ...] = ("image", "images", "input", "inputs", "x", "pixel_values", "input_ids")
LABEL_KEYS: tuple[str, ...] = ("label", "labels", "target", "targets", "y")
MASK_KEYS: tuple[str, ...] = ("mask", "masks", "rationale_mask", "rationale")

BatchAdapter = Callable[[Any], Any]


@dataclass(frozen=True)
class Batch:
    """Inputs, labels (or None) and ground-truth masks (or None) of some samples, first dimension N.

    For token inputs, ``x`` holds the token ids ``(N, L)``, ``mask`` the rationale marks ``(N, L)``, and
    ``attention_mask`` (1 on real tokens, 0 on padding) and ``special_tokens_mask`` (1 on [CLS], [SEP], ...) the
    collator's masks; ``model_inputs`` holds the batch's other inputs of the model by name (``token_type_ids`` of
    sentence pairs, ``position_ids``, ...). The runner passes them to the model, the methods and the metrics that
    take them.

    Example:
        >>> batch = Batch(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2]))
        >>> batch.select([2]).y
        tensor([2])
    """

    x: Tensor
    y: Tensor | None = None
    mask: Tensor | None = None
    attention_mask: Tensor | None = None
    special_tokens_mask: Tensor | None = None
    model_inputs: Mapping[str, Tensor] | None = None

    @property
    def kind(self) -> InputKind:
        """The kind of the inputs (:func:`lit_attr.inputs.input_kind`): images, tabular, tokens, or a user's."""
        return input_kind(self.x)

    @property
    def tokens(self) -> bool:
        """Whether ``x`` holds token ids (an integer tensor) rather than float inputs (prefer :attr:`kind`)."""
        return not (self.x.is_floating_point() or self.x.is_complex())

    def fields(self) -> dict[str, Tensor]:
        """The batch's inputs besides ``x``: the token masks of token batches and the other model inputs by name."""
        masks = {"attention_mask": self.attention_mask, "special_tokens_mask": self.special_tokens_mask}
        return {**{key: value for key, value in masks.items() if value is not None}, **(self.model_inputs or {})}

    def __len__(self) -> int:
        return self.x.shape[0]

    def select(self, rows: Sequence[int] | Tensor) -> Batch:
        """The samples at ``rows`` (positions in this batch)."""
        index = torch.as_tensor(rows, dtype=torch.long) if not isinstance(rows, Tensor) else rows.long()
        return self._map(lambda t: t[index.to(t.device)])

    def to(self, device: torch.device | str) -> Batch:
        """Every tensor moved to ``device``."""
        return self._map(lambda t: t.to(device))

    def logits(self, model: Callable[..., Any]) -> Tensor:
        """The model's output on ``x``, called as the methods call it.

        The input kind calls it (token ids go in with the attention mask where the forward takes one, and a Hugging
        Face output is reduced to its ``logits``).

        Example:
            >>> Batch(torch.ones(2, 3)).logits(torch.nn.Linear(3, 4)).shape
            torch.Size([2, 4])
        """
        return self.kind.model_logits(model, self.x, self.fields())

    def method_inputs(self, model: Callable[..., Any] | None = None) -> dict[str, Tensor]:
        """Keyword inputs of ``AttributionMethod.attribute`` besides ``x``: the batch's :meth:`fields`.

        Given the ``model``, only the model inputs its forward names go with the masks (a batch may carry others,
        such as a dataset index).
        """
        if model is None or not self.model_inputs:
            return self.fields()
        names = forward_parameters(model)
        return {key: value for key, value in self.fields().items() if key in names or key not in self.model_inputs}

    def with_inputs(self, x: Tensor) -> Batch:
        """The same samples with other inputs (e.g. converted to the Trainer's precision)."""
        return replace(self, x=x)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        """The batch with ``fn`` applied to every tensor (those of ``model_inputs`` too)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model_inputs"}
        mapped = {name: None if value is None else fn(value) for name, value in values.items()}
        inputs = None if self.model_inputs is None else {key: fn(value) for key, value in self.model_inputs.items()}
        return Batch(**mapped, model_inputs=inputs)


def default_batch_adapter(batch: Any) -> Batch:
    """Read a collated batch: a tensor ``x``; a tuple/list ``(x,)``, ``(x, y)`` or ``(x, y, mask)``; a dict; a Batch.

    A dict holds the inputs under one of :data:`INPUT_KEYS`, labels under one of :data:`LABEL_KEYS` and masks under
    one of :data:`MASK_KEYS` (all but the inputs optional); its ``attention_mask`` and ``special_tokens_mask`` are
    read as they are, and every other tensor with one row per sample (``token_type_ids``, ...) is kept in
    ``model_inputs``.

    Args:
        batch: a batch as the dataloader yields it.

    Returns:
        The batch as a :class:`Batch`.

    Raises:
        TypeError: for any other form (pass ``batch_adapter=`` then).

    Example:
        >>> default_batch_adapter({"image": torch.zeros(2, 3), "label": torch.tensor([0, 1])}).y
        tensor([0, 1])
    """
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, Tensor):
        return Batch(batch)
    if isinstance(batch, Mapping):
        x = _first_key(batch, INPUT_KEYS)
        if x is None:
            raise TypeError(
                f"A dict batch needs its inputs under one of {list(INPUT_KEYS)}, got keys {sorted(map(str, batch))}; "
                "pass `batch_adapter=lambda batch: (x, y, mask)`."
            )
        known = {*INPUT_KEYS, *LABEL_KEYS, *MASK_KEYS, "attention_mask", "special_tokens_mask"}
        others = {
            key: value
            for key, value in batch.items()
            if key not in known and isinstance(value, Tensor) and value.ndim and value.shape[0] == len(x)
            and isinstance(x, Tensor)
        }
        return Batch(
            x,
            _first_key(batch, LABEL_KEYS),
            _first_key(batch, MASK_KEYS),
            batch.get("attention_mask"),
            batch.get("special_tokens_mask"),
            others or None,
        )
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3 and all(isinstance(t, Tensor) for t in batch):
        x, y, mask = (*batch, None, None)[:3]
        return Batch(x, y, mask)
    raise TypeError(
        f"Cannot read a batch of type {type(batch).__name__} (expected a tensor, (x, y), (x, y, mask) or a dict with "
        "'image'/'label'/'mask' keys); pass `batch_adapter=lambda batch: (x, y, mask)`."
    )


def adapt_batch(batch: Any, adapter: BatchAdapter | None = None) -> Batch:
    """Run ``adapter`` (or :func:`default_batch_adapter`) on ``batch`` and check and normalise what it returned.

    Labels become an ``(N,)`` long tensor and masks an ``(N, H, W)`` bool tensor, both detached, like the inputs.

    Args:
        batch: a collated batch.
        adapter: a callable returning ``x``, ``(x, y)`` or ``(x, y, mask)`` (y and mask may be None), or None.

    Raises:
        TypeError: if the adapter returns anything else.
        ValueError: for float labels with a fraction (:func:`lit_attr._checks.check_labels`).

    Example:
        >>> adapt_batch((torch.zeros(2, 1, 3, 3), torch.tensor([[1], [0]]))).y
        tensor([1, 0])
    """
    if adapter is None:
        read = default_batch_adapter(batch)
    else:
        out = adapter(batch)
        if isinstance(out, Batch):
            read = out
        else:
            if isinstance(out, Tensor):
                out = (out,)
            if not isinstance(out, (tuple, list)) or not 1 <= len(out) <= 3:
                raise TypeError(
                    f"`batch_adapter` must return x, (x, y) or (x, y, mask) with tensors (y and mask may be None), "
                    f"got {type(out).__name__}."
                )
            read = Batch(*(*out, None, None)[:3])
    if not isinstance(read.x, Tensor) or any(t is not None and not isinstance(t, Tensor) for t in (read.y, read.mask)):
        raise TypeError("`batch_adapter` must return tensors (or None for the labels and masks).")
    mask = None if read.mask is None else read.kind.ground_truth(read.mask.detach().bool(), read.x)
    return Batch(
        read.x.detach(),
        None if read.y is None else check_labels("labels", read.y),
        mask,
        None if read.attention_mask is None else read.attention_mask.detach(),
        None if read.special_tokens_mask is None else read.special_tokens_mask.detach(),
        None if not read.model_inputs else {key: value.detach() for key, value in read.model_inputs.items()},
    )


def _first_key(batch: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((batch[key] for key in keys if key in batch), None)
