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
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEMO_BUDGETS", "main", "run_demo", "run_evaluate"]

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

The config uses LightningCLI's layout (model: {class_path, init_args}, data: {...}, trainer: {...}); a fit config
can be combined with an evaluation config: --config fit.yaml --config evaluate.yaml.
Results are written to a temporary directory and moved to --output_dir when complete.
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

_DEMO_HELP = """\
usage: lit_attr demo [-h] [--output_dir DIR] [--fast] [--seed SEED]

Train the demo classifier on the embedded synthetic shapes (with the AttributionMonitor and RandomizationCheck
callbacks attached), save a checkpoint, then run `lit_attr evaluate` on it with mfaba, ig2, fei and
integrated_gradients, and print a summary table. W&B logs offline unless WANDB_MODE says otherwise.

options:
  -h, --help        show this help message and exit
  --output_dir DIR  where everything goes (default: lit_attr_demo)
  --fast            small budgets (a smoke test, well under 2 minutes on 2 CPU cores)
  --seed SEED       seed of the data, the weights and the training (default: 0)

budgets (full / --fast):
  training          6 epochs on 4096 images / 3 epochs on 2048 images
  evaluated images  32 / 8 validation images, 8 per batch
  mfaba             max_steps 50 / 20
  ig2               steps 201 / 50, n_references 4 (8 in the paper) / 4
  fei               iterations 100 / 20
  integrated_grads  n_steps 50 / 20
  randomisation     4 / 4 images, fully randomised network only

examples:
  lit_attr demo
  lit_attr demo --fast --output_dir /tmp/demo
"""

#: Budgets of ``lit_attr demo`` (full, ``--fast``); see ``lit_attr demo --help``.
DEMO_BUDGETS: dict[str, dict[str, Any]] = {
    "full": {
        "epochs": 6,
        "num_train": 4096,
        "num_val": 512,
        "limit_samples": 32,
        "randomization_samples": 4,
        "method_kwargs": {
            "mfaba": {"max_steps": 50},
            # Rows per forward bounded: at 16 x 201 x 8 rows the CPU spends its time paging, not computing.
            "ig2": {"steps": 201, "n_references": 4, "internal_batch_size": 512},
            "fei": {"iterations": 100, "internal_batch_size": 512},
            "integrated_gradients": {"n_steps": 50},
        },
        "monitor_samples": 16,
    },
    "fast": {
        "epochs": 3,
        "num_train": 2048,
        "num_val": 128,
        "limit_samples": 8,
        "randomization_samples": 4,
        "method_kwargs": {
            "mfaba": {"max_steps": 20},
            "ig2": {"steps": 50, "n_references": 4, "internal_batch_size": 512},
            "fei": {"iterations": 20, "internal_batch_size": 512},
            "integrated_gradients": {"n_steps": 20},
        },
        "monitor_samples": 8,
    },
}


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


def _default_wandb_offline() -> None:
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
    parser.add_function_arguments(evaluate, None, skip={"model", "datamodule", "trainer", "config", "progress"})
    parser.set_defaults({"trainer.logger": False, "trainer.enable_progress_bar": False})
    return parser


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

    from lit_attr.evaluate import _QUIET_TRAINER, EvaluationError, evaluate, load_checkpoint

    parser = build_evaluate_parser()
    cfg = parser.parse_args(list(argv))
    # Check the cheap things before building anything: nothing is written when they fail.
    if "://" not in cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():  # load_checkpoint judges URLs
        raise CLIError(f"checkpoint not found: {cfg.ckpt_path!r} is not a file")
    resolved = yaml.safe_load(parser.dump(cfg, skip_validation=True))
    if cfg.seed_everything is not False:
        L.seed_everything(int(cfg.seed_everything), verbose=False)
    _default_wandb_offline()
    for key in ("inference_mode", "use_distributed_sampler", "enable_checkpointing", "enable_model_summary"):
        cfg.trainer[key] = _QUIET_TRAINER[key]  # gradients and our own index sharding are not optional
    cfg.trainer.callbacks = None  # training callbacks of a fit config have no business in an evaluation
    init = parser.instantiate(cfg)
    options = {
        key: cfg[key]
        for key in (
            "output_dir",
            "methods",
            "method_kwargs",
            "metrics",
            "metric_kwargs",
            "split",
            "limit_samples",
            "batch_size",
            "input_bounds",
            "target",
            "heatmap_samples",
            "randomization_samples",
            "reference_pool_size",
        )
    }
    try:
        load_checkpoint(init.model, cfg.ckpt_path, trust_checkpoint=cfg.trust_checkpoint)
        result = evaluate(init.model, init.data, trainer=init.trainer, config=resolved, progress=progress, **options)
    except (EvaluationError, ValueError, TypeError) as error:
        raise CLIError(str(error).splitlines()[0] if str(error) else type(error).__name__) from error
    finally:
        _finish_wandb(init.trainer)
    return result, Path(cfg.output_dir)


