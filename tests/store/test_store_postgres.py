"""What only the PostgreSQL index has to get right: leases tied to database sessions, not to a
host's process ids, and gc serialised against new leases (the rest of the suite runs on both)."""

from __future__ import annotations

import threading
import time

import psycopg_or_skip  # noqa: F401  (skips this module without psycopg)
import pytest
from postgres_server import url_for_folder

from adapterkit.store import AdapterStore, StoreError


@pytest.fixture
def pg_store(postgres_server, tmp_path) -> AdapterStore:
    return AdapterStore(url_for_folder(postgres_server, tmp_path / "pg"), blobs=tmp_path / "pg" / "blobs")


def _orphan_blobs(store, make_folder) -> list[str]:
    store.put(make_folder(), "x")
    store.rm("x")
    return [b.sha256 for b in store.blobs.iter_blobs()]


def test_a_lease_lives_as_long_as_its_session_wherever_it_runs(pg_store, make_folder, postgres_server, tmp_path):
    blobs = _orphan_blobs(pg_store, make_folder)
    # Another "host": its own connection, its own pid space; nothing here knows its process.
    other = AdapterStore(pg_store.url, blobs=tmp_path / "pg" / "blobs")
    lease = other.index.begin_lease(blobs, ttl=3600)
    assert pg_store.gc(grace_s=0).blobs_deleted == 0
    other.index.close()  # the session ends (as when that host's process dies)
    deadline = time.monotonic() + 60  # the server notices the closed session a moment later; bounded
    while (deleted := pg_store.gc(grace_s=0).blobs_deleted) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert deleted == len(blobs)
    assert lease


def test_a_reused_backend_pid_does_not_keep_a_dead_lease_alive(pg_store, make_folder):
    blobs = _orphan_blobs(pg_store, make_folder)
    lease = pg_store.index.begin_lease(blobs, ttl=3600)
    conn = pg_store.index._connection()
    # Same pid as a live session, but that session started at another time: not the holder.
    conn.execute("UPDATE leases SET backend_start = backend_start - interval '1 hour' WHERE lease = %s", (lease,))
    assert pg_store.gc(grace_s=0).blobs_deleted == len(blobs)


def test_an_expired_lease_protects_nothing_by_the_servers_clock(pg_store, make_folder):
    blobs = _orphan_blobs(pg_store, make_folder)
    pg_store.index.begin_lease(blobs, ttl=-1)  # already past, whatever this host's clock says
    assert pg_store.gc(grace_s=0).blobs_deleted == len(blobs)


def test_a_lease_cannot_slip_in_while_gc_is_deleting(pg_store, make_folder, tmp_path):
    """gc checks a blob and deletes it under one lock that begin_lease also takes."""
    blobs = _orphan_blobs(pg_store, make_folder)
    other = AdapterStore(pg_store.url, blobs=tmp_path / "pg" / "blobs")
    in_delete, release = threading.Event(), threading.Event()
    leased_at: list[float] = []
    original_delete = pg_store.blobs.delete

    def slow_delete(blob: str) -> None:
        in_delete.set()
        release.wait(120)  # a bound only: the test releases it once the lease is seen waiting
        original_delete(blob)

    pg_store.blobs.delete = slow_delete  # type: ignore[method-assign]
    gc_thread = threading.Thread(target=lambda: pg_store.gc(grace_s=0))
    gc_thread.start()
    assert in_delete.wait(60)
    waiting_before = _sessions_waiting_on_an_advisory_lock(pg_store)

    def lease() -> None:
        other.index.begin_lease(blobs, ttl=60)
        leased_at.append(time.monotonic())

    lease_thread = threading.Thread(target=lease)
    lease_thread.start()
    # The lease's session is blocked on gc's lock, by the server's own account (not after a fixed
    # sleep, which on a loaded machine can pass before the lease has even asked for the lock).
    deadline = time.monotonic() + 60
    while _sessions_waiting_on_an_advisory_lock(pg_store) <= waiting_before and not leased_at:
        assert time.monotonic() < deadline, "the lease never reached gc's lock"
        time.sleep(0.02)
    assert leased_at == []  # waiting for gc's transaction
    released = time.monotonic()
    release.set()
    gc_thread.join(60)
    lease_thread.join(60)
    assert leased_at and leased_at[0] >= released


def _sessions_waiting_on_an_advisory_lock(store: AdapterStore) -> int:
    import psycopg

    with psycopg.connect(store.url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND wait_event = 'advisory'").fetchone()[0]


def test_a_postgres_store_needs_a_blob_folder(postgres_server):
    with pytest.raises(StoreError, match="blobs=FOLDER"):
        AdapterStore(postgres_server)


def test_an_unreachable_server_is_one_typed_error(tmp_path):
    with pytest.raises(StoreError, match="cannot reach the store index at postgresql://u:\\*\\*\\*@"):
        AdapterStore(f"postgresql://u:secret@/db?host={tmp_path}&connect_timeout=2", blobs=tmp_path / "b")


def test_du_counts_the_index_tables(pg_store, make_folder):
    pg_store.put(make_folder(), "d")
    assert pg_store.du().index_bytes > 0
