"""Classic baselines from Captum behind the :class:`~lit_attr.methods.base.AttributionMethod` contract.

One adapter, :class:`CaptumMethod`, wraps any Captum attribution class; the registry entries below only choose
defaults. Nothing here re-implements an attribution rule.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import captum.attr as ca
import torch
from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
from torch import Tensor, nn

from lit_attr._checks import check_choice, check_number, check_positive, check_seed
from lit_attr._hygiene import row_seed, seed_everything_locally
from lit_attr.inputs.tokens import TokenOptions
from lit_attr.methods.base import AttributionMethod, BoundsType
from lit_attr.methods.registry import register_method
from lit_attr.methods.structure import reused_modules, takes_raw_inputs

BatchKwargs = Callable[[int, int], dict[str, int]]
#: Captum's integration rules for integrated gradients.
IG_RULES = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")


class _ForwardModule(nn.Module):
    """Presents a forward function as a module for Captum methods that hook layers (DeepLift); ``model`` is a child."""

    def __init__(self, model: nn.Module, forward_fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self._forward_fn = forward_fn

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_fn(x)


class CaptumMethod(AttributionMethod):
    """Adapter from a Captum attribution class to lit-attr's contract.

    Args:
        model: the classifier (returns logits).
        attribution: a Captum attribution class (e.g. ``captum.attr.Saliency``) or a callable that builds one
            from the forward function (e.g. ``lambda f: NoiseTunnel(Saliency(f))``). Classes whose constructor
            takes a ``model`` (DeepLift, GuidedBackprop, ...) receive a module.
        rows_per_sample: forward rows one sample costs: an int, or the name of an attribute keyword holding it
            (e.g. ``"n_steps"``); used to honour ``internal_batch_size``.
        batch_kwargs: maps ``(internal_batch_size, samples_in_chunk)`` to Captum's own batching keywords.
        reduction: how a map in a learned space becomes one score per feature (see
            :attr:`~lit_attr.methods.AttributionMethod.reduction`): ``"sum"``, or ``"norm"`` for plain gradients.
        raw_inputs_only: why the Captum method needs the raw inputs (see
            :attr:`~lit_attr.methods.AttributionMethod.raw_inputs_only`), or ``""``.
        stochastic: the Captum method draws random numbers. Each sample is then attributed under its own seed,
            derived from ``seed`` and the sample's values, so results are reproducible and do not depend on
            which other samples share the batch; the global RNG state is restored afterwards.
        seed: base seed for stochastic methods.
        forward_fn: see :class:`AttributionMethod`.
        input_bounds: see :class:`AttributionMethod`.
        internal_batch_size: see :class:`AttributionMethod`.
        token_options: defaults for token ids; see :class:`~lit_attr.methods.base.AttributionMethod`.
        **attribute_kwargs: forwarded to the Captum ``attribute`` call (e.g. ``n_steps=50``); per-call keywords
            given to :meth:`attribute` override them. Per-call ``baselines`` with one row per sample are split
            with ``x`` when ``internal_batch_size`` chunks the batch.

    Example:
        >>> from captum.attr import InputXGradient
        >>> net = nn.Sequential(nn.Linear(4, 2))
        >>> CaptumMethod(net, InputXGradient).attribute(torch.ones(1, 4), target=0).shape
        torch.Size([1, 4])
    """

    per_sample_kwargs = ("baselines",)

    def __init__(
        self,
        model: nn.Module,
        attribution: type | Callable[[Any], Any],
        *,
        rows_per_sample: int | str = 1,
        batch_kwargs: BatchKwargs | None = None,
        reduction: str = "sum",
        raw_inputs_only: str = "",
        stochastic: bool = False,
        seed: int = 0,
        forward_fn: Callable[[Tensor], Tensor] | None = None,
        input_bounds: BoundsType = None,
        internal_batch_size: int | None = None,
        token_options: TokenOptions | Mapping[str, Any] | None = None,
        **attribute_kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            forward_fn=forward_fn,
            input_bounds=input_bounds,
            internal_batch_size=internal_batch_size,
            token_options=token_options,
        )
        if not callable(attribution):
            raise TypeError(f"`attribution` must be a Captum attribution class or factory, got {attribution!r}.")
        self._rows_per_sample = rows_per_sample
        self.reduction = check_choice("reduction", reduction, ("sum", "norm"))
        self.raw_inputs_only = raw_inputs_only
        self._batch_kwargs = batch_kwargs
        self.stochastic = stochastic
        self.seed = check_seed(seed)
        self.attribute_kwargs = attribute_kwargs
        self.captum = attribution(self._captum_forward_arg(attribution))
        _check_attribute_kwargs(self.captum, attribute_kwargs)
        self._takes_baselines = "baselines" in (_attribute_parameters(self.captum) or ())

    def call_keywords(self) -> set[str] | None:
        """The keywords of the Captum ``attribute`` call (``None`` where it takes any)."""
        return _attribute_parameters(self.captum)

    def _captum_forward_arg(self, attribution: Any) -> Any:
        wants_module = False
        if inspect.isclass(attribution):
            params = list(inspect.signature(attribution.__init__).parameters)
            wants_module = len(params) > 1 and params[1] == "model"
        # Either way Captum's forward goes through self.logits, which checks the output (shape, finite values).
        return _ForwardModule(self.model, self.logits) if wants_module else self.logits

    def rows_per_sample(self, **kwargs: Any) -> int:
        """Rows per sample implied by ``rows_per_sample`` and the merged keywords."""
        if isinstance(self._rows_per_sample, int):
            return self._rows_per_sample
        return int({**self.attribute_kwargs, **kwargs}[self._rows_per_sample])

    def _attribute(self, x: Tensor, target: Tensor, **kwargs: Any) -> Tensor:
        x.requires_grad_(True)
        options = self._shape_options(x, {**self.attribute_kwargs, **kwargs})
        baseline = self.space.baseline if self._takes_baselines else None
        if baseline is not None:
            if "baselines" in kwargs:
                raise ValueError(
                    "`baselines` does not apply to these inputs: their kind gives the baseline (for token ids, the "
                    "embedding of `baseline_token_id` at every perturbable position)."
                )
            options["baselines"] = baseline
        if self.internal_batch_size is not None and self._batch_kwargs is not None:
            options.update(self._batch_kwargs(self.internal_batch_size, x.shape[0]))
        with warnings.catch_warnings():
            # Captum announces that it hooks non-linearities (DeepLift); we remove nothing it does not.
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks", category=UserWarning)
            if not self.stochastic:
                return self.captum.attribute(x, target=target, **options)
            parts = []
            for row, label in zip(x.split(1), target.split(1), strict=True):
                seed_everything_locally(row_seed(self.seed, row))
                parts.append(self.captum.attribute(row, target=label, **options))
        return torch.cat(parts)


    def _shape_options(self, x: Tensor, options: dict[str, Any]) -> dict[str, Any]:
        """Fill in Captum keywords that depend on the input's shape; the default adds nothing."""
        return options


