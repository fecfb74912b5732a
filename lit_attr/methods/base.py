"""The contract every attribution method in lit-attr fulfils.

:class:`AttributionMethod` finds the kind of its inputs (:mod:`lit_attr.inputs`), validates them, resolves targets,
protects the user's model and the global random state, and runs the method in chunks bounded by
``internal_batch_size`` (halved when a chunk runs out of memory, see :mod:`lit_attr._memory`). Subclasses implement
only :meth:`AttributionMethod._attribute`, which sees a fresh, non-inference, gradient-enabled tensor of continuous
points (the inputs themselves, or for token ids their embeddings: :attr:`AttributionMethod.space` says which) and
runs the model on any points through :meth:`AttributionMethod.logits`, in eval mode with parameters that do not
require gradients. A method written to this contract works on every input kind.
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lit_attr._checks import TargetType, check_bounds, resolve_target
from lit_attr._hygiene import preserved_model_state, preserved_rng_state
from lit_attr._memory import MemoryBackoff
from lit_attr.inputs import MethodCall, Space, input_kind
from lit_attr.inputs.tokens import TokenOptions, check_method_token_options
from lit_attr.methods._independence import check_input_dependence

if TYPE_CHECKING:
    from lit_attr.batch import Batch

__all__ = ["AttributionMethod", "BoundsType", "ResultType", "TargetType", "attributions_of"]

#: What :meth:`AttributionMethod.attribute` returns: the attributions, or ``(attributions, info)`` when a method
#: is asked for per-sample diagnostics (MFABA's ``return_info``, IG2's ``return_baseline``, FEI's ``return_masks``).
ResultType = Tensor | tuple[Tensor, dict[str, Tensor]]
BoundsType = tuple[float | Tensor, float | Tensor] | None


class AttributionMethod(abc.ABC):
    """Base class of all attribution methods.

    Args:
        model: the classifier; it is put in eval mode during attribution and restored afterwards.
        forward_fn: callable mapping an input batch to logits ``(N, K)``; defaults to ``model``. Use it when the
            model returns something else (a dict, a tuple, probabilities before a final layer you want to skip).
        input_bounds: ``(low, high)`` valid input range, as scalars or per-channel tensors broadcastable to one
            sample (e.g. shape ``(C, 1, 1)``); path methods clip to it. ``None`` means unbounded.
        internal_batch_size: upper bound on the rows (samples x steps x references) one forward pass sees;
            ``None`` lets the method choose (whole batch). When a chunk runs out of memory
            (``torch.OutOfMemoryError``), the bound is halved and the chunk retried, down to one row; one
            :class:`~lit_attr._memory.OutOfMemoryWarning` names the size that worked, which the method keeps.
        token_options: defaults for token ids (see :meth:`attribute`): a
            :class:`~lit_attr.methods.TokenOptions` (``special_token_ids``, ``mask_token_id``, ``pad_token_id``,
            ``embedding_layer``), or a mapping with those keys and ``baseline_token_id``, ``token_reduction``
            (e.g. ``{"special_token_ids": [101, 102], "token_reduction": "norm"}``, as in ``method_kwargs`` of the
            monitor, ``evaluate`` and YAML configs). They override the model's own ``token_options``; the keywords
            of an ``attribute`` call override them. Kept as the attributes ``token_options`` (a ``TokenOptions``
            or None) and ``token_defaults`` (the per-call keywords).

    Example:
        >>> from lit_attr.methods import get_method
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> method = get_method("saliency", net)
        >>> method.attribute(torch.rand(2, 3, 2, 2), target=1).shape
        torch.Size([2, 3, 2, 2])
    """

    #: Registry name, set by :func:`lit_attr.methods.register_method`.
    name: str = ""
    #: Per-call keywords that may hold one entry per sample (a tensor with ``N`` rows); they are split with ``x``.
    per_sample_kwargs: tuple[str, ...] = ()
    #: Whether the method's step lengths are options in input units (MFABA's ``step_size``, IG2's ``eta``): in a
    #: space that is not the input itself (token embeddings) its points are then measured in units of each
    #: sample's own scale (its mean token-embedding norm), so that the same options fit every model.
    relative_steps: bool = False
    #: How a map in a learned space (token embeddings) becomes one score per feature, unless the call or the method's
    #: ``token_options`` says otherwise: ``"sum"`` (signed) for maps that are a gradient times a displacement (input x
    #: gradient, integrated gradients, MFABA, IG2), ``"norm"`` (L2) for plain gradients, whose signed sum over the
    #: embedding is float noise after a LayerNorm (BERT-style models: its input gradient is orthogonal to the ones
    #: vector). Per-feature maps (FEI's masks, an ablation's scores) need none.
    reduction: str = "sum"
    #: Why the method needs the raw inputs (its radii or patches are in input units), or ``""`` when it works in
    #: any space: a method with a reason refuses inputs that are attributed in a learned space (token ids).
    raw_inputs_only: str = ""

    def __init__(
        self,
        model: nn.Module,
        *,
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        input_bounds: BoundsType = None,
        internal_batch_size: int | None = None,
        token_options: TokenOptions | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"`forward_fn` must be callable or None, got {type(forward_fn).__name__}.")
        if internal_batch_size is not None and (
            not isinstance(internal_batch_size, int) or isinstance(internal_batch_size, bool) or internal_batch_size < 1
        ):
            raise ValueError(f"`internal_batch_size` must be a positive int or None, got {internal_batch_size!r}.")
        self.model = model
        self.forward_fn = forward_fn if forward_fn is not None else model
        self.input_bounds = check_bounds("input_bounds", input_bounds)
        self.internal_batch_size = internal_batch_size
        self.token_options, self.token_defaults = check_method_token_options(token_options)
        self._space: Space | None = None

    # ------------------------------------------------------------------ public API
    def attribute(
        self, x: Tensor, target: TargetType = None, *, logits: Tensor | None = None, **kwargs: Any
    ) -> ResultType:
        """Attribute the target logit of every sample in ``x`` to its input features.

        Args:
            x: input batch ``(N, ...)`` on the model's device, of any registered input kind
                (:func:`lit_attr.inputs.available_input_kinds`): float images ``(N, C, H, W)``, features ``(N, D)``,
                any float ``(N, ...)``, or integer token ids ``(N, L)``. Inference tensors (from Lightning's
                ``validate``/``test``) and calls inside ``torch.no_grad()`` are fine.
            target: class to explain, in any form :mod:`lit_attr._checks` lists: ``None`` (the model's top-1
                prediction), an ``int`` for all samples, or ``N`` class indices.
            logits: the model's logits ``(N, K)`` for ``x`` if the caller already has them; the target is then
                resolved and checked against them instead of running the model once more.
            **kwargs: per-call options of the concrete method, and the keywords of the input kind.

        Returns:
            Signed attributions, detached, with the shape, dtype and device of ``x`` (positive = supports the
            target). Methods that report per-sample diagnostics (e.g. MFABA's ``return_info=True``) return
            ``(attributions, info)`` with ``info`` a dict of ``(N, ...)`` tensors.

        Integer token ids ``x`` of shape ``(N, L)`` (with ``attention_mask=``, ``special_tokens_mask=``,
        ``special_token_ids=``, ``baseline_token_id=``, ``embedding_layer=``, ``token_reduction=``) are attributed in
        the embedding space of the model's input embedding layer (:mod:`lit_attr.inputs.embedding`) and give
        ``(N, L)`` float per-token scores, exactly 0 on padding and special tokens. The constructor's
        ``token_options`` give defaults for these keywords. ``embedding_offset=`` ``(N, L, E)`` explains the
        sentences with their word embeddings moved by it (the model sees the moved ones; the robustness metrics'
        neighbours; ``logits=`` given with it must be those of the moved sentences), ``embedding_shift=c`` a model
        whose embedding layer adds ``c`` to every embedding and takes it off again (input invariance).
        """
        chosen = self.internal_batch_size
        backoff = MemoryBackoff(self.name or type(self).__name__, chosen)
        try:
            if not isinstance(x, Tensor):
                raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}.")
            kind = input_kind(x, kwargs)
            if self.raw_inputs_only and not kind.continuous:
                raise ValueError(
                    f"{self.name or type(self).__name__} needs the raw inputs ({self.raw_inputs_only}), but "
                    f"{kind.name} inputs are attributed in {kind.space_name}."
                )
            call = kind.method_call(self, x, kwargs)
            self._check_keywords(call.kwargs)
            try:
                result = self._run(call, target, logits, backoff)
            except RuntimeError as error:
                hint = None if isinstance(error, torch.OutOfMemoryError) else kind.failure_hint(self, x)
                if hint is None:
                    raise
                raise TypeError(hint) from error
        except BaseException:
            self.internal_batch_size = chosen
            raise
        # A bound that had to shrink stays: the next batches start with the size that worked.
        self.internal_batch_size = backoff.finish()
        return result

    @property
    def space(self) -> Space:
        """The space of the chunk being attributed: the points, their forward, bounds, baseline and features.

        Only defined inside :meth:`_attribute`; see :class:`lit_attr.inputs.Space`.
        """
        if self._space is None:
            raise RuntimeError("`space` is only defined while the method attributes a chunk (inside _attribute).")
        return self._space

    def _run(self, call: MethodCall, target: TargetType, logits: Tensor | None, backoff: MemoryBackoff) -> ResultType:
        """Attribute every sample of ``call``, segment by segment, in chunks whose bound ``backoff`` halves."""
        with preserved_model_state(self.model), preserved_rng_state(), call.installed():
            with torch.inference_mode(False), torch.enable_grad():
                call.prepare()
                logits = self._clean_logits(call, logits, backoff)
                target = resolve_target(target, logits).to(logits.device)
                rows_per_sample = max(1, self.rows_per_sample(**call.kwargs))
                for samples in call.segments():
                    step = functools.partial(self._attribute_chunk, call, samples, target, logits)
                    backoff.run(samples.numel(), step, unbounded=samples.numel() * rows_per_sample)
        return call.result()

    def _clean_logits(self, call: MethodCall, logits: Tensor | None, backoff: MemoryBackoff) -> Tensor:
        """The caller's logits, checked, or the model's on the clean inputs (non-finite ones name the sample)."""
        if logits is None:

            def run(start: int, stop: int) -> Tensor:
                try:
                    return self.logits(call.x[start:stop])
                except _NonFiniteLogitsError as error:  # here rows are samples
                    raise self._non_finite_error(_which([start + row for row in error.rows])) from error

            with torch.no_grad():  # inside the caller's preserved_model_state (one snapshot of the model per call)
                return call.clean_logits(run, backoff).detach()
        n = call.n
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"`logits` must be the model's logits (N, K) = ({n}, K) for `x`, got {shape}.")
        bad = (~torch.isfinite(logits.detach()).all(dim=1)).nonzero()[:, 0].tolist()
        if bad:
            raise self._non_finite_error(_which(bad))
        return logits.detach()

    def _attribute_chunk(
        self, call: MethodCall, samples: Tensor, target: Tensor, logits: Tensor, start: int, size: int | None
    ) -> int:
        """Attribute the samples from ``start`` that fit ``size`` forward rows; return where the next chunk starts.

        ``size`` becomes ``internal_batch_size`` for the call, so the rows loops inside ``_attribute`` (IG2's, BIG's,
        Captum's own batching) honour a bound that the memory back-off halved.
        """
        self.internal_batch_size = size
        part = samples[start : start + self._samples_per_chunk(**call.kwargs)]
        space = call.space(part, logits[part])
        try:
            with self._in_space(space):
                result = self._attribute(space.z, target[part], **self._chunk_kwargs(call, part))
                # All-zero maps: say so when the cause is a target logit that ignores the input (a zero head).
                check_input_dependence(self, target[part], result[0] if isinstance(result, tuple) else result)
        except _NonFiniteLogitsError as error:
            culprits = self._culprits(call, part, target, logits)
            which = f"sample {culprits[0]}" if len(culprits) == 1 else f"one of samples {culprits}"
            raise self._non_finite_error(f"along the path of {which}") from error
        call.collect(space, result)
        return start + part.numel()

    @contextmanager
    def _in_space(self, space: Space) -> Iterator[None]:
        outer, self._space = self._space, space
        try:
            yield
        finally:
            self._space = outer

    def _culprits(self, call: MethodCall, part: Tensor, target: Tensor, logits: Tensor) -> list[int]:
        """Samples of a chunk whose path meets non-finite logits, found by attributing them one at a time.

        Path rows do not map back to samples in a way common to all methods, but methods are batch-independent.
        Returns every sample of the chunk when a lone sample cannot be attributed (e.g. references drawn from
        the batch).
        """
        chunk = part.tolist()
        if len(chunk) == 1:
            return chunk
        for i in range(len(chunk)):
            one = part[i : i + 1]
            space = call.space(one, logits[one])
            try:
                with self._in_space(space):
                    self._attribute(space.z, target[one], **self._chunk_kwargs(call, one))
            except _NonFiniteLogitsError:
                return [chunk[i]]
            except Exception:  # noqa: BLE001 - cannot run alone: name the whole chunk
                break
        return chunk

    def _chunk_kwargs(self, call: MethodCall, part: Tensor) -> dict[str, Any]:
        """The per-call keywords of the samples ``part``: per-sample ones (:attr:`per_sample_kwargs`) are split."""
        if part.numel() == call.n:
            return call.kwargs
        return {
            key: value[part.to(value.device)]
            if key in self.per_sample_kwargs and isinstance(value, Tensor) and value.ndim and value.shape[0] == call.n
            else value
            for key, value in call.kwargs.items()
        }

    def __call__(self, x: Tensor, target: TargetType = None, **kwargs: Any) -> ResultType:
        """Alias of :meth:`attribute`."""
        return self.attribute(x, target, **kwargs)

    def prepare(self, data: Batch) -> None:  # noqa: B027 (an optional hook, deliberately empty by default)
        """Receive data beyond the batch being explained; the default ignores it.

        Orchestrators (the callbacks, ``evaluate``, ``AttributionQuality``, the runner) call it once with the
        data they have at hand (a probe set, the first samples of a split, the current batch) before attributing.
        It is the one way a method receives such data: IG2 draws its references from it. Methods that need nothing
        beyond the batch keep this default.

        Args:
            data: labelled samples as a :class:`~lit_attr.batch.Batch`.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={type(self.model).__name__})"

    # ------------------------------------------------------------------ for subclasses
    @abc.abstractmethod
    def _attribute(self, x: Tensor, target: Tensor, **kwargs: Any) -> ResultType:
        """Compute attributions for one chunk; ``x`` is a fresh copy of its points, ``target`` an ``(n,)`` long tensor.

        ``x`` is :attr:`space`'s ``z``: the inputs themselves, or for token ids their embeddings (plus a feature
        naming each row's sample, which no gradient reaches). Return maps of ``x``'s shape, or per-feature maps of
        shape ``(n, *space.feature_shape)``; :meth:`Space.expand_features` gives the form ``attribute`` returns.
        May return ``(attributions, info)`` where every value of ``info`` has the chunk's samples first.
        """

    def rows_per_sample(self, **kwargs: Any) -> int:
        """How many forward rows one sample costs at once; the base class chunks samples by it."""
        return 1

    def call_keywords(self) -> set[str] | None:
        """The per-call keywords :meth:`_attribute` takes (``None``: any); others are refused before any work."""
        parameters = list(inspect.signature(self._attribute).parameters.values())[2:]
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return None
        return {p.name for p in parameters}

    def _check_keywords(self, kwargs: Mapping[str, Any]) -> None:
        if not kwargs:
            return
        accepted = self.call_keywords()
        unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
        if unknown:
            raise TypeError(
                f"{', '.join(f'`{key}`' for key in unknown)}: not an option of {self.name or type(self).__name__}, "
                f"whose attribute() takes {sorted(accepted)} besides x, target and logits (and the keywords of "
                "its input kind)."
            )

    def logits(self, x: Tensor) -> Tensor:
        """Run the model on points of the current space (the inputs outside ``_attribute``); check the logits.

        The model's output must be ``(N, K)`` finite logits; non-finite logits raise a ``ValueError`` from
        :meth:`attribute` that names the method and the sample.
        """
        out = (self._space.forward if self._space is not None else self.forward_fn)(x)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"The model returned {type(out).__name__}, but attribution needs a tensor of logits (N, K). "
                "Pass `forward_fn=lambda x: model(x)[...]` to select the logits."
            )
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"The model output must be logits of shape (N, K) = ({x.shape[0]}, K), got {tuple(out.shape)}. "
                "Pass `forward_fn=` mapping inputs to (N, K) logits."
            )
        bad = ~torch.isfinite(out.detach()).all(dim=1)
        if bool(bad.any()):
            raise _NonFiniteLogitsError(bad.nonzero()[:, 0].tolist())
        return out

    def clip(self, x: Tensor) -> Tensor:
        """Project ``x`` onto the bounds of the current space (``input_bounds`` outside ``_attribute``)."""
        bounds = self._space.bounds if self._space is not None else self.input_bounds
        if bounds is None:
            return x
        low, high = (b.to(x) if isinstance(b, Tensor) else b for b in bounds)
        return torch.clamp(x, low, high)

    def resolve_target(self, x: Tensor, target: TargetType, logits: Tensor | None = None) -> Tensor:
        """Turn ``target`` into an ``(N,)`` long tensor on ``x``'s device, validated against the model's logits.

        Args:
            x: a batch of float inputs.
            target: any form :func:`lit_attr._checks.resolve_target` accepts.
            logits: the logits of ``x`` if already computed (checked for shape); else the model runs once.
        """
        call = MethodCall(self, x, {})
        backoff = MemoryBackoff(self.name or type(self).__name__, self.internal_batch_size)
        with preserved_model_state(self.model):
            logits = self._clean_logits(call, logits, backoff)
        backoff.finish()
        return resolve_target(target, logits).to(x.device)

    # ------------------------------------------------------------------ internals
    def _non_finite_error(self, where: str) -> ValueError:
        return ValueError(
            f"{self.name or type(self).__name__}: the model returned NaN or infinite logits {where} (position in "
            "the batch passed to attribute()); check the model's numerics on inputs near it."
        )

    def _samples_per_chunk(self, **kwargs: Any) -> int:
        if self.internal_batch_size is None:
            return 2**62
        return max(1, self.internal_batch_size // max(1, self.rows_per_sample(**kwargs)))


def _which(rows: list[int]) -> str:
    """The clean inputs of these samples, in a non-finite-logits message."""
    return f"for the input of sample {rows[0]}" if len(rows) == 1 else f"for the input of samples {rows}"


class _NonFiniteLogitsError(ValueError):
    """Raised by :meth:`AttributionMethod.logits`; :meth:`~AttributionMethod.attribute` names the sample."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__(f"the model returned NaN or infinite logits in rows {rows}")
        self.rows = rows


def attributions_of(result: ResultType) -> Tensor:
    """The attributions of an :meth:`AttributionMethod.attribute` result, with or without its ``info`` dict.

    Example:
        >>> a = torch.ones(2, 3)
        >>> attributions_of((a, {"steps": torch.tensor([1, 2])})) is attributions_of(a)
        True
    """
    return result[0] if isinstance(result, tuple) else result
