"""Relative stability (Agarwal et al. 2022): the relative change of the map over that of the input, logits or a layer.

RIS divides by the relative change of the input (of its points: token ids move their embeddings), ROS by the change
of the logits, RRS by the relative change of an internal representation, each over the perturbed copies that keep the
sample's prediction. The copies are those of :mod:`lit_attr.functional.robustness` (the same draws, neighbourhood,
chunks and back-off); its forwards of the clean and moved rows run in chunks that back off too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_names, check_number
from lit_attr._memory import MemoryBackoff
from lit_attr.functional.infidelity import Explainer
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE
from lit_attr.functional.robustness import _neighbours, _norm, _prepare
from lit_attr.functional.unit_games import batch_fields
from lit_attr.inputs.neighbourhood import Moved, Neighbourhood

__all__ = ["STABILITIES", "relative_stability"]

#: The variants of :func:`relative_stability`: the input's, the logits' and the representation's relative change.
STABILITIES = ("input", "output", "representation")


class _Capture:
    """The input of ``layer`` in the last forward (a forward pre-hook's target)."""

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0].detach()


class _Outputs:
    """The model's logits at moved rows in chunks that back off, with the ``capture``d representation of every row.

    A neighbourhood may run a chunk's rows in several forwards (token ids: one per sentence length); the
    representation each forward captured is kept per row, and rows of different shapes (a per-token layer's input
    for sentences of other lengths) are padded with zeros, which add nothing to a relative change.
    """

    def __init__(self, hood: Neighbourhood, capture: _Capture | None) -> None:
        self.hood = hood
        self.capture = capture

    def __call__(
        self, moved: Moved, backoff: MemoryBackoff, shape: tuple[int, ...] | None = None
    ) -> tuple[Tensor, Tensor | None]:
        logits: list[Tensor] = []
        captured: list[tuple[Tensor, Tensor]] = []  # (rows of ``moved``, their representations) per forward

        def body(start: int, stop: int) -> None:
            found: list[tuple[Tensor, Tensor]] = []

            def record(group: Tensor) -> None:
                if self.capture is not None:
                    assert self.capture.value is not None  # the layer ran in that forward
                    found.append((start + group, self.capture.value))

            logits.append(self.hood.logits(moved.part(start, stop), record))
            captured.extend(found)  # a chunk that runs out of memory keeps nothing: it is run again

        backoff.chunks(moved.inputs.shape[0], body)
        if self.capture is None:
            return torch.cat(logits), None
        return torch.cat(logits), _padded(moved.inputs.shape[0], captured, shape)


def _padded(n: int, captured: list[tuple[Tensor, Tensor]], shape: tuple[int, ...] | None) -> Tensor:
    """``(n, *shape)``: each forward's rows in place, zero-padded at the end of each dimension (default: largest)."""
    if shape is None:
        shape = tuple(max(sizes) for sizes in zip(*(value.shape[1:] for _, value in captured), strict=True))
    out = captured[0][1].new_zeros(n, *shape)
    for rows, value in captured:
        out[(rows.to(out.device), *(slice(0, size) for size in value.shape[1:]))] = value
    return out


def _default_layer(model: nn.Module) -> nn.Module:
    linear = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(
            "relative_stability's 'representation' variant needs a `layer` (a module name of the model) when the "
            "model has no nn.Linear head; pass layer='...' or drop 'representation' from `variants`."
        )
    return linear[-1]


