"""``run_demo``: train a demo model with the callbacks attached, save its checkpoint, evaluate it, print a summary.

Everything runs on embedded synthetic data (nothing is downloaded); what each demo runs is in
:mod:`lit_attr.demo.table`. The evaluation goes through ``lit_attr evaluate`` itself
(:func:`~lit_attr.evaluate.command.run_evaluate`), with a configuration file written next to the checkpoint.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lit_attr.demo.table import DEMO_TABLE, Budget, Demo
from lit_attr.evaluate.command import default_wandb_offline, finish_wandb, run_evaluate
from lit_attr.report import summary_table

__all__ = ["run_demo"]


def run_demo(
    output_dir: str | os.PathLike = "lit_attr_demo", fast: bool = False, seed: int = 0, model: str = "cnn"
) -> dict[str, Any]:
    """Train a demo model, save a checkpoint, evaluate it and print a summary.

    Args:
        output_dir: receives ``checkpoints/demo.ckpt``, ``fit_config.yaml``, ``evaluate.yaml``, ``wandb/`` (or
            ``logs/``) and ``evaluation/`` (``metrics.json``, PNGs, ``report.html``).
        fast: use the demo's ``fast`` budget (:class:`~lit_attr.demo.table.Budget`) instead of its ``full`` one.
        seed: seed of data, weights and training.
        model: which demo of :data:`~lit_attr.demo.table.DEMO_TABLE`: ``"cnn"`` or ``"vit"`` (images), ``"text"``.

    Returns:
        The evaluation result (the content of ``evaluation/metrics.json``).

    Raises:
        ValueError: for an unknown ``model``.

    Example::

        run_demo("/tmp/demo", fast=True, model="vit")
    """
    import lightning as L
    from rich.console import Console

    if model not in DEMO_TABLE:
        raise ValueError(f"`model` must be one of {tuple(DEMO_TABLE)}, got {model!r}.")
    demo = DEMO_TABLE[model]
    budget = demo.budget(fast)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    started = time.perf_counter()
    default_wandb_offline()
    L.seed_everything(seed, verbose=False)

    data_args = {"num_train": budget.num_train, "num_val": budget.num_val, "num_test": 64, "seed": seed}
    data = _load(demo.data)(**data_args)
    net = _load(demo.model)(num_classes=data.num_classes)
    logger, run_hint = _demo_logger(out)
    trainer = L.Trainer(
        max_epochs=budget.epochs,
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
    console.rule(f"[bold]lit-attr demo: training {demo.title}")
    trainer.fit(net, datamodule=data)
    accuracy = float(trainer.callback_metrics.get("val_acc", float("nan")))
    console.print(f"validation accuracy after {budget.epochs} epochs: [bold]{accuracy:.3f}[/bold]")
    ckpt = out / "checkpoints" / "demo.ckpt"
    trainer.save_checkpoint(ckpt)
    finish_wandb(trainer)

    config_path = _write_configs(out, demo, budget, dict(net.hparams), data_args, seed)
    console.rule("[bold]lit-attr demo: evaluating the checkpoint")
    console.print(f"$ lit_attr evaluate --config {config_path} --ckpt_path {ckpt}", soft_wrap=True)
    result, evaluation_dir = run_evaluate(["--config", str(config_path), "--ckpt_path", str(ckpt)])

    console.print(summary_table(result, f"Attribution quality on {result['num_samples']} validation {demo.unit}"))
    # soft_wrap: paths must stay whole (copy-pasteable) on narrow terminals and in logs.
    console.print(f"checkpoint:  {ckpt}", soft_wrap=True)
    console.print(f"report:      [bold]{evaluation_dir / 'report.html'}[/bold]", soft_wrap=True)
    console.print(f"metrics:     {evaluation_dir / 'metrics.json'}", soft_wrap=True)
    if run_hint:
        console.print(run_hint, soft_wrap=True)
    console.print(f"total time:  {time.perf_counter() - started:.0f} s")
    return result


def _load(path: str) -> Any:
    """The class at a dotted ``module.Class`` path."""
    module_path, class_name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module_path), class_name)


def _write_configs(
    out: Path, demo: Demo, budget: Budget, hparams: dict[str, Any], data_args: dict[str, Any], seed: int
) -> Path:
    """Write ``fit_config.yaml`` (what was trained) and ``evaluate.yaml`` (what is evaluated); return the latter."""
    import yaml

    model_cfg = {
        "class_path": demo.model,
        "init_args": {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()},
    }
    data_cfg = {"class_path": demo.data, "init_args": data_args}
    fit_cfg = {
        "seed_everything": seed,
        "model": model_cfg,
        "data": data_cfg,
        "trainer": {"max_epochs": budget.epochs, "accelerator": "cpu", "deterministic": True},
    }
    (out / "fit_config.yaml").write_text(yaml.safe_dump(fit_cfg, sort_keys=False))
    evaluate_cfg = {
        "seed_everything": seed,
        "model": model_cfg,
        "data": data_cfg,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": _evaluate_logger_cfg(out)},
        "methods": list(demo.methods),
        "method_kwargs": _plain(budget.method_kwargs),
        "metrics": list(demo.metrics),
        "metric_kwargs": _plain(demo.metric_kwargs),
        "input_bounds": None if demo.input_bounds is None else list(demo.input_bounds),
        "split": "val",
        "limit_samples": budget.limit_samples,
        "randomization_samples": budget.randomization_samples,
        "heatmap_samples": 8,
        "batch_size": budget.batch_size,
        "output_dir": str(out / "evaluation"),
        "overwrite": True,  # the demo's own directory: a second `lit_attr demo` replaces the first evaluation
    }
    path = out / "evaluate.yaml"
    path.write_text(yaml.safe_dump(evaluate_cfg, sort_keys=False))
    return path


def _plain(options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Options as plain dicts (``yaml.safe_dump`` writes nothing else)."""
    return {name: dict(values) for name, values in options.items()}


def _demo_callbacks(demo: Demo, budget: Budget) -> list[Any]:
    from lit_attr.callbacks import AttributionMonitor, RandomizationCheck

    def options(methods: tuple[str, ...]) -> dict[str, Mapping[str, Any]]:
        return {name: demo.callback_method_kwargs[name] for name in methods if name in demo.callback_method_kwargs}

    callbacks: list[Any] = [
        AttributionMonitor(
            list(demo.monitor),
            num_samples=budget.monitor_samples,
            log_heatmaps=4,
            input_bounds=demo.input_bounds,
            method_kwargs=options(demo.monitor),
            every_n_epochs=max(1, budget.epochs // 2),
            metrics=demo.monitor_metrics,
            metric_kwargs=demo.monitor_metric_kwargs,
        )
    ]
    if demo.check:
        callbacks.append(
            RandomizationCheck(
                list(demo.check),
                num_samples=min(budget.monitor_samples, 8),
                stages="last",
                input_bounds=demo.input_bounds,
                method_kwargs=options(demo.check),
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
