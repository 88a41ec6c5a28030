"""Fixtures for the store tests: real stores on disk, real PEFT-format folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import write_peft_folder

from adapterkit.store import AdapterStore


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


@pytest.fixture
def make_folder(tmp_path: Path):
    counter = iter(range(10**6))

    def make(seed: int | None = None, **kwargs) -> Path:
        n = next(counter)
        return write_peft_folder(tmp_path / f"src{n}", n if seed is None else seed, **kwargs)

    return make
