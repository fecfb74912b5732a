"""The ``lit_attr`` console script: ``fit``/``validate``/``test``/``predict`` (LightningCLI), ``evaluate`` and ``demo``.

Example:
    $ lit_attr fit --config configs/demo.yaml
    $ lit_attr evaluate --config configs/evaluate_demo.yaml --ckpt_path model.ckpt --output_dir results
    $ lit_attr demo --fast
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from lit_attr.evaluate.command import (
    CLIError,
    build_evaluate_parser,
    default_wandb_offline,
    finish_wandb,
    help_formatter,
    run_evaluate,
)

# The evaluate command's parts live in lit_attr.evaluate.command (`lit_attr demo` uses them too); their names here
# keep working.
__all__ = ["CLIError", "build_evaluate_parser", "default_wandb_offline", "finish_wandb", "main", "run_evaluate"]

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

_LIGHTNING_EPILOG = """\
examples:
  lit_attr fit --config configs/demo.yaml
  lit_attr fit --config configs/demo.yaml --trainer.max_epochs 2 --trainer.default_root_dir runs/demo
  lit_attr validate --config configs/demo.yaml --ckpt_path runs/demo/checkpoints/last.ckpt
  lit_attr fit --config configs/imagenet_resnet50.yaml --trainer.devices 8 --trainer.num_nodes 2
"""


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


def _is_rank_zero() -> bool:
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


# ---------------------------------------------------------------------------------------------------- evaluate
def _evaluate_command(argv: Sequence[str]) -> int:
    import signal

    from rich.console import Console

    from lit_attr.evaluate.preemption import Preemption, Stop, signal_name
    from lit_attr.report import summary_table

    # The evaluation handles the signals while it runs (it saves its state); before and after it, they stop the
    # command with one line too.
    try:
        with Preemption([signal.SIGTERM, signal.SIGINT]):
            result, output_dir = run_evaluate(argv)
    except Stop as stop:
        raise CLIError(f"interrupted by {signal_name(stop.signum)} outside the evaluation", 128 + stop.signum) from None
    if _is_rank_zero():
        console = Console()
        console.print(summary_table(result, f"{result['num_samples']} {result['split']} samples"))
        console.print(
            f"report: [bold]{output_dir / 'report.html'}[/bold]   metrics: {output_dir / 'metrics.json'}",
            soft_wrap=True,
        )
    return 0


# ---------------------------------------------------------------------------------------------------- LightningCLI
def _gradients_for_callbacks(trainer: Any, command: str) -> None:
    """Run ``validate``/``test`` without ``torch.inference_mode`` when a callback declares ``needs_gradients``.

    Lightning runs these loops under inference mode by default, where no gradient can be taken; a user who attaches
    an attribution callback to them wants it to run, so the command switches the mode off and says so in one line.
    """
    loop = trainer.validate_loop if command == "validate" else trainer.test_loop
    needing = sorted({type(cb).__name__ for cb in trainer.callbacks if getattr(cb, "needs_gradients", False)})
    if not needing or not loop.inference_mode:
        return
    loop.inference_mode = False
    if _is_rank_zero():
        sys.stderr.write(
            f"lit_attr {command}: running with --trainer.inference_mode false, since {', '.join(needing)} "
            f"{'needs' if len(needing) == 1 else 'need'} gradients\n"
        )


def _lightning_command(argv: Sequence[str] | None) -> int:
    from lightning import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class AttributionCLI(LightningCLI):
        """LightningCLI whose ``validate``/``test`` keep gradients for the callbacks that attribute."""

        def before_validate(self) -> None:
            _gradients_for_callbacks(self.trainer, "validate")

        def before_test(self) -> None:
            _gradients_for_callbacks(self.trainer, "test")

    default_wandb_offline()
    AttributionCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if argv is None else list(argv),  # None: LightningCLI reads sys.argv (and warns about both)
        # Per-subcommand kwargs: the epilog of the main parser is not shown by `lit_attr fit --help`.
        parser_kwargs={
            "formatter_class": help_formatter(),
            **{
                name: {"epilog": _LIGHTNING_EPILOG, "formatter_class": help_formatter()} for name in _LIGHTNING_COMMANDS
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
        return error.exit_code
    sys.stderr.write(
        f"lit_attr: error: unknown command {command!r}; choose from fit, validate, test, predict, "
        "evaluate, demo (see lit_attr --help)\n"
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
