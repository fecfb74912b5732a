"""Randomisation and axiom checks of issue #26: random logit, completeness, non-sensitivity, input invariance.

* :func:`random_logit` (Sixt et al. 2020): how similar the map of the target is to the map of a random other class;
* :func:`completeness` (Sundararajan et al. 2017): how far the map's sum is from ``f(x) - f(baseline)``;
* :func:`non_sensitivity` (Nguyen & Martinez 2020): how many units have zero attribution but move the output, or the
  reverse;
* :func:`input_invariance` (Kindermans et al. 2017): whether the method gives the same map to a model that sees every
  input shifted by a constant and undoes the shift first.

:func:`random_logit` and :func:`input_invariance` run the attribution method (any object with ``attribute`` and
``resolve_target``: :class:`lit_attr.methods.AttributionMethod`); the others run the model on perturbed inputs like
the unit games (:mod:`lit_attr.functional.unit_games`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lit_attr._checks import (
    TargetType,
    check_int,
    check_names,
    check_number,
    check_seed,
)
from lit_attr._hygiene import preserved_model_state, row_seed
from lit_attr.functional.completeness import completeness_error
from lit_attr.functional.infidelity import Explainer
from lit_attr.functional.perturbation import DEFAULT_INTERNAL_BATCH_SIZE, SubstrateType
from lit_attr.functional.robustness import _maps, check_given, check_method, checked_kind, explain_batch
from lit_attr.functional.similarity import spearman, ssim_maps
from lit_attr.functional.unit_games import (
    batch_fields,
    draw_outputs,
    game_fill,
    index_groups,
    kind_substrate,
    masked_outputs,
    prepare_game,
)
from lit_attr.functional.units import map_units, valid_units
from lit_attr.inputs.neighbourhood import shifted_method

__all__ = [
    "MAP_SIMILARITIES",
    "completeness",
    "input_invariance",
    "map_similarity",
    "non_sensitivity",
    "random_logit",
    "shifted_method",
]

#: Similarities of two maps: Spearman of the absolute or signed unit scores, SSIM of image heatmaps.
MAP_SIMILARITIES = ("ssim", "spearman_abs", "spearman")


def map_similarity(a: Tensor, b: Tensor, similarity: str = "ssim") -> Tensor:
    """``(N,)`` similarity of ``a[i]`` and ``b[i]``, the randomisation check's measures (higher: more alike).

    ``"spearman_abs"``/``"spearman"``: Spearman's rank correlation of the absolute / signed unit scores (an image
    pixel's channels summed); ``"ssim"``: SSIM of the min-max normalised absolute heatmaps (images only).

    Example:
        >>> a = torch.arange(64.0).view(1, 8, 8)
        >>> map_similarity(a, 2 * a, "spearman_abs"), map_similarity(a, 2 * a)
        (tensor([1.]), tensor([1.]))
    """
    names = check_names("similarity", similarity, MAP_SIMILARITIES, what="similarity measure")
    if len(names) != 1:
        raise ValueError(f"`similarity` must name one measure of {MAP_SIMILARITIES}, got {similarity!r}.")
    reduce = "sum" if similarity == "spearman" else "abs_sum"
    ua, ub = map_units(a, reduce), map_units(b, reduce)
    if similarity == "ssim":
        if a.ndim not in (3, 4) or len(ua.shape) != 2:
            raise ValueError(
                f"similarity 'ssim' needs image maps (N, C, H, W) or (N, H, W), got shape {tuple(a.shape)}; use "
                "'spearman_abs' for other inputs."
            )
        return ssim_maps(ua.scores.view(-1, *ua.shape), ub.scores.view(-1, *ub.shape))
    return spearman(ua.scores, ub.scores)


def random_logit(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    attributions: Tensor | None = None,
    similarity: str = "ssim",
    seed: int = 0,
    logits: Tensor | None = None,
    **attribute_kwargs: Any,
) -> Tensor:
    """Random logit test of Sixt et al. (2020) per sample: lower is better (the map depends on the class).

    The method explains every sample for its target and for a class drawn uniformly among the others (from a
    generator seeded by ``seed`` and the sample's values; Quantus draws from NumPy's global state); the score is the
    similarity of the two maps, SSIM as in the paper by default. Cost: one attribution per sample. Token ids ``(N, L)``
    take their ``attention_mask`` / ``special_tokens_mask`` and other model inputs as ``attribute_kwargs``: the maps
    are compared over a sentence's real tokens that are not special (``"spearman_abs"`` or ``"spearman"``; SSIM
    needs images), and the other class is drawn from those tokens' ids, so padding changes nothing.

    Args:
        method: the attribution method.
        x: ``(N, ...)`` inputs on the model's device.
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        attributions: the method's maps of ``x`` for ``target`` if already computed.
        similarity: ``"ssim"`` (images), ``"spearman_abs"`` or ``"spearman"`` (:func:`map_similarity`).
        seed: seed of the other classes.
        logits: the model's logits for ``x`` if already computed.
        **attribute_kwargs: per-call options of ``method.attribute``.

    Returns:
        ``(N,)`` similarities.

    Example:
        >>> from lit_attr.methods import get_method
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        >>> random_logit(get_method("saliency", net), torch.rand(2, 3, 8, 8)).shape
        torch.Size([2])
    """
    method = check_method(method)
    kind = checked_kind(method, x, attribute_kwargs)
    check_given(x, attributions, logits)
    check_names("similarity", similarity, MAP_SIMILARITIES, what="similarity measure")
    check_seed(seed)
    if logits is None:
        with torch.no_grad(), preserved_model_state(method.model):
            logits = kind.model_logits(getattr(method, "forward_fn", method.model), x, attribute_kwargs)
    target = method.resolve_target(x, target, logits)
    classes = logits.shape[1]
    if classes < 2:
        raise ValueError(f"The random logit test needs a model with at least 2 classes, got {classes}.")
    valid = valid_units(attribute_kwargs.get("attention_mask"), attribute_kwargs.get("special_tokens_mask"))
    rows = x if valid is None else [row[keep.to(row.device)] for row, keep in zip(x, valid.bool(), strict=True)]
    draws = [int(torch.randint(classes - 1, (1,), generator=torch.Generator().manual_seed(row_seed(seed, row))))
             for row in rows]  # fmt: skip
    other = torch.tensor(draws, device=target.device)
    other = other + (other >= target).long()  # a class among the K - 1 others
    own = _maps(method.attribute(x, target, **attribute_kwargs)) if attributions is None else attributions
    own = own.to(x) if x.is_floating_point() else own
    theirs = _maps(method.attribute(x, other, **attribute_kwargs))
    if valid is None:
        return map_similarity(own, theirs, similarity)
    # A sentence's own tokens only: the zeros of padding and special tokens would rank alike in any two maps.
    if similarity == "ssim":
        raise ValueError(
            f"similarity 'ssim' needs image maps (N, C, H, W) or (N, H, W), got token maps {tuple(own.shape)}; use "
            "'spearman_abs' for other inputs."
        )
    pairs = zip(own, theirs, valid.to(own.device).bool(), strict=True)
    return torch.cat([map_similarity(a[keep][None], b[keep][None], similarity) for a, b, keep in pairs])


def completeness(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    substrate: SubstrateType | None = None,
    substrate_value: object = None,
    seed: int = 0,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Relative completeness error per sample, ``|sum(A) - (f(x) - f(x'))| / |f(x) - f(x')|``: lower is better.

    ``f`` is the target's logit and ``x'`` the baseline: every unit of ``x`` taken from the kind's substrate (zeros
    by default, the baseline of integrated gradients, for which the error is 0 up to the integral's approximation;
    the [MASK] id on token ids, the baseline the methods integrate from in the embedding space, so the per-token
    sums of integrated gradients complete too). ``sum(A)`` runs over the units that count (not padding or special
    tokens, which keep their ids in ``x'``). The error is undefined where ``f(x) = f(x')`` (NaN there). Quantus
    reports whether the two are close (a bool); the relative error says how far. See
    :func:`~lit_attr.functional.completeness.completeness_error`. Cost: one forward per sample.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (token ids: ``(N, L)`` per token, summed over the embedding).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        substrate: the baseline: ``None`` (zeros, or the [MASK] id of token ids), or a substrate of the kind (see
            :func:`~lit_attr.functional.perturbation.make_substrate`).
        substrate_value: the fill of ``"constant"``.
        seed: seed of a ``"noise"`` baseline.
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding stays in the baseline).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (they stay in the baseline).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).

    Returns:
        ``(N,)`` relative errors, NaN where the output does not change.

    Example:
        >>> net = nn.Linear(4, 2)
        >>> _ = net.weight.data.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.5, 1.0, -1.0, 2.0]]))
        >>> x = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.9, 0.1, 0.3, 0.5]])
        >>> completeness(net, x, x * net.weight[net(x).argmax(dim=1)].detach()).abs().max() < 1e-5  # IG from zero
        tensor(True)
    """
    if not isinstance(attributions, Tensor) or attributions.shape != getattr(x, "shape", None):
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__
        raise ValueError(f"`attributions` must have the shape of x {tuple(getattr(x, 'shape', ()))}, got {shape}.")
    game = prepare_game(
        model, x, attributions, target, logits, reduce="none", output="logit", internal_batch_size=None,
        fields=batch_fields(attention_mask, special_tokens_mask, model_inputs), who="completeness",
    )  # fmt: skip
    fill = game_fill(model, game, substrate, x, value=substrate_value, seed=seed)
    everything = masked_outputs(
        model, game, x, fill, lambda samples, rows: torch.ones_like(game.units[samples], dtype=torch.bool), 1,
        output="logit", internal_batch_size=None, who="completeness",
    )  # fmt: skip
    delta = game.clean - everything[:, 0]
    units = game.units if game.valid is None else game.units * game.valid
    defined = delta != 0
    errors = torch.full_like(game.clean, float("nan"))
    if bool(defined.any()):
        errors[defined] = completeness_error(units[defined].to(errors), delta[defined]).to(errors)
    return errors


