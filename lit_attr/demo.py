"""``lit_attr demo``: train a demo model with the callbacks attached, then evaluate its checkpoint.

Everything runs on embedded synthetic data (nothing is downloaded). :data:`DEMOS` describes each demo (its model,
data, methods and metrics); :data:`DEMO_BUDGETS` holds the budgets of the full run and of ``--fast`` for each, and
:func:`demo_help` derives the command's help from both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_attr.cli import CLIError, default_wandb_offline, finish_wandb, run_evaluate
from lit_attr.report import summary_table

__all__ = ["DEMOS", "DEMO_BUDGETS", "demo_command", "demo_help", "run_demo"]

_DEMO_HELP = """\
usage: lit_attr demo [-h] [--task {{image,text}}] [--model {{cnn,vit}}] [--output_dir DIR] [--fast] [--seed SEED]

Train a demo classifier on embedded synthetic data (with the attribution callbacks attached), save a checkpoint,
then run `lit_attr evaluate` on it and print a summary table. W&B logs offline unless WANDB_MODE says otherwise.

options:
  -h, --help        show this help message and exit
  --task TASK       image: synthetic shapes with object masks (default); text: synthetic sentences whose
                    sentiment a few words decide (with a negation rule), their rationales marked, classified by a
                    small BERT; token-level faithfulness and per-token highlighting
  --model MODEL     for images: cnn, a small ResNet-style CNN (default); vit, a small vision transformer with the
                    attention maps (attention_rollout, generic_attention) among the methods
  --output_dir DIR  where everything goes (default: lit_attr_demo)
  --fast            small budgets (a smoke test, about a minute on 2 CPU cores)
  --seed SEED       seed of the data, the weights and the training (default: 0)

{budgets}
examples:
  lit_attr demo
  lit_attr demo --fast --output_dir /tmp/demo
  lit_attr demo --model vit
  lit_attr demo --task text --fast
