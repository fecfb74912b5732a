"""Every ```python block of README.md runs, as a reader would run it, section by section.

How the blocks run:

* One fresh Python process runs them all (so nothing they register or train leaks into the test session), in a
  temporary working directory, with ``WANDB_MODE=disabled`` unless set.
* The blocks of one ``##`` section (its ``###`` subsections included) run in order in one namespace, which starts as
  a shallow copy of what the "Python example" section left: a reader who ran that example has ``model``, ``data``,
  ``x``, ``y``, ``masks`` and ``A``, which later sections use.
* Sizes: ``LIT_ATTR_README_SIZES=small`` (the default here) replaces a few literal sizes before running, listed in
  :data:`SMALL` (less data, one training epoch, fewer probe samples) so that the whole README runs in well under a
  minute; ``LIT_ATTR_README_SIZES=written`` runs the blocks exactly as written. Every replaced text must still be in
  the README, so the table cannot go stale silently.
* A block that cannot run offline in a test is marked in the README by ``<!-- no-test: reason -->`` on the line
  before its fence, and listed in :data:`NOT_RUN`; a marked block missing from that list, or a listed one no longer
  marked, fails the test, and so does every unmarked block that raises.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BASE_SECTION = "Python example"
SIZES_VARIABLE = "LIT_ATTR_README_SIZES"
#: Literal text of the README -> what runs instead with small sizes.
SMALL: dict[str, str] = {
    "ShapesDataModule()": "ShapesDataModule(num_train=256, num_val=64, num_test=64)",
    "train_demo_text_classifier()": (
        "train_demo_text_classifier(SyntheticTextDataModule(num_train=256, num_val=32, num_test=32), epochs=1)"
    ),
    "max_epochs=20": "max_epochs=1",
    "num_samples=64, every_n_epochs=1": "num_samples=8, every_n_epochs=1",
    'RandomizationCheck(["saliency"], num_samples=16)': 'RandomizationCheck(["saliency"], num_samples=4)',
}
#: Blocks not run, by ``(section, first line of code)``: none today.
NOT_RUN: set[tuple[str, str]] = set()

_FENCE = re.compile(r"^```python\s*$")
_NO_TEST = re.compile(r"^<!--\s*no-test:\s*(.+?)\s*-->\s*$")


def readme_blocks(text: str) -> list[dict[str, Any]]:
    """The ```python blocks of a README: ``{"section", "line", "code", "no_test"}``, in order.

    ``section`` is the enclosing ``##`` heading; ``line`` the 1-based line of the first line of code; ``no_test`` the
    reason of a ``<!-- no-test: ... -->`` marker on the line before the fence, else None.
    """
    lines = text.splitlines()
    blocks, section, index = [], "", 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line[3:].strip()
        if _FENCE.match(line):
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            marker = _NO_TEST.match(lines[index - 1]) if index else None
            code = "\n".join(lines[index + 1 : end])
            blocks.append({"section": section, "line": index + 2, "code": code, "no_test": marker and marker[1]})
            index = end
        index += 1
    return blocks


def first_line(code: str) -> str:
    return next((line.strip() for line in code.splitlines() if line.strip()), "")


def run_blocks(text: str, sizes: str) -> list[dict[str, Any]]:
    """Run the README's blocks as the module docstring says; one result per block that runs."""
    blocks = [block for block in readme_blocks(text) if block["no_test"] is None]
    if sizes == "small":
        for block in blocks:
            for written, small in SMALL.items():
                block["code"] = block["code"].replace(written, small)
    base: dict[str, Any] = {}
    namespaces: dict[str, dict[str, Any]] = {}
    results = []
    for block in blocks:
        section = block["section"]
        if section not in namespaces:
            namespaces[section] = base if section == BASE_SECTION else dict(base)
        error = None
        try:
            exec(compile(block["code"], f"README.md, line {block['line']}", "exec"), namespaces[section])  # noqa: S102
        except BaseException:  # noqa: BLE001 - a block's failure is the result, reported by the test
            error = traceback.format_exc(limit=-8)
        results.append({"section": section, "line": block["line"], "error": error})
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("readme") / "results.json"
    # Not the W&B state of this process: an earlier test's wandb service (WANDB_SERVICE) would take the blocks' runs
    # and write their console logs into its own working directory, the repository.
    env = {key: value for key, value in os.environ.items() if key == "WANDB_MODE" or not key.startswith("WANDB_")}
    env["PYTHONPATH"] = os.pathsep.join([str(README.parent), os.environ.get("PYTHONPATH", "")])
    env.setdefault("WANDB_MODE", "disabled")
    env["WANDB_DIR"] = str(out.parent)
    env.setdefault(SIZES_VARIABLE, "small")
    env.setdefault("MPLBACKEND", "Agg")
    done = subprocess.run(
        [sys.executable, __file__, str(README), str(out)],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_the_no_test_markers_are_the_listed_ones():
    marked = {(block["section"], first_line(block["code"])) for block in BLOCKS if block["no_test"]}
    assert marked == NOT_RUN, "update NOT_RUN with the README's <!-- no-test: ... --> markers"


def test_every_small_size_replacement_is_in_the_readme():
    text = "\n".join(block["code"] for block in BLOCKS)
    stale = [written for written in SMALL if written not in text]
    assert not stale, f"SMALL replaces text no README block has any more: {stale}"


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if not b["no_test"]], ids=lambda b: f"line{b['line']}-{first_line(b['code'])[:30]}"
)
def test_readme_block_runs(block: dict[str, Any], results: list[dict[str, Any]]):
    (result,) = [r for r in results if r["line"] == block["line"]]
    assert result["error"] is None, f"README.md block at line {block['line']} ({block['section']}):\n{result['error']}"


def test_the_parser_finds_sections_markers_and_lines():
    text = "# t\n## One\n```python\na = 1\n```\n### Sub\n<!-- no-test: needs a GPU -->\n```python\nb = a\n```\n"
    assert [(b["section"], b["line"], b["code"], b["no_test"]) for b in readme_blocks(text)] == [
        ("One", 4, "a = 1", None),
        ("One", 9, "b = a", "needs a GPU"),
    ]
    ran = run_blocks("## Python example\n```python\nx = 2\n```\n## Two\n```python\ny = x + 1\n```\n```python\n"
                     "z = y / 0\n```\n", sizes="written")  # fmt: skip
    assert [(r["line"], r["error"] is None) for r in ran] == [(3, True), (7, True), (10, False)]
    assert "ZeroDivisionError" in ran[2]["error"] and "README.md, line 10" in ran[2]["error"]


if __name__ == "__main__":
    # The child process of the `results` fixture: run the blocks of README argv[1], write the results to argv[2].
    outcome = run_blocks(Path(sys.argv[1]).read_text(encoding="utf-8"), os.environ.get(SIZES_VARIABLE, "small"))
    Path(sys.argv[2]).write_text(json.dumps(outcome))


def test_the_validation_step_example_scores_a_model_once_its_net_is_filled_in():
    # The block leaves `self.net = ...` to the reader: with a classifier there, the pasted class must score it (a
    # LightningModule without `forward` raises NotImplementedError when the metric calls the module).
    import torch
    from torch import nn

    [block] = [b for b in BLOCKS if b["section"] == "Scoring explanations from your own `validation_step`"]
    namespace: dict[str, Any] = {}
    exec(compile(block["code"], "README.md", "exec"), namespace)  # noqa: S102
    model = namespace["MyModel"]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
        x, masks = torch.rand(4, 3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    model.quality.update(x, masks=masks)
    scores = model.quality.compute()
    assert 0.0 <= float(scores["attr/mfaba/insertion_deletion/insertion"]) <= 1.0
    assert 0.0 <= float(scores["attr/mfaba/localization/relevance_mass"]) <= 1.0
