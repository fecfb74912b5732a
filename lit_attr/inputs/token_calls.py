"""Calling a model on token ids: its forward's keywords, the extra model inputs by name, and the length layout.

Models are called as ``model(input_ids, attention_mask=..., **model_inputs)`` with each keyword where the forward
names it; Hugging Face outputs (``SequenceClassifierOutput``) are reduced to their ``logits``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["call_model", "forward_parameters", "length_groups", "real_positions", "split_model_inputs"]


def forward_parameters(fn: Callable[..., Any]) -> frozenset[str]:
    """The keywords the forward of ``fn`` names (``**kwargs`` does not count: an unknown name is not guessed).

    Example:
        >>> sorted(forward_parameters(lambda input_ids, attention_mask=None: input_ids))
        ['attention_mask', 'input_ids']
    """
    target = fn.forward if isinstance(fn, nn.Module) else fn
    # The function, not a bound method: the cache must not keep models alive.
    return _parameters(getattr(target, "__func__", target))


@functools.lru_cache(maxsize=256)
def _parameters(target: Callable[..., Any]) -> frozenset[str]:
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def call_model(
    fn: Callable[..., Any], input_ids: Tensor, attention_mask: Tensor | None = None, **model_inputs: Tensor
) -> Tensor:
    """Logits ``(N, K)`` of ``fn`` on token ids, passing ``attention_mask`` where the forward takes it.

    ``model_inputs`` (``token_type_ids``, ``position_ids``, ...) go to the forward by name; one it does not name is an
    error. Hugging Face outputs are reduced to their ``logits``; anything else that is not a tensor ``(N, K)`` is an
    error.

    Example:
        >>> net = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 3))
        >>> call_model(net, torch.tensor([[1, 2]])).shape
        torch.Size([1, 3])
    """
    accepted = forward_parameters(fn)
    unknown = sorted(set(model_inputs) - accepted)
    if unknown:
        raise ValueError(
            f"The model's forward does not take {unknown} (it names {sorted(accepted)}); leave these inputs out or "
            "pass `forward_fn=` taking them."
        )
    if attention_mask is not None and "attention_mask" in accepted:
        model_inputs = {**model_inputs, "attention_mask": attention_mask.long()}
    out = fn(input_ids, **model_inputs)
    if not isinstance(out, Tensor):
        out = getattr(out, "logits", out)
        if isinstance(out, dict) and "logits" in out:
            out = out["logits"]
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != input_ids.shape[0]:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"The model must return logits (N, K) = ({input_ids.shape[0]}, K) for token ids, or an output with a "
            f"`logits` field, got {shape}. Pass `forward_fn=` mapping (input_ids, attention_mask) to logits."
        )
    return out


def split_model_inputs(
    fields: Mapping[str, Tensor], n: int, length: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Extra model inputs of ``n`` sequences of ``length``: ``(per token (n, length, ...), per sample (n, ...))``."""
    per_token = {k: v for k, v in fields.items() if v.ndim >= 2 and tuple(v.shape[:2]) == (n, length)}
    return per_token, {k: v for k, v in fields.items() if k not in per_token}


# ----------------------------------------------------------------------------------------------------- layout
def length_groups(attended: Tensor) -> Iterator[tuple[int, Tensor]]:
    """``(length, sample indices)`` of the samples with each number of real tokens, shortest first."""
    lengths = attended.sum(dim=1)
    for length in torch.unique(lengths).tolist():
        yield int(length), (lengths == length).nonzero().flatten()


def real_positions(attended: Tensor, samples: Tensor, length: int) -> Tensor:
    """``(n, length)`` positions of the real tokens of ``samples``, which all have ``length`` of them, in order."""
    return attended[samples].nonzero()[:, 1].view(samples.numel(), length)


def sentence_groups(
    ids: Tensor, attended: Tensor, model_inputs: Mapping[str, Tensor]
) -> Iterator[tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]]:
    """``(samples, positions, ids, model inputs)`` of every length group, each sentence cut to its real tokens.

    The sentences of a group keep their real tokens in order from position 0 (as right padding does), so no forward
    of a group sees padding; per-token model inputs are cut to the same positions, per-sample ones follow the rows.

    Example:
        >>> ids, attended = torch.tensor([[5, 6, 0], [7, 8, 9]]), torch.tensor([[1, 1, 0], [1, 1, 1]])
        >>> [(samples.tolist(), cut.tolist()) for samples, _, cut, _ in sentence_groups(ids, attended, {})]
        [([0], [[5, 6]]), ([1], [[7, 8, 9]])]
    """
    per_token, per_sample = split_model_inputs(model_inputs, *ids.shape)
    for length, samples in length_groups(attended):
        positions = real_positions(attended, samples, length)
        fields = {key: value[samples[:, None], positions] for key, value in per_token.items()}
        fields.update({key: value[samples] for key, value in per_sample.items()})
        yield samples, positions, ids[samples[:, None], positions], fields
