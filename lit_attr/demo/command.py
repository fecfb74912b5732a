"""``lit_attr demo``: its arguments and its help, whose budget tables come from :mod:`lit_attr.demo.table`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lit_attr.demo.driver import run_demo
from lit_attr.demo.table import DEMO_TABLE, Budget
from lit_attr.evaluate.command import CLIError

__all__ = ["demo_command", "demo_help"]

_DEMO_HELP = """\
usage: lit_attr demo [-h] [--task {{image,text}}] [--model {{cnn,vit}}] [--output_dir DIR] [--overwrite {{true,false}}]
                     [--fast] [--seed SEED]

Train a demo classifier on embedded synthetic data (with the attribution callbacks attached), save a checkpoint,
then run `lit_attr evaluate` on it and print a summary table. W&B logs offline unless WANDB_MODE says otherwise.

options:
  -h, --help        show this help message and exit
  --task TASK       image: synthetic shapes with object masks (default); text: synthetic sentences whose
                    sentiment a few words decide (with a negation rule), their rationales marked, classified by a
                    small BERT; token-level faithfulness and per-token highlighting
  --model MODEL     for images: cnn, a small ResNet-style CNN (default); vit, a small vision transformer with the
                    attention maps (attention_rollout, generic_attention) among the methods
  --output_dir DIR  where everything goes (default: lit_attr_demo/cnn, lit_attr_demo/vit or lit_attr_demo/text)
  --overwrite BOOL  replace a previous demo run in that directory (default: false: a rerun is refused)
  --fast            small budgets: a smoke test of 22 s (text) to 57 s (vit) of CPU time with one thread
                    (OMP_NUM_THREADS=1), measured on a 2-core CPU VM (the README says how)
  --seed SEED       seed of the data, the weights and the training (default: 0)

{budgets}
examples:
  lit_attr demo
  lit_attr demo --overwrite true                # run it again into lit_attr_demo/cnn
  lit_attr demo --fast --output_dir /tmp/demo
  lit_attr demo --model vit
  lit_attr demo --task text --fast
"""


def demo_help() -> str:
    """The help text of ``lit_attr demo``, its budget tables built from :data:`~lit_attr.demo.table.DEMO_TABLE`.

    Example:
        >>> "max_steps 50 / 20" in demo_help()
        True
    """
    sections = []
    for name, demo in DEMO_TABLE.items():
        full, fast, unit = demo.full, demo.fast, demo.unit
        trained = f"{_trained(full, unit)} / {_trained(fast, unit)}"
        evaluated = f"{full.limit_samples} / {fast.limit_samples} validation {unit}, {full.batch_size} per batch"
        rows = [("training", trained), ("evaluated", evaluated)]
        for method, options in full.method_kwargs.items():
            shown = [key for key in options if key != "internal_batch_size"]
            text = ", ".join(f"{key} {options[key]} / {fast.method_kwargs[method][key]}" for key in shown)
            rows.append((method, text or "defaults"))
        if full.randomization_samples:
            samples = f"{full.randomization_samples} / {fast.randomization_samples} {unit}"
            rows.append(("randomisation", f"{samples}, fully randomised network"))
        width = max(len(label) for label, _ in rows) + 2
        table = "\n".join(f"  {label:<{width}}{text}" for label, text in rows)
        which = "--task text" if name == "text" else f"--model {name}"
        sections.append(f"budgets of {which} (full / --fast):\n{table}\n")
    return _DEMO_HELP.format(budgets="\n".join(sections))


def _trained(budget: Budget, unit: str) -> str:
    """How a budget trains, with the options it sets beyond the model's and the data's defaults."""
    options = {**budget.data_kwargs, **budget.model_kwargs}
    shown = f" ({', '.join(f'{key} {value}' for key, value in options.items())})" if options else ""
    return f"{budget.epochs} epochs on {budget.num_train} {unit}{shown}"


def demo_command(argv: Sequence[str]) -> int:
    """``lit_attr demo [--task image|text] [--model cnn|vit] [--output_dir DIR] [--overwrite BOOL] [--fast] ...``."""
    import argparse

    parser = argparse.ArgumentParser(prog="lit_attr demo", add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--task", choices=("image", "text"), default="image")
    parser.add_argument("--model", choices=("cnn", "vit"), default=None)
    parser.add_argument("--output_dir", "--output-dir", default=None)
    parser.add_argument("--overwrite", type=_boolean, nargs="?", const=True, default=False)
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
    try:
        run_demo(args.output_dir, fast=args.fast, seed=args.seed, model=model, overwrite=args.overwrite)
    except FileExistsError as error:
        raise CLIError(str(error)) from None
    return 0


def _boolean(text: str) -> bool:
    """``--overwrite``'s value, spelled as ``lit_attr evaluate`` takes it (true/false, yes/no, 1/0)."""
    import argparse

    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value
