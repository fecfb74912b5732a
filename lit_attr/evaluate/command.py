"""The ``lit_attr evaluate`` command: its parser, the checkpoint, the run; and what every command shares.

:func:`run_evaluate` is used by the console script (:mod:`lit_attr.cli`) and by ``lit_attr demo``
(:mod:`lit_attr.demo`), which therefore import this module instead of each other. User errors are
:class:`CLIError`: one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import inspect
import os
import re
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
    "plain_help_parser",
    "plain_text",
    "run_evaluate",
]

_EVALUATE_EPILOG = (
    "lit_attr evaluate --help shows lit-attr's options by group, with examples and notes; lit_attr evaluate "
    "--help-trainer the Trainer's."
)


class CLIError(Exception):
    """A user error reported as one line on stderr with a non-zero exit code (``exit_code``, 1 by default)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: Sphinx roles (:class:`~a.B`, :func:`f`) and inline literals (``x``) of docstrings, shown in help as plain text.
_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)(?:\s*<[^`]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``")


def plain_text(text: str) -> str:
    """``text`` without the reST markup of docstrings: a role becomes its target's name, an inline literal its text.

    Example:
        >>> plain_text("a :class:`~lit_attr.batch.Batch`, :func:`f <mod.f>` or ``None``")
        'a Batch, f or None'
    """
    text = _ROLE.sub(lambda match: match[1] if "~" not in match[0] else match[1].rsplit(".", 1)[-1], text)
    return _LITERAL.sub(r"\1", text)


def help_formatter() -> type:
    """Return jsonargparse's help formatter: plain text (no reST markup), description and epilog lines as written."""
    from jsonargparse import DefaultHelpFormatter

    class RawTextFormatter(DefaultHelpFormatter):
        def _fill_text(self, text: str, width: int, indent: str) -> str:
            return "".join(indent + line for line in plain_text(text).splitlines(keepends=True))

        def _expand_help(self, action: Any) -> str:
            return plain_text(super()._expand_help(action))

        def start_section(self, heading: str | None) -> None:  # a group's heading: its class docstring's first line
            super().start_section(heading and plain_text(heading))

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


def plain_help_parser() -> type:
    """Return jsonargparse's ArgumentParser with :func:`help_formatter` as default, for plain sub-helps too.

    jsonargparse builds the help of ``--model.help CLASS`` with a new parser of the same type and no formatter.

    Example::

        plain_help_parser()(prog="lit_attr evaluate").print_help()
    """
    from jsonargparse import ArgumentParser

    formatter = help_formatter()

    class PlainHelpParser(ArgumentParser):
        def __init__(self, *args: Any, formatter_class: type = formatter, **kwargs: Any) -> None:
            super().__init__(*args, formatter_class=formatter_class, **kwargs)

    return PlainHelpParser


def build_evaluate_parser() -> Any:
    """The jsonargparse parser of ``lit_attr evaluate`` (LightningCLI-style ``model``/``data``/``trainer``)."""
    from jsonargparse import ActionConfigFile
    from lightning import LightningDataModule, LightningModule, Trainer

    parser = plain_help_parser()(
        prog="lit_attr evaluate",
        description="Run attribution methods and faithfulness metrics on a trained checkpoint.",
        epilog=_EVALUATE_EPILOG,
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
        progress: show progress (a bar on a terminal, plain lines on stderr elsewhere).

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