def _check_attribute_kwargs(captum: Any, options: dict[str, Any]) -> None:
    """Refuse options that the Captum ``attribute`` call would not take (a typo fails here, not at the first batch)."""
    accepted = _attribute_parameters(captum)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise TypeError(
            f"{', '.join(f'`{name}`' for name in unknown)}: not an option of {type(captum).__name__}.attribute, which "
            f"takes {sorted(accepted)} (and the options of lit-attr's AttributionMethod)."
        )


def _attribute_parameters(captum: Any) -> set[str] | None:
    """The keywords a Captum object's ``attribute`` takes besides the inputs and target; None if it takes any."""
    parameters = inspect.signature(captum.attribute).parameters.values()
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"inputs", "target"}
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        inner = getattr(captum, "attribution_method", None)  # NoiseTunnel passes the rest on to the wrapped method
        if inner is None:
            return None
        deeper = _attribute_parameters(inner)
        return None if deeper is None else names | deeper
    return names


def _check_stdevs(stdevs: Any) -> None:
    if check_number("stdevs", stdevs) < 0:
        raise ValueError(f"`stdevs` must be a number >= 0 (the noise's standard deviation), got {stdevs!r}.")


def _low_bound(method_kwargs: dict[str, Any]) -> Any:
    """The default baseline: the lower input bound when given (black image in [0, 1]), else zeros."""
    bounds = method_kwargs.get("input_bounds")
    return 0.0 if bounds is None else bounds[0]


