"""Fixtures for the store tests: real stores on disk, real PEFT-format folders.

Every test that takes `store` or `open_store` runs twice: on the SQLite index and on
the PostgreSQL index (a throwaway server, started once per session; those runs skip,
saying why, where the server binaries or psycopg are missing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from postgres_server import PostgresServer, url_for_folder
from store_helpers import write_peft_folder

from adapterkit.store import AdapterStore
from helpers import missing_tool

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer()
    reason = server.missing()
    if reason:
        missing_tool(reason)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def open_store(backend, request) -> Callable[..., AdapterStore]:
    """`open_store(folder)`: the store kept at `folder` on the backend under test (reopens the same one).

    Carries `.backend`, and `.cli_args(folder)`, the `adapterkit store` options that open it.
    """
    if backend == "sqlite":
        def open_sqlite(folder: str | os.PathLike[str], **kwargs) -> AdapterStore:
            return AdapterStore(folder, **kwargs)

        open_sqlite.backend = backend  # type: ignore[attr-defined]
        open_sqlite.cli_args = lambda folder: ["--root", str(folder)]  # type: ignore[attr-defined]
        return open_sqlite
    server_url = request.getfixturevalue("postgres_server")

    def open_postgres(folder: str | os.PathLike[str], **kwargs) -> AdapterStore:
        return AdapterStore(url_for_folder(server_url, folder), blobs=Path(folder) / "blobs", **kwargs)

    open_postgres.backend = backend  # type: ignore[attr-defined]
    open_postgres.cli_args = lambda folder: [  # type: ignore[attr-defined]
        "--root", str(folder), "--store-url", url_for_folder(server_url, folder)]
    return open_postgres


@pytest.fixture
def store(open_store, tmp_path: Path) -> AdapterStore:
    return open_store(tmp_path / "store")


@pytest.fixture
def make_folder(tmp_path: Path):
    counter = iter(range(10**6))

    def make(seed: int | None = None, **kwargs) -> Path:
        n = next(counter)
        return write_peft_folder(tmp_path / f"src{n}", n if seed is None else seed, **kwargs)

    return make
