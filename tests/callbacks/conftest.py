"""Fixtures of the callback tests."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread() -> Iterator[None]:
    # Package scope: module-scoped fixtures (reference runs) must see the same setting as the tests. Every test
    # here runs whole Trainer loops on tiny models. With two OpenMP threads on a two-core machine that is
    # also running other jobs, each thread spin-waits for the other and small convolutions get ~50x slower; one
    # thread keeps the suite fast. Float results can depend on the thread count, so every run of a comparison
    # must see the same setting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
