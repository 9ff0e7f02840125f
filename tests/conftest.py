"""Shared pytest setup: keep every process offline and quiet."""

import os

import pytest

from deploy.local_federation import FLOWER_ENV

# Flower's phone-home, update check and per-run dependency install, Ray's usage stats and the
# model hubs are switched off for this process and every process it starts (one list, shared
# with the launcher of real Flower processes).
os.environ.update(FLOWER_ENV)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run torch on one thread for a module, then restore the count.

    One thread is fastest on a shared 2-core machine, and pins the float reduction order
    when a test compares results across processes. The count is process-wide, so it is
    restored: set at import time it would leak into every test collected after it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