@register_method("saliency")
def saliency(model: nn.Module, *, abs: bool = False, **kwargs: Any) -> CaptumMethod:  # noqa: A002
    """Input gradient (Simonyan et al. 2014), signed by default (``abs=True`` gives Captum's absolute map).

    On token ids its per-token score is the L2 norm of the embedding gradient (``reduction="norm"``).
    """
    return CaptumMethod(model, ca.Saliency, abs=abs, reduction="norm", **kwargs)


@register_method("input_x_gradient")
def input_x_gradient(model: nn.Module, **kwargs: Any) -> CaptumMethod:
    """Input times gradient (Shrikumar et al. 2016)."""
    return CaptumMethod(model, ca.InputXGradient, **kwargs)


@register_method("integrated_gradients")
def integrated_gradients(
    model: nn.Module, *, n_steps: int = 50, method: str = "gausslegendre", baselines: Any = None, **kwargs: Any
) -> CaptumMethod:
    """Integrated gradients (Sundararajan et al. 2017) from ``baselines`` (default: the lower input bound or 0)."""
    check_positive("n_steps", n_steps, int)
    check_choice("method", method, IG_RULES)
    return CaptumMethod(
        model,
        ca.IntegratedGradients,
        rows_per_sample="n_steps",
        batch_kwargs=lambda ibs, n: {"internal_batch_size": ibs},
        n_steps=n_steps,
        method=method,
        baselines=_low_bound(kwargs) if baselines is None else baselines,
        **kwargs,
    )


