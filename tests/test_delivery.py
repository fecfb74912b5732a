"""lit_attr.delivery on its own: dispatch by logger type, rank-0 only, file fallback, table checks."""

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, Logger
from matplotlib.figure import Figure

from lit_attr import delivery


class _BareLogger(Logger):
    """A logger with no directory of its own (like an HTTP-only tracker)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[dict, int]] = []

    @property
    def name(self) -> str:
        return "bare"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((metrics, step))

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass


def _trainer(tmp_path: Path, loggers, rank_zero: bool = True, step: int = 7) -> SimpleNamespace:
    return SimpleNamespace(loggers=loggers, is_global_zero=rank_zero, global_step=step, default_root_dir=str(tmp_path))


def _image() -> np.ndarray:
    image = np.zeros((4, 6, 3), dtype=np.float32)
    image[:, :3, 0] = 1.0
    return image


def test_file_fallback_under_logger_dir_or_default_root(tmp_path):
    csv = CSVLogger(tmp_path / "csv")
    bare = _BareLogger()
    trainer = _trainer(tmp_path / "root", [csv, bare])
    written = delivery.log_image(trainer, "attr/my method/heatmaps", _image(), caption="hello")
    assert written == [
        Path(csv.log_dir) / "media" / "attr" / "my_method" / "heatmaps" / "step_0000007.png",
        tmp_path / "root" / "media" / "attr" / "my_method" / "heatmaps" / "step_0000007.png",
    ]
    from matplotlib.image import imread

    pixels = imread(written[0])
    np.testing.assert_allclose(pixels[..., :3], _image(), atol=1 / 255)
    assert written[0].with_suffix(".txt").read_text() == "hello\n"


def test_same_directory_is_written_once(tmp_path):
    trainer = _trainer(tmp_path, [_BareLogger(), _BareLogger()])
    assert len(delivery.log_figure(trainer, "curves", Figure(figsize=(1, 1)))) == 1


def test_tables_as_csv_and_row_checks(tmp_path):
    trainer = _trainer(tmp_path, [_BareLogger()], step=3)
    (path,) = delivery.log_table(trainer, "attr/samples", ["a", "b"], [[1, 0.5], ["x", np.float32(2.0)]])
    assert path.read_text().splitlines() == ["a,b", "1,0.5", "x,2.0"]
    (path,) = delivery.log_table(trainer, "directions", ["deletion ↓"], [[0.25]])  # UTF-8, whatever the locale
    assert path.read_bytes().decode("utf-8").splitlines() == ["deletion ↓", "0.25"]
    with pytest.raises(ValueError, match=r"needs 2 values, got 1"):
        delivery.log_table(trainer, "t", ["a", "b"], [[1]])


def test_other_ranks_and_no_logger_do_nothing(tmp_path):
    bare = _BareLogger()
    other_rank = _trainer(tmp_path, [bare], rank_zero=False)
    assert delivery.log_image(other_rank, "k", _image()) == []
    assert delivery.log_table(other_rank, "k", ["a"], [[1]]) == []
    delivery.log_metrics(other_rank, {"a": 1.0})
    assert bare.metrics == []
    assert delivery.log_image(_trainer(tmp_path, []), "k", _image()) == []
    assert not list(tmp_path.rglob("*.png"))


def test_log_metrics_goes_to_every_logger_with_the_step(tmp_path):
    a, b = _BareLogger(), _BareLogger()
    delivery.log_metrics(_trainer(tmp_path, [a, b], step=11), {"x": np.float64(0.25)})
    assert a.metrics == b.metrics == [({"x": 0.25}, 11)]


def test_bad_images_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) or \(H, W, 4\)"):
        delivery.log_image(_trainer(tmp_path, [_BareLogger()]), "k", np.zeros((2, 3, 5)))


def test_flush_returns_within_its_timeout_behind_a_stuck_job_and_a_full_queue():
    worker = delivery.DeliveryWorker(max_pending=2)
    release, ran = threading.Event(), []
    worker.submit(release.wait)  # stuck until released, like a logger call waiting on the network
    for k in range(2):
        worker.submit(lambda k=k: ran.append(k))  # the queue is now full
    with pytest.raises(TimeoutError, match="within 0.2 s"):
        worker.flush(timeout=0.2)
    release.set()
    assert worker.flush(timeout=30) == [] and ran == [0, 1]


def test_flush_hands_back_the_errors_of_jobs():
    worker = delivery.DeliveryWorker()
    worker.submit(lambda: 1 / 0)
    (error,) = worker.flush(timeout=30)
    assert isinstance(error, ZeroDivisionError) and worker.flush(timeout=30) == []


def test_the_worker_times_each_job_once_and_not_its_flush_markers():
    now = [0.0]
    worker = delivery.DeliveryWorker(clock=lambda: now[0])

    def job(seconds):
        now[0] += seconds

    worker.submit(lambda: job(0.5))
    worker.submit(lambda: 1 / 0)  # a failing job is timed too: it took the worker's time all the same
    worker.flush(timeout=30)
    worker.submit(lambda: job(2.0))
    worker.flush(timeout=30)
    assert worker.busy_seconds() == [0.5, 0.0, 2.0] and worker.busy_seconds() == []
