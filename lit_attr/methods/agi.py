"""AGI: adversarial gradient integration (Pan et al. 2021), MFABA's second baseline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import check_positive, check_seed
from lit_attr._hygiene import row_seed
from lit_attr.methods._common import SCORES, expand_rows
from lit_attr.methods.base import AttributionMethod, BoundsType
from lit_attr.methods.registry import register_method
from lit_attr.methods.structure import takes_raw_inputs


class AGI(AttributionMethod):
    """Adversarial gradient integration towards false classes.

    For each of ``n_classes`` false classes (drawn per sample from a generator seeded by ``seed`` and the
    sample's values, so draws do not depend on the batch), up to ``max_iter`` sign steps of size ``eps`` raise the
    false class's softmax probability. As in the authors' reference port, every step starts from the clean
    input: ``x_{k+1} = clip(x + eps * sign(grad p_false(x_k)))``, and the attribution accumulates
    ``-grad p_c(x_k) * (x_{k+1} - x)`` until the prediction reaches the false class (checked before each step).
    The result is the mean over false classes. Unlike the port, each row's gradients use its own classes (the
    port sums the probabilities of every class in the batch).

    Args:
        model: classifier returning logits.
        n_classes: false classes per sample (1 in the paper's experiments; the group's later code uses 20).
        max_iter: steps per false class.
        eps: size of a sign step.
        seed: base seed of the false-class draws.
        forward_fn: see :class:`~lit_attr.methods.base.AttributionMethod`.
        input_bounds: path points are clipped to it.
        internal_batch_size: bounds rows per forward (samples x false classes).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> AGI(net, n_classes=2).attribute(torch.rand(2, 4)).shape
        torch.Size([2, 4])
    """

    raw_inputs_only = "its sign steps have a size in input intensities"

    def __init__(
        self,
        model: nn.Module,
        *,
        n_classes: int = 1,
        max_iter: int = 20,
        eps: float = 0.05,
        seed: int = 0,
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        input_bounds: BoundsType = None,
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(
            model, forward_fn=forward_fn, input_bounds=input_bounds, internal_batch_size=internal_batch_size
        )
        self.n_classes = check_positive("n_classes", n_classes, int)
        self.max_iter = check_positive("max_iter", max_iter, int)
        self.eps = check_positive("eps", eps)
        self.seed = check_seed(seed)

    def rows_per_sample(self, **kwargs: Any) -> int:
        """One row per false class."""
        return self.n_classes

    def false_classes(self, x: Tensor, target: Tensor, num_classes: int) -> Tensor:
        """``(N, n_classes)`` distinct classes other than each sample's target, drawn per sample."""
        if self.n_classes > num_classes - 1:
            raise ValueError(
                f"`n_classes` must be at most {num_classes - 1} for a model with {num_classes} classes, "
                f"got {self.n_classes}."
            )
        draws = []
        for row, c in zip(x, target.tolist(), strict=True):
            generator = torch.Generator().manual_seed(row_seed(self.seed, row))
            others = torch.randperm(num_classes - 1, generator=generator)[: self.n_classes]
            draws.append(others + (others >= c).long())  # skip the target class
        return torch.stack(draws).to(x.device)

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        n, m = x.shape[0], self.n_classes
        with torch.no_grad():
            num_classes = self.logits(x[:1]).shape[1]
        false = self.false_classes(x, target, num_classes).reshape(-1)  # sample-major rows
        x0 = x.detach().repeat_interleave(m, dim=0)
        c = target.repeat_interleave(m)
        point, acc = x0, torch.zeros_like(x0)
        active = torch.ones(n * m, dtype=torch.bool, device=x.device)
        for _ in range(self.max_iter):
            point = point.detach().requires_grad_(True)
            logits = self.logits(point)
            active = active & (logits.argmax(dim=1) != false)
            if not bool(active.any()):
                break
            probs = logits.softmax(dim=1)
            (g_false,) = torch.autograd.grad(probs.gather(1, false[:, None]).sum(), point, retain_graph=True)
            (g_c,) = torch.autograd.grad(SCORES["prob"](logits, c).sum(), point)
            nxt = self.clip(x0 + self.eps * g_false.sign())
            acc = torch.where(expand_rows(active, acc), acc - g_c * (nxt - x0), acc)
            point = torch.where(expand_rows(active, nxt), nxt, point.detach())
        return acc.view(n, m, *x.shape[1:]).mean(dim=1)


@register_method("agi", applies_to=takes_raw_inputs)
def agi(model: nn.Module, **kwargs: Any) -> AGI:
    """AGI with one seeded false class per sample, 20 steps of 0.05."""
    return AGI(model, **kwargs)
