"""Post-hoc evaluation of attribution methods on a trained model: the engine behind ``lit_attr evaluate``.

:func:`evaluate` runs the configured methods over one split of a data module with gradients enabled (a Lightning
``Trainer(inference_mode=False)`` drives a small wrapper module, so ``devices``/``strategy``/``num_nodes`` work as
in training), feeds the attributions to ``sum``-reduced metrics, and on global rank 0 writes ``metrics.json``,
PNG figures and a self-contained ``report.html`` into ``output_dir``. One concern a module:

* :mod:`~lit_attr.evaluate.checks`: the set-up checks (the split, its collate function, the model's logits);
* :mod:`~lit_attr.evaluate.checkpoint`: loading a checkpoint, safely unless trusted;
* :mod:`~lit_attr.evaluate.storage`: where it writes: checks before the work, the output's lock, storage errors;
* :mod:`~lit_attr.evaluate.preemption`: SIGTERM, SIGINT and SLURM's requeue signal stop it with its state saved;
* :mod:`~lit_attr.evaluate.driver`: the Lightning driver, sharding and resuming;
* :mod:`~lit_attr.evaluate.progress`: progress as a bar on a terminal, as plain lines in logs;
* :mod:`~lit_attr.evaluate.results`: the results and their output (files, loggers);
* :mod:`~lit_attr.evaluate.run`: :func:`evaluate` itself, tying them together;
* :mod:`~lit_attr.evaluate.command`: the ``lit_attr evaluate`` command (parser, checkpoint, run).
"""

from lit_attr.evaluate.checkpoint import load_checkpoint
from lit_attr.evaluate.checks import EvaluationError, check_logits, split_collate, split_dataset
from lit_attr.evaluate.driver import QUIET_TRAINER
from lit_attr.evaluate.preemption import EvaluationInterruptedError
from lit_attr.evaluate.results import flat_scalars, package_versions
from lit_attr.evaluate.run import evaluate

__all__ = [
    "QUIET_TRAINER",
    "EvaluationError",
    "EvaluationInterruptedError",
    "check_logits",
    "evaluate",
    "flat_scalars",
    "load_checkpoint",
    "package_versions",
    "split_collate",
    "split_dataset",
]
