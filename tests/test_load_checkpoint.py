"""``load_checkpoint``: safe unpickling by default, an explicit opt-in for anything else, no URLs unless trusted."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lit_attr.data import ShapesDataModule
from lit_attr.evaluate import EvaluationError, load_checkpoint
from lit_attr.models import DemoClassifier


def _trip(marker: str) -> dict:
    """Called by the unpickler when a checkpoint holding a :class:`_Tripwire` is loaded: proof that code ran."""
    Path(marker).write_text("ran")
    return {}


class _Tripwire:
    """Unpickles by calling :func:`_trip`: what a malicious checkpoint would do with a worse function."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return _trip, (self.marker,)


def _global_name(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoClassifier]:
    """A real Lightning checkpoint of the demo: optimizer and OneCycle scheduler states, ModelCheckpoint state."""
    root = tmp_path_factory.mktemp("demo_ckpt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DemoClassifier(width=4)
        checkpointing = L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "auto", monitor="val_acc", mode="max")
        trainer = L.Trainer(
            max_steps=8,  # the schedule needs >= 8 steps: its state is in the checkpoint too
            accelerator="cpu",
            logger=False,
            callbacks=[checkpointing],
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=1,
        )
        trainer.fit(model, datamodule=ShapesDataModule(num_train=64, num_val=8, batch_size=8))
    path = root / "demo.ckpt"
    trainer.save_checkpoint(path)
    return path, model


def test_a_lightning_checkpoint_of_the_demo_loads_with_weights_only(demo_ckpt: tuple[Path, DemoClassifier]):
    path, trained = demo_ckpt
    raw = torch.load(path, map_location="cpu", weights_only=True)  # the safe loader accepts every object in it
    assert {"state_dict", "optimizer_states", "lr_schedulers", "hyper_parameters", "callbacks"} <= set(raw)
    assert raw["lr_schedulers"] and raw["callbacks"]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    fresh = DemoClassifier(width=4)
    assert not _same_weights(fresh, trained)
    load_checkpoint(fresh, path)
    assert _same_weights(fresh, trained)


def test_a_checkpoint_with_other_globals_is_refused_in_one_line_and_loads_when_trusted(tmp_path: Path):
    net, marker = nn.Linear(3, 2), tmp_path / "code_ran"
    path = tmp_path / "tripwire.ckpt"
    torch.save({"state_dict": net.state_dict(), "extra": _Tripwire(marker)}, path)
    target = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(EvaluationError) as info:
        load_checkpoint(target, path)
    message = str(info.value)
    assert "\n" not in message
    assert _global_name(_trip) in message  # named, from get_unsafe_globals_in_checkpoint
    assert "--trust_checkpoint true" in message and "trust_checkpoint=True" in message
    assert not marker.exists()  # the refused file ran nothing
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())

    load_checkpoint(target, path, trust_checkpoint=True)
    assert marker.read_text() == "ran"  # what trusting means: the file's code runs
    assert _same_weights(target, net)


def test_a_legacy_format_checkpoint_names_the_refused_global(tmp_path: Path):
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": nn.Linear(2, 2).state_dict(), "extra": _Tripwire(tmp_path / "m")}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(EvaluationError, match=re.escape(_global_name(_trip))) as info:
        load_checkpoint(nn.Linear(2, 2), path)
    assert "\n" not in str(info.value) and "--trust_checkpoint true" in str(info.value)


class _ShellCommand:
    """Unpickles by calling ``os.system``: the classic malicious pickle (the command only leaves a marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_checkpoint_calling_os_system_is_refused_naming_it_in_both_formats(tmp_path: Path, legacy: bool):
    path, marker = tmp_path / "evil.ckpt", tmp_path / "code_ran"
    torch.save({"state_dict": nn.Linear(2, 2).state_dict(), "extra": _ShellCommand(marker)}, path,
               _use_new_zipfile_serialization=not legacy)  # fmt: skip
    with pytest.raises(EvaluationError) as info:
        load_checkpoint(nn.Linear(2, 2), path)
    message = str(info.value)
    assert f"refuses: {_global_name(os.system)}; if you trust the file" in message  # posix.system on Linux
    assert "\n" not in message and "will likely succeed" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"this is not a checkpoint", bytes(range(256)) * 16, "zip"],
    ids=["text", "random_bytes", "zip_of_something_else"],
)
def test_a_file_that_is_no_checkpoint_says_so_without_the_trust_hint(tmp_path: Path, content):
    path = tmp_path / "junk.ckpt"
    if content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    else:
        path.write_bytes(content)
    for trusted in (False, True):  # trusting it would not make it a checkpoint: nothing is unpickled
        with pytest.raises(EvaluationError, match="is not a PyTorch checkpoint") as info:
            load_checkpoint(nn.Linear(2, 2), path, trust_checkpoint=trusted)
        assert "\n" not in str(info.value) and "trust" not in str(info.value) and "weights_only" not in str(info.value)


def test_a_truncated_checkpoint_is_one_line_without_the_trust_hint(tmp_path: Path):
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    torch.save(nn.Linear(2, 2).state_dict(), whole, _use_new_zipfile_serialization=False)
    cut.write_bytes(whole.read_bytes()[:-40])  # the legacy format's header is intact, its storage bytes are not
    with pytest.raises(EvaluationError, match="cannot read checkpoint") as info:
        load_checkpoint(nn.Linear(2, 2), cut)
    assert "\n" not in str(info.value) and "trust" not in str(info.value)


@pytest.mark.parametrize("url", ["https://example.com/model.ckpt", "http://host/m.ckpt", "s3://bucket/m.ckpt"])
def test_urls_are_refused_unless_trusted(url: str):
    with pytest.raises(EvaluationError) as info:
        load_checkpoint(nn.Linear(2, 2), url)
    message = str(info.value)
    assert "\n" not in message
    assert url in message and "URL" in message and "--trust_checkpoint true" in message


def test_a_trusted_url_is_read_through_fsspec(tmp_path: Path):
    net = nn.Linear(2, 2)
    path = tmp_path / "plain.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(EvaluationError, match="URL"):
        load_checkpoint(nn.Linear(2, 2), path.as_uri())
    target = nn.Linear(2, 2)
    load_checkpoint(target, path.as_uri(), trust_checkpoint=True)
    assert _same_weights(target, net)


def test_missing_file_and_mismatched_weights_stay_one_line_errors(tmp_path: Path):
    with pytest.raises(EvaluationError, match="checkpoint not found"):
        load_checkpoint(nn.Linear(2, 2), tmp_path / "nope.ckpt")
    path = tmp_path / "small.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(EvaluationError, match="does not fit Linear") as info:
        load_checkpoint(nn.Linear(3, 2), path)
    assert "\n" not in str(info.value)
