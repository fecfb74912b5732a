"""The one attribution loop behind the monitor, ``evaluate``, ``AttributionQuality`` and ``RandomizationCheck``.

Data flow, with the file that holds each step::

    batch (lit_attr/batch.py: Batch, adapt_batch)
      -> AttributionRunner.run (this file): one clean forward -> predictions and resolved targets
      -> every method's attribute(x, target, logits=...) (lit_attr/methods/)
      -> every registered metric's score() and update(scores=...) (lit_attr/metrics/, lit_attr/functional/)
      -> SampleRecord per sample, and AttributionRunner.compute() on every rank (DDP-synced sums)
      -> delivery to the loggers (lit_attr/delivery.py) or files (lit_attr/report.py)

The runner knows no method or metric by name: methods come from the method registry (or are factories or
instances), metrics from the metric registry (:mod:`lit_attr.metrics.registry`), which says what each consumes.
Data a method needs beyond the batch (IG2's reference pool) reaches it through :meth:`AttributionRunner.prepare`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric

from lit_attr._binary import scoring_model
from lit_attr._checks import (
    TargetType,
    check_bounds_fit,
    check_callable,
    check_choice,
    check_device,
    check_int,
    check_option_dicts,
    check_sample_limits,
    check_scorable,
    resolve_target,
)
from lit_attr._hygiene import preserved_model_state, preserved_rng_state
from lit_attr._states import state_device, state_to_cpu, state_to_device
from lit_attr.batch import Batch
from lit_attr.inputs import InputKind
from lit_attr.keys import VERDICT, scalar_key
from lit_attr.methods.base import AttributionMethod, attributions_of
from lit_attr.methods.registry import get_method
from lit_attr.metrics.registry import MetricSpec, available_metrics, check_metric_names, get_metric_spec
from lit_attr.records import MethodsArg, MethodSpec, SampleRecord, gather_records, keep_truths, normalize_methods

__all__ = [
    "AttributionRunner",
    "MethodSpec",
    "MethodsArg",
    "SampleRecord",
    "gather_records",
    "normalize_methods",
]

TARGETS = ("label", "prediction")


class AttributionRunner:
    """Attribute batches with several methods and score them with several registered metrics.

    For each :meth:`run` the model makes one clean forward pass; its logits give the predictions, the resolved
    targets (the labels, or the predictions), and are handed to the methods and to the metrics that consume them,
    so no one runs the clean forward again. Each method attributes the batch; each metric of each method gets what
    its registry entry declares. The per-sample results come back as :class:`SampleRecord` objects; the metric
    states are fixed-size ``sum``-reduced torchmetrics states, and :meth:`compute` (on every rank) synchronises
    them, so results under DDP equal a single-process run on the same data.

    The model's modes, buffers, gradients and ``requires_grad`` flags and the global random state are as before
    after every call.

    Args:
        model: the classifier (logits ``(N, K)``); a LightningModule, or any module.
        methods: registered method names, factories ``factory(model, **kwargs)``, AttributionMethod instances, a
            list of them, or a dict ``{name: method}`` naming them in the results.
        metrics: names from :func:`~lit_attr.metrics.available_metrics` (none: attribution only).
        method_kwargs: ``{method name: {option: value}}`` for methods given by name or factory.
        metric_kwargs: ``{metric name: {option: value}}``.
        input_bounds: ``(low, high)`` passed to every method built here (unless its options set it).
        target: explain the ``"label"`` (the prediction where a batch has no labels) or the ``"prediction"``.
        keep_attributions: samples whose index is below this keep their input and maps in their record.
        metric_samples: ``{metric name: n}``: that metric only sees the samples whose index is below ``n`` (an
            expensive check on a few samples).
        progress: ``progress(description, samples_done)``, called when a method starts on a batch (0 samples)
            and when a batch is done; methods built here that report their own progress (a ``progress``
            attribute, e.g. FEI's iterations) report through it too.
        model_output: ``"logits"`` (K >= 2) or ``"sigmoid"`` (a binary classifier's one logit; class 1 scores
            ``sigmoid(z)``, class 0 ``1 - sigmoid(z)``); other outputs are refused (``_checks.check_scorable``).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
        >>> runner = AttributionRunner(net, ["saliency"], ["insertion_deletion"],
        ...                            metric_kwargs={"insertion_deletion": {"n_steps": 4}})
        >>> records = runner.run(Batch(torch.rand(2, 3, 8, 8)), indices=[10, 11])
        >>> sorted(records[0].scores["saliency"])
        ['deletion', 'difference', 'insertion']
        >>> sorted(runner.scalars())  # doctest: +NORMALIZE_WHITESPACE
        ['attr/saliency/insertion_deletion/deletion', 'attr/saliency/insertion_deletion/difference',
         'attr/saliency/insertion_deletion/insertion']
    """

    def __init__(
        self,
        model: nn.Module,
        methods: MethodsArg,
        metrics: str | Sequence[str] = (),
        *,
        method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        input_bounds: Any = None,
        target: Literal["label", "prediction"] = "label",
        keep_attributions: int = 0,
        metric_samples: Mapping[str, int] | None = None,
        progress: Callable[[str, int], None] | None = None,
        model_output: str = "logits",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self.model_output = model_output
        model = scoring_model(model, model_output)
        specs = normalize_methods(methods)
        self.metric_names = check_metric_names(metrics) if metrics else ()
        options = check_option_dicts("method_kwargs", method_kwargs, list(specs), what="method")
        self._metric_options = check_option_dicts("metric_kwargs", metric_kwargs, self.metric_names, what="metric")
        self.target = check_choice("target", target, TARGETS)
        self.keep_attributions = check_int("keep_attributions", keep_attributions, 0)
        self.metric_samples = check_sample_limits("metric_samples", metric_samples, self.metric_names)
        self.progress = check_callable("progress", progress)
        self.model = model
        self.specs: dict[str, MetricSpec] = {name: get_metric_spec(name) for name in self.metric_names}
        self.methods: dict[str, AttributionMethod] = {
            name: self._build_method(name, spec, options[name], input_bounds) for name, spec in specs.items()
        }
        self.metrics: dict[str, dict[str, Metric]] = {
            method_name: {metric: self._build_metric(metric, method_name, method) for metric in self.metric_names}
            for method_name, method in self.methods.items()
        }
        self._updates = {(m, k): 0 for m in self.methods for k in self.metric_names}
        self._score_owners: dict[str, str] = {}
        self.skipped: set[str] = set()

    # ------------------------------------------------------------------ building
    def _build_method(
        self, name: str, spec: MethodSpec, options: dict[str, Any], input_bounds: Any
    ) -> AttributionMethod:
        if isinstance(spec, AttributionMethod):
            if options:
                raise ValueError(
                    f"`method_kwargs` for {name!r} apply to methods given by name or factory, not to an "
                    "AttributionMethod instance; configure the instance instead."
                )
            if spec.model is not self.model:
                hint = "" if self.model_output == "logits" else " (with model_output='sigmoid', give methods by name)"
                raise ValueError(f"The AttributionMethod {name!r} is bound to another model than the runner's{hint}.")
            return spec
        options = dict(options)
        if input_bounds is not None:
            options.setdefault("input_bounds", input_bounds)
        try:
            method = get_method(spec, self.model, **options) if isinstance(spec, str) else spec(self.model, **options)
        except ValueError as error:
            raise ValueError(f"method {name!r}: {error}") from error
        if not isinstance(method, AttributionMethod):
            raise TypeError(
                f"The factory of method {name!r} returned {type(method).__name__}, not an AttributionMethod."
            )
        method.name = method.name or name
        # A method that reports its own progress (FEI's iterations) reports through ours, unless the user chose.
        if self.progress is not None and getattr(method, "progress", None) is False and "progress" not in options:
            progress = self.progress
            method.progress = lambda done, total, n=name: progress(f"{n}: iteration {done}/{total}", 0)
        return method

    def _build_metric(self, metric: str, method_name: str, method: AttributionMethod) -> Metric:
        try:
            return self.specs[metric].build(self._metric_options[metric], model=self.model, method=method)
        except (TypeError, ValueError) as error:
            raise type(error)(f"metric {metric!r} of method {method_name!r}: {error}") from error

    # ------------------------------------------------------------------ running
    def prepare(self, data: Batch) -> None:
        """Give every method (and every metric holding its own copy of one) data beyond the batch.

        Args:
            data: labelled samples, e.g. a probe set or the first samples of a split (IG2's reference pool).
        """
        for name, method in self.methods.items():
            try:
                method.prepare(data)
            except ValueError as error:
                raise ValueError(f"method {name!r}: {error}") from error
            for metric in self.metrics[name].values():
                prepare = getattr(metric, "prepare", None)
                if callable(prepare):
                    prepare(data)

    def to(self, device: torch.device | str) -> AttributionRunner:
        """Move every metric's states to ``device`` (the model stays where it is)."""
        for metrics in self.metrics.values():
            for metric in metrics.values():
                metric.to(device)
        return self

    def reset(self) -> None:
        """Reset every metric (and forget which were skipped)."""
        for metrics in self.metrics.values():
            for metric in metrics.values():
                metric.reset()
        self._updates = dict.fromkeys(self._updates, 0)
        self.skipped = set()

    def state_dict(self) -> dict[str, Any]:
        """Every metric's states (on the CPU), update counts and skipped metrics: what :meth:`compute` depends on.

        Plain containers of tensors and numbers, so ``torch.load(weights_only=True)`` reads them back (``evaluate``
        saves them to resume a killed run).
        """
        metrics: dict[str, dict[str, Any]] = {}
        for method, instances in self.metrics.items():
            metrics[method] = {}
            for name, metric in instances.items():
                states = {key: state_to_cpu(value) for key, value in metric.metric_state.items()}
                metrics[method][name] = {"states": states, "update_count": int(metric._update_count)}
        updates = {m: {k: self._updates[m, k] for k in self.metric_names} for m in self.methods}
        return {"metrics": metrics, "updates": updates, "skipped": sorted(self.skipped)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, for a runner built with the same methods and metrics.

        Raises:
            ValueError: if ``state`` holds other methods, metrics or metric states than this runner.
        """
        expected = {method: sorted(instances) for method, instances in self.metrics.items()}
        found = {method: sorted(instances) for method, instances in state["metrics"].items()}
        if found != expected:
            raise ValueError(f"The saved state holds metrics {found}, but this runner has {expected}.")
        for method, instances in self.metrics.items():
            for name, metric in instances.items():
                saved = state["metrics"][method][name]
                if sorted(saved["states"]) != sorted(metric.metric_state):
                    raise ValueError(
                        f"The saved states of metric {name!r} of {method!r} are {sorted(saved['states'])}, but the "
                        f"metric has {sorted(metric.metric_state)}."
                    )
                for key, value in saved["states"].items():
                    setattr(metric, key, state_to_device(value, state_device(getattr(metric, key))))
                metric._update_count = int(saved["update_count"])
                metric._computed = None
        self._updates = {(m, k): int(state["updates"][m][k]) for m in self.methods for k in self.metric_names}
        self.skipped = set(state["skipped"])

    def run(
        self,
        batch: Batch,
        indices: Sequence[int] | None = None,
        target: TargetType = None,
        logits: Tensor | None = None,
    ) -> list[SampleRecord]:
        """Attribute one batch with every method, feed every metric, and return one record per sample.

        Args:
            batch: the samples (inputs on the model's device, in the dtype it expects).
            indices: the caller's identifier of every sample (default ``0 .. N-1``); they decide which samples
                are kept (``keep_attributions``) and which go to a metric limited by ``metric_samples``.
            target: explicit classes to explain (any form :mod:`lit_attr._checks` accepts); ``None`` follows
                the runner's ``target`` policy.
            logits: the model's logits for the batch, if the caller already computed them (then the runner makes
                no forward pass of its own).

        Returns:
            One :class:`SampleRecord` per sample, in batch order.
        """
        if not isinstance(batch, Batch):
            raise TypeError(
                f"`batch` must be a lit_attr.batch.Batch, got {type(batch).__name__}; read a dataloader's batch with "
                "lit_attr.batch.adapt_batch(batch)."
            )
        check_device("x", batch.x, self.model)
        n = len(batch)
        if n == 0:  # before the model sees it
            raise ValueError(f"`x` must be a non-empty batch (N, ...) with N >= 1, got shape {tuple(batch.x.shape)}.")
        kind = batch.kind
        indices = list(range(n)) if indices is None else [int(i) for i in indices]
        if len(indices) != n:
            raise ValueError(f"`indices` must have one entry per sample (N={n}), got {len(indices)}.")
        device = batch.x.device
        self.to(device)
        with preserved_rng_state(), torch.inference_mode(False):
            if logits is None:
                with torch.no_grad(), preserved_model_state(self.model):
                    logits = batch.logits(self.model)
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"The model must return logits of shape (N, K) = ({n}, K), got {shape}.")
            check_scorable(logits)  # a binary model's single logit arrives here as two (model_output="sigmoid")
            for name, method in self.methods.items():
                check_bounds_fit(f"input_bounds` of method `{name}", method.input_bounds, batch.x)
            probabilities = logits.float().softmax(dim=1)
            confidence, prediction = probabilities.max(dim=1)
            if target is None and self.target == "label" and batch.y is not None:
                target = batch.y
            target = resolve_target(target, logits).to(device)
            records = [
                SampleRecord(
                    index=index,
                    label=None if label is None else int(label),
                    target=int(target_class),
                    prediction=int(predicted),
                    confidence=float(score),
                    target_probability=float(probability),
                    x=kind.kept_sample(batch.x[row], _row(batch, row)) if index < self.keep_attributions else None,
                    kind=kind.name,
                )
                # One transfer per field and batch, not one per sample and field (each a device sync on a GPU).
                for row, (index, label, target_class, predicted, score, probability) in enumerate(
                    zip(
                        indices,
                        [None] * n if batch.y is None else batch.y.reshape(n).tolist(),
                        target.tolist(),
                        prediction.tolist(),
                        confidence.tolist(),
                        probabilities.gather(1, target[:, None])[:, 0].tolist(),
                        strict=True,
                    )
                )
            ]
            keep_truths(kind, batch, records)
            attributions: dict[str, Tensor] = {}
            for name, method in self.methods.items():
                if self.progress is not None:
                    self.progress(name, 0)
                start = time.perf_counter()
                result = method.attribute(batch.x, target, logits=logits, **batch.method_inputs(self.model))
                attributions[name] = attributions_of(result)
                seconds = (time.perf_counter() - start) / n
                for row, record in enumerate(records):
                    record.seconds[name] = seconds
                    record.scores[name] = {}
                    if record.x is not None:
                        record.attributions[name] = kind.kept_map(attributions[name][row], _row(batch, row))
            inputs = {
                "x": batch.x,
                "target": target,
                "masks": batch.mask,
                "logits": logits,
                "attention_mask": batch.attention_mask,
                "special_tokens_mask": batch.special_tokens_mask,
                "model_inputs": _model_inputs(batch, self.model),
            }
            for metric in self.metric_names:
                self._feed(metric, kind, inputs, attributions, indices, records)
        if self.progress is not None:
            self.progress("", n)
        return records

    def _feed(
        self,
        metric: str,
        kind: InputKind,
        inputs: dict[str, Any],
        attributions: dict[str, Tensor],
        indices: list[int],
        records: list[SampleRecord],
    ) -> None:
        """Score every method's attributions with one metric and add the per-sample scores to the records."""
        spec = self.specs[metric]
        if not spec.accepts(kind.tags):
            alternatives = [name for name in available_metrics() if get_metric_spec(name).accepts(kind.tags)]
            raise ValueError(
                f"metric {metric!r} does not take {kind.name} inputs (it takes {sorted(spec.modalities)}); metrics "
                f"for them: {', '.join(alternatives)}."
            )
        if spec.needs_masks and inputs["masks"] is None:
            self.skipped.add(metric)
            return
        rows = list(range(len(indices)))
        if metric in self.metric_samples:
            rows = [row for row, index in enumerate(indices) if index < self.metric_samples[metric]]
            if not rows:
                return
            index = torch.as_tensor(rows, device=inputs["x"].device)
            inputs = {key: _apply(value, lambda t: t[index]) for key, value in inputs.items()}
            attributions = {name: maps[index] for name, maps in attributions.items()}
        instances = {name: self.metrics[name][metric] for name in self.methods}
        if not all(callable(getattr(instance, "score", None)) for instance in instances.values()):
            for name, instance in instances.items():
                instance.update(**self._inputs(spec, inputs, attributions[name]))
                self._updates[name, metric] += 1
            return
        if spec.per_sample and len(instances) > 1:
            # The methods' batches as one stream: the games of all methods share the model's chunks (one call).
            stacked = self._inputs(spec, _repeat(inputs, len(instances)), torch.cat(list(attributions.values())))
            everything = next(iter(instances.values())).score(**stacked)
            parts = {key: value.split(len(rows)) for key, value in everything.items()}
            scores = {name: {key: part[k] for key, part in parts.items()} for k, name in enumerate(instances)}
        else:
            scores = {
                name: instance.score(**self._inputs(spec, inputs, attributions[name]))
                for name, instance in instances.items()
            }
        for name, instance in instances.items():
            instance.update(**self._inputs(spec, inputs, attributions[name]), scores=scores[name])
            self._updates[name, metric] += 1
            numbers = spec.summary(scores[name], True)
            _check_unique_keys(numbers, metric, self._score_owners)
            for key, values in numbers.items():
                for row, value in zip(rows, values.tolist(), strict=True):
                    records[row].scores[name][key] = value

    @staticmethod
    def _inputs(spec: MetricSpec, inputs: dict[str, Any], attributions: Tensor) -> dict[str, Any]:
        return {name: attributions if name == "attributions" else inputs[name] for name in spec.update_inputs}

    # ------------------------------------------------------------------ results
    def compute(self) -> dict[str, dict[str, Mapping[str, Any]]]:
        """``{method: {metric: details}}``, synchronised over processes; every rank must call it.

        Metrics that received no data on any rank (localisation without masks, say) are left out.
        """
        keys = list(self._updates)
        if not keys:
            return {name: {} for name in self.methods}
        first = self.metrics[keys[0][0]][keys[0][1]]
        device = next((state.device for state in first.metric_state.values() if isinstance(state, Tensor)), "cpu")
        counts = torch.tensor([self._updates[key] for key in keys], dtype=torch.long, device=device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
        results: dict[str, dict[str, Mapping[str, Any]]] = {name: {} for name in self.methods}
        for (method, metric), count in zip(keys, counts.tolist(), strict=True):
            if count:
                results[method][metric] = self.specs[metric].details(self.metrics[method][metric])
        return results

    def summary(self, results: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> dict[str, dict]:
        """``{method: {score name: 0-d tensor}}``: every metric's headline numbers (from :meth:`compute`)."""
        results = self.compute() if results is None else results
        out: dict[str, dict[str, Tensor]] = {}
        for method, metrics in results.items():
            out[method], owners = {}, {}
            for metric, values in metrics.items():
                numbers = self.specs[metric].summary(values, False)
                _check_unique_keys(numbers, metric, owners)
                out[method].update(numbers)
        return out

    def scalars(self, results: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> dict[str, Tensor]:
        """``{"attr/<method>/<metric>/<score>": 0-d tensor}``: the headline numbers, flat (for ``log_dict``).

        The one key scheme of :mod:`lit_attr.keys`: the monitor, ``evaluate`` and ``AttributionQuality`` log these
        keys. The sanity checks' verdicts come with them as ``"attr/<method>/<metric>/passed"`` (1.0 or 0.0).
        """
        results = self.compute() if results is None else results
        flat: dict[str, Tensor] = {}
        for method, metrics in results.items():
            for metric, details in metrics.items():
                for score, value in self.specs[metric].summary(details, False).items():
                    flat[scalar_key(method, metric, score)] = value
                if isinstance(details, Mapping) and isinstance(details.get(VERDICT), bool):
                    flat[scalar_key(method, metric, VERDICT)] = torch.tensor(float(details[VERDICT]))
        return flat


def _check_unique_keys(numbers: Mapping[str, Any], metric: str, owners: dict[str, str]) -> None:
    """Refuse a score name that two metrics both give: one would silently overwrite the other's number."""
    for key in numbers:
        if owners.setdefault(key, metric) != metric:
            raise ValueError(
                f"Metrics {owners[key]!r} and {metric!r} both report a score named {key!r}; a registered metric's "
                f"summary must use its own names (prefix them with the metric's name)."
            )


def _row(batch: Batch, row: int) -> dict[str, Tensor]:
    """One sample's fields (its attention mask, ...), without the batch dimension."""
    return {key: value[row] for key, value in batch.fields().items()}


def _repeat(inputs: dict[str, Any], times: int) -> dict[str, Any]:
    """Every per-sample input repeated ``times`` over the batch dimension (in blocks, as the methods are stacked)."""
    return {key: _apply(value, lambda t: t.repeat(times, *([1] * (t.ndim - 1)))) for key, value in inputs.items()}


def _apply(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` on a per-sample input: a tensor, or every tensor of a mapping (``model_inputs``); ``None`` stays."""
    if value is None:
        return None
    return {key: fn(tensor) for key, tensor in value.items()} if isinstance(value, Mapping) else fn(value)


def _model_inputs(batch: Batch, model: nn.Module) -> dict[str, Tensor] | None:
    """The batch's other model inputs that the model's forward names (``None`` without any)."""
    names = batch.method_inputs(model)
    inputs = {key: value for key, value in (batch.model_inputs or {}).items() if key in names}
    return inputs or None