@register_method("smoothgrad", applies_to=takes_raw_inputs)
def smoothgrad(model: nn.Module, *, nt_samples: int = 16, stdevs: float = 0.15, seed: int = 0, **kwargs: Any) -> Any:
    """SmoothGrad (Smilkov et al. 2017): signed gradients averaged over ``nt_samples`` noisy copies."""
    check_positive("nt_samples", nt_samples, int)
    _check_stdevs(stdevs)
    return CaptumMethod(
        model,
        lambda f: ca.NoiseTunnel(ca.Saliency(f)),
        rows_per_sample="nt_samples",
        batch_kwargs=lambda ibs, n: {"nt_samples_batch_size": max(1, ibs // n)},
        raw_inputs_only="its noise's `stdevs` are in input units",
        reduction="norm",
        stochastic=True,
        seed=seed,
        nt_type="smoothgrad",
        nt_samples=nt_samples,
        stdevs=stdevs,
        abs=False,
        **kwargs,
    )


class OcclusionMethod(CaptumMethod):
    """Captum's Occlusion with patch shapes derived from the input (see :func:`occlusion`)."""

    def __init__(self, model: nn.Module, *, window: int | None = None, stride: int | None = None, **kwargs: Any):
        for arg, value in (("window", window), ("stride", stride)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{arg}` must be a positive int or None, got {value!r}.")
        super().__init__(
            model,
            ca.Occlusion,
            batch_kwargs=lambda ibs, n: {"perturbations_per_eval": max(1, ibs // n)},
            raw_inputs_only="its patches are windows of input elements",
            **kwargs,
        )
        self.window = window
        self.stride = stride

    def _shape_options(self, x: Tensor, options: dict[str, Any]) -> dict[str, Any]:
        if x.ndim == 4:
            size = self.window or max(1, min(x.shape[2:]) // 8)
            step = self.stride or max(1, size // 2)
            shapes = {"sliding_window_shapes": (x.shape[1], size, size), "strides": (x.shape[1], step, step)}
        else:
            shapes = {"sliding_window_shapes": (1,) * (x.ndim - 1), "strides": 1}
        # Captum evaluates one patch position per forward by default; batch positions up to ~256 rows.
        shapes["perturbations_per_eval"] = max(1, 256 // x.shape[0])
        return {**shapes, **options}


@register_method("occlusion", applies_to=takes_raw_inputs)
def occlusion(
    model: nn.Module, *, window: int | None = None, stride: int | None = None, baselines: Any = None, **kwargs: Any
) -> CaptumMethod:
    """Occlusion (Zeiler & Fergus 2014) with square patches on images, single features otherwise.

    For ``(N, C, H, W)`` inputs the patch is ``window`` x ``window`` pixels over all channels (default
    ``max(1, min(H, W) // 8)``) moved by ``stride`` (default half the window); other inputs occlude one element at
    a time. Patches are replaced by ``baselines`` (default: the lower input bound or 0).
    """
    baselines = _low_bound(kwargs) if baselines is None else baselines
    return OcclusionMethod(model, window=window, stride=stride, baselines=baselines, **kwargs)


def _deeplift_runs(model: nn.Module) -> bool:
    """Raw inputs, and no nonlinearity Captum's DeepLift hooks is called twice per forward (it keeps one input each)."""
    return takes_raw_inputs(model) and not reused_modules(model, tuple(SUPPORTED_NON_LINEAR))


@register_method("deeplift", applies_to=_deeplift_runs)
def deeplift(model: nn.Module, *, baselines: Any = None, **kwargs: Any) -> CaptumMethod:
    """DeepLIFT rescale rule (Shrikumar et al. 2017); needs ReLUs as modules (Captum hooks them)."""
    baselines = _low_bound(kwargs) if baselines is None else baselines
    # Captum runs each input together with its baseline: two rows per sample.
    return CaptumMethod(
        model,
        ca.DeepLift,
        rows_per_sample=2,
        baselines=baselines,
        raw_inputs_only="its rescale rule runs from the model's input",
        **kwargs,
    )


class GradientShapMethod(CaptumMethod):
    """Captum's GradientShap whose default baselines are constant inputs at the input bounds."""

    # Its baselines are a distribution to draw from, not one per sample: never split them.
    per_sample_kwargs = ()

    def _shape_options(self, x: Tensor, options: dict[str, Any]) -> dict[str, Any]:
        if options.get("baselines") is not None:
            return options
        levels = [0.0] if self.input_bounds is None else list(self.input_bounds)
        reference = torch.zeros_like(x[0])
        baselines = torch.stack([reference + (lv.to(x) if isinstance(lv, Tensor) else lv) for lv in levels])
        return {**options, "baselines": baselines}


@register_method("gradient_shap", applies_to=takes_raw_inputs)
def gradient_shap(
    model: nn.Module,
    *,
    baselines: Tensor | None = None,
    n_samples: int = 20,
    stdevs: float = 0.09,
    seed: int = 0,
    **kwargs: Any,
) -> CaptumMethod:
    """GradientSHAP (Lundberg & Lee 2017) with ``n_samples`` random points between baselines and input.

    ``baselines`` is a tensor ``(B, ...)`` of reference inputs; the default is the lower and upper input bounds
    when given (a black and a white image), else a single zero input.
    Captum draws all ``n_samples`` points of a sample in one forward, so ``internal_batch_size`` must be at least
    ``n_samples``.
    """
    check_positive("n_samples", n_samples, int)
    _check_stdevs(stdevs)
    ibs = kwargs.get("internal_batch_size")
    if isinstance(ibs, int) and ibs < n_samples:
        raise ValueError(
            f"`internal_batch_size` ({ibs}) must be >= `n_samples` ({n_samples}) for gradient_shap: Captum "
            "evaluates all of a sample's random points in one forward."
        )
    return GradientShapMethod(
        model,
        ca.GradientShap,
        rows_per_sample="n_samples",
        raw_inputs_only="its baselines are a distribution of inputs",
        stochastic=True,
        seed=seed,
        baselines=baselines,
        n_samples=n_samples,
        stdevs=stdevs,
        **kwargs,
    )
