"""Plumbing shared by the callbacks: method specs, probe-set selection and loading, batch adapters, DDP helpers.

Nothing here iterates a dataloader or draws from a global random generator: the probe set is read from the
dataset by index with a private :class:`torch.Generator`, so attaching a callback leaves the training run as it was.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from lit_attr.methods._hygiene import preserved_rng_state
from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.registry import get_method

MethodFactory = Callable[..., AttributionMethod]
MethodSpec = str | MethodFactory
MethodsArg = MethodSpec | Sequence[MethodSpec] | Mapping[str, MethodSpec]

ON_ERROR = ("raise", "warn")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ProbeBatch(NamedTuple):
    """The probe samples as tensors: inputs, labels (or None) and ground-truth masks (or None)."""

    x: Tensor
    y: Tensor | None
    mask: Tensor | None

    def select(self, positions: Sequence[int]) -> ProbeBatch:
        """The rows at ``positions`` (probe positions, not dataset indices)."""
        index = torch.as_tensor(list(positions), dtype=torch.long)
        return ProbeBatch(*(None if t is None else t[index] for t in self))

    def to(self, device: torch.device) -> ProbeBatch:
        """Move every tensor to ``device``."""
        return ProbeBatch(*(None if t is None else t.to(device) for t in self))

    def for_model(self, trainer: Trainer, device: torch.device) -> ProbeBatch:
        """On ``device``, with inputs in the dtype the Trainer's precision feeds the model (bf16 for "bf16-true")."""
        moved = self.to(device)
        return moved._replace(x=trainer.precision_plugin.convert_input(moved.x))


BatchAdapter = Callable[[Any], tuple]


def default_batch_adapter(batch: Any) -> ProbeBatch:
    """Split a collated batch into ``(x, y, mask)``.

    Accepted forms: a tensor ``x``; a tuple/list ``(x,)``, ``(x, y)`` or ``(x, y, mask)``; a dict with the inputs
    under ``"image"``/``"input"``/``"x"``, labels under ``"label"``/``"target"``/``"y"`` and masks under ``"mask"``.

    Args:
        batch: a batch as the dataloader would produce it.

    Returns:
        The batch as a :class:`ProbeBatch`.

    Raises:
        TypeError: for any other form (pass ``batch_adapter=`` to the callback then).

    Example:
        >>> default_batch_adapter({"image": torch.zeros(2, 3), "label": torch.tensor([0, 1])}).y
        tensor([0, 1])
    """
    if isinstance(batch, Tensor):
        return ProbeBatch(batch, None, None)
    if isinstance(batch, Mapping):
        x = _first_key(batch, ("image", "input", "x", "inputs", "images"))
        if x is None:
            raise TypeError(
                f"A dict batch needs its inputs under 'image' or 'input', got keys {sorted(map(str, batch))}; "
                "pass `batch_adapter=lambda batch: (x, y, mask)` to the callback."
            )
        return ProbeBatch(x, _first_key(batch, ("label", "target", "y", "labels", "targets")), batch.get("mask"))
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3 and all(isinstance(t, Tensor) for t in batch):
        x, y, mask = (*batch, None, None)[:3]
        return ProbeBatch(x, y, mask)
    raise TypeError(
        f"Cannot read a batch of type {type(batch).__name__} (expected a tensor, (x, y), (x, y, mask) or a dict with "
        "'image'/'label'/'mask' keys); pass `batch_adapter=lambda batch: (x, y, mask)` to the callback."
    )


