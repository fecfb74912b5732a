"""BIG: integrated gradients from the closest adversarial boundary point (Wang et al. 2021), MFABA's baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_attr._checks import check_choice, check_positive
from lit_attr.methods._common import SCORES, expand_rows
from lit_attr.methods.base import AttributionMethod, BoundsType
from lit_attr.methods.registry import register_method
from lit_attr.methods.structure import takes_raw_inputs

#: The attack radii of the BIG paper, for inputs in [0, 1].
BIG_EPSILONS = tuple(v / 255 for v in (36, 64, 76.5, 127.5, 178.5, 229.5, 280.5))


class BIG(AttributionMethod):
    """Boundary-based integrated gradients.

    For every radius in ``epsilons`` an ``attack_steps``-step sign attack of size ``alpha`` raises the
    cross-entropy of the target inside the L-inf ball of that radius; per sample the first radius whose end
    point is misclassified is kept (else the largest), and integrated gradients of the target score run from
    that boundary point to ``x`` (``ig_steps`` intervals, trapezoid rule).

    With the defaults ``alpha * attack_steps = 0.05`` is below the smallest radius, so every attack follows the
    same path: ``dedupe_attacks=True`` runs one attack per distinct reachable radius ``min(eps, alpha * steps)``;
    ``False`` runs all of them, the cost the paper reports.

    Args:
        model: classifier returning logits.
        epsilons: attack radii, increasing.
        attack_steps: sign steps per attack.
        alpha: size of one attack step.
        ig_steps: intervals of the integrated-gradients path (``ig_steps + 1`` gradient evaluations).
        score: target score integrated by IG: ``"prob"`` (default), ``"logit"`` or ``"logprob"``.
        dedupe_attacks: run one attack per distinct reachable radius.
        forward_fn: see :class:`~lit_attr.methods.base.AttributionMethod`.
        input_bounds: attack points are clipped to it.
        internal_batch_size: bounds rows per forward (attacks x samples, IG points x samples).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> BIG(net, ig_steps=8).attribute(torch.rand(2, 4)).shape
        torch.Size([2, 4])
    """

    raw_inputs_only = "it attacks inside L-inf balls whose radii are input intensities"

    def __init__(
        self,
        model: nn.Module,
        *,
        epsilons: Sequence[float] = BIG_EPSILONS,
        attack_steps: int = 50,
        alpha: float = 0.001,
        ig_steps: int = 50,
        score: str = "prob",
        dedupe_attacks: bool = True,
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        input_bounds: BoundsType = None,
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(
            model, forward_fn=forward_fn, input_bounds=input_bounds, internal_batch_size=internal_batch_size
        )
        self.epsilons = tuple(check_positive("epsilons", e) for e in epsilons)
        if not self.epsilons or list(self.epsilons) != sorted(self.epsilons):
            raise ValueError(f"`epsilons` must be a non-empty increasing sequence, got {tuple(epsilons)!r}.")
        self.attack_steps = check_positive("attack_steps", attack_steps, int)
        self.alpha = check_positive("alpha", alpha)
        self.ig_steps = check_positive("ig_steps", ig_steps, int)
        self.score = check_choice("score", score, SCORES)
        self.dedupe_attacks = bool(dedupe_attacks)

    def _attack_radii(self) -> list[float]:
        if not self.dedupe_attacks:
            return list(self.epsilons)
        reach = self.alpha * self.attack_steps
        return sorted({min(e, reach) for e in self.epsilons})

    def rows_per_sample(self, **kwargs: Any) -> int:
        """Attack rows per sample (the IG points are chunked on their own)."""
        return len(self._attack_radii())

    def _attack(self, x: Tensor, target: Tensor) -> Tensor:
        """The chosen boundary point per sample: first radius whose attack misclassifies, else the last."""
        radii = self._attack_radii()
        n, r = x.shape[0], len(radii)
        x0 = x.detach().repeat_interleave(r, dim=0)  # rows: sample-major, radius-minor
        c = target.repeat_interleave(r)
        eps = expand_rows(x.new_tensor(radii).repeat(n), x0)
        adv = x0.clone()
        for _ in range(self.attack_steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(self.logits(adv), c, reduction="sum")
            (g,) = torch.autograd.grad(loss, adv)
            adv = self.clip(x0 + torch.clamp(adv.detach() + self.alpha * g.sign() - x0, -eps, eps))
        with torch.no_grad():
            wrong = (self.logits(adv).argmax(dim=1) != c).view(n, r)
        # First misclassifying radius, else the last; with dedupe, radii map back onto the user's epsilons in order.
        last = torch.full((n,), r - 1, dtype=torch.long, device=x.device)
        first = torch.where(wrong.any(dim=1), wrong.float().argmax(dim=1), last)
        return adv.view(n, r, *x.shape[1:])[torch.arange(n, device=x.device), first]

    def _attribute(self, x: Tensor, target: Tensor) -> Tensor:
        baseline = self._attack(x, target)
        n, k = x.shape[0], self.ig_steps
        alphas = torch.linspace(0, 1, k + 1, dtype=x.dtype, device=x.device)
        weights = torch.full_like(alphas, 1.0 / k)
        weights[0] = weights[-1] = 0.5 / k
        diff = x.detach() - baseline
        per_step = (1, -1) + (1,) * (x.ndim - 1)
        span = max(1, (self.internal_batch_size or n * (k + 1)) // n)  # IG points per forward
        total = torch.zeros_like(diff)
        for start in range(0, k + 1, span):
            a, w = alphas[start : start + span], weights[start : start + span]
            points = (baseline[:, None] + a.view(per_step) * diff[:, None]).reshape(-1, *x.shape[1:])
            points.requires_grad_(True)
            scores = SCORES[self.score](self.logits(points), target.repeat_interleave(len(a)))
            (g,) = torch.autograd.grad(scores.sum(), points)
            total = total + (g.view(n, len(a), *x.shape[1:]) * w.view(per_step)).sum(dim=1)
        return diff * total


@register_method("big", applies_to=takes_raw_inputs)
def big(model: nn.Module, **kwargs: Any) -> BIG:
    """BIG with the paper's radii (attacks deduplicated unless ``dedupe_attacks=False``)."""
    return BIG(model, **kwargs)
