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
import textwrap
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_attr.evaluate.command import (
        CLIError,
        build_evaluate_parser,
        default_wandb_offline,
        finish_wandb,
        run_evaluate,
    )

# The evaluate command's parts live in lit_attr.evaluate.command (`lit_attr demo` uses them too); their names here
# keep working. They are imported on first use: the helps are printed without importing torch or Lightning.
__all__ = ["CLIError", "build_evaluate_parser", "default_wandb_offline", "finish_wandb", "main", "run_evaluate"]
_COMMAND_NAMES = frozenset(__all__) - {"main"}


def __getattr__(name: str) -> Any:
    if name in _COMMAND_NAMES:
        from lit_attr.evaluate import command

        return getattr(command, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
  lit_attr evaluate --config configs/evaluate_demo.yaml --ckpt_path lit_attr_demo/cnn/checkpoints/demo.ckpt
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

validate and test run without torch.inference_mode when a callback needs gradients (AttributionMonitor), and say so
in one line.
"""


#: `lit_attr evaluate --help`: lit-attr's own options by group, as (option, help, default shown or None). The test
#: suite holds them to the parser (the same options, the same defaults), which is built only for a run: building it
#: imports Lightning, and this help is printed without.
_EVALUATE_OPTIONS: dict[str, list[tuple[str, str, Any]]] = {
    "what to evaluate": [
        ("--config CONFIG", "a YAML config in LightningCLI's layout (model, data, trainer and the options below); "
         "repeat it to combine files: --config fit.yaml --config evaluate.yaml", None),
        ("--ckpt_path PATH", "the checkpoint to evaluate (a Lightning .ckpt; required)", None),
        ("--model CLASS", "the model, a LightningModule returning logits (usually set in the config; --model.help "
         "CLASS lists its arguments)", None),
        ("--data CLASS", "the LightningDataModule that provides the split (usually set in the config; --data.help "
         "CLASS lists its arguments)", None),
        ("--split {val,test}", "the split to evaluate", "val"),
        ("--limit_samples N", "evaluate only the first N samples of the split, or null for all", None),
        ("--target {label,prediction}", "explain the label or the model's prediction", "label"),
        ("--model_output {logits,sigmoid}", "logits: class logits (N, K >= 2); sigmoid: a binary classifier's one "
         "logit z, class 1 scored by sigmoid(z)", "logits"),
        ("--batch_adapter PATH", "import path of a function that turns a collated batch into a lit_attr Batch; "
         "null reads tuples and dicts", None),
        ("--trust_checkpoint BOOL", "unpickle the checkpoint with weights_only=False and allow URLs: only for files "
         "you trust", False),
        ("--seed_everything N", "seed for everything, or false for none", 0),
    ],
    "methods and metrics": [
        ("--methods LIST", "registered method names", ["saliency", "integrated_gradients"]),
        ("--method_kwargs DICT", "options per method, e.g. '{mfaba: {max_steps: 20}}'", None),
        ("--metrics LIST", "registered metric names; those that need masks are skipped when the data has none",
         ["insertion_deletion", "localization", "activation_deviation"]),
        ("--metric_kwargs DICT", "options per metric, e.g. '{insertion_deletion: {preset: rise}}'", None),
        ("--batch_size N", "samples attributed at once, per process", 16),
        ("--input_bounds PAIR", "the valid input range, passed to every method, or null", [0.0, 1.0]),
        ("--randomization_samples N", "the first N samples go through the metrics that re-run the method "
         "(randomization, emprt, smprt, sensitivity): they cost many passes", 8),
        ("--reference_pool_size N", "IG2's reference pool: the first N samples of the split", 64),
    ],
    "output": [
        ("--output_dir DIR", "receives metrics.json, the PNG figures and report.html", "lit_attr_evaluation"),
        ("--overwrite BOOL", "replace a finished evaluation in --output_dir, and without --resume an unfinished one "
         "too", False),
        ("--heatmap_samples N", "the first N samples are shown in the heatmap grids", 8),
        ("--print_config", "print the resolved configuration and exit", None),
    ],
    "resume": [
        ("--resume BOOL", "continue a killed run where each process stopped; it needs the same configuration and "
         "number of processes", False),
        ("--checkpoint_every N", "each process saves its partial state every N batches", 10),
    ],
    "the Trainer (devices, strategy, precision, limits, logger)": [
        ("--trainer.NAME VALUE", "any argument of Lightning's Trainer, e.g. --trainer.devices 2 --trainer.strategy "
         "ddp; `lit_attr evaluate --help-trainer` lists them all", None),
    ],
}

_EVALUATE_USAGE = """\
usage: lit_attr evaluate --config CONFIG --ckpt_path PATH [OPTIONS]
       lit_attr evaluate --help-trainer

Run attribution methods and faithfulness metrics on a trained checkpoint: writes metrics.json, PNG figures and a
self-contained report.html to --output_dir, and logs them to the configured logger. Options come from the command
line or the config (the same names), the command line winning.
"""

_EVALUATE_EPILOG = """\
examples:
  lit_attr evaluate --config configs/evaluate_demo.yaml --ckpt_path model.ckpt
  lit_attr evaluate --config configs/evaluate_demo.yaml --ckpt_path model.ckpt --output_dir out \\
      --split test --limit_samples 32 --methods '[saliency, mfaba]' --method_kwargs '{mfaba: {max_steps: 20}}'
  lit_attr evaluate --config cfg.yaml --ckpt_path model.ckpt --trainer.accelerator cpu \\
      --trainer.devices 2 --trainer.strategy ddp    # each sample is counted once; same numbers as 1 process
  lit_attr evaluate --config cfg.yaml --ckpt_path model.ckpt --resume true    # continue a killed run

notes:
  A fit config can be passed as is (its optimizer and lr_scheduler are ignored). lit_attr evaluate sets the
  Trainer's inference_mode, use_distributed_sampler, enable_checkpointing and enable_model_summary itself.
  Results are written to a hidden work directory next to --output_dir and moved there when complete; a finished
  --output_dir is only replaced with --overwrite true. SIGTERM or SIGINT (and SLURM's requeue signal) stop a run at
  once with its state saved and exit code 128 + the signal (143, 130): --resume true continues it. One run at a
  time works on an --output_dir (a lock next to it).
  Checkpoints are loaded with torch.load(weights_only=True): tensors and plain values only. A checkpoint that needs
  other Python objects, or a URL, is refused unless you pass --trust_checkpoint true (it can run code).
  Progress: a bar on a terminal; elsewhere (CI, SLURM, nohup) a line on stderr every tenth of the samples or every
  LIT_ATTR_PROGRESS_SECONDS seconds (30).
"""


def _shown(value: Any) -> str:
    """A default as it is written on the command line or in YAML."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _evaluate_help(width: int = 118) -> str:
    """The text of ``lit_attr evaluate --help``: lit-attr's options by group, examples and notes; no import needed.

    Example:
        >>> _evaluate_help().splitlines()[0]
        'usage: lit_attr evaluate --config CONFIG --ckpt_path PATH [OPTIONS]'
    """
    column = 32
    parts = [_EVALUATE_USAGE]
    for group, options in _EVALUATE_OPTIONS.items():
        parts.append(f"{group}:")
        for option, text, default in options:
            if default is not None:
                text = f"{text} (default: {_shown(default)})"
            lines = textwrap.wrap(text, width - column)
            head = f"  {option}"
            if len(head) >= column - 1:
                parts.append(head)
                head = ""
            parts.append(f"{head:<{column}}{lines[0]}".rstrip())
            parts.extend(" " * column + line for line in lines[1:])
        parts.append("")
    parts.append(_EVALUATE_EPILOG)
    return "\n".join(parts)


def _trainer_help() -> str:
    """The text of ``lit_attr evaluate --help-trainer``: every Trainer option, from Lightning's own signature."""
    import io

    from lightning import Trainer

    from lit_attr.evaluate.command import plain_help_parser

    parser = plain_help_parser()(
        prog="lit_attr evaluate",
        description="The Trainer that runs lit_attr evaluate: --trainer.NAME VALUE on the command line, or under "
        "trainer: in the config. The evaluation sets inference_mode, use_distributed_sampler, enable_checkpointing "
        "and enable_model_summary itself.",
    )
    parser.add_class_arguments(Trainer, "trainer", help="the Trainer's arguments")
    text = io.StringIO()
    parser.print_help(text)
    return text.getvalue()


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

    from lit_attr.evaluate.command import CLIError, run_evaluate
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

    from lit_attr.evaluate.command import default_wandb_offline, help_formatter

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
    if command == "evaluate" and ("-h" in rest or "--help" in rest):
        sys.stdout.write(_evaluate_help())
        return 0
    _quiet()
    from lit_attr.evaluate.command import CLIError

    if command == "evaluate" and "--help-trainer" in rest:
        sys.stdout.write(_trainer_help())
        return 0
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