def _first_key(batch: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((batch[key] for key in keys if key in batch), None)


def adapt_batch(batch: Any, adapter: BatchAdapter | None) -> ProbeBatch:
    """Run ``adapter`` (or the default) and check what it returned."""
    if adapter is None:
        return default_batch_adapter(batch)
    out = adapter(batch)
    if isinstance(out, Tensor):
        out = (out,)
    if not isinstance(out, (tuple, list)) or not 1 <= len(out) <= 3:
        raise TypeError(
            f"`batch_adapter` must return x, (x, y) or (x, y, mask) with tensors (y and mask may be None), "
            f"got {type(out).__name__}."
        )
    x, y, mask = (*out, None, None)[:3]
    if not isinstance(x, Tensor) or any(t is not None and not isinstance(t, Tensor) for t in (y, mask)):
        raise TypeError("`batch_adapter` must return tensors (or None for the labels and masks).")
    return ProbeBatch(x, y, mask)


# ---------------------------------------------------------------------------------------------------- methods
def normalize_methods(methods: MethodsArg) -> dict[str, MethodSpec]:
    """Map every method to the name used in logged keys (``attr/<name>/...``).

    Names stand for themselves; a factory is named by its mapping key, or else by its (or its ``partial``'s)
    ``__name__`` in lower case.
    """
    if isinstance(methods, str) or callable(methods) and not isinstance(methods, Mapping):
        methods = [methods]
    if isinstance(methods, Mapping):
        items = list(methods.items())
    elif isinstance(methods, Sequence):
        items = [(_spec_name(spec), spec) for spec in methods]
    else:
        raise TypeError(
            f"`methods` must be a method name, a factory, a list of them or a dict name -> method, got "
            f"{type(methods).__name__}."
        )
    if not items:
        raise ValueError("`methods` must name at least one attribution method.")
    result: dict[str, MethodSpec] = {}
    for name, spec in items:
        if not isinstance(spec, str) and not callable(spec):
            raise TypeError(f"Every method must be a registered name or a factory, got {type(spec).__name__}.")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"Method name {name!r} cannot be used in logged keys; give the factory a name with a dict, e.g. "
                "`methods={'my_method': factory}` (letters, digits, '_', '.', '-')."
            )
        if name in result:
            raise ValueError(f"`methods` lists {name!r} twice; give distinct names with a dict.")
        result[name] = spec
    return result


def _spec_name(spec: Any) -> Any:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, functools.partial):
        spec = spec.func
    return getattr(spec, "__name__", repr(spec)).lower()


def build_method(
    name: str,
    spec: MethodSpec,
    model: LightningModule,
    kwargs: Mapping[str, Any],
    input_bounds: Any,
) -> AttributionMethod:
    """Instantiate one method on ``model`` (name through the registry, factory called as ``factory(model, **kw)``)."""
    options = dict(kwargs)
    if input_bounds is not None:
        options.setdefault("input_bounds", input_bounds)
    if isinstance(spec, str):
        return get_method(spec, model, **options)
    method = spec(model, **options)
    if not isinstance(method, AttributionMethod):
        raise TypeError(f"The factory of method {name!r} returned {type(method).__name__}, not an AttributionMethod.")
    method.name = method.name or name
    return method


