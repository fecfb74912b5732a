"""``run_demo``: train a demo model with the callbacks attached, save its checkpoint, evaluate it, print a summary.

Everything runs on embedded synthetic data (nothing is downloaded); what each demo runs is in
:mod:`lit_attr.demo.table`. The evaluation goes through ``lit_attr evaluate`` itself
(:func:`~lit_attr.evaluate.command.run_evaluate`), with a configuration file written next to the checkpoint.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_attr.demo.table import DEMO_TABLE, Budget, Demo
from lit_attr.evaluate.command import default_wandb_offline, finish_wandb, run_evaluate

if TYPE_CHECKING:
    import lightning as L
from lit_attr.report import summary_table
from lit_attr.report_trust import ACCURACY_WARNING

__all__ = ["MIN_ACCURACY", "accuracy_warning", "run_demo", "save_cli_checkpoint"]

#: Validation accuracy under which a demo warns that the model it explains barely works.
MIN_ACCURACY: float = ACCURACY_WARNING  # the report warns below the same accuracy

#: What a demo writes in its directory, which ``overwrite`` removes before a rerun; the markers tell a demo's
#: directory from one that merely holds a ``wandb/`` or ``logs/`` of its own (never removed then).
_DEMO_MARKERS = ("checkpoints/demo.ckpt", "fit_config.yaml", "evaluate.yaml")
_DEMO_OUTPUTS = (*_DEMO_MARKERS, "evaluation", "wandb", "logs")


def run_demo(
    output_dir: str | os.PathLike | None = None,
    fast: bool = False,
    seed: int = 0,
    model: str = "cnn",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a demo model, save a checkpoint, evaluate it and print a summary.

    A model below :data:`MIN_ACCURACY` validation accuracy is explained all the same, under a printed warning: its
    maps describe a model that does not work.

    Args:
        output_dir: receives ``checkpoints/demo.ckpt``, ``fit_config.yaml``, ``evaluate.yaml``, ``wandb/`` (or
            ``logs/``) and ``evaluation/`` (``metrics.json``, PNGs, ``report.html``); default
            ``lit_attr_demo/<model>``, so that the demos do not replace each other's results.
        fast: use the demo's ``fast`` budget (:class:`~lit_attr.demo.table.Budget`) instead of its ``full`` one.
        seed: seed of data, weights and training.
        model: which demo of :data:`~lit_attr.demo.table.DEMO_TABLE`: ``"cnn"`` or ``"vit"`` (images), ``"text"``.
        overwrite: replace a previous demo run in ``output_dir`` (its checkpoint, configs, evaluation, W&B runs and
            logs; nothing else there is touched).

    Returns:
        The evaluation result (the content of ``evaluation/metrics.json``).

    Raises:
        ValueError: for an unknown ``model``.
        FileExistsError: if ``output_dir`` holds a previous demo run and ``overwrite`` is False.

    Example::

        run_demo("/tmp/demo", fast=True, model="vit")
    """
    import lightning as L
    from rich.console import Console

    if model not in DEMO_TABLE:
        raise ValueError(f"`model` must be one of {tuple(DEMO_TABLE)}, got {model!r}.")
    demo = DEMO_TABLE[model]
    budget = demo.budget(fast)
    out = (Path("lit_attr_demo", model) if output_dir is None else Path(output_dir)).resolve()
    _claim_output_dir(out, overwrite)
    console = Console()
    started = time.perf_counter()
    default_wandb_offline()
    # Read before any WandbLogger runs: an offline one rewrites WANDB_MODE to "dryrun" for the whole process.
    wandb_mode = _wandb_mode()
    L.seed_everything(seed, verbose=False)

    data_args = {"num_train": budget.num_train, "num_val": budget.num_val, "num_test": 64, "seed": seed}
    data_args.update(budget.data_kwargs)
    data = _load(demo.data)(**data_args)
    net = _load(demo.model)(num_classes=data.num_classes, **budget.model_kwargs)
    run_name = f"demo-{model}-{demo.model.rsplit('.', 1)[1]}"
    logger, run_hint = _demo_logger(out, wandb_mode, f"{run_name}-fit")
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
    save_cli_checkpoint(trainer, net, ckpt)
    finish_wandb(trainer)

    logger_cfg = _evaluate_logger_cfg(out, wandb_mode, f"{run_name}-evaluate")
    config_path = _write_configs(out, demo, budget, dict(net.hparams), data_args, seed, logger_cfg)
    console.rule("[bold]lit-attr demo: evaluating the checkpoint")
    console.print(f"$ lit_attr evaluate --config {config_path} --ckpt_path {ckpt}", soft_wrap=True)
    result, evaluation_dir = run_evaluate(["--config", str(config_path), "--ckpt_path", str(ckpt)])

    console.print(summary_table(result, f"Attribution quality on {result['num_samples']} validation {demo.unit}"))
    warning = accuracy_warning(accuracy, demo.title, fast)
    if warning:
        console.print(f"[bold yellow]warning:[/bold yellow] {warning}", soft_wrap=True)
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