"""

_IMAGE_METRICS = ["insertion_deletion", "localization", "activation_deviation", "randomization"]
_IMAGE_SCORING = {"insertion_deletion": {"preset": "rise"}, "activation_deviation": {"preset": "rise"}}
_IMAGE_MONITOR = {
    "metrics": ("insertion_deletion", "localization"),
    "metric_kwargs": {"insertion_deletion": {"n_steps": 16}},
}

#: What each demo trains and evaluates; the budgets are in :data:`DEMO_BUDGETS`.
DEMOS: dict[str, dict[str, Any]] = {
    "cnn": {
        "title": "the demo CNN on synthetic shapes",
        "model": "lit_attr.models.DemoClassifier",
        "data": "lit_attr.data.ShapesDataModule",
        "input_bounds": [0.0, 1.0],
        "methods": ["mfaba", "ig2", "fei", "integrated_gradients"],
        "metrics": _IMAGE_METRICS,
        "metric_kwargs": _IMAGE_SCORING,
        "monitor": ["saliency", "integrated_gradients", "mfaba"],
        "monitor_metrics": _IMAGE_MONITOR,
        "check": ["saliency", "integrated_gradients"],
    },
    "vit": {
        "title": "the demo ViT on synthetic shapes",
        "model": "lit_attr.models.DemoViT",
        "data": "lit_attr.data.ShapesDataModule",
        "input_bounds": [0.0, 1.0],
        "methods": ["mfaba", "ig2", "fei", "integrated_gradients", "attention_rollout", "generic_attention"],
        "metrics": _IMAGE_METRICS,
        "metric_kwargs": _IMAGE_SCORING,
        "monitor": ["saliency", "attention_rollout", "mfaba"],
        "monitor_metrics": _IMAGE_MONITOR,
        "check": ["saliency", "generic_attention"],
    },
    "text": {
        "title": "the demo text classifier (a small BERT) on synthetic sentences",
        "model": "lit_attr.models.DemoTextClassifier",
        "data": "lit_attr.data.SyntheticTextDataModule",
        "input_bounds": None,  # token ids: the methods move in embedding space, unbounded
        "methods": ["saliency", "integrated_gradients", "mfaba", "ig2", "fei"],
        "metrics": [
            "comprehensiveness",
            "sufficiency",
            "token_insertion_deletion",
            "token_localization",
            "token_activation_deviation",
        ],
        "metric_kwargs": {"token_insertion_deletion": {"n_steps": 8}, "token_activation_deviation": {"n_steps": 8}},
        "monitor": ["saliency", "integrated_gradients", "mfaba"],
        "monitor_metrics": {
            "metrics": ("token_insertion_deletion", "token_localization"),
            "metric_kwargs": {"token_insertion_deletion": {"n_steps": 8}},
        },
        "check": [],  # the randomisation checks take image or feature inputs only
    },
}

_CALLBACK_KWARGS = {"integrated_gradients": {"n_steps": 16}, "mfaba": {"max_steps": 16}}

#: Budgets of ``lit_attr demo`` per demo (full, ``--fast``); see ``lit_attr demo --help``.
DEMO_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "cnn": {
        "full": {
            "epochs": 6,
            "num_train": 4096,
            "num_val": 512,
            "limit_samples": 32,
            "batch_size": 8,
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
            "batch_size": 8,
            "randomization_samples": 4,
            "method_kwargs": {
                "mfaba": {"max_steps": 20},
                "ig2": {"steps": 50, "n_references": 4, "internal_batch_size": 512},
                "fei": {"iterations": 20, "internal_batch_size": 512},
                "integrated_gradients": {"n_steps": 20},
            },
            "monitor_samples": 8,
        },
    },
    "vit": {
        "full": {
            "epochs": 5,
            "num_train": 8000,
            "num_val": 512,
            "limit_samples": 32,
            "batch_size": 8,
            "randomization_samples": 4,
            "method_kwargs": {
                "mfaba": {"max_steps": 50},
                "ig2": {"steps": 100, "n_references": 4, "internal_batch_size": 512},
                "fei": {"iterations": 50, "internal_batch_size": 512},
                "integrated_gradients": {"n_steps": 50},
                "attention_rollout": {},
                "generic_attention": {},
            },
            "monitor_samples": 16,
        },
        "fast": {
            "epochs": 2,
            "num_train": 2048,
            "num_val": 128,
            "limit_samples": 8,
            "batch_size": 8,
            "randomization_samples": 4,
            "method_kwargs": {
                "mfaba": {"max_steps": 20},
                "ig2": {"steps": 30, "n_references": 2, "internal_batch_size": 512},
                "fei": {"iterations": 10, "internal_batch_size": 512},
                "integrated_gradients": {"n_steps": 20},
                "attention_rollout": {},
                "generic_attention": {},
            },
            "monitor_samples": 8,
        },
    },
    "text": {
        "full": {
            "epochs": 3,
            "num_train": 4000,
            "num_val": 512,
            "limit_samples": 32,
            "batch_size": 8,
            "randomization_samples": 0,
            "method_kwargs": {
                "saliency": {},
                "integrated_gradients": {"n_steps": 32},
                "mfaba": {"max_steps": 50},
                "ig2": {"steps": 50, "n_references": 4},
                "fei": {"iterations": 20},
            },
            "monitor_samples": 16,
        },
        "fast": {
            "epochs": 2,
            "num_train": 2000,
            "num_val": 128,
            "limit_samples": 8,
            "batch_size": 8,
            "randomization_samples": 0,
            "method_kwargs": {
                "saliency": {},
                "integrated_gradients": {"n_steps": 16},
                "mfaba": {"max_steps": 20},
                "ig2": {"steps": 20, "n_references": 2},
                "fei": {"iterations": 5},
            },
            "monitor_samples": 8,
        },
    },
}


def demo_help() -> str:
    """The help text of ``lit_attr demo``, its budget tables built from :data:`DEMO_BUDGETS`.

    Example:
        >>> "max_steps 50 / 20" in demo_help()
        True
    """
    sections = []
    for demo, budgets in DEMO_BUDGETS.items():
        full, fast = budgets["full"], budgets["fast"]
        unit = "sentences" if demo == "text" else "images"
        rows = [
            (
                "training",
                f"{full['epochs']} epochs on {full['num_train']} {unit} / {fast['epochs']} epochs on "
                f"{fast['num_train']} {unit}",
            ),
            (
                "evaluated",
                f"{full['limit_samples']} / {fast['limit_samples']} validation {unit}, {full['batch_size']} per batch",
            ),
        ]
        for method, options in full["method_kwargs"].items():
            shown = [key for key in options if key != "internal_batch_size"]
            text = ", ".join(f"{key} {options[key]} / {fast['method_kwargs'][method][key]}" for key in shown)
            rows.append((method, text or "defaults"))
        if full["randomization_samples"]:
            rows.append(
                (
                    "randomisation",
                    f"{full['randomization_samples']} / {fast['randomization_samples']} images, fully randomised "
                    "network",
                )
            )
        width = max(len(name) for name, _ in rows) + 2
        table = "\n".join(f"  {name:<{width}}{text}" for name, text in rows)
        which = "--task text" if demo == "text" else f"--model {demo}"
        sections.append(f"budgets of {which} (full / --fast):\n{table}\n")
    return _DEMO_HELP.format(budgets="\n".join(sections))


def run_demo(
    output_dir: str | os.PathLike = "lit_attr_demo", fast: bool = False, seed: int = 0, model: str = "cnn"
) -> dict[str, Any]:
    """Train a demo model, save a checkpoint, evaluate it and print a summary.

    Args:
        output_dir: receives ``checkpoints/demo.ckpt``, ``fit_config.yaml``, ``evaluate.yaml``, ``wandb/`` (or
            ``logs/``) and ``evaluation/`` (``metrics.json``, PNGs, ``report.html``).
        fast: use the ``"fast"`` budgets of :data:`DEMO_BUDGETS`.
        seed: seed of data, weights and training.
        model: which demo of :data:`DEMOS`: ``"cnn"`` or ``"vit"`` (images), ``"text"``.

    Returns:
        The evaluation result (the content of ``evaluation/metrics.json``).

    Raises:
        ValueError: for an unknown ``model``.

    Example::

        run_demo("/tmp/demo", fast=True, model="vit")
    """
    import importlib

    import lightning as L
    import yaml
    from rich.console import Console

    if model not in DEMOS:
        raise ValueError(f"`model` must be one of {tuple(DEMOS)}, got {model!r}.")
    demo, budget = DEMOS[model], DEMO_BUDGETS[model]["fast" if fast else "full"]
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    started = time.perf_counter()
    default_wandb_offline()
    L.seed_everything(seed, verbose=False)

    def load(path: str) -> Any:
        module_path, class_name = path.rsplit(".", 1)
        return getattr(importlib.import_module(module_path), class_name)

    data_args = {"num_train": budget["num_train"], "num_val": budget["num_val"], "num_test": 64, "seed": seed}
    data = load(demo["data"])(**data_args)
    net = load(demo["model"])(num_classes=data.num_classes)
    logger, run_hint = _demo_logger(out)
    trainer = L.Trainer(
        max_epochs=budget["epochs"],
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=_demo_callbacks(demo, budget),
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=str(out),
        log_every_n_steps=10,
    )
    console.rule(f"[bold]lit-attr demo: training {demo['title']}")
    trainer.fit(net, datamodule=data)
    accuracy = float(trainer.callback_metrics.get("val_acc", float("nan")))
    console.print(f"validation accuracy after {budget['epochs']} epochs: [bold]{accuracy:.3f}[/bold]")
    ckpt = out / "checkpoints" / "demo.ckpt"
    trainer.save_checkpoint(ckpt)
    finish_wandb(trainer)

    model_cfg = {"class_path": demo["model"], "init_args": dict(net.hparams)}
    model_cfg["init_args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in model_cfg["init_args"].items()}
    data_cfg = {"class_path": demo["data"], "init_args": data_args}
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
        "methods": demo["methods"],
        "method_kwargs": budget["method_kwargs"],
        "metrics": demo["metrics"],
        "metric_kwargs": demo["metric_kwargs"],
        "input_bounds": demo["input_bounds"],
        "split": "val",
        "limit_samples": budget["limit_samples"],
        "randomization_samples": budget["randomization_samples"],
        "heatmap_samples": 8,
        "batch_size": budget["batch_size"],
        "output_dir": str(out / "evaluation"),
        "overwrite": True,  # the demo's own directory: a second `lit_attr demo` replaces the first evaluation
    }
    config_path = out / "evaluate.yaml"
    config_path.write_text(yaml.safe_dump(evaluate_cfg, sort_keys=False))
    console.rule("[bold]lit-attr demo: evaluating the checkpoint")
    console.print(f"$ lit_attr evaluate --config {config_path} --ckpt_path {ckpt}", soft_wrap=True)
    result, evaluation_dir = run_evaluate(["--config", str(config_path), "--ckpt_path", str(ckpt)])

    what = "sentences" if model == "text" else "images"
    console.print(summary_table(result, f"Attribution quality on {result['num_samples']} validation {what}"))
    # soft_wrap: paths must stay whole (copy-pasteable) on narrow terminals and in logs.
    console.print(f"checkpoint:  {ckpt}", soft_wrap=True)
    console.print(f"report:      [bold]{evaluation_dir / 'report.html'}[/bold]", soft_wrap=True)
    console.print(f"metrics:     {evaluation_dir / 'metrics.json'}", soft_wrap=True)
    if run_hint:
        console.print(run_hint, soft_wrap=True)
    console.print(f"total time:  {time.perf_counter() - started:.0f} s")
    return result


def _demo_callbacks(demo: dict[str, Any], budget: dict[str, Any]) -> list[Any]:
    from lit_attr.callbacks import AttributionMonitor, RandomizationCheck

    n = budget["monitor_samples"]
    bounds = None if demo["input_bounds"] is None else tuple(demo["input_bounds"])
    callbacks: list[Any] = [
        AttributionMonitor(
            demo["monitor"],
            num_samples=n,
            log_heatmaps=4,
            input_bounds=bounds,
            method_kwargs={name: _CALLBACK_KWARGS[name] for name in demo["monitor"] if name in _CALLBACK_KWARGS},
            every_n_epochs=max(1, budget["epochs"] // 2),
            **demo["monitor_metrics"],
        )
    ]
    if demo["check"]:
        callbacks.append(
            RandomizationCheck(
                demo["check"],
                num_samples=min(n, 8),
                stages="last",
                input_bounds=bounds,
                method_kwargs={name: _CALLBACK_KWARGS[name] for name in demo["check"] if name in _CALLBACK_KWARGS},
            )
        )
    return callbacks


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


def demo_command(argv: Sequence[str]) -> int:
    """``lit_attr demo [--task image|text] [--model cnn|vit] [--output_dir DIR] [--fast] [--seed SEED]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="lit_attr demo", add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--task", choices=("image", "text"), default="image")
    parser.add_argument("--model", choices=("cnn", "vit"), default=None)
    parser.add_argument("--output_dir", "--output-dir", default="lit_attr_demo")
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    if args.help:
        sys.stdout.write(demo_help())
        return 0
    if args.task == "text" and args.model is not None:
        raise CLIError(
            f"--model {args.model} chooses the image demo's model; --task text trains DemoTextClassifier, drop --model."
        )
    model = "text" if args.task == "text" else args.model or "cnn"
    run_demo(args.output_dir, fast=args.fast, seed=args.seed, model=model)
    return 0
