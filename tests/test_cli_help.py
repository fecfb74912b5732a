"""`lit_attr evaluate --help`: lit-attr's options first, grouped, true to the parser, plain text, no heavy import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lit_attr.cli import _EVALUATE_OPTIONS, _trainer_help
from lit_attr.evaluate.command import build_evaluate_parser

REPO = Path(__file__).resolve().parents[1]
GROUPS = ["what to evaluate", "methods and metrics", "output", "resume",
          "the Trainer (devices, strategy, precision, limits, logger)"]  # fmt: skip
#: Sphinx roles and inline literals: docstring markup that must not reach a help text.
REST = re.compile(r":[a-z]+:`|``")
#: Options the parser has that the short help leaves to --help-trainer, sub-helps or the notes.
NOT_LISTED = {"-h", "--model.help", "--data.help", "--trainer", "--optimizer", "--lr_scheduler"}


def _cli(*args: str, code: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = ["-c", code] if code else ["-m", "lit_attr.cli", *args]
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def short_help() -> str:
    out = _cli("evaluate", "--help")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout


def test_the_help_lists_lit_attrs_options_first_by_group_and_points_to_the_trainers(short_help: str):
    lines = short_help.splitlines()
    headings = [line[:-1] for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert headings[: len(GROUPS)] == GROUPS and headings[len(GROUPS) :] == ["examples", "notes"]
    options = [line.split()[0] for line in lines[: lines.index("examples:")] if line.startswith("  --")]
    assert options[:2] == ["--config", "--ckpt_path"]
    # The Trainer's own options are not listed; one line names them and where they are.
    assert [option for option in options if option.startswith("--trainer")] == ["--trainer.NAME"]
    assert options.index("--trainer.NAME") == len(options) - 1
    assert "lit_attr evaluate --help-trainer" in short_help and "--trainer.gradient_clip_val" not in short_help
    assert not REST.search(short_help) and max(map(len, lines)) <= 120
    assert len(lines) < 100
    # -h, and --help after other arguments, print the same.
    assert _cli("evaluate", "--config", "configs/evaluate_demo.yaml", "-h").stdout == short_help


def test_the_help_holds_every_option_of_the_parser_with_its_default():
    parser = build_evaluate_parser()
    defaults = parser.get_defaults()
    parsed = {action.option_strings[0] for action in parser._actions if not action.dest.startswith("trainer.")}
    parsed -= NOT_LISTED
    listed = {option.split()[0]: default for group in _EVALUATE_OPTIONS.values() for option, _, default in group}
    assert parsed == set(listed) - {"--trainer.NAME"}

    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    for option, default in listed.items():
        dest = option[2:]
        if dest in defaults and dest not in ("config", "model", "data"):
            assert plain(defaults[dest]) == default, option


def test_the_help_imports_neither_torch_nor_lightning():
    # What keeps it quick (Lightning alone takes seconds to import): nothing heavy is imported to print it.
    code = ("import sys; from lit_attr.cli import main; main(['evaluate', '--help']); "
            "print(sorted(m for m in ('torch', 'lightning', 'jsonargparse') if m in sys.modules))")  # fmt: skip
    out = _cli(code=code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"


def test_the_trainer_help_lists_the_trainers_options_in_plain_text():
    text = _trainer_help()
    assert text.startswith("usage: lit_attr evaluate")
    for option in ("--trainer.devices", "--trainer.strategy", "--trainer.precision", "--trainer.limit_test_batches"):
        assert f"  {option} " in text, option
    assert "inference_mode, use_distributed_sampler" in text  # what the evaluation sets itself
    assert not REST.search(text), REST.search(text)


def test_a_model_classs_sub_help_is_plain_text(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as done:
        build_evaluate_parser().parse_args(["--model.help", "lit_attr.models.DemoClassifier"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    # DemoClassifier's docstring names ShapesDataset with a Sphinx role and its widths as inline literals.
    assert "classifies ShapesDataset images" in text and "the blocks use 2 * width" in text
    assert not REST.search(text), REST.search(text)
