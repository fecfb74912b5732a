"""The `lit_attr` console script: end to end as a user runs it (subprocesses); its error paths in process."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from matplotlib import image as mpimg
from torch import Tensor

from lit_attr.data import ShapesDataModule
from lit_attr.models import DemoClassifier

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


class SoftmaxClassifier(DemoClassifier):
    """Returns probabilities instead of logits: `evaluate` must refuse it."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).softmax(dim=1)


ADAPTED: list[int] = []


def counting_adapter(batch):
    """The default reading, counting the samples it reads (a `--batch_adapter` given by import path)."""
    from lit_attr.batch import default_batch_adapter

    data = default_batch_adapter(batch)
    ADAPTED.append(len(data))
    return data


class ValOnlyShapes(ShapesDataModule):
    """A data module without a test split."""

    def setup(self, stage: str | None = None) -> None:
        super().setup("validate" if stage in (None, "test") else stage)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # One thread per process: 2 cores, and the DDP test runs two processes.
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=f"{TESTS}{os.pathsep}{REPO}")
    env.update(extra)
    return env


def _run(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_attr.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(**env),
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------------- fixtures
DATA_ARGS = {"num_train": 256, "num_val": 64, "num_test": 32, "seed": 0}
MODEL_ARGS = {"num_classes": 4, "width": 8}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A demo classifier trained for one epoch, its checkpoint and a fast evaluation config."""
    root = tmp_path_factory.mktemp("tiny")
    L.seed_everything(0, verbose=False)
    data = ShapesDataModule(**DATA_ARGS)
    model = DemoClassifier(**MODEL_ARGS)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    ckpt = root / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    config = {
        "seed_everything": 0,
        "model": {"class_path": "lit_attr.models.DemoClassifier", "init_args": MODEL_ARGS},
        "data": {"class_path": "lit_attr.data.ShapesDataModule", "init_args": DATA_ARGS},
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False},
        "methods": ["saliency", "integrated_gradients", "mfaba"],
        "method_kwargs": {"integrated_gradients": {"n_steps": 8}, "mfaba": {"max_steps": 5}},
        "metrics": ["insertion_deletion", "localization", "activation_deviation", "randomization"],
        "metric_kwargs": {"insertion_deletion": {"n_steps": 8}, "activation_deviation": {"n_steps": 8}},
        "limit_samples": 7,  # odd: with 2 processes, padding would count a sample twice
        "batch_size": 3,
        "randomization_samples": 3,
        "heatmap_samples": 4,
    }
    config_path = root / "evaluate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return {"root": root, "ckpt": ckpt, "config": config_path}


def _leftovers(parent: Path) -> list[str]:
    """Hidden work, temporary or replaced directories that a finished or cleanly failed evaluation leaves behind."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and any(
        part in p.name for part in (".tmp-", ".old-", ".work"))]


# ---------------------------------------------------------------------------------------------------- help
def test_help_lists_every_command_with_examples():
    # Four processes, two at a time: each spends its ~10 s importing Lightning, on one core.
    with ThreadPoolExecutor(max_workers=2) as pool:
        out, *subs = pool.map(lambda args: _run(*args), [("--help",), ("evaluate", "--help"), ("demo", "--help"),
                                                         ("fit", "--help")])  # fmt: skip
    assert out.returncode == 0, out.stderr
    for command in ("fit", "validate", "test", "evaluate", "demo", "examples:"):
        assert command in out.stdout
    for command, sub in zip(("evaluate", "demo", "fit"), subs, strict=True):
        assert sub.returncode == 0, sub.stderr
        assert "examples:" in sub.stdout, command
        # Docstrings feed the help: their Sphinx roles and inline literals are shown as plain text.
        assert not re.search(r":[a-z]+:`|``", sub.stdout), (command, re.search(r".*(:[a-z]+:`|``).*", sub.stdout))
    assert "--ckpt_path" in subs[0].stdout