def accuracy_warning(accuracy: float, title: str, fast: bool) -> str | None:
    """The warning a demo prints under its results when its model is below :data:`MIN_ACCURACY`, else None.

    Args:
        accuracy: the model's validation accuracy (NaN when none was measured: also warned about).
        title: what was trained (:attr:`~lit_attr.demo.table.Demo.title`).
        fast: whether the ``--fast`` budget trained it (the advice then is to drop ``--fast``).

    Example:
        >>> accuracy_warning(0.95, "the demo CNN", fast=True) is None
        True
        >>> print(accuracy_warning(0.41, "the demo ViT", fast=True))  # doctest: +ELLIPSIS
        the demo ViT reached 0.410 validation accuracy (below 0.8): these maps explain a model that ...
    """
    if accuracy >= MIN_ACCURACY:
        return None
    advice = "run it without --fast" if fast else "train it longer"
    return (
        f"{title} reached {accuracy:.3f} validation accuracy (below {MIN_ACCURACY}): these maps explain a model that "
        f"mostly fails, so judge the methods on a better one ({advice})."
    )


def _claim_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a directory that holds a previous demo run unless ``overwrite``; with it, remove that run."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output_dir {out} exists and is not a directory; choose another --output_dir")
    if any((out / name).exists() for name in _DEMO_MARKERS):
        if not overwrite:
            raise FileExistsError(
                f"{out} holds a previous demo run; pass --overwrite true (overwrite=True in Python) to replace it, "
                "or choose another --output_dir"
            )
        for path in (out / name for name in _DEMO_OUTPUTS):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_configs(
    out: Path,
    demo: Demo,
    budget: Budget,
    hparams: dict[str, Any],
    data_args: dict[str, Any],
    seed: int,
    logger_cfg: Any,
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
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": logger_cfg},
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
        "overwrite": True,  # the demo's own directory, which _claim_output_dir has already cleared or refused
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


def _wandb_mode() -> str | None:
    """The W&B mode the demo's runs will have: ``"offline"``, ``"online"``, or None when W&B is off or missing.

    Lightning's ``WandbLogger(offline=True)`` sets ``WANDB_MODE=dryrun``, W&B's older name for offline.
    """
    mode = os.environ.get("WANDB_MODE", "offline")
    if mode == "disabled":
        return None
    try:
        import wandb  # noqa: F401
    except ImportError:
        return None
    return "offline" if mode == "dryrun" else mode


def _demo_logger(out: Path, mode: str | None, name: str) -> tuple[Any, str | None]:
    if mode is None:
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(out), name="logs"), f"logs:        {out / 'logs'} (W&B disabled)"
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="lit_attr_demo", name=name, save_dir=str(out), offline=mode == "offline")
    runs = out / "wandb"
    hint = f"W&B runs:    {runs} ({mode})"
    if mode == "offline":
        hint += f"; upload with `wandb sync {runs}/offline-run-*`"
    return logger, hint


def _evaluate_logger_cfg(out: Path, mode: str | None, name: str) -> Any:
    """The evaluation's logger as config: ``offline`` says what the run is, not what WANDB_MODE happens to say."""
    if mode is None:
        return False
    return {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "lit_attr_demo", "name": name, "save_dir": str(out), "offline": mode == "offline"},
    }


def save_cli_checkpoint(trainer: L.Trainer, model: L.LightningModule, path: Path | str) -> None:
    """Save ``model``'s checkpoint as ``lit_attr fit`` does, so that ``lit_attr validate/test --ckpt_path`` read it.

    LightningCLI rebuilds the model from the class the checkpoint's hyperparameters name (``_class_path``), which
    only checkpoints written under LightningCLI carry; the model's own ``hparams`` are left as they were.

    Example::

        save_cli_checkpoint(trainer, model, "lit_attr_demo/cnn/checkpoints/demo.ckpt")
    """
    model.hparams["_class_path"] = f"{type(model).__module__}.{type(model).__qualname__}"
    try:
        trainer.save_checkpoint(path)
    finally:
        del model.hparams["_class_path"]