def _finish_wandb(trainer: Any) -> None:
    """Close W&B runs so that offline runs are complete on disk (``wandb sync`` needs them finished)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


# (metric, key, header) of the console table: the headline numbers only, so it fits an 80-column terminal.
_CONSOLE_COLUMNS = (
    ("insertion_deletion", "insertion", "ins.↑"),
    ("insertion_deletion", "deletion", "del.↓"),
    ("localization", "pointing_game", "point↑"),
    ("localization", "relevance_mass", "mass↑"),
    ("activation_deviation", "mean_mse", "act.dev↓"),
)


def _summary_table(result: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    methods = result["methods"]
    columns = [c for c in _CONSOLE_COLUMNS if any(c[1] in r.get(c[0], {}) for r in methods.values())]
    table = Table(title=title)
    table.add_column("method")
    for *_, header in columns:
        table.add_column(header, justify="right")
    has_check = any("randomization" in r for r in methods.values())
    if has_check:
        table.add_column("sanity", justify="right")
    table.add_column("ms/img", justify="right")
    for method, scores in methods.items():
        row = [method] + [f"{scores.get(metric, {}).get(key, float('nan')):.3f}" for metric, key, _ in columns]
        if has_check:
            check = scores.get("randomization", {}).get("spearman_abs", {})
            row.append("" if not check else ("pass" if check.get("passed") else "FAIL"))
        row.append(f"{1000 * result['timing'][method]['seconds_per_sample']:.0f}")
        table.add_row(*row)
    return table


def _evaluate_command(argv: Sequence[str]) -> int:
    from rich.console import Console

    result, output_dir = run_evaluate(argv)
    if _is_rank_zero():
        console = Console()
        console.print(_summary_table(result, f"{result['num_samples']} {result['split']} samples"))
        console.print(
            f"report: [bold]{output_dir / 'report.html'}[/bold]   metrics: {output_dir / 'metrics.json'}",
            soft_wrap=True,
        )
    return 0


# ---------------------------------------------------------------------------------------------------- LightningCLI
def _lightning_command(argv: Sequence[str] | None) -> int:
    from lightning import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    _default_wandb_offline()
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


# ---------------------------------------------------------------------------------------------------- demo
def run_demo(output_dir: str | os.PathLike = "lit_attr_demo", fast: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train the demo classifier, save a checkpoint, evaluate it and print a summary.

    Args:
        output_dir: receives ``checkpoints/demo.ckpt``, ``fit_config.yaml``, ``evaluate.yaml``, ``wandb/`` (or
            ``logs/``) and ``evaluation/`` (``metrics.json``, PNGs, ``report.html``).
        fast: use the ``"fast"`` budgets of :data:`DEMO_BUDGETS`.
        seed: seed of data, weights and training.

    Returns:
        The evaluation result (the content of ``evaluation/metrics.json``).

    Example::

        run_demo("/tmp/demo", fast=True)
    """
    import lightning as L
    import yaml
    from rich.console import Console

    from lit_attr.data import ShapesDataModule
    from lit_attr.models import DemoClassifier

    budget = DEMO_BUDGETS["fast" if fast else "full"]
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    started = time.perf_counter()
    _default_wandb_offline()
    L.seed_everything(seed, verbose=False)

    data_args = {"num_train": budget["num_train"], "num_val": budget["num_val"], "num_test": 64, "seed": seed}
    data = ShapesDataModule(**data_args)
    model = DemoClassifier(num_classes=data.num_classes)
    callbacks, skipped = _demo_callbacks(budget)
    logger, run_hint = _demo_logger(out)
    trainer = L.Trainer(
        max_epochs=budget["epochs"],
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=str(out),
        log_every_n_steps=10,
    )
    console.rule("[bold]lit-attr demo: training the demo classifier on synthetic shapes")
    if skipped:
        console.print(f"[yellow]{skipped}[/yellow]")
    trainer.fit(model, datamodule=data)
    accuracy = float(trainer.callback_metrics.get("val_acc", float("nan")))
    console.print(f"validation accuracy after {budget['epochs']} epochs: [bold]{accuracy:.3f}[/bold]")
    ckpt = out / "checkpoints" / "demo.ckpt"
    trainer.save_checkpoint(ckpt)
    _finish_wandb(trainer)

    model_cfg = {"class_path": "lit_attr.models.DemoClassifier", "init_args": dict(model.hparams)}
    model_cfg["init_args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in model_cfg["init_args"].items()}
    data_cfg = {"class_path": "lit_attr.data.ShapesDataModule", "init_args": data_args}
    (out / "fit_config.yaml").write_text(
        yaml.safe_dump(
            {
                "seed_everything": seed,
                "model": model_cfg,
                "data": data_cfg,
                "trainer": {"max_epochs": budget["epochs"], "accelerator": "cpu", "deterministic": True},
            },
            sort_keys=False,
        )
    )
    evaluate_cfg = {
        "seed_everything": seed,
        "model": model_cfg,
        "data": data_cfg,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": _evaluate_logger_cfg(out)},
        "methods": ["mfaba", "ig2", "fei", "integrated_gradients"],
        "method_kwargs": budget["method_kwargs"],
        "metrics": ["insertion_deletion", "localization", "activation_deviation", "randomization"],
        "metric_kwargs": {"insertion_deletion": {"preset": "rise"}, "activation_deviation": {"preset": "rise"}},
        "split": "val",
        "limit_samples": budget["limit_samples"],
        "randomization_samples": budget["randomization_samples"],
        "heatmap_samples": 8,
        "batch_size": 8,
        "output_dir": str(out / "evaluation"),
    }
    config_path = out / "evaluate.yaml"
    config_path.write_text(yaml.safe_dump(evaluate_cfg, sort_keys=False))
    console.rule("[bold]lit-attr demo: evaluating the checkpoint")
    console.print(f"$ lit_attr evaluate --config {config_path} --ckpt_path {ckpt}", soft_wrap=True)
    result, evaluation_dir = run_evaluate(["--config", str(config_path), "--ckpt_path", str(ckpt)])

    console.print(_summary_table(result, f"Attribution quality on {result['num_samples']} validation images"))
    # soft_wrap: paths must stay whole (copy-pasteable) on narrow terminals and in logs.
    console.print(f"checkpoint:  {ckpt}", soft_wrap=True)
    console.print(f"report:      [bold]{evaluation_dir / 'report.html'}[/bold]", soft_wrap=True)
    console.print(f"metrics:     {evaluation_dir / 'metrics.json'}", soft_wrap=True)
    if run_hint:
        console.print(run_hint, soft_wrap=True)
    console.print(f"total time:  {time.perf_counter() - started:.0f} s")
    return result


def _demo_callbacks(budget: dict[str, Any]) -> tuple[list[Any], str | None]:
    try:
        from lit_attr.callbacks import AttributionMonitor, RandomizationCheck
    except ImportError as error:
        return [], f"lit_attr.callbacks is not available ({error}); training without attribution callbacks"
    n = budget["monitor_samples"]
    kwargs = {"integrated_gradients": {"n_steps": 16}, "mfaba": {"max_steps": 16}}
    return [
        AttributionMonitor(
            ["saliency", "integrated_gradients", "mfaba"],
            num_samples=n,
            log_heatmaps=4,
            input_bounds=(0.0, 1.0),
            method_kwargs=kwargs,
            metric_kwargs={"insertion_deletion": {"n_steps": 16}},
            every_n_epochs=max(1, budget["epochs"] // 2),
        ),
        RandomizationCheck(
            ["saliency", "integrated_gradients"],
            num_samples=min(n, 8),
            stages="last",
            input_bounds=(0.0, 1.0),
            method_kwargs={"integrated_gradients": {"n_steps": 16}},
        ),
    ], None


def _wandb_enabled() -> bool:
    if os.environ.get("WANDB_MODE", "offline") == "disabled":
        return False
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def _demo_logger(out: Path) -> tuple[Any, str | None]:
    if not _wandb_enabled():
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(out), name="logs"), f"logs:        {out / 'logs'} (W&B disabled)"
    from lightning.pytorch.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE", "offline")
    logger = WandbLogger(project="lit_attr_demo", name="demo-fit", save_dir=str(out), offline=mode == "offline")
    runs = out / "wandb"
    hint = f"W&B runs:    {runs} ({mode}); upload with `wandb sync {runs}/offline-run-*`"
    return logger, hint


def _evaluate_logger_cfg(out: Path) -> Any:
    if not _wandb_enabled():
        return False
    offline = os.environ.get("WANDB_MODE", "offline") == "offline"
    return {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "lit_attr_demo", "name": "demo-evaluate", "save_dir": str(out), "offline": offline},
    }


def _demo_command(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="lit_attr demo", add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--output_dir", "--output-dir", default="lit_attr_demo")
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    if args.help:
        sys.stdout.write(_DEMO_HELP)
        return 0
    run_demo(args.output_dir, fast=args.fast, seed=args.seed)
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
            return _demo_command(rest)
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
