"""The ``lit_attr evaluate`` command: its parser, the checkpoint, the run; and what every command shares.

:func:`run_evaluate` is used by the console script (:mod:`lit_attr.cli`) and by ``lit_attr demo``
(:mod:`lit_attr.demo`), which therefore import this module instead of each other. User errors are
:class:`CLIError`: one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_attr.evaluate.checkpoint import load_checkpoint
from lit_attr.evaluate.checks import EvaluationError
from lit_attr.evaluate.driver import QUIET_TRAINER
from lit_attr.evaluate.run import evaluate

__all__ = [
    "CLIError",
    "build_evaluate_parser",
    "default_wandb_offline",
    "finish_wandb",
    "help_formatter",
    "run_evaluate",
]

_EVALUATE_EPILOG = """\
examples:
  lit_attr evaluate --config configs/evaluate_demo.yaml --ckpt_path model.ckpt
  lit_attr evaluate --config configs/evaluate_demo.yaml --ckpt_path model.ckpt --output_dir out \\
      --split test --limit_samples 32 --methods '[saliency, mfaba]' --method_kwargs '{mfaba: {max_steps: 20}}'
  lit_attr evaluate --config cfg.yaml --ckpt_path model.ckpt --trainer.accelerator cpu \\
      --trainer.devices 2 --trainer.strategy ddp    # each sample is counted once; same numbers as 1 process
  lit_attr evaluate --config cfg.yaml --ckpt_path model.ckpt --resume true    # continue a killed run

The config uses LightningCLI's layout (model: {class_path, init_args}, data: {...}, trainer: {...}); a fit config
can be combined with an evaluation config: --config fit.yaml --config evaluate.yaml.
Results are written to a hidden work directory next to --output_dir and moved there when complete; a finished
--output_dir is only replaced with --overwrite true. Every --checkpoint_every batches each process saves its
partial state in the work directory: --resume true continues a killed run (same configuration and number of
processes) where it stopped. SIGTERM or SIGINT (and SLURM's requeue signal) stop a run at once with its state saved
and exit code 128 + the signal (143, 130); one run at a time works on an --output_dir (a lock next to it).
Checkpoints are loaded with torch.load(weights_only=True): tensors and plain values only. A checkpoint that needs
other Python objects, or a URL, is refused unless you pass --trust_checkpoint true (only for files you trust: it
unpickles with weights_only=False, which can run code).
"""


class CLIError(Exception):
    """A user error reported as one line on stderr with a non-zero exit code (``exit_code``, 1 by default)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def help_formatter() -> type:
    """Return jsonargparse's help formatter, keeping description and epilog line breaks (the examples) as written."""
    from jsonargparse import DefaultHelpFormatter

    class RawTextFormatter(DefaultHelpFormatter):
        def _fill_text(self, text: str, width: int, indent: str) -> str:
            return "".join(indent + line for line in text.splitlines(keepends=True))

    return RawTextFormatter


def default_wandb_offline() -> None:
    """No network at run time: W&B stays offline (and quiet) unless the user chose a mode."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")  # its run summaries would bury the CLI's own output


def finish_wandb(trainer: Any) -> None:
    """Close the W&B run of a trainer's WandbLogger, so that an offline run is complete on disk for ``wandb sync``."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()  # a no-op when the logger never started a run


def build_evaluate_parser() -> Any:
    """The jsonargparse parser of ``lit_attr evaluate`` (LightningCLI-style ``model``/``data``/``trainer``)."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning import LightningDataModule, LightningModule, Trainer

    parser = ArgumentParser(
        prog="lit_attr evaluate",
        description="Run attribution methods and faithfulness metrics on a trained checkpoint.",
        epilog=_EVALUATE_EPILOG,
        formatter_class=help_formatter(),
        exit_on_error=False,  # run_evaluate reports parse errors in one line, like every other error
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config (LightningCLI layout)")
    parser.add_argument("--ckpt_path", type=str, required=True, help="the checkpoint to evaluate (Lightning .ckpt)")
    parser.add_argument(
        "--trust_checkpoint",
        type=bool,
        default=False,
        help="unpickle the checkpoint with weights_only=False and allow URLs: only for files you trust",
    )
    parser.add_argument("--seed_everything", type=int | bool, default=0, help="seed for everything (False: none)")
    parser.add_subclass_arguments(LightningModule, "model", required=True, help="the model class (logits out)")
    parser.add_subclass_arguments(LightningDataModule, "data", required=True, help="the data module")
    parser.add_class_arguments(Trainer, "trainer", help="the Trainer that runs the evaluation (devices, strategy)")
    # Accepted so that a config saved by `lit_attr fit` can be passed as is; evaluation never optimises.
    parser.add_argument("--optimizer", type=dict | None, default=None, help="ignored (fit configs)")
    parser.add_argument("--lr_scheduler", type=dict | None, default=None, help="ignored (fit configs)")
    parser.add_function_arguments(evaluate, None, skip=set(_NOT_EVALUATE_OPTIONS))
    parser.set_defaults({"trainer.logger": False, "trainer.enable_progress_bar": False})
    return parser


#: Parameters of :func:`lit_attr.evaluate.evaluate` that the command sets itself, not from its options.
_NOT_EVALUATE_OPTIONS = frozenset({"model", "datamodule", "trainer", "config", "progress", "tokenizer"})


def run_evaluate(argv: Sequence[str], progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Parse ``lit_attr evaluate`` arguments, load the checkpoint and run :func:`lit_attr.evaluate.evaluate`.

    Args:
        argv: the arguments after ``evaluate``.
        progress: show progress bars.

    Returns:
        The evaluation result and the output directory.

    Raises:
        CLIError: for a missing checkpoint, a model that does not return logits, a missing split, ...

    Example::

        run_evaluate(["--config", "configs/evaluate_demo.yaml", "--ckpt_path", "m.ckpt"])
    """
    import lightning as L
    import yaml
    from jsonargparse import ArgumentError

    parser = build_evaluate_parser()
    try:
        cfg = parser.parse_args(list(argv))
    except ArgumentError as error:
        raise CLIError(f"{' '.join(str(error).split())} (see lit_attr evaluate --help)") from error
    # Check the cheap things before building anything: nothing is written when they fail.
    if "://" not in cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():  # load_checkpoint judges URLs
        raise CLIError(f"checkpoint not found: --ckpt_path {cfg.ckpt_path!r} is not a file")
    resolved = yaml.safe_load(parser.dump(cfg, skip_validation=True))
    if cfg.seed_everything is not False:
        L.seed_everything(int(cfg.seed_everything), verbose=False)
    default_wandb_offline()
    for key in ("inference_mode", "use_distributed_sampler", "enable_checkpointing", "enable_model_summary"):
        cfg.trainer[key] = QUIET_TRAINER[key]  # gradients and our own index sharding are not optional
    cfg.trainer.callbacks = None  # training callbacks of a fit config have no business in an evaluation
    init = parser.instantiate(cfg)
    options = {key: cfg[key] for key in inspect.signature(evaluate).parameters if key not in _NOT_EVALUATE_OPTIONS}
    try:
        load_checkpoint(init.model, cfg.ckpt_path, trust_checkpoint=cfg.trust_checkpoint)
        result = evaluate(init.model, init.data, trainer=init.trainer, config=resolved, progress=progress, **options)
    except (EvaluationError, ValueError, TypeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CLIError(message, exit_code=getattr(error, "exit_code", 1)) from error
    finally:
        finish_wandb(init.trainer)
    return result, Path(cfg.output_dir)
