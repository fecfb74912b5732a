"""Completeness of attributions (specs/metrics.md, "Axioms"): do they sum to the change in the model's output?"""

from __future__ import annotations

import torch
from torch import Tensor


def completeness_error(attributions: Tensor, delta: Tensor | float) -> Tensor:
    """Relative completeness error ``|sum(A_i) - delta_i| / |delta_i|`` per sample.

    For integrated gradients ``delta = f(x) - f(x')``, the target logit at the input minus at the baseline; MFABA and
    IG2 have identities of their own (specs/methods.md). The sum runs over all non-batch dimensions.

    Args:
        attributions: ``(N, ...)`` floating-point attributions.
        delta: the per-sample output differences: a tensor ``(N,)`` (or ``(N, 1)``), or one number for every
            sample. None may be 0, where the relative error is undefined.

    Returns:
        ``(N,)`` non-negative errors in the promoted floating dtype of the inputs.

    Raises:
        TypeError: if ``attributions`` is not a floating-point tensor or ``delta`` not a number or tensor.
        ValueError: if ``delta`` does not hold one value per sample, is 0 or is not finite.

    Example:
        >>> a = torch.tensor([[0.5, 0.25], [1.0, -1.0]])
        >>> completeness_error(a, torch.tensor([1.0, 0.5]))
        tensor([0.2500, 1.0000])
    """
    if not isinstance(attributions, Tensor) or not attributions.is_floating_point():
        raise TypeError(
            "`attributions` must be a floating-point tensor (N, ...), got "
            f"{attributions.dtype if isinstance(attributions, Tensor) else type(attributions).__name__}."
        )
    if attributions.ndim < 1 or attributions.shape[0] == 0:
        raise ValueError(f"`attributions` must be a non-empty batch (N, ...), got shape {tuple(attributions.shape)}.")
    if isinstance(delta, bool) or not isinstance(delta, (Tensor, int, float)):
        raise TypeError(f"`delta` must be a tensor (N,) or a number, got {type(delta).__name__}.")
    n = attributions.shape[0]
    delta = torch.as_tensor(delta, device=attributions.device)
    if delta.numel() == 1:
        delta = delta.reshape(1).expand(n)
    elif delta.shape not in ((n,), (n, 1)):
        raise ValueError(f"`delta` must have shape (N,) = ({n},) or be a single number, got {tuple(delta.shape)}.")
    delta = delta.reshape(n)
    if not bool(torch.isfinite(delta).all()):
        raise ValueError("`delta` must be finite; got NaN or infinite values.")
    if bool((delta == 0).any()):
        zero = torch.nonzero(delta == 0).flatten().tolist()
        raise ValueError(f"`delta` is 0 for samples {zero}; the relative completeness error is undefined there.")
    dtype = torch.promote_types(attributions.dtype, delta.dtype if delta.is_floating_point() else attributions.dtype)
    totals = attributions.reshape(n, -1).to(dtype).sum(dim=1)
    delta = delta.to(dtype)
    return (totals - delta).abs() / delta.abs()
