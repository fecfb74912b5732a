"""Building blocks of the repaired model parameter randomisation tests (Hedström et al., "Sanity checks revisited").

Hedström et al. (2023) replace MPRT's layer-by-layer similarity by two variants:

* **eMPRT** (efficient MPRT) compares the *complexity* of the explanations of the original and of the fully
  randomised model: :func:`discrete_entropy` of a histogram of the normalised ``|A|``, and the relative rise
  :func:`entropy_rise`. An explanation that depends on the model's parameters becomes noisier (higher entropy)
  when they are random.
* **sMPRT** (smooth MPRT) averages every explanation over noisy copies of the input before comparing
  (:func:`noisy_copies`), which removes the shattered-gradient noise that makes MPRT's Spearman fall for reasons
  unrelated to the randomisation.

The Metrics are :class:`~lit_attr.metrics.mprt.EfficientMPRT` and :class:`~lit_attr.metrics.mprt.SmoothMPRT`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_attr._checks import check_int, check_seed
from lit_attr._hygiene import row_seed

__all__ = ["DEFAULT_N_BINS", "discrete_entropy", "entropy_rise", "noisy_copies"]

#: Histogram bins of :func:`discrete_entropy` (Quantus' default for eMPRT).
DEFAULT_N_BINS = 100


def _heatmap(attributions: Tensor) -> Tensor:
    """``|A|`` summed over channels for images ``(N, C, H, W)``, ``|A|`` otherwise, flattened to ``(N, M)``."""
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`attributions` must be a torch.Tensor, got {type(attributions).__name__}.")
    if attributions.ndim < 2 or attributions.shape[0] == 0:
        raise ValueError(f"`attributions` must be a non-empty batch (N, ...), got shape {tuple(attributions.shape)}.")
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError("`attributions` contain NaN or infinite values.")
    heat = attributions.abs()
    if heat.ndim == 4:
        heat = heat.sum(dim=1)
    return heat.flatten(1)


def discrete_entropy(attributions: Tensor, n_bins: int = DEFAULT_N_BINS) -> Tensor:
    """Shannon entropy (nats) of the histogram of each sample's normalised ``|A|``.

    The map is ``|A|`` summed over channels for ``(N, C, H, W)`` attributions (``|A|`` element-wise for other
    shapes), divided by its maximum so that it lies in [0, 1], and counted in ``n_bins`` equal bins of [0, 1] (the
    maximum itself falls in the last bin). With ``p_b`` the fraction of the ``M`` units in bin ``b``, the entropy is
    ``-sum_b p_b log p_b``: 0 when every unit falls in one bin (a constant map, an all-zero map), at most
    ``log(n_bins)``.

    Args:
        attributions: ``(N, ...)`` maps.
        n_bins: number of bins (default 100).

    Returns:
        ``(N,)`` entropies in the floating dtype of ``attributions`` (float32 for integer maps).

    Raises:
        TypeError: for a non-tensor map or a non-int ``n_bins``.
        ValueError: for an empty batch, non-finite values or ``n_bins < 2``.

    Example:
        >>> a = torch.tensor([[0.0, 1.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0]])  # two equal bins; one bin
        >>> discrete_entropy(a, n_bins=10)
        tensor([0.6931, 0.0000])
    """
    check_int("n_bins", n_bins, 2)
    heat = _heatmap(attributions)
    dtype = heat.dtype if heat.is_floating_point() else torch.get_default_dtype()
    heat = heat.to(dtype)
    peak = heat.amax(dim=1, keepdim=True)
    normalised = torch.where(peak > 0, heat / peak.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(heat))
    bins = (normalised * n_bins).floor().long().clamp_(0, n_bins - 1)
    counts = torch.zeros(heat.shape[0], n_bins, dtype=dtype, device=heat.device)
    counts.scatter_add_(1, bins, torch.ones_like(heat))
    p = counts / heat.shape[1]
    # p log(1 / p) rather than -p log p: a single full bin gives +0.0, not -0.0.
    return torch.where(p > 0, p * p.clamp_min(torch.finfo(dtype).tiny).reciprocal().log(), 0.0).sum(dim=1)


def entropy_rise(original: Tensor, randomized: Tensor, num_units: int) -> Tensor:
    """The eMPRT score: the relative rise in entropy ``(H_rand - H_orig) / H_orig``, per sample.

    An original map whose entropy is 0 (all its ``num_units`` values in one bin) has no relative rise; its
    denominator is replaced by the smallest positive entropy a map of ``num_units`` units can have (one unit in
    another bin: ``-(1/M) log(1/M) - (1 - 1/M) log(1 - 1/M)``), so the score stays finite and is 0 when both maps
    have entropy 0.

    Args:
        original: ``(N,)`` entropies of the original model's maps.
        randomized: ``(N,)`` entropies of the fully randomised model's maps.
        num_units: units per map ``M`` (pixels, or elements), at least 2.

    Example:
        >>> entropy_rise(torch.tensor([2.0, 1.0]), torch.tensor([3.0, 1.0]), 64)
        tensor([0.5000, 0.0000])
    """
    check_int("num_units", num_units, 2)
    m = num_units
    floor = -(1 / m) * math.log(1 / m) - (1 - 1 / m) * math.log(1 - 1 / m)
    return (randomized - original) / original.clamp_min(floor)


def noisy_copies(x: Tensor, n_noise: int, noise_level: float = 0.1, seed: int = 0) -> Tensor:
    """The inputs of sMPRT: ``n_noise`` copies of every sample, all but the last with Gaussian noise.

    Copy ``k < n_noise - 1`` of sample ``i`` is ``x_i + sigma_i * eps_ik`` with ``sigma_i = noise_level * (max(x_i)
    - min(x_i))`` and ``eps_ik ~ N(0, I)``; the last copy is ``x_i`` itself. The ``(n_noise - 1, ...)`` draw of
    sample ``i`` comes from a CPU ``torch.Generator`` seeded with ``seed`` and a checksum of ``x_i``
    (:func:`~lit_attr.methods._common.row_seed`), so a sample gets the same copies in any batch, process or device.

    Args:
        x: ``(N, ...)`` floating-point inputs.
        n_noise: copies per sample, at least 1 (1: the input alone).
        noise_level: noise standard deviation as a fraction of each sample's value range (Hedström et al.: 0.1).
        seed: seed of the noise.

    Returns:
        ``(N, n_noise, ...)`` copies in the dtype and on the device of ``x``.

    Example:
        >>> copies = noisy_copies(torch.rand(2, 3, 4, 4), n_noise=5)
        >>> copies.shape
        torch.Size([2, 5, 3, 4, 4])
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        kind = f"dtype {x.dtype}, shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"`x` must be a floating-point tensor (N, ...), got {kind}.")
    check_int("n_noise", n_noise, 1)
    if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float)) or not noise_level >= 0:
        raise ValueError(f"`noise_level` must be a number >= 0, got {noise_level!r}.")
    check_seed(seed)
    flat = x.flatten(1)
    sigma = (noise_level * (flat.amax(dim=1) - flat.amin(dim=1))).view(-1, 1, *([1] * (x.ndim - 1)))
    draws = torch.stack([
        torch.randn((n_noise - 1, *x.shape[1:]), generator=torch.Generator().manual_seed(row_seed(seed, row)),
                    dtype=torch.float64)
        for row in x
    ]).to(device=x.device, dtype=x.dtype)  # fmt: skip
    return torch.cat([x.unsqueeze(1) + sigma * draws, x.unsqueeze(1)], dim=1)