def check_method_kwargs(method_kwargs: Any, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``method_kwargs`` is ``{method name: {option: value}}``; every key must be one of the methods."""
    if method_kwargs is None:
        return {name: {} for name in names}
    if not isinstance(method_kwargs, Mapping) or not all(isinstance(v, Mapping) for v in method_kwargs.values()):
        raise TypeError(
            "`method_kwargs` must map method names to option dicts, e.g. {'mfaba': {'max_steps': 20}}, got "
            f"{method_kwargs!r}."
        )
    unknown = [key for key in method_kwargs if key not in names]
    if unknown:
        raise ValueError(f"`method_kwargs` has options for {unknown}, which are not among the methods {list(names)}.")
    return {name: dict(method_kwargs.get(name, {})) for name in names}


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``: a TypeError for another type (bools too), else a ValueError."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return value


def check_dataloader_idx(value: Any) -> int | str:
    """Validate ``dataloader_idx``: a position (int >= 0) in a list of loaders, or a key of a dict of them."""
    if isinstance(value, str):
        return value
    return check_int("dataloader_idx", value, 0)


def check_on_error(on_error: Any) -> str:
    """Validate ``on_error``."""
    if on_error not in ON_ERROR:
        raise ValueError(f"`on_error` must be one of {ON_ERROR}, got {on_error!r}.")
    return on_error


# ---------------------------------------------------------------------------------------------------- probe set
def find_dataset(
    trainer: Trainer, stage: str, dataloader_idx: int | str = 0
) -> tuple[Dataset, Callable[[list], Any]] | None:
    """The map-style dataset and collate function of a validation (``"fit"``/``"validate"``) or test loader.

    Only constructs the dataloaders (``*_dataloader()`` of the datamodule or module, or those given to the
    trainer); they are never iterated. ``dataloader_idx`` picks one of several (see :func:`dataset_of`). Returns
    None if no loader is defined.
    """
    split = "test" if stage == "test" else "val"
    loader: Any = None
    datamodule = trainer.datamodule
    if datamodule is not None and _overrides(datamodule, f"{split}_dataloader"):
        loader = getattr(datamodule, f"{split}_dataloader")()
    else:
        loop = {"fit": trainer.fit_loop.epoch_loop.val_loop, "validate": trainer.validate_loop}.get(
            stage, trainer.test_loop
        )
        # Lightning keeps the loader (or the module defining it) in the loop's data source until it loads it.
        source = getattr(loop, "_data_source", None)
        if source is not None and getattr(source, "instance", None) is not None and source.is_defined():
            loader = source.dataloader()
    return dataset_of(loader, split, dataloader_idx)


def dataset_of(
    loader: Any, split: str = "val", dataloader_idx: int | str = 0
) -> tuple[Dataset, Callable[[list], Any]] | None:
    """``(dataset, collate_fn)`` of a loader, or of one of a list/dict of loaders; None for no loader.

    ``dataloader_idx`` is a position among the loaders, numbered as Lightning numbers them (nested lists and
    dicts flattened in order), or a key of a dict of loaders.

    Raises:
        ValueError: if ``dataloader_idx`` names no loader.
    """
    if loader is None:
        return None
    if isinstance(dataloader_idx, str):
        keys = list(loader) if isinstance(loader, Mapping) else None
        if keys is None or dataloader_idx not in keys:
            found = f"its keys are {keys}" if keys is not None else "they are not a dict"
            raise ValueError(f"`dataloader_idx` is {dataloader_idx!r}, but no {split} loader has that key: {found}.")
        loader, dataloader_idx = loader[dataloader_idx], 0
    loaders = _flatten_loaders(loader)
    if not loaders:
        return None
    if dataloader_idx >= len(loaders):
        raise ValueError(
            f"`dataloader_idx` is {dataloader_idx}, but there {'is' if len(loaders) == 1 else 'are'} {len(loaders)} "
            f"{split} loader(s), at positions 0 to {len(loaders) - 1}."
        )
    loader = loaders[dataloader_idx]
    dataset = loader.dataset if isinstance(loader, DataLoader) else loader
    collate = getattr(loader, "collate_fn", None) or default_collate
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"The {split} data must be a map-style dataset (with __len__ and __getitem__) so that a fixed probe set "
            f"can be read by index, got {type(dataset).__name__}."
        )
    return dataset, collate


def _flatten_loaders(loaders: Any) -> list[Any]:
    if isinstance(loaders, Mapping):
        return [leaf for value in loaders.values() for leaf in _flatten_loaders(value)]
    if isinstance(loaders, (list, tuple)):
        return [leaf for value in loaders for leaf in _flatten_loaders(value)]
    return [] if loaders is None else [loaders]


def _overrides(datamodule: Any, name: str) -> bool:
    from lightning.pytorch import LightningDataModule

    method = getattr(type(datamodule), name, None)
    return method is not None and method is not getattr(LightningDataModule, name, None)


def select_probe(dataset_size: int, num_samples: int, seed: int, owner: str) -> list[int]:
    """``num_samples`` dataset indices drawn without replacement by a generator seeded with ``seed``.

    The draw depends on nothing but its arguments, so every rank and every epoch gets the same probe set.
    """
    from lightning.pytorch.utilities import rank_zero_warn

    if dataset_size < num_samples:
        rank_zero_warn(
            f"{owner}: the validation set has {dataset_size} samples, fewer than `num_samples={num_samples}`; "
            f"using all {dataset_size}."
        )
        num_samples = dataset_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(dataset_size, generator=generator)[:num_samples].tolist()


def load_probe(
    dataset: Dataset,
    indices: Sequence[int],
    adapter: BatchAdapter | None,
    collate_fn: Callable[[list], Any] = default_collate,
) -> ProbeBatch:
    """Read ``dataset[i]`` for every index and collate them with the loader's ``collate_fn``."""
    # A dataset with random transforms would draw from the global generators; the training run must not notice.
    with preserved_rng_state():
        batch = collate_fn([dataset[i] for i in indices])
    probe = adapt_batch(batch, adapter)
    if not probe.x.is_floating_point():
        raise TypeError(f"The probe inputs must be floating point, got dtype {probe.x.dtype}.")
    return ProbeBatch(
        probe.x.detach(),
        None if probe.y is None else probe.y.detach().long().reshape(-1),
        None if probe.mask is None else probe.mask.detach().reshape(probe.x.shape[0], *probe.mask.shape[-2:]).bool(),
    )


@dataclass
class ProbeSet:
    """A fixed, seeded subset of one split: where it is read from, which indices, and the samples once read."""

    num_samples: int
    seed: int
    owner: str
    split: str = "val"
    dataloader_idx: int | str = 0
    dataset: Dataset | None = None
    collate_fn: Callable[[list], Any] = default_collate
    indices: list[int] | None = None
    batch: ProbeBatch | None = field(default=None, repr=False)

    def attach(self, found: tuple[Dataset, Callable[[list], Any]] | None) -> None:
        """Use ``found`` (from :func:`find_dataset`) and draw the indices if they are missing or do not fit."""
        if found is None:
            return
        self.dataset, self.collate_fn = found
        size = len(self.dataset)  # type: ignore[arg-type]
        if self.indices is not None and (not self.indices or max(self.indices) >= size):
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"{self.owner}: the saved probe indices do not fit {size} samples; drawing a new probe set.")
            self.indices = None
        if self.indices is None:
            self.indices = select_probe(size, self.num_samples, self.seed, self.owner)
            self.batch = None

    def restore(self, indices: Sequence[int] | None) -> None:
        """Take indices from a checkpoint (they win over the seed, so a resumed history stays comparable)."""
        if indices is not None and list(indices) != self.indices:
            self.indices = [int(i) for i in indices]
            self.batch = None
            if self.dataset is not None:  # restored after the dataset was attached: check them against it now
                self.attach((self.dataset, self.collate_fn))

    def load(self, trainer: Trainer, adapter: BatchAdapter | None) -> ProbeBatch:
        """The probe samples, read on first use (and after the indices changed)."""
        if self.batch is not None:
            return self.batch
        if self.dataset is None:
            # The loaders were handed straight to the trainer's entry point: they are known only now.
            loaders = trainer.test_dataloaders if self.split == "test" else trainer.val_dataloaders
            self.attach(dataset_of(loaders, self.split, self.dataloader_idx))
        if self.dataset is None or self.indices is None:
            raise RuntimeError(f"{self.owner} could not find the {self.split} dataset to draw the probe set from.")
        self.batch = load_probe(self.dataset, self.indices, adapter, self.collate_fn)
        return self.batch


def shard(num: int, rank: int, world_size: int) -> list[int]:
    """The probe positions this rank works on: every ``world_size``-th from ``rank``."""
    return list(range(rank, num, world_size))


def chunks(positions: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive pieces of at most ``size`` positions."""
    return [list(positions[i : i + size]) for i in range(0, len(positions), size)]


# ---------------------------------------------------------------------------------------------------- DDP
def distributed(trainer: Trainer) -> bool:
    """True when several processes share a process group."""
    return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()


def gather_to_all(trainer: Trainer, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), indexed by rank; ``[obj]`` in a single process."""
    if not distributed(trainer):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def to_float(value: Tensor | float) -> float:
    """A Python float from a 0-d tensor or a number."""
    return float(value.detach().cpu()) if isinstance(value, Tensor) else float(value)
