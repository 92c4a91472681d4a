"""Shared fixtures of the testbed tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small convolutions run fastest on one thread, and far faster when the machine is shared; the
    builds' bitwise determinism is checked under the thread count they run with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
