"""Session fixtures for the server tests (see serve_helpers)."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import Reference, save_random_adapters, save_tiny_base


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("serve-base"))


@pytest.fixture(scope="session")
def adapter_dirs(base_dir, tmp_path_factory) -> dict:
    """a00..a19: random adapters (ranks 4 and 8, two sets of targets), saved as PEFT folders."""
    return save_random_adapters(base_dir, tmp_path_factory.mktemp("serve-adapters"))


@pytest.fixture(scope="session")
def reference(base_dir, adapter_dirs) -> Reference:
    return Reference(base_dir, adapter_dirs)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The server's engine thread and the oracle share this process with tiny models: one torch thread
    each is fastest, and two OpenMP threads per op spin against each other on a loaded 2-core machine
    (20x slower measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