def _printed_config(argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> dict:
    from lit_attr.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["lit_attr"])  # LightningCLI warns when pytest's own arguments are there too
    with pytest.raises(SystemExit) as done:  # in process: --print_config prints the parsed config and exits
        main([*argv, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _callbacks(config: dict) -> dict[str, dict]:
    return {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in config["trainer"]["callbacks"]}


def test_a_printed_fit_config_holds_the_callbacks_as_written(capsys, restored_process_state, monkeypatch):
    config = _printed_config(["fit", "--config", "configs/demo.yaml"], capsys, monkeypatch)
    assert config["model"]["class_path"] == "lit_attr.models.DemoClassifier"
    source = _callbacks(yaml.safe_load((REPO / "configs" / "demo.yaml").read_text()))
    printed = _callbacks(config)
    # The monitors' `methods` (a union with factories and instances) are written back as the names they were.
    for name in ("AttributionMonitor", "RandomizationCheck"):
        assert printed[name]["methods"] == source[name]["methods"], name


@pytest.mark.parametrize(
    "argv", [["fit", "--config", "configs/text_demo.yaml"], ["evaluate", "--config", "configs/evaluate_text_demo.yaml"]]
)
def test_text_configs_parse_with_print_config(argv, capsys, restored_process_state, monkeypatch):
    from lit_attr.models import DemoTextClassifier
    from lit_attr.runner import AttributionRunner

    config = _printed_config(argv, capsys, monkeypatch)
    assert config["model"]["class_path"] == "lit_attr.models.DemoTextClassifier"
    assert config["data"]["class_path"] == "lit_attr.data.SyntheticTextDataModule"
    if argv[0] == "fit":
        options = _callbacks(config)["AttributionMonitor"]
        source = _callbacks(yaml.safe_load((REPO / argv[2]).read_text()))["AttributionMonitor"]
        assert options["methods"] == source["methods"]
    else:
        options = config
        assert config["input_bounds"] is None and config["split"] == "val"
    # The methods, metrics and their options build on the model the config names, as the monitor/evaluate build them.
    model = DemoTextClassifier(**config["model"]["init_args"])
    runner = AttributionRunner(model, options["methods"], options["metrics"], method_kwargs=options["method_kwargs"],
                               metric_kwargs=options["metric_kwargs"])  # fmt: skip
    assert list(runner.methods) == options["methods"] and len(options["methods"]) >= 3


# ---------------------------------------------------------------------------------------------------- demo
def _check_result(result: dict, methods: list[str]) -> None:
    assert list(result["methods"]) == methods
    for method, scores in result["methods"].items():
        ins_del = scores["insertion_deletion"]
        for key in ("insertion", "deletion"):
            assert 0.0 <= ins_del[key] <= 1.0, (method, key)
        assert all(0.0 <= v <= 1.0 for v in ins_del["insertion_curve"] + ins_del["deletion_curve"])
        for key, value in scores["localization"].items():
            assert 0.0 <= value <= 1.0, (method, key)
        assert math.isfinite(scores["activation_deviation"]["mean_mse"])
        assert scores["activation_deviation"]["mean_mse"] >= 0.0
        for similarity in ("spearman_abs", "ssim"):
            curve = scores["randomization"][similarity]["curve"]
            assert all(-1.0 - 1e-6 <= v <= 1.0 + 1e-6 for v in curve), (method, similarity)
    assert set(result["versions"]) >= {"torch", "lightning", "lit-attr"}
    assert result["config"]["methods"] == methods


def _check_report(directory: Path, methods: list[str]) -> None:
    pngs = sorted(directory.glob("*.png"))
    assert {p.stem for p in pngs} >= {"insertion_deletion_curves", "randomization_curves"} | {
        f"heatmaps_{m}" for m in methods
    }
    for png in pngs:
        assert mpimg.imread(png).ndim == 3, png
    page = (directory / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(sources) == len(pngs)  # every figure is shown
    for src in sources:
        if src.startswith("data:image/png;base64,"):
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
            assert mpimg.imread(io.BytesIO(data), format="png").ndim == 3
        else:  # a relative reference must exist next to the report
            assert (directory / src).is_file(), src
    table = re.search(r'<table id="scores">.*?</table>', page, re.S)
    assert table is not None
    for method in methods:
        assert f"<td>{method}</td>" in table.group(0)
    assert "insertion AUC" in table.group(0)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp_path = tmp_path_factory.mktemp("demo_run")
    out = _run("demo", "--fast", "--output_dir", str(tmp_path / "demo"), WANDB_MODE="offline", timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path, out


def test_demo_fast_end_to_end(demo_run: tuple[Path, subprocess.CompletedProcess]):
    tmp_path, out = demo_run
    evaluation = tmp_path / "demo" / "evaluation"
    methods = ["mfaba", "ig2", "fei", "integrated_gradients"]
    _check_result(json.loads((evaluation / "metrics.json").read_text()), methods)
    _check_report(evaluation, methods)
    assert (tmp_path / "demo" / "checkpoints" / "demo.ckpt").is_file()
    runs = list((tmp_path / "demo" / "wandb").glob("offline-run-*"))
    assert runs, "no W&B offline run"
    media = [png for run in runs for png in (run / "files" / "media" / "images").rglob("*.png")]
    assert media, "the W&B offline runs hold no images"
    assert all(mpimg.imread(png).ndim == 3 for png in media)
    logged_by_evaluate = {png.name.rsplit("_", 2)[0] for png in media if png.parent.name == "evaluate"}
    assert logged_by_evaluate >= {f"heatmaps_{m}" for m in methods} | {"insertion_deletion_curves"}
    assert "wandb sync" in out.stdout and "report.html" in out.stdout
    assert not _leftovers(tmp_path / "demo")
    # The runs are offline and named after the demo and the model; the configs say offline, as the runs are
    # (Lightning's offline WandbLogger leaves WANDB_MODE=dryrun behind, which once read as online).
    logger = yaml.safe_load((tmp_path / "demo" / "evaluate.yaml").read_text())["trainer"]["logger"]
    assert logger["init_args"]["offline"] is True and logger["init_args"]["name"] == "demo-cnn-DemoClassifier-evaluate"
    recorded = json.loads((evaluation / "metrics.json").read_text())["config"]["trainer"]["logger"]["init_args"]
    assert recorded["offline"] is True and recorded["name"] == "demo-cnn-DemoClassifier-evaluate"
    names = {name for run in runs for log in run.glob("*.wandb") for name in (b"demo-cnn-DemoClassifier-fit",
             b"demo-cnn-DemoClassifier-evaluate") if name in log.read_bytes()}  # fmt: skip
    assert len(runs) == 2 and names == {b"demo-cnn-DemoClassifier-fit", b"demo-cnn-DemoClassifier-evaluate"}
    assert _accuracy(out.stdout) >= 0.8 and "warning:" not in out.stdout


def _accuracy(stdout: str) -> float:
    """The validation accuracy a demo printed after training."""
    match = re.search(r"validation accuracy after \d+ epochs: ([0-9.]+)", stdout)
    assert match is not None, stdout[-2000:]
    return float(match.group(1))


def test_vit_demo_fast_end_to_end(tmp_path: Path):
    out = _run("demo", "--model", "vit", "--fast", "--output_dir", str(tmp_path / "vit"), WANDB_MODE="disabled",
               timeout=400)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    evaluation = tmp_path / "vit" / "evaluation"
    methods = ["mfaba", "ig2", "fei", "integrated_gradients", "attention_rollout", "generic_attention"]
    result = json.loads((evaluation / "metrics.json").read_text())
    _check_result(result, methods)
    _check_report(evaluation, methods)
    assert result["config"]["model"]["class_path"] == "lit_attr.models.DemoViT"
    # #27: the fast ViT explains a model that works (it was at 0.41), so no accuracy warning.
    assert _accuracy(out.stdout) >= 0.85 and "warning:" not in out.stdout
    # The monitor and the check ran on the ViT during training, the attention maps among their methods.
    logs = tmp_path / "vit" / "logs"
    assert list(logs.rglob("media/attr/attention_rollout/heatmaps/*.png"))
    assert list(logs.rglob("media/randomization/generic_attention/stages/*.png"))


# A browser decodes and lays out the page: the check a person's eyes would make. `make browser` installs chromium
# (`.ci/run` does, before `make test`); `make test` installs nothing system-wide.
NO_CHROMIUM = "chromium is not on PATH: `make browser` installs it (as root, with apt-get)"


@pytest.mark.skipif(shutil.which("chromium") is None, reason=NO_CHROMIUM)
def test_report_renders_in_headless_chromium(demo_run: tuple[Path, subprocess.CompletedProcess], tmp_path: Path):
    report = demo_run[0] / "demo" / "evaluation" / "report.html"
    page = report.read_text(encoding="utf-8")
    probe = (
        "<script>window.addEventListener('load', () => { const all = [...document.images];"
        " const ok = all.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0);"
        " document.title = 'rendered ' + ok.length + '/' + all.length; });</script>"
    )
    probed = tmp_path / "report_probe.html"
    probed.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-quic"]
    flags.append(f"--user-data-dir={tmp_path / 'profile'}")
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>rendered (\d+)/(\d+)</title>", dom.stdout)
    assert title is not None, dom.stderr[-2000:]
    rendered, total = map(int, title.groups())
    assert total == len(re.findall(r"<img", page)) and total >= 6 and rendered == total
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *flags, "--window-size=1200,2000", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2000, 1200) and pixels[..., :3].std() > 0.05  # not a blank page


def test_text_demo_fast_end_to_end(tmp_path: Path):
    out = _run("demo", "--task", "text", "--fast", "--output_dir", str(tmp_path / "text"), WANDB_MODE="offline",
               timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert _accuracy(out.stdout) >= 0.8 and "warning:" not in out.stdout
    evaluation = tmp_path / "text" / "evaluation"
    result = json.loads((evaluation / "metrics.json").read_text())
    methods = ["saliency", "integrated_gradients", "mfaba", "ig2", "fei"]
    assert list(result["methods"]) == methods
    for method, scores in result["methods"].items():
        assert set(scores) == {"comprehensiveness", "sufficiency", "token_insertion_deletion", "token_localization",
                               "token_activation_deviation"}  # fmt: skip
        assert all(math.isfinite(v) for v in _scalars({"methods": {method: scores}}).values()), method
        for key in ("token_f1", "token_iou", "auprc"):
            assert 0.0 <= scores["token_localization"][key] <= 1.0
    # The report shows every method's per-token highlighting, which a browser lays out as coloured words.
    page = (evaluation / "report.html").read_text(encoding="utf-8")
    assert page.count('<section class="tokens">') == len(methods) and page.count("[CLS]") >= 8 * len(methods)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}"]
    if shutil.which("chromium") is not None:
        probe = ("<script>window.addEventListener('load', () => { const s = [...document.querySelectorAll("
                 "'section.tokens span')].filter(e => e.getBoundingClientRect().width > 0 && "
                 "getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)'); document.title = 'spans ' + s.length; "
                 "});</script>")  # fmt: skip
        probed = tmp_path / "probe.html"
        probed.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
        dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        spans = re.search(r"<title>spans (\d+)</title>", dom.stdout)
        assert spans is not None and int(spans.group(1)) >= 8 * len(methods), dom.stderr[-2000:]
    # The W&B offline runs hold the monitor's and evaluate's highlighting as HTML media.
    html = [path for run in (tmp_path / "text" / "wandb").glob("offline-run-*") for path in run.rglob("*.html")]
    assert {p.parent.name for p in html} >= {"saliency", "integrated_gradients", "mfaba"}
    assert all("[CLS]" in path.read_text() for path in html)


# ---------------------------------------------------------------------------------------------------- evaluate + DDP
def _scalars(result: dict) -> dict[str, float]:
    flat = {}
    for method, scores in result["methods"].items():
        for metric, values in scores.items():
            for key, value in values.items():
                if isinstance(value, dict):
                    for k, v in value.items():
                        if k == "curve" or k == "final":
                            flat.update({f"{method}/{metric}/{key}/{k}/{i}": x for i, x in enumerate(_list(v))})
                elif isinstance(value, (float, int, list)) and key != "layers":
                    flat.update({f"{method}/{metric}/{key}/{i}": x for i, x in enumerate(_list(value))})
    return flat


def _list(value) -> list[float]:
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def test_evaluate_ddp_two_processes_equals_one(tiny: dict[str, Path], tmp_path: Path):
    base = ["evaluate", "--config", str(tiny["config"]), "--ckpt_path", str(tiny["ckpt"])]
    one = _run(*base, "--output_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(
        *base,
        "--output_dir",
        str(tmp_path / "two"),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert single["num_samples"] == double["num_samples"] == 7
    a, b = _scalars(single), _scalars(double)
    assert a.keys() == b.keys() and len(a) > 50
    mismatched = {k: (a[k], b[k]) for k in a if not math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-5)}
    assert not mismatched
    _check_report(tmp_path / "two", ["saliency", "integrated_gradients", "mfaba"])


def test_evaluate_matches_a_direct_metric_computation(tiny: dict[str, Path], tmp_path: Path):
    """The CLI's numbers are those of the metric classes run by hand on the same samples (independent reference)."""
    from lit_attr.evaluate import load_checkpoint
    from lit_attr.methods import get_method
    from lit_attr.metrics import InsertionDeletion, Localization

    out = _run(
        "evaluate",
        "--config",
        str(tiny["config"]),
        "--ckpt_path",
        str(tiny["ckpt"]),
        "--output_dir",
        str(tmp_path / "out"),
        "--methods",
        "[saliency]",
        "--method_kwargs",
        "{}",
        "--metrics",
        "[insertion_deletion, localization]",
        "--split",
        "test",
        "--limit_samples",
        "5",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "metrics.json").read_text())
    model = DemoClassifier(**MODEL_ARGS)
    load_checkpoint(model, tiny["ckpt"])
    data = ShapesDataModule(**DATA_ARGS)
    data.setup("test")
    x, y, mask = data.test_set.images[:5], data.test_set.labels[:5], data.test_set.masks[:5]
    attributions = get_method("saliency", model, input_bounds=(0.0, 1.0)).attribute(x, target=y)
    ins_del = InsertionDeletion(model, n_steps=8)
    ins_del.update(x, attributions, y)
    loc = Localization()
    loc.update(attributions, mask)
    expected = {**{k: float(v) for k, v in ins_del.compute().items() if v.ndim == 0}, **loc.compute()}
    got = {**result["methods"]["saliency"]["insertion_deletion"], **result["methods"]["saliency"]["localization"]}
    for key, value in expected.items():
        assert math.isclose(got[key], float(value), rel_tol=1e-4, abs_tol=1e-6), key


# ---------------------------------------------------------------------------------------------------- errors
@pytest.fixture
def cli(capsys, restored_process_state, monkeypatch):
    """``lit_attr`` in this process: the error paths, without a fresh interpreter importing Lightning each time."""
    from lit_attr.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["lit_attr"])

    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as done:
            code = done.code
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code or 0, stdout=captured.out, stderr=captured.err)

    return run


