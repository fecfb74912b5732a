"""Insertion / deletion as a torchmetrics ``Metric`` (the math lives in ``lit_attr.functional.insertion_deletion``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchmetrics import Metric

import lit_attr.viz as viz
from lit_attr._checks import TargetType, check_choice, check_optional_int
from lit_attr.functional.insertion_deletion import insertion_deletion
from lit_attr.functional.perturbation import (
    DEFAULT_INTERNAL_BATCH_SIZE,
    GAMES,
    OUTPUTS,
    REDUCTIONS,
    SubstrateType,
    perturbation_schedule,
)
from lit_attr.functional.protocol import check_games, check_substrate_value, resolve_protocol
from lit_attr.metrics._model_ref import ModelRef
from lit_attr.metrics._plotting import figure_and_axes
from lit_attr.metrics.presentation import Presentation, Results, Score
from lit_attr.metrics.registry import register_metric

__all__ = ["InsertionDeletion"]


class InsertionDeletion(Metric):
    """Mean insertion and deletion AUCs and curves over a dataset (RISE's causal metrics).

    Every :meth:`update` runs :func:`~lit_attr.functional.insertion_deletion.insertion_deletion` on a batch and
    adds its per-sample AUCs and curves to ``sum``-reduced states, so the result under DDP equals the
    single-process result. :meth:`compute` returns a dict with the mean AUCs ``"insertion"`` (higher is better),
    ``"deletion"`` (lower is better), ``"difference"`` (insertion - deletion, higher is better) and the mean
    curves ``"insertion_curve"`` and ``"deletion_curve"`` of length T + 1.

    ``games="deletion"`` (or ``"insertion"``) plays one game only: the other game's forward passes are not run, and
    :meth:`score` and :meth:`compute` omit its keys and ``"difference"`` (which needs both).

    Tabular inputs ``(N, D)`` with ``(N, D)`` attributions play the games over the D features (see
    :func:`~lit_attr.functional.insertion_deletion.insertion_deletion`); their substrates default to zeros, and
    ``substrate_value`` with ``"constant"`` takes one value per feature (e.g. the training mean).

    Curve states need a fixed size when the metric is built, before any data is seen:

    * with ``n_steps`` (default 28), T <= ``n_steps`` at any input size, so the states hold ``n_steps + 1``
      points and the used prefix is found at :meth:`compute` (T is smaller than ``n_steps`` only for inputs with
      few units, e.g. 22 steps at 8x8);
    * with ``pixels_per_step``, T depends on the input size, so ``num_units`` (H*W, or C*H*W for
      ``reduce="none"``) is required.

    :meth:`score` returns one batch's per-sample values under the same names (the functional layer's result;
    no state changes), and ``update(..., scores=...)`` adds values computed that way, so a caller that wants both
    the per-sample values and the running means (the runner) plays the games once.

    All updates must therefore use inputs of one size (checked). The model is held by reference, outside the
    metric's submodules: it is not in ``state_dict()``, ``metric.to(...)`` does not move it, and the metric can be
    an attribute of the LightningModule it evaluates. Its modes and buffers are restored after every update.

    Args:
        model: classifier returning logits ``(N, K)``.
        pixels_per_step: units changed per step (requires ``num_units``).
        n_steps: number of steps; with neither option, the preset's (28).
        num_units: units per sample (pixels, elements with ``reduce="none"``, or features); required with
            ``pixels_per_step``, optional otherwise (then checked).
        insertion_substrate: see :func:`~lit_attr.functional.insertion_deletion.make_substrate`.
        deletion_substrate: see :func:`~lit_attr.functional.insertion_deletion.make_substrate`.
        output: ``"prob"``, ``"logit"`` or ``"prob_ratio"``.
        reduce: ``"sum"``, ``"abs_sum"`` or ``"none"``.
        internal_batch_size: most rows (samples x steps) per forward pass (default 128); ``None``: all at once.
        preset: ``"rise"``, ``"mfaba"``, ``"fei"`` or ``None``; explicit options override it.
        substrate_value: the fill of a ``"constant"`` substrate.
        seed: seed of a ``"noise"`` substrate.
        games: ``("insertion", "deletion")`` (default) or one of them.
        kwargs: options of :class:`torchmetrics.Metric` (``dist_sync_on_step``, ``sync_on_compute``, ...).

    Raises:
        TypeError: if ``model`` is not a module.
        ValueError: for unknown option or game names, both step options, or ``pixels_per_step`` without
            ``num_units``.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        >>> metric = InsertionDeletion(net, n_steps=8)
        >>> metric.update(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8))
        >>> scores = metric.compute()
        >>> sorted(scores), scores["insertion_curve"].shape
        (['deletion', 'deletion_curve', 'difference', 'insertion', 'insertion_curve'], torch.Size([9]))
        >>> deletion = InsertionDeletion(net, n_steps=8, games="deletion")
        >>> deletion.update(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8))
        >>> sorted(deletion.compute())
        ['deletion', 'deletion_curve']
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = None
    plot_upper_bound = None

    insertion_auc_sum: Tensor
    deletion_auc_sum: Tensor
    count: Tensor
    insertion_curve_sum: Tensor
    deletion_curve_sum: Tensor
    curve_count: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        pixels_per_step: int | None = None,
        n_steps: int | None = None,
        num_units: int | None = None,
        insertion_substrate: SubstrateType | None = None,
        deletion_substrate: SubstrateType | None = None,
        output: str = "prob",
        reduce: str = "sum",
        internal_batch_size: int | None = DEFAULT_INTERNAL_BATCH_SIZE,
        preset: str | None = None,
        substrate_value: float | Sequence[float] | Tensor | None = None,
        seed: int = 0,
        games: str | Sequence[str] = GAMES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self.games = check_games(games)
        protocol = resolve_protocol(
            preset,
            insertion_substrate=insertion_substrate,
            deletion_substrate=deletion_substrate,
            pixels_per_step=pixels_per_step,
            n_steps=n_steps,
        )
        check_choice("output", output, OUTPUTS)
        check_choice("reduce", reduce, REDUCTIONS)
        check_optional_int("internal_batch_size", internal_batch_size)
        check_optional_int("num_units", num_units)
        check_substrate_value(protocol, substrate_value)
        if num_units is not None:
            max_steps = perturbation_schedule(num_units, protocol.pixels_per_step, protocol.n_steps).numel() - 1
        elif protocol.n_steps is not None:
            max_steps = protocol.n_steps
        else:
            raise ValueError(
                "`num_units` (H*W, or C*H*W with reduce='none') must be given with `pixels_per_step`: the number "
                f"of steps, and so the size of the curve states, depends on it. Got pixels_per_step="
                f"{protocol.pixels_per_step} and num_units=None; alternatively pass `n_steps`."
            )
        self._model_ref = ModelRef(model)
        self.num_units = num_units
        self.output = output
        # The substrates as given (None: the preset's): the functional layer resolves them per input kind, since
        # features default to zeros where images default to the preset's substrates.
        self._options: dict[str, Any] = {
            "pixels_per_step": protocol.pixels_per_step,
            "n_steps": protocol.n_steps,
            "preset": preset,
            "insertion_substrate": insertion_substrate,
            "deletion_substrate": deletion_substrate,
            "output": output,
            "reduce": reduce,
            "internal_batch_size": internal_batch_size,
            "substrate_value": substrate_value,
            "seed": seed,
            "games": self.games,
        }
        self.add_state("insertion_auc_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("deletion_auc_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("insertion_curve_sum", torch.zeros(max_steps + 1), dist_reduce_fx="sum")
        self.add_state("deletion_curve_sum", torch.zeros(max_steps + 1), dist_reduce_fx="sum")
        # How many samples reached each step: reveals T after a DDP sum and catches updates of different sizes.
        self.add_state("curve_count", torch.zeros(max_steps + 1, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def model(self) -> nn.Module:
        """The evaluated model (held by reference, not a submodule)."""
        return self._model_ref.module

    def score(
        self, x: Tensor, attributions: Tensor, target: TargetType = None, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Play the games on a batch and return its per-sample values; the states are left as they are.

        Args:
            x: ``(N, C, H, W)`` inputs on the model's device, or ``(N, D)`` features.
            attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps (``(N, D)`` for features).
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            logits: the model's logits for ``x`` if already computed (saves one forward pass).

        Returns:
            ``{"insertion", "deletion", "difference"}`` AUCs ``(N,)`` and ``{"insertion_curve",
            "deletion_curve"}`` ``(N, T + 1)``; with a single game, only that game's AUC and curve.
        """
        result = insertion_deletion(self.model, x, attributions, target, logits=logits, **self._options)
        if self.num_units is not None:
            units = _num_units(x, attributions, self._options["reduce"])
            if units != self.num_units:
                raise ValueError(
                    f"The metric was built with `num_units={self.num_units}`, but this batch has {units} units per "
                    f"sample (x of shape {tuple(x.shape)}, attributions of shape {tuple(attributions.shape)})."
                )
        scores: dict[str, Tensor] = {}
        for game in self.games:
            scores[game] = getattr(result, f"{game}_auc")
            scores[f"{game}_curve"] = getattr(result, f"{game}_curve")
        if len(self.games) == len(GAMES):
            scores["difference"] = result.insertion_auc - result.deletion_auc
        return scores

    def update(
        self,
        x: Tensor,
        attributions: Tensor,
        target: TargetType = None,
        *,
        logits: Tensor | None = None,
        scores: dict[str, Tensor] | None = None,
    ) -> None:
        """Add a batch's AUCs and curves to the states.

        Args:
            x: ``(N, C, H, W)`` inputs on the model's device, or ``(N, D)`` features.
            attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps (``(N, D)`` for features).
            target: ``None`` (clean top-1 prediction), an int, or ``N`` class indices.
            logits: the model's logits for ``x`` if already computed (saves one forward pass).
            scores: this batch's :meth:`score`, if the caller already has it (the games are not played again).
        """
        if scores is None:
            scores = self.score(x, attributions, target, logits=logits)
        points = scores[f"{self.games[0]}_curve"].shape[1]
        seen = self.curve_count.nonzero()
        if seen.numel() and int(seen.max()) + 1 != points:
            raise ValueError(
                f"Every update must use inputs of one size: earlier batches gave {int(seen.max())} steps, this "
                f"batch (x of shape {tuple(x.shape)}) gives {points - 1}."
            )
        if points > self.curve_count.numel():
            raise ValueError(
                f"This batch needs {points - 1} steps but the curve states hold {self.curve_count.numel() - 1}; "
                "pass the right `num_units`."
            )
        dtype, device = self.insertion_auc_sum.dtype, self.insertion_auc_sum.device
        n = scores[self.games[0]].shape[0]
        for game in self.games:
            getattr(self, f"{game}_auc_sum").add_(scores[game].sum().to(dtype=dtype, device=device))
            curve_sum = getattr(self, f"{game}_curve_sum")
            curve_sum[:points] += scores[f"{game}_curve"].sum(dim=0).to(dtype=dtype, device=device)
        self.count += n
        self.curve_count[:points] += n

    def compute(self) -> dict[str, Tensor]:
        """Mean AUCs, their difference, and the mean curves over every sample seen (on all processes).

        Returns:
            ``{"insertion", "deletion", "difference"}`` scalars and ``{"insertion_curve", "deletion_curve"}`` of
            shape ``(T + 1,)``; NaN before any update. A game not played, and ``"difference"`` then, are omitted.

        Raises:
            ValueError: if processes saw inputs with different numbers of steps.
        """
        count = self.count.to(self.insertion_auc_sum.dtype)
        seen = self.curve_count.nonzero()
        points = int(seen.max()) + 1 if seen.numel() else self.curve_count.numel()
        if seen.numel() and not bool((self.curve_count[:points] == self.count).all()):
            raise ValueError(
                "The updates used different numbers of steps (inputs of different sizes, possibly on different "
                "processes); the mean curves are undefined."
            )
        result: dict[str, Tensor] = {}
        for game in self.games:
            result[game] = getattr(self, f"{game}_auc_sum") / count
            result[f"{game}_curve"] = getattr(self, f"{game}_curve_sum")[:points] / count
        if len(self.games) == len(GAMES):
            result["difference"] = result["insertion"] - result["deletion"]
        return result

    def plot(self, val: dict[str, Tensor] | None = None, ax: Any | None = None) -> tuple[Any, Any]:
        """Draw the mean insertion and deletion curves with their AUCs.

        Uses matplotlib's object-oriented API only (no pyplot state), so it is safe in training loops and threads.

        Args:
            val: a result of :meth:`compute` or ``forward``; ``None`` calls :meth:`compute`.
            ax: axes to draw into; ``None`` creates a new figure.

        Returns:
            ``(figure, axes)``.

        Example:
            >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
            >>> metric = InsertionDeletion(net, n_steps=8)
            >>> metric.update(torch.rand(2, 3, 8, 8), torch.randn(2, 8, 8))
            >>> fig, ax = metric.plot()
            >>> [line.get_label().split(" (")[0] for line in ax.get_lines()], ax.get_ylabel()
            (['insertion', 'deletion'], 'probability')
            >>> torch.allclose(torch.as_tensor(ax.get_lines()[0].get_ydata()), metric.compute()["insertion_curve"])
            True
        """
        val = self.compute() if val is None else val
        fig, ax = figure_and_axes(ax, (5.0, 3.5))
        for game, color in (("insertion", "tab:green"), ("deletion", "tab:red")):
            if f"{game}_curve" not in val:
                continue
            curve = val[f"{game}_curve"].detach().float().cpu()
            fraction = torch.linspace(0.0, 1.0, curve.numel())
            ax.plot(fraction, curve, color=color, label=f"{game} (AUC {float(val[game]):.3f})")
            ax.fill_between(fraction, curve, alpha=0.15, color=color)
        ax.set_xlabel("fraction of units changed")
        ax.set_ylabel({"prob": "probability", "logit": "logit", "prob_ratio": "p(x_t) / p(x)"}[self.output])
        difference = f" (difference {float(val['difference']):.3f})" if "difference" in val else ""
        ax.set_title(f"{type(self).__name__}{difference}")
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        return fig, ax


def _num_units(x: Tensor, attributions: Tensor, reduce: str) -> int:
    if x.ndim == 2:
        return x.shape[1]
    if attributions.ndim == 4 and reduce == "none":
        return math.prod(x.shape[1:])
    return math.prod(x.shape[2:])


def _curves(results: Results, when: str) -> dict[str, Figure]:
    # A metric configured with `games=` plays (and draws) only its own games.
    games = [game for game in ("insertion", "deletion") if all(f"{game}_curve" in r for r in results.values())]
    if not games:
        return {}
    title = f"Mean {' / '.join(games)} curves ({when})"
    return {"insertion_deletion_curves": viz.insertion_deletion_figure(results, title=title, games=games)}


PRESENTATION = Presentation(
    display_name="insertion / deletion",
    scores=(
        Score("insertion", "insertion AUC", header="ins.", caption="ins {:.2f}"),
        Score("deletion", "deletion AUC", header="del.", higher_is_better=False, caption="del {:.2f}"),
        Score("difference", "ins. - del."),
    ),
    curves=_curves,
)

register_metric(
    "insertion_deletion",
    InsertionDeletion,
    consumes=("model", "x", "attributions", "target", "logits"),
    per_sample=True,
    modalities={"continuous"},
    presentation=PRESENTATION,
)
