"""The ``lit_attr`` console script: ``fit``/``validate``/``test``/``predict`` (LightningCLI), ``evaluate`` and ``demo``.

Example:
    $ lit_attr fit --config configs/demo.yaml
    $ lit_attr evaluate --config configs/evaluate_demo.yaml --ckpt_path model.ckpt --output_dir results
    $ lit_attr demo --fast
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "build_evaluate_parser", "main", "run_evaluate"]

log = logging.getLogger(__name__)

_LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

_TOP_HELP = """\
usage: lit_attr [-h] {fit,validate,test,predict,evaluate,demo} ...

Feature attribution and its faithfulness inside PyTorch Lightning.

commands:
  fit         train a model (LightningCLI; the resolved config is saved next to the logs)
  validate    validate a model (LightningCLI)
  test        test a model (LightningCLI)
  predict     predict with a model (LightningCLI)
  evaluate    run attribution methods and faithfulness metrics on a trained checkpoint; writes
              metrics.json, PNG figures and a self-contained report.html (DDP-capable)
  demo        train the demo classifier on synthetic shapes, then evaluate it (no downloads)

Run `lit_attr COMMAND --help` for the options of a command.

examples:
  lit_attr demo --fast
  lit_attr fit --config configs/demo.yaml
  lit_attr evaluate --config configs/evaluate_demo.yaml --ckpt_path lit_attr_demo/checkpoints/demo.ckpt
  lit_attr evaluate --config configs/evaluate_demo.yaml --ckpt_path m.ckpt --trainer.devices 2 \\
      --trainer.strategy ddp --trainer.accelerator cpu
  torchrun --nproc_per_node 4 -m lit_attr.cli evaluate --config configs/imagenet_resnet50.yaml --ckpt_path r50.ckpt
"""

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
processes) where it stopped.
Checkpoints are loaded with torch.load(weights_only=True): tensors and plain values only. A checkpoint that needs
other Python objects, or a URL, is refused unless you pass --trust_checkpoint true (only for files you trust: it
unpickles with weights_only=False, which can run code).
"""

_LIGHTNING_EPILOG = """\
examples:
  lit_attr fit --config configs/demo.yaml
  lit_attr fit --config configs/demo.yaml --trainer.max_epochs 2 --trainer.default_root_dir runs/demo
  lit_attr validate --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
  lit_attr fit --config configs/imagenet_resnet50.yaml --trainer.devices 8 --trainer.num_nodes 2
"""

def _raw_formatter() -> type:
    """Return jsonargparse's help formatter, keeping description and epilog line breaks (the examples) as written."""
    from jsonargparse import DefaultHelpFormatter

    class RawTextFormatter(DefaultHelpFormatter):
        def _fill_text(self, text: str, width: int, indent: str) -> str:
            return "".join(indent + line for line in text.splitlines(keepends=True))

    return RawTextFormatter


class CLIError(Exception):
    """A user error reported as one line on stderr with a non-zero exit code."""


def _quiet() -> None:
    """Keep Lightning's start-up banners and known third-party warnings out of the CLI's output."""
    import lightning  # noqa: F401  (sets its loggers to INFO on import: import first, then lower them)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")  # lightning vs torch 2.14 pytree
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    # Callables in the callbacks' `methods` type hints cannot be serialised; the config still round-trips as names.
    warnings.filterwarnings("ignore", message=r"\s*Unable to serialize instance")


def default_wandb_offline() -> None:
    # No network at run time: W&B stays offline unless the user chose a mode.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")  # its run summaries would bury the CLI's own output


def _is_rank_zero() -> bool:
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


# ---------------------------------------------------------------------------------------------------- evaluate
def build_evaluate_parser() -> Any:
    """The jsonargparse parser of ``lit_attr evaluate`` (LightningCLI-style ``model``/``data``/``trainer``)."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning import LightningDataModule, LightningModule, Trainer

    from lit_attr.evaluate import evaluate

    parser = ArgumentParser(
        prog="lit_attr evaluate",
        description="Run attribution methods and faithfulness metrics on a trained checkpoint.",
        epilog=_EVALUATE_EPILOG,
        formatter_class=_raw_formatter(),
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

    from lit_attr.evaluate import QUIET_TRAINER, EvaluationError, evaluate, load_checkpoint

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
        raise CLIError(str(error).splitlines()[0] if str(error) else type(error).__name__) from error
    finally:
        finish_wandb(init.trainer)
    return result, Path(cfg.output_dir)


def finish_wandb(trainer: Any) -> None:
    """Close the W&B run of a trainer's WandbLogger, so that an offline run is complete on disk for ``wandb sync``."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()  # a no-op when the logger never started a run


def _evaluate_command(argv: Sequence[str]) -> int:
    from rich.console import Console

    from lit_attr.report import summary_table

    result, output_dir = run_evaluate(argv)
    if _is_rank_zero():
        console = Console()
        console.print(summary_table(result, f"{result['num_samples']} {result['split']} samples"))
        console.print(
            f"report: [bold]{output_dir / 'report.html'}[/bold]   metrics: {output_dir / 'metrics.json'}",
            soft_wrap=True,
        )
    return 0


# ---------------------------------------------------------------------------------------------------- LightningCLI
def _lightning_command(argv: Sequence[str] | None) -> int:
    from lightning import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    default_wandb_offline()
    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if argv is None else list(argv),  # None: LightningCLI reads sys.argv (and warns about both)
        # Per-subcommand kwargs: the epilog of the main parser is not shown by `lit_attr fit --help`.
        parser_kwargs={
            "formatter_class": _raw_formatter(),
            **{
                name: {"epilog": _LIGHTNING_EPILOG, "formatter_class": _raw_formatter()} for name in _LIGHTNING_COMMANDS
            },
        },
        save_config_kwargs={"overwrite": True},
    )
    return 0


# ---------------------------------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code.

    Example::

        main(["evaluate", "--config", "configs/evaluate_demo.yaml", "--ckpt_path", "m.ckpt"])
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(_TOP_HELP)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    _quiet()
    try:
        if command in _LIGHTNING_COMMANDS:
            return _lightning_command(None if argv is None else args)
        if command == "evaluate":
            return _evaluate_command(rest)
        if command == "demo":
            from lit_attr.demo import demo_command

            return demo_command(rest)
    except CLIError as error:
        sys.stderr.write(f"lit_attr {command}: error: {error}\n")
        return 1
    sys.stderr.write(
        f"lit_attr: error: unknown command {command!r}; choose from fit, validate, test, predict, "
        "evaluate, demo (see lit_attr --help)\n"
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
