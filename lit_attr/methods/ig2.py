"""IG2: integrated gradients on the iterative counterfactual path (Zhuo & Ge, TPAMI 2024, arXiv 2406.10852).

The path starts at the explicand ``x`` and follows normalised gradient descent on the distance between the
hidden representation of the current point and that of a counterfactual reference of another class; its end
point is GradCF (the baseline), the path itself GradPath. The explicand's target logit gradient is integrated
along it. Here both gradients come from one forward per path point ("fused"), which halves the authors' forwards
(they search the path and integrate over it in two passes) with the same result.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import Tensor, nn

from lit_attr._checks import check_choice, check_flag, check_positive, check_seed
from lit_attr.inputs import Space, input_kind
from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods._common import SCORES, unit_rows
from lit_attr.methods.base import AttributionMethod, BoundsType, ResultType, TargetType
from lit_attr.methods.ig2_references import SAMPLERS, check_pool, check_references, draw_reference_indices
from lit_attr.methods.registry import register_method
from lit_attr.methods.structure import has_linear

if TYPE_CHECKING:
    from lit_attr.batch import Batch

#: eta of the authors (256 in [0, 255] at 299x299 RGB), converted to [0, 1] at 224x224 RGB.
ETA_224 = 256 / 255 * 224 / 299
#: The default step length in a learned space (token embeddings), in units of the sample's mean token-embedding norm
#: (:attr:`~lit_attr.methods.AttributionMethod.relative_steps`): 201 steps then travel about ten token norms, a few
#: times the distance between sentences of different classes that differ in a handful of tokens.
REPRESENTATION_ETA = 0.05


def default_eta(x: Tensor, input_bounds: BoundsType = None) -> float:
    """Per-step L2 length that matches the authors' setting, scaled to ``x``'s size and value range.

    The authors use 256 in [0, 255] units for 299x299 RGB images, about 0.75 in [0, 1] units at 224x224. An L2
    step of the same per-element size grows with the square root of the number of elements and linearly with
    the value range: ``eta = 0.75 * sqrt(numel / (3 * 224 * 224)) * (high - low)``. The authors later used 512,
    twice this. For non-image inputs the rule gives very small steps; choose ``eta`` so that ``steps * eta`` is a
    few times the L2 distance between samples of different classes.

    Example:
        >>> round(default_eta(torch.zeros(1, 3, 224, 224), (0.0, 1.0)), 3)
        0.752
    """
    span = 1.0
    if input_bounds is not None:
        low, high = input_bounds
        span = float(torch.as_tensor(high - low).float().mean())
    return ETA_224 * math.sqrt(x[0].numel() / (3 * 224 * 224)) * span


class IG2(AttributionMethod):
    """IG2 attribution.

    For each of ``B`` references ``x_r`` and ``j = 0 .. steps - 1`` (``z_0 = x``)::

        u_j = d ||rep(z_j) - rep(x_r)||^2 / d z_j
        z_{j+1} = clip(z_j - eta * u_j / ||u_j||_2)
        A_b += d logit_c(z_j) / d z_j * (z_j - z_{j+1})

    and ``A = mean_b A_b``; ``sum(A)`` approximates ``logit_c(x) - mean_b logit_c(GradCF_b)``.

    Args:
        model: classifier returning logits.
        steps: path steps ``k`` (201 in the paper).
        eta: L2 length of one step; ``None`` scales the authors' value to the input (see :func:`default_eta`).
        layer: name of the module whose representation is matched (``dict(model.named_modules())`` key);
            ``None`` uses the input of the last ``nn.Linear`` (the penultimate features).
        layer_io: take the module's ``"input"`` or ``"output"``.
        n_references: references per sample ``B`` (used by the samplers).
        references: ``"random_other_class"`` (pool samples of another class than the target) or
            ``"confusers"`` (pool samples whose label is among the model's ``B`` highest-scoring classes for ``x``
            other than the target: top-2 .. top-(B+1) when the target is the prediction); a tensor ``(N, B, ...)``
            of references is passed per call instead, as ``attribute(x, references=...)``.
        reference_pool: ``(inputs, labels)`` the samplers draw from. Without it, the samplers draw from the data
            given to :meth:`prepare` (the callbacks and ``evaluate`` pass their probe set or the first samples of
            the split).
        seed: seed of the samplers; draws are per sample, so they do not depend on the batch.
        fused: ``False`` runs the authors' two passes (path search, then integration): the same result at twice
            the forwards, kept for benchmarks.
        forward_fn: see :class:`~lit_attr.methods.base.AttributionMethod`.
        input_bounds: path points are clipped to it.
        internal_batch_size: bounds rows (samples x references) per forward.
        token_options: defaults for token ids; see :class:`~lit_attr.methods.base.AttributionMethod`.
        return_baseline: also return ``{"baseline": GradCF}``, the path end points ``(N, B, ...)``; a per-call
            ``attribute(x, return_baseline=...)`` overrides it.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> pool = (torch.rand(30, 4), torch.arange(30) % 3)
        >>> IG2(net, steps=20, eta=0.05, reference_pool=pool, n_references=2).attribute(torch.rand(2, 4)).shape
        torch.Size([2, 4])
    """

    relative_steps = True

    def __init__(
        self,
        model: nn.Module,
        *,
        steps: int = 201,
        eta: float | None = None,
        layer: str | None = None,
        layer_io: str = "input",
        n_references: int = 8,
        references: str = "random_other_class",
        reference_pool: tuple[Tensor, Tensor] | None = None,
        seed: int = 0,
        fused: bool = True,
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        input_bounds: BoundsType = None,
        internal_batch_size: int | None = None,
        token_options: TokenOptions | Mapping[str, Any] | None = None,
        return_baseline: bool = False,
    ) -> None:
        super().__init__(
            model,
            forward_fn=forward_fn,
            input_bounds=input_bounds,
            internal_batch_size=internal_batch_size,
            token_options=token_options,
        )
        self.steps = check_positive("steps", steps, int)
        self.eta = None if eta is None else check_positive("eta", eta)
        self.layer_io = check_choice("layer_io", layer_io, ("input", "output"))
        self.module = self._find_layer(layer)
        self.n_references = check_positive("n_references", n_references, int)
        if isinstance(references, Tensor):
            raise TypeError(
                "`references` of the constructor names a sampler (" + ", ".join(map(repr, SAMPLERS)) + "); pass a "
                "tensor of references (N, B, ...) per call: `attribute(x, references=...)`."
            )
        self.references = check_choice("references", references, SAMPLERS)
        self.reference_pool = reference_pool
        self._prepared_pool: tuple[Tensor, Tensor] | None = None
        self.seed = check_seed(seed)
        self.fused = check_flag("fused", fused)
        self.return_baseline = bool(return_baseline)

    @property
    def reference_pool(self) -> tuple[Tensor, Tensor] | None:
        """``(inputs (M, ...), labels (M,))`` the samplers draw from; checked, detached and long-cast when set."""
        return self._reference_pool

    @reference_pool.setter
    def reference_pool(self, pool: tuple[Tensor, Tensor] | None) -> None:
        self._reference_pool = check_pool(pool)

    @property
    def pool(self) -> tuple[Tensor, Tensor] | None:
        """The pool the samplers draw from: ``reference_pool``, else the data given to :meth:`prepare`."""
        return self.reference_pool if self.reference_pool is not None else self._prepared_pool

    def prepare(self, data: Batch) -> None:
        """Draw references from ``data``'s labelled samples, unless ``reference_pool`` was given.

        Raises:
            ValueError: if ``data`` has no labels (and no ``reference_pool`` was given).
        """
        if self.reference_pool is not None:
            return
        if data.y is None:
            raise ValueError(
                "ig2 draws its references from labelled samples, but the data it was prepared with has no labels; "
                "pass reference_pool=(inputs, labels) to the method."
            )
        self._prepared_pool = check_pool((data.x, data.y))

    def _find_layer(self, layer: str | None) -> nn.Module:
        modules = dict(self.model.named_modules())
        if layer is None:
            linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("The model has no nn.Linear; pass `layer=` naming the module whose features to match.")
            return linears[-1]
        if layer not in modules:
            names = [n for n in modules if n]
            close = difflib.get_close_matches(layer, names, n=5)
            if close:
                hint = f" Close names: {', '.join(close)}."
            else:
                more = f", ... ({len(names)} in all)" if len(names) > 12 else ""
                hint = f" Its modules are: {', '.join(names[:12])}{more}."
            raise ValueError(f"`layer` {layer!r} is not a module of the model.{hint}")
        return modules[layer]

    per_sample_kwargs = ("references", "reference_attention_mask")

    def rows_per_sample(self, references: Tensor | None = None, **kwargs: Any) -> int:
        """One row per (sample, reference); rows are also chunked inside a sample."""
        return 1

    # ------------------------------------------------------------------ references
    def sample_references(self, x: Tensor, target: Tensor, pool: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Draw ``(N, B, ...)`` references with the configured sampler.

        From ``pool`` if given, else from ``reference_pool``, else from the data given to :meth:`prepare`.
        """
        pool = check_pool(pool) if pool is not None else self.pool
        if pool is None:
            raise ValueError(
                f"`references={self.references!r}` draws from `reference_pool`; pass reference_pool=(inputs, labels) "
                "or a tensor attribute(x, references=...) of shape (N, B, ...)."
            )
        pool_x, pool_y = (t.to(x.device) for t in pool)
        if pool_x.shape[1:] != x.shape[1:]:
            raise ValueError(f"`reference_pool` inputs must be (M, {tuple(x.shape[1:])}), got {tuple(pool_x.shape)}.")
        logits = None
        if self.references == "confusers":
            with torch.no_grad():
                logits = self.logits(x)
        return pool_x[self.reference_indices(list(x), target, pool_y, logits)]

    def reference_indices(
        self, rows: Sequence[Tensor], target: Tensor, pool_y: Tensor, logits: Tensor | None = None
    ) -> Tensor:
        """``(N, B)`` indices into the pool of each sample's references, drawn with the configured sampler.

        Args:
            rows: one tensor per sample that seeds its draws (the sample itself), so draws do not depend on the batch.
            target: ``(N,)`` explained classes.
            pool_y: ``(M,)`` labels of the pool.
            logits: ``(N, K)`` the model's logits of the samples; needed by ``"confusers"``.
        """
        source = (
            "`reference_pool`"
            if self.reference_pool is not None
            else "The reference pool (the data given to prepare(): the batch itself in AttributionQuality)"
        )
        return draw_reference_indices(
            self.references, rows, target, pool_y, self.n_references, self.seed, logits=logits, source=source
        )

    # ------------------------------------------------------------------ path
    @contextmanager
    def _capturing(self) -> Iterator[list[Tensor]]:
        """The representation of every forward inside the block, appended to the yielded list."""
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            value = output
            if self.layer_io == "input":
                value = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
            if not isinstance(value, Tensor):
                raise ValueError(
                    f"The {self.layer_io} of the representation layer is not a tensor; choose another `layer`."
                )
            captured.append(value.flatten(1))

        handle = self.module.register_forward_hook(hook, with_kwargs=True)
        try:
            yield captured
        finally:
            handle.remove()

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        with self._capturing() as captured:
            logits = self.logits(z)
        if not captured:
            raise ValueError("The representation layer did not run in the forward pass; choose another `layer`.")
        return logits, captured[-1]

    def _representations(self, space: Space, references: Tensor, **fields: Tensor) -> Tensor:
        """``(M, H)``: the representation of every reference, each computed on its own (as the kind runs it)."""
        space.check_samples(references, "references")
        reps: Tensor | None = None
        with torch.no_grad(), self._capturing() as captured:
            for rows, _ in space.run_samples(references, self.internal_batch_size, **fields):
                if not captured:
                    raise ValueError(
                        "The representation layer did not run in the forward pass; choose another `layer`."
                    )
                rep = captured.pop()
                captured.clear()
                if reps is None:
                    reps = rep.new_zeros(references.shape[0], rep.shape[1])
                elif rep.shape[1] != reps.shape[1]:
                    raise ValueError(_SIZE_CHANGES.format(reps.shape[1], rep.shape[1]))
                reps[rows] = rep
        assert reps is not None  # B >= 1 references per sample
        return reps

    def _path_rows(self, x0: Tensor, c: Tensor, ref_rep: Tensor, eta: float) -> tuple[Tensor, Tensor]:
        """Attribution and end point for rows (sample x reference), fused or in the authors' two passes."""
        if not self.fused:
            return self._two_pass_rows(x0, c, ref_rep, eta)
        z, acc = x0, torch.zeros_like(x0)
        for _ in range(self.steps):
            z = z.detach().requires_grad_(True)
            logits, rep = self._forward(z)
            _check_sizes(rep, ref_rep)
            g_logit, u = self._gradients(z, SCORES["logit"](logits, c).sum(), ((rep - ref_rep) ** 2).sum())
            nxt = self._descend(z.detach(), u, eta)
            acc = acc + g_logit * (z.detach() - nxt)
            z = nxt
        return acc, z.detach()

    def _gradients(self, z: Tensor, score: Tensor, distance: Tensor) -> tuple[Tensor, Tensor]:
        """The gradients of a path point's target score and representation distance, from one graph."""
        (g_logit,) = torch.autograd.grad(score, z, retain_graph=True)
        (u,) = torch.autograd.grad(distance, z)
        return g_logit, u

    def _descend(self, z: Tensor, u: Tensor, eta: float) -> Tensor:
        # unit_rows: a vanishing distance gradient gives a zero step, so the row stays frozen instead of NaN.
        return self.clip(z - eta * unit_rows(u))

    def _two_pass_rows(self, x0: Tensor, c: Tensor, ref_rep: Tensor, eta: float) -> tuple[Tensor, Tensor]:
        points = [x0]
        for _ in range(self.steps):
            z = points[-1].detach().requires_grad_(True)
            rep = self._forward(z)[1]
            _check_sizes(rep, ref_rep)
            (u,) = torch.autograd.grad(((rep - ref_rep) ** 2).sum(), z)
            points.append(self._descend(z.detach(), u, eta))
        acc = torch.zeros_like(x0)
        for z, nxt in zip(points[:-1], points[1:], strict=True):
            z = z.detach().requires_grad_(True)
            (g_logit,) = torch.autograd.grad(SCORES["logit"](self.logits(z), c).sum(), z)
            acc = acc + g_logit * (z.detach() - nxt)
        return acc, points[-1]

    @overload
    def attribute(
        self,
        x: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        references: Tensor | None = None,
        return_baseline: Literal[False],
    ) -> Tensor: ...

    @overload
    def attribute(
        self,
        x: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        references: Tensor | None = None,
        return_baseline: Literal[True],
    ) -> tuple[Tensor, dict[str, Tensor]]: ...

    @overload
    def attribute(
        self,
        x: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        references: Tensor | None = None,
        return_baseline: None = None,
    ) -> ResultType: ...

    def attribute(
        self,
        x: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        references: Tensor | None = None,
        return_baseline: bool | None = None,
        **token_kwargs: Any,
    ) -> ResultType:
        """IG2 attributions of ``x`` (see the class); ``references`` ``(N, B, ...)`` replace the sampler.

        Args:
            x: input batch ``(N, ...)``, or token ids ``(N, L)`` (see ``AttributionMethod.attribute``).
            target: class to explain (``None``: the prediction).
            logits: the model's logits for ``x`` if already computed (see the base class).
            references: per-sample references, ``B >= 1`` of them per sample; default: drawn by the sampler. For
                token ids: ``(N, B, L_r)`` ids, each reference with its own length.
            return_baseline: also return ``{"baseline": GradCF}``; ``None`` follows the constructor's
                ``return_baseline``.
            **token_kwargs: keywords of token inputs (``attention_mask``, ``reference_attention_mask``, ...).
        """
        if references is not None and isinstance(x, Tensor) and input_kind(x, token_kwargs).continuous:
            check_references(references, x)
        return super().attribute(
            x, target, logits=logits, references=references, return_baseline=return_baseline, **token_kwargs
        )

    def _attribute(
        self,
        x: Tensor,
        target: Tensor,
        references: Tensor | None = None,
        reference_attention_mask: Tensor | None = None,
        return_baseline: bool | None = None,
    ) -> Any:
        space = self.space
        n = x.shape[0]
        fields = {}
        if references is None:
            references = self._draw(space, target)
        elif not isinstance(references, Tensor) or references.ndim < 3 or references.shape[0] != n:
            shape = tuple(references.shape) if isinstance(references, Tensor) else type(references).__name__
            raise ValueError(f"`references` must be per-sample references (N, B, ...) with N = {n}, got {shape}.")
        elif reference_attention_mask is not None:
            if not isinstance(reference_attention_mask, Tensor) or reference_attention_mask.shape != references.shape:
                shape = getattr(reference_attention_mask, "shape", type(reference_attention_mask).__name__)
                raise ValueError(
                    f"`reference_attention_mask` must have the shape of references {tuple(references.shape)}, "
                    f"got {tuple(shape) if isinstance(shape, torch.Size) else shape}."
                )
            fields["attention_mask"] = reference_attention_mask.flatten(0, 1)
        b = references.shape[1]
        if b == 0:
            raise ValueError(f"`references` must hold B >= 1 references per sample, got {tuple(references.shape)}.")
        rows_ref = references.flatten(0, 1)
        if space.raw:
            rows_ref = rows_ref.to(x)
        ref_rep = self._representations(space, rows_ref, **fields)
        if self.eta is not None:
            eta = self.eta
        else:
            eta = default_eta(x, self.input_bounds) if space.raw else REPRESENTATION_ETA
        rows_x = x.detach().repeat_interleave(b, dim=0)
        rows_c = target.repeat_interleave(b)
        chunk = self.internal_batch_size or n * b
        attributions, ends = [], []
        for start in range(0, n * b, chunk):
            part = slice(start, start + chunk)
            acc, end = self._path_rows(rows_x[part], rows_c[part], ref_rep[part], eta)
            attributions.append(acc)
            ends.append(end)
        attributions = torch.cat(attributions).view(n, b, *x.shape[1:]).mean(dim=1)
        if not (self.return_baseline if return_baseline is None else return_baseline):
            return attributions
        return attributions, {"baseline": torch.cat(ends).view(n, b, *x.shape[1:])}

    def _draw(self, space: Space, target: Tensor) -> Tensor:
        """``(n, B, ...)`` references of the chunk's samples, drawn from the pool with the configured sampler."""
        pool = self.pool
        if pool is None:
            raise ValueError(
                f"`references={self.references!r}` draws from `reference_pool`; pass reference_pool=(inputs, labels) "
                "or a tensor attribute(x, references=...) of shape (N, B, ...)."
            )
        pool_x, pool_y = (t.to(space.z.device) for t in pool)
        space.check_samples(pool_x, "reference_pool")
        logits = space.logits if self.references == "confusers" else None
        return pool_x[self.reference_indices(space.keys(), target, pool_y, logits)]


_SIZE_CHANGES = (
    "IG2 matches the representation of its `layer`, whose size must not depend on the input (on token inputs, its "
    "length): pooled features do, per-token states do not. It gave {} values for one input and {} for another."
)


def _check_sizes(rep: Tensor, ref_rep: Tensor) -> None:
    if rep.shape[1:] != ref_rep.shape[1:]:
        raise ValueError(_SIZE_CHANGES.format(rep.shape[1], ref_rep.shape[1]))


@register_method("ig2", applies_to=has_linear)
def ig2(model: nn.Module, **kwargs: Any) -> IG2:
    """IG2 with the paper's defaults (201 steps, 8 references of another class, penultimate features)."""
    return IG2(model, **kwargs)