def _assert_clean_failure(out: subprocess.CompletedProcess, output_dir: Path, message: str) -> None:
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-2000:]
    assert not output_dir.exists()
    assert not _leftovers(output_dir.parent)


def test_missing_checkpoint_is_a_one_line_error(tiny: dict[str, Path], tmp_path: Path, cli):
    out = cli(
        "evaluate",
        "--config",
        str(tiny["config"]),
        "--ckpt_path",
        str(tmp_path / "nope.ckpt"),
        "--output_dir",
        str(tmp_path / "out"),
    )
    _assert_clean_failure(out, tmp_path / "out", "checkpoint not found")
    assert out.stderr.strip().count("\n") == 0  # one line


class CheckpointNote:
    """An object a checkpoint may carry that safe loading (weights_only=True) does not rebuild."""


def test_checkpoint_needing_other_globals_is_refused_unless_trusted(tiny: dict[str, Path], tmp_path: Path, cli):
    checkpoint = torch.load(tiny["ckpt"], weights_only=True)  # the demo's Lightning checkpoint loads safely
    checkpoint["note"] = CheckpointNote()
    noted = tmp_path / "noted.ckpt"
    torch.save(checkpoint, noted)
    base = ["evaluate", "--config", str(tiny["config"]), "--ckpt_path", str(noted)]
    out = cli(*base, "--output_dir", str(tmp_path / "refused"))
    _assert_clean_failure(out, tmp_path / "refused", "test_cli.CheckpointNote")
    assert out.stderr.strip().count("\n") == 0  # one line
    assert "--trust_checkpoint true" in out.stderr
    fast = ["--methods", "[saliency]", "--metrics", "[insertion_deletion]", "--limit_samples", "2"]
    trusted = cli(*base, *fast, "--trust_checkpoint", "true", "--output_dir", str(tmp_path / "trusted"))
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert json.loads((tmp_path / "trusted" / "metrics.json").read_text())["num_samples"] == 2


