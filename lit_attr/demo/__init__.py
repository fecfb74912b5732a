"""``lit_attr demo``: train a demo model with the callbacks attached, then evaluate its checkpoint.

Everything runs on embedded synthetic data (nothing is downloaded). :mod:`~lit_attr.demo.table` holds what each demo
trains and evaluates and its budgets (data only), :mod:`~lit_attr.demo.driver` runs one (:func:`run_demo`), and
:mod:`~lit_attr.demo.command` is the command line (:func:`demo_command`, :func:`demo_help`).
"""

from lit_attr.demo.command import demo_command, demo_help
from lit_attr.demo.driver import MIN_ACCURACY, accuracy_warning, run_demo, save_cli_checkpoint
from lit_attr.demo.table import DEMO_BUDGETS, DEMO_TABLE, DEMOS, Budget, Demo

__all__ = [
    "DEMOS",
    "DEMO_BUDGETS",
    "DEMO_TABLE",
    "MIN_ACCURACY",
    "Budget",
    "Demo",
    "accuracy_warning",
    "demo_command",
    "demo_help",
    "run_demo",
    "save_cli_checkpoint",
]