def relative_stability(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    attributions: Tensor | None = None,
    variants: str | Sequence[str] = STABILITIES,
    layer: str | None = None,
    n_perturb_samples: int = 10,
    noise: float = 0.05,
    distribution: str = "gaussian",
    order: float = 2.0,
    eps_min: float = 1e-6,
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Relative input, output and representation stability of Agarwal et al. (2022) per sample: lower is better.

    With ``e = ||(A(x) - A(x')) / A(x)||_p`` (element-wise relative change of the map; a zero entry of ``A(x)``
    divides by ``eps_min``), ``RIS = max e / max(||(x - x') / x||_p, eps_min)``, ``ROS = max e / max(||h(x) -
    h(x')||_p, eps_min)`` with ``h`` the logits, ``RRS = max e / max(||(L(x) - L(x')) / L(x)||_p, eps_min)`` with
    ``L`` the input of ``layer`` (default: of the model's last ``nn.Linear``, what its head sees). The maximum runs
    over the copies that keep the prediction of ``x`` (the paper's neighbourhood; a sample without one has no value,
    NaN). The copies are Gaussian (std ``noise``). Cost: ``n_perturb_samples`` attributions and forwards per sample.

    Args:
        method: the attribution method.
        x: ``(N, ...)`` inputs on the model's device.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        attributions: the method's maps of ``x`` for ``target`` if already computed.
        variants: ``"input"``, ``"output"``, ``"representation"`` or several.
        layer: the module (by name) whose input is the representation.
        n_perturb_samples: copies per sample (Quantus: 200).
        noise: the Gaussian's std (``"uniform"``: the radius), in input units.
        distribution: ``"gaussian"`` (default) or ``"uniform"``.
        order: the norm's ``p``.
        eps_min: the smallest denominator.
        seed: seed of the copies.
        internal_batch_size: most copies per ``attribute`` call (``None``: all).
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding never moves).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (they never move).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).

    Returns:
        ``{variant: (N,)}`` for every variant asked.

    Example:
        >>> from lit_attr.methods import get_method
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        >>> sorted(relative_stability(get_method("saliency", net), torch.rand(2, 4), n_perturb_samples=2))
        ['input', 'output', 'representation']
    """
    asked = check_names("variants", variants, STABILITIES, what="variant")
    order, eps_min = check_number("order", order), check_number("eps_min", eps_min)
    if order <= 0 or eps_min <= 0:
        raise ValueError(f"`order` and `eps_min` must be > 0, got order={order!r} and eps_min={eps_min!r}.")
    options = dict(n_perturb_samples=n_perturb_samples, noise=noise, distribution=distribution, seed=seed,
                   internal_batch_size=internal_batch_size)  # fmt: skip
    fields = batch_fields(attention_mask, special_tokens_mask, model_inputs)
    ready = _prepare(method, x, target, attributions, logits, fields, **options)
    model, own, hood = ready.method.model, ready.maps, ready.hood
    module = None
    if "representation" in asked:
        module = _default_layer(model) if layer is None else _named(model, layer)
    capture = _Capture()
    n = x.shape[0]
    values = {name: x.new_full((n, n_perturb_samples), -torch.inf, dtype=torch.float64) for name in asked}
    # One bound for every forward of the call: the clean rows and each block's copies, chunked to fit.
    backoff = MemoryBackoff("relative_stability", internal_batch_size)
    outputs = _Outputs(hood, capture if module is not None else None)
    handle = None
    try:
        handle = module.register_forward_pre_hook(capture) if module is not None else None
        clean_logits, clean_repr = outputs(hood.unmoved(), backoff)
        shape = None if clean_repr is None else tuple(clean_repr.shape[1:])
        for block in _neighbours(ready, x, options):
            b = block.rows.numel()
            moved_logits, moved_repr = outputs(block.moved, backoff, shape)
            moved_logits = moved_logits.view(b, n_perturb_samples, -1)
            same = moved_logits.argmax(dim=2) == clean_logits[block.rows].argmax(dim=1, keepdim=True)
            own_b = own[block.rows].unsqueeze(1)
            explained = _norm((own_b - block.maps) / _nonzero(own_b, eps_min), order)
            clean = hood.points[block.rows].unsqueeze(1)
            denominators = {
                "input": _norm((clean - block.x) / _nonzero(clean, eps_min), order),
                "output": _norm(clean_logits[block.rows].unsqueeze(1) - moved_logits, order),
            }
            if clean_repr is not None and moved_repr is not None:
                before = clean_repr[block.rows].unsqueeze(1)
                after = moved_repr.view(b, n_perturb_samples, *moved_repr.shape[1:])
                denominators["representation"] = _norm((before - after) / _nonzero(before, eps_min), order)
            for name in asked:
                ratio = explained / denominators[name].clamp(min=eps_min)
                values[name][block.rows] = torch.where(same, ratio, -torch.inf)
    finally:
        if handle is not None:
            handle.remove()
    backoff.finish()  # warns once if the bound shrank
    result = {}
    for name, value in values.items():
        best = value.amax(dim=1)
        best = torch.where(torch.isinf(best), float("nan"), best)
        result[name] = best.to(torch.promote_types(own.dtype, torch.float32))
    return result


def _nonzero(t: Tensor, eps: float) -> Tensor:
    """``t`` with exact zeros replaced by ``eps`` (the denominators of relative changes)."""
    return torch.where(t == 0, eps, t).double()


def _named(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [key for key, _ in model.named_modules() if key]
        raise ValueError(f"`layer` must name a module of the model ({names[:10]}...), got {name!r}.") from None