def non_sensitivity(
    model: nn.Module,
    x: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    *,
    features_per_step: int = 1,
    eps: float = 1e-5,
    tolerance: float = 1e-5,
    n_samples: int = 10,
    substrate: SubstrateType | None = None,
    substrate_value: object = None,
    output: str = "prob",
    seed: int = 0,
    internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Non-sensitivity of Nguyen & Martinez (2020) per sample: lower is better, 0 at best.

    The units (in index order, ``features_per_step`` at a time) split two ways: zero attribution (every unit's
    ``|a|`` at most ``eps`` times the map's largest) or not, and the model not sensitive to them (the target's score
    moves by at most ``tolerance`` over ``n_samples`` random draws of them: the kind's seeded ``"noise"``) or
    sensitive. The score counts the groups where the two disagree (a symmetric difference): a unit with zero
    attribution that moves the model, or one with attribution that does not. Quantus replaces a unit once by a fixed
    baseline. Cost: ``G x n_samples`` forwards for ``G`` groups.

    Args:
        model: classifier returning logits ``(N, K)``.
        x: ``(N, ...)`` inputs on the model's device (any kind: images, features, token ids ``(N, L)``).
        attributions: maps of ``x``'s shape (images also ``(N, H, W)``; token ids ``(N, L)`` per token).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        features_per_step: units per group.
        eps: relative threshold of a zero attribution, in ``[0, 1)``.
        tolerance: the largest change of the score that counts as none, ``>= 0``.
        n_samples: random draws per group.
        substrate: the draws (``None``: ``"noise"``: seeded N(0, 1) values, or random words of token ids).
        substrate_value: the fill of ``"constant"``.
        output: ``"prob"`` (default) or ``"logit"``.
        seed: seed of the draws.
        internal_batch_size: most rows per forward pass; ``None``: all at once.
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens (padding is never a unit; the rows keep the mask).
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens (never units; nor the model's special ids).
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...), kept with
            every row.

    Returns:
        ``(N,)`` counts of groups (as floats).

    Example:
        >>> net = nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     net.weight[:, 3] = 0.0  # the model ignores feature 3
        >>> x = torch.rand(2, 4)
        >>> non_sensitivity(net, x, x * net.weight[net(x).argmax(dim=1)].detach(), n_samples=3)
        tensor([0., 0.])
    """
    check_int("features_per_step", features_per_step, 1)
    check_int("n_samples", n_samples, 1)
    eps, tolerance = check_number("eps", eps), check_number("tolerance", tolerance)
    if not 0 <= eps < 1:
        raise ValueError(f"`eps` must be a relative threshold in [0, 1), got {eps!r}.")
    if tolerance < 0:
        raise ValueError(f"`tolerance` must be >= 0, got {tolerance!r}.")
    check_seed(seed)
    game = prepare_game(
        model, x, attributions, target, logits, reduce="abs_sum", output=output,
        internal_batch_size=internal_batch_size, fields=batch_fields(attention_mask, special_tokens_mask, model_inputs),
        who="non_sensitivity",
    )  # fmt: skip
    n = x.shape[0]
    groups, count, own = index_groups(game, features_per_step)
    scores = draw_outputs(
        model, game, x, groups, count, substrate=kind_substrate(game.kind, substrate, "noise"),
        substrate_value=substrate_value, n_draws=n_samples, seed=seed, output=output,
        internal_batch_size=internal_batch_size, who="non_sensitivity",
    )  # fmt: skip
    moved = (scores.double() - game.clean[:, None, None].double()).abs().amax(dim=2) > tolerance
    magnitudes = game.units.reshape(n, -1).double()
    if game.valid is not None:  # padding and special tokens neither set the scale nor form a group
        magnitudes = magnitudes * game.valid.reshape(n, -1)
    largest = torch.zeros(n, count + 1, dtype=magnitudes.dtype, device=magnitudes.device).scatter_reduce_(
        1, groups.reshape(n, -1), magnitudes, reduce="amax"
    )[:, :count]
    zero = largest <= eps * magnitudes.amax(dim=1, keepdim=True)
    present = torch.arange(count, device=own.device)[None] < own[:, None]
    return ((zero == moved) & present).sum(dim=1).to(game.clean.dtype)


def input_invariance(
    method: Explainer,
    x: Tensor,
    target: TargetType = None,
    *,
    attributions: Tensor | None = None,
    shift: float = -1.0,
    logits: Tensor | None = None,
    attention_mask: Tensor | None = None,
    special_tokens_mask: Tensor | None = None,
    model_inputs: Mapping[str, Tensor] | None = None,
    **attribute_kwargs: Any,
) -> Tensor:
    """Input invariance of Kindermans et al. (2017) per sample: the relative change of the map under a constant shift.

    ``||A_g(x + c) - A_f(x)||_1 / (||A_g(x + c)||_1 + ||A_f(x)||_1)``, with ``g`` the model that takes ``x + c`` and
    computes ``f(x)`` (:func:`shifted_method`): 0 for an input-invariant method (gradients), positive for methods
    whose reference point does not move with the inputs (input x gradient, integrated gradients from zero); 0 too
    when both maps are 0. Quantus's default shift is -1, as here (Kindermans et al. shift [0, 1] MNIST images to
    [-1, 0]). Token ids shift in the embedding space the methods attribute them in: the embedding layer's output
    moves by ``c`` (the [MASK] baseline's too, so integrated gradients stay invariant there) and the model takes it
    off again (:mod:`lit_attr.inputs.token_neighbourhood`); a model that normalises its embeddings (BERT's LayerNorm
    after the embedding sum) cannot see a constant shift, and every method scores 0 there. Cost: one attribution per
    sample.

    Args:
        method: the attribution method.
        x: ``(N, ...)`` inputs on the model's device (or token ids ``(N, L)``).
        target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
        attributions: ``method``'s maps of ``x`` for ``target`` if already computed.
        shift: the constant ``c`` added to every input value (token ids: to every embedding value).
        logits: the model's logits for ``x`` if already computed.
        attention_mask: token ids: ``(N, L)`` 1 on real tokens.
        special_tokens_mask: token ids: ``(N, L)`` 1 on special tokens.
        model_inputs: token ids: the batch's other inputs of the model by name (``token_type_ids``, ...).
        **attribute_kwargs: per-call options of ``method.attribute``.

    Returns:
        ``(N,)`` relative changes in [0, 1].

    Example:
        >>> from lit_attr.methods import get_method
        >>> net = nn.Linear(3, 2)
        >>> x = torch.rand(2, 3)
        >>> input_invariance(get_method("saliency", net), x), input_invariance(get_method("input_x_gradient", net), x)
        (tensor([0., 0.]), tensor([1., 1.]))
    """
    shift = check_number("shift", shift)
    fields = batch_fields(attention_mask, special_tokens_mask, model_inputs)
    ready = explain_batch(method, x, target, attributions, logits, fields, **attribute_kwargs)
    shifted, inputs, kwargs = ready.hood.shifted(shift)
    moved = _maps(shifted.attribute(inputs, ready.target, **kwargs, **attribute_kwargs))
    own = ready.maps.to(moved)
    n = x.shape[0]
    change = (moved - own).abs().reshape(n, -1).double().sum(dim=1)
    scale = own.abs().reshape(n, -1).double().sum(dim=1) + moved.abs().reshape(n, -1).double().sum(dim=1)
    result = torch.where(scale > 0, change / scale.clamp(min=torch.finfo(scale.dtype).tiny), 0.0)
    return result.to(torch.promote_types(moved.dtype, torch.float32))