def test_checkpoint_url_is_refused_unless_trusted(tiny: dict[str, Path], tmp_path: Path, cli):
    url = "https://example.com/model.ckpt"
    out = cli("evaluate", "--config", str(tiny["config"]), "--ckpt_path", url, "--output_dir", str(tmp_path / "out"))
    _assert_clean_failure(out, tmp_path / "out", url)
    assert out.stderr.strip().count("\n") == 0
    assert "URL" in out.stderr and "--trust_checkpoint true" in out.stderr


def test_unknown_config_key_is_rejected(tiny: dict[str, Path], tmp_path: Path, cli):
    config = yaml.safe_load(tiny["config"].read_text())
    config["methodz"] = ["saliency"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    out = cli("evaluate", "--config", str(bad), "--ckpt_path", str(tiny["ckpt"]), "--output_dir", str(tmp_path / "o"))
    _assert_clean_failure(out, tmp_path / "o", "methodz")


def test_model_returning_probabilities_is_rejected(tiny: dict[str, Path], tmp_path: Path, cli):
    out = cli(
        "evaluate",
        "--config",
        str(tiny["config"]),
        "--ckpt_path",
        str(tiny["ckpt"]),
        "--model",
        "test_cli.SoftmaxClassifier",
        "--output_dir",
        str(tmp_path / "out"),
    )
    _assert_clean_failure(out, tmp_path / "out", "logits")
    assert out.stderr.strip().count("\n") == 0


def test_missing_split_is_rejected(tiny: dict[str, Path], tmp_path: Path, cli):
    out = cli(
        "evaluate",
        "--config",
        str(tiny["config"]),
        "--ckpt_path",
        str(tiny["ckpt"]),
        "--data",
        "test_cli.ValOnlyShapes",
        "--split",
        "test",
        "--output_dir",
        str(tmp_path / "out"),
    )
    _assert_clean_failure(out, tmp_path / "out", "has no 'test' split")
    assert out.stderr.strip().count("\n") == 0


def test_the_gpu_benchmark_exits_cleanly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would measure (minutes)")
    out = subprocess.run(["bash", "benchmarks/gpu.sh"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1], env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "no CUDA device here; nothing was measured" in out.stdout


def test_batch_adapter_given_by_import_path_reads_every_batch(tiny: dict[str, Path], tmp_path: Path, cli):
    ADAPTED.clear()
    out = cli("evaluate", "--config", str(tiny["config"]), "--ckpt_path", str(tiny["ckpt"]), "--output_dir",
              str(tmp_path / "out"), "--methods", "[saliency]", "--metrics", "[insertion_deletion]",
              "--limit_samples", "3", "--batch_size", "2", "--reference_pool_size", "0",
              "--batch_adapter", "test_cli.counting_adapter")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    # The first sample read twice to check the logits, then the split's 3 samples in batches of 2.
    assert ADAPTED == [2, 2, 1]
