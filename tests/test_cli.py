"""The `lit_attr` console script, as a user runs it."""

import math
import subprocess
import sys

import pytest

from lit_attr.cli import main, run_demo


def test_help_lists_demo():
    out = subprocess.run([sys.executable, "-m", "lit_attr.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


def test_unknown_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--methods", "nope"])
    assert exc.value.code == 2
    assert "unknown method(s) nope; available:" in capsys.readouterr().err


def test_demo_does_real_work():
    rows = run_demo(epochs=1, num_images=4, methods=["saliency", "input_x_gradient"])
    assert [r["method"] for r in rows] == ["saliency", "input_x_gradient"]
    for row in rows:
        assert row["seconds_per_image"] > 0
        assert 0.0 <= row["relevance_mass"] <= 1.0 and not math.isnan(row["relevance_mass"])
