"""What a method sees of an input kind: the :class:`Space` of a chunk, the :class:`MethodCall` of one ``attribute``.

The base classes serve every continuous kind (the input is the space); the token kind's embedding space
(:mod:`lit_attr.inputs.embedding`) subclasses both. :class:`Rendering` is what a kind draws for the loggers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from lit_attr._memory import MemoryBackoff

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MethodCall", "Rendering", "Space"]


class Rendering(NamedTuple):
    """Samples and their maps drawn for a logger or the report.

    Attributes:
        figure: a matplotlib figure (written as PNG to files, TensorBoard and the report).
        html: a richer form where the kind has one (per-token highlighting), shown by W&B and the report instead.
        legend: one sentence on how colours map to values (the scale, shared or not), shown beside it in the report.
    """

    figure: Figure
    html: str | None = None
    legend: str | None = None


class Space:
    """The continuous points of one chunk of samples, as an attribution method sees them, and the model on them.

    Methods read ``z`` and call ``forward`` (through :meth:`~lit_attr.methods.AttributionMethod.logits`) on any
    rows of this space: repeated, perturbed, reordered or compacted. The base kind's space is the input itself.

    Args:
        z: ``(n, ...)`` fresh, detached points of the chunk's samples.
        samples: ``(n,)`` positions of the chunk's samples in the batch given to ``attribute``.
        forward: maps rows of ``z``'s space to logits ``(rows, K)``.
        bounds: ``(low, high)`` that path methods clip to, or ``None`` (unbounded).
        raw: ``True`` when ``z`` is the model's input itself; ``False`` for a learned representation (token
            embeddings), where step lengths in input units mean nothing.
        feature_shape: shape of a per-feature mask of one sample, broadcastable to ``z[0]`` (``(1, H, W)`` for
            images: one value per pixel; ``(l, 1)`` for tokens: one value per token).
        support: ``(n, *feature_shape)`` 1 where a feature may change and counts (tokens: the perturbable ones);
            ``None``: everywhere.
        logits: ``(n, K)`` the clean logits of the chunk's samples.
    """

    def __init__(
        self,
        z: Tensor,
        samples: Tensor,
        forward: Callable[[Tensor], Tensor],
        *,
        bounds: Any = None,
        raw: bool = True,
        feature_shape: tuple[int, ...] = (),
        support: Tensor | None = None,
        logits: Tensor | None = None,
    ) -> None:
        self.z = z
        self.samples = samples
        self.forward = forward
        self.bounds = bounds
        self.raw = raw
        self.feature_shape = tuple(feature_shape) or tuple(z.shape[1:])
        self.support = support
        self.logits = logits

    @property
    def baseline(self) -> Tensor | None:
        """``(n, ...)`` the kind's own reference point of every sample, which methods start from or blend with.

        Token inputs have one (the [MASK] embedding at every perturbable position); ``None`` (the default) lets each
        method use its own (the lower input bound, FEI's random colours).
        """
        return None

    def keys(self) -> list[Tensor]:
        """One tensor per sample that seeds its random draws: the sample's own values, independent of its batch."""
        return list(self.z)

    def expand_features(self, maps: Tensor) -> Tensor:
        """Per-feature maps ``(n, *feature_shape)`` broadcast to the shape a method returns for its inputs."""
        return maps.expand_as(self.z)

    def check_samples(self, samples: Tensor, name: str) -> None:
        """Refuse other samples (IG2's references) that :meth:`run_samples` cannot run."""
        if samples.shape[1:] != self.z.shape[1:]:
            raise ValueError(f"`{name}` inputs must be (M, {tuple(self.z.shape[1:])}), got {tuple(samples.shape)}.")

    def run_samples(
        self, samples: Tensor, chunk: int | None = None, **fields: Tensor
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Run the model on other samples of this kind (not points of this space), ``chunk`` rows at a time.

        Yields ``(rows, logits)`` after every forward, ``rows`` indexing ``samples``, so that a hook installed by
        the caller (IG2's representation) reads what that forward computed.
        """
        total = samples.shape[0]
        step = chunk or total
        for start in range(0, total, step):
            rows = torch.arange(start, min(start + step, total), device=samples.device)
            yield rows, self.forward(samples[rows].to(self.z))


class MethodCall:
    """One ``attribute`` call on one batch: the checks, the spaces of its chunks and the assembly of the result.

    The base class serves every continuous kind: one segment holding every sample, whose space is the input itself.

    Args:
        method: the attribution method (its ``forward_fn``, ``input_bounds``, ``logits``).
        x: the batch given to ``attribute``.
        kwargs: the method's per-call keywords, without the kind's own (already taken out by the kind).
        feature_shape: the shape of one sample's per-feature mask (:attr:`Space.feature_shape`); default: one
            feature per element.
    """

    def __init__(
        self, method: Any, x: Tensor, kwargs: dict[str, Any], feature_shape: tuple[int, ...] | None = None
    ) -> None:
        self.method = method
        self.x = x
        self.kwargs = kwargs
        self.n = x.shape[0]
        self.feature_shape = tuple(x.shape[1:]) if feature_shape is None else tuple(feature_shape)
        self._parts: list[tuple[Tensor, Any]] = []

    def installed(self) -> AbstractContextManager[Any]:
        """Hooks this call needs while the method runs (none by default)."""
        return nullcontext()

    def prepare(self) -> None:
        """Work on the fresh, gradient-enabled copy of the inputs (called inside the method's hygiene)."""
        self.x = self.x.detach().clone()

    def clean_logits(self, run: Callable[[int, int], Tensor], backoff: MemoryBackoff) -> Tensor:
        """The logits of the whole batch when the caller gave none.

        ``run(start, stop)`` runs the method's checked forward on ``x[start:stop]``, in chunks bounded by ``backoff``.
        """
        parts: list[Tensor] = []
        backoff.chunks(self.n, lambda start, stop: parts.append(run(start, stop)))
        return torch.cat(parts)

    def segments(self) -> list[Tensor]:
        """The batch's samples in groups that share one space layout (positions in the batch)."""
        return [torch.arange(self.n, device=self.x.device)]

    def space(self, samples: Tensor, logits: Tensor) -> Space:
        """The space of the samples at ``samples`` (positions in the batch), with their clean ``logits``."""
        return Space(
            self.x[samples],
            samples,
            self.method.forward_fn,
            bounds=self.method.input_bounds,
            feature_shape=self.feature_shape,
            logits=logits,
        )

    def collect(self, space: Space, result: Any) -> None:
        """Keep a chunk's result (its maps, or ``(maps, info)``)."""
        self._parts.append((space.samples, result))

    def result(self) -> Any:
        """The maps of the whole batch in its order (and the info dict when the method returned one)."""
        order = torch.cat([samples for samples, _ in self._parts]).argsort()
        results = [result for _, result in self._parts]
        if isinstance(results[0], tuple):
            maps = torch.cat([r[0] for r in results])[order]
            info = {key: torch.cat([r[1][key] for r in results])[order].detach() for key in results[0][1]}
            return self.finish(maps), info
        return self.finish(torch.cat(results)[order])

    def finish(self, maps: Tensor) -> Tensor:
        """The batch's maps as ``attribute`` returns them: detached, in the dtype and on the device of ``x``."""
        return maps.detach().to(dtype=self.x.dtype, device=self.x.device)
