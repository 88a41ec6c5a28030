"""The store's index: names, immutable versions, tags, file manifests, leases.

`StoreIndex` is the interface the store needs; `SQLiteIndex` meets it with the
standard library's sqlite3 (WAL mode, one write transaction per operation,
`BEGIN IMMEDIATE` + busy timeout so several processes can share a store). A
server database can meet the same protocol.

Leases make garbage collection safe against a concurrent `put`: a put leases
the blobs it is about to write before writing them, and `collect` never
deletes a leased blob. In SQLite a lease dies when it expires or, on the same
host, when the process that took it has exited (killed mid-put, say); a SQLite
store is for one host. PostgresIndex ties a lease to its database session instead.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from adapterkit.store.errors import AdapterNotInStoreError, StoreError
from adapterkit.store.summary import AdapterSummary, BaseRef

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    next_version INTEGER NOT NULL            -- never reused, so name@3 always means one content
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    method TEXT NOT NULL,
    rank INTEGER,
    alpha REAL,
    targets TEXT NOT NULL,                   -- JSON
    parameter_count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,                  -- weights files only
    adapters TEXT NOT NULL,                  -- JSON list of adapter sub-folders ("" = root)
    base_name TEXT,
    base_fingerprint TEXT,
    base_architecture TEXT,
    metadata TEXT NOT NULL,                  -- JSON object
    UNIQUE (name, version)
);
CREATE INDEX IF NOT EXISTS versions_base ON versions (base_fingerprint);
CREATE INDEX IF NOT EXISTS versions_base_name ON versions (base_name);
CREATE TABLE IF NOT EXISTS files (
    version_id INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (version_id, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_blob ON files (blob);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    lease TEXT NOT NULL,
    blob TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (lease, blob)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_blob ON leases (blob);
CREATE TABLE IF NOT EXISTS bases (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    architecture TEXT NOT NULL,
    parameter_bytes INTEGER NOT NULL         -- what one full copy of the base takes
);
"""


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative POSIX path inside the adapter folder
    blob: str  # SHA-256 hex digest of the contents
    size: int


@dataclass(frozen=True)
class VersionRecord:
    name: str
    version: int
    created_at: float
    summary: AdapterSummary
    base: BaseRef | None
    metadata: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    id: int = 0  # the index's own key; meaningless outside it

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class NewVersion:
    """A version about to be recorded; the index assigns its number."""

    name: str
    files: tuple[StoredFile, ...]
    summary: AdapterSummary
    base: BaseRef | None
    metadata: Mapping = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@runtime_checkable
class StoreIndex(Protocol):
    def begin_lease(self, blobs: Collection[str], ttl: float) -> str: ...

    def release_lease(self, lease: str) -> None: ...

    def add_versions(self, versions: Sequence[NewVersion], lease: str | None = None) -> list[VersionRecord]:
        """Record each new version (the next number for its name) with its tags, and end `lease`,
        in one transaction: all of them, or none."""
        ...

    def resolve(self, name: str, selector: int | str) -> VersionRecord:
        """`selector`: a version number, "latest", or a tag. AdapterNotInStoreError if none."""
        ...

    def files(self, record: VersionRecord) -> list[StoredFile]: ...

    def list_versions(
        self, name: str | None = None, base: str | None = None, tag: str | None = None, latest_only: bool = False
    ) -> list[VersionRecord]: ...

    def remove(self, name: str, version: int | None = None) -> list[VersionRecord]: ...

    def set_tag(self, name: str, tag: str, version: int) -> None: ...

    def remove_tag(self, name: str, tag: str) -> bool: ...

    def references(self) -> dict[str, list[tuple[str, str]]]:
        """blob -> [(name@version, path)] for every stored file."""
        ...

    def collect(self, candidates: Iterable[str], delete: Callable[[str], None]) -> list[str]:
        """Call `delete` on each candidate blob that is neither referenced nor leased, under the write lock."""
        ...

    def record_base(self, base: BaseRef, parameter_bytes: int) -> None: ...

    def base_sizes(self) -> dict[str, int]: ...

    def size_bytes(self) -> int:
        """What the index itself takes (files, or tables), for `du`."""
        ...

    def close(self) -> None:
        """Close this thread's connection."""
        ...


# SQLite and fork(). A connection open in the parent when it forks poisons the child: SQLite
# keeps one record of locks per file and process, the child inherits the parent's (locks it
# does not hold, as fcntl locks are not inherited), and a connection the child opens to the
# same file shares that record, so other processes cannot see the child's readers and writers.
# Seen: a forked writer's commits went to a WAL another process had already deleted. So an
# index closes its connections as soon as it goes (Python 3.11's sqlite3 keeps each connection
# in a reference cycle through its statement cache, so a dropped one stays open until the cyclic
# gc runs, which may be after a fork), before a fork the forking thread closes its own (they
# reopen on next use), and a child never closes a connection it inherited (closing one would
# drop all its locks on that file).
_live_indexes: weakref.WeakSet[SQLiteIndex] = weakref.WeakSet()
_inherited_connections: list[sqlite3.Connection] = []


def _close_this_threads_connections() -> None:
    me = threading.get_ident()
    for index in list(_live_indexes):
        mine = [conn for conn, owner in index._connections if owner == me]
        if not mine:
            continue
        index._connections = [(conn, owner) for conn, owner in index._connections if owner != me]
        index._local.conn = None
        for conn in mine:
            conn.close()


def _keep_inherited_connections_open() -> None:
    for index in list(_live_indexes):
        _inherited_connections.extend(conn for conn, _ in index._connections)
        index._connections = []


os.register_at_fork(before=_close_this_threads_connections, after_in_child=_keep_inherited_connections_open)


class SQLiteIndex:
    """StoreIndex in one SQLite file. One connection per thread and process (a child opens its own)."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout_s: float = 60.0, durable: bool = True) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.durable = durable
        self._local = threading.local()  # one connection per thread, and per process after fork
        self._connections: list[tuple[sqlite3.Connection, int]] = []  # (connection, owning thread), for fork
        _live_indexes.add(self)
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found == 0:
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif found > _SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer adapterkit (index schema {found}); upgrade adapterkit"
                )

    # --- connection and transactions -------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            # A connection must not cross fork(); the child opens its own.
            # Still one connection per thread; check_same_thread=False only lets __del__ close them all.
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn, self._local.pid = conn, os.getpid()
            self._connections.append((conn, threading.get_ident()))
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def __del__(self) -> None:
        for conn, _ in getattr(self, "_connections", ()):
            with suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        """Close this thread's connection (the others close when the index goes)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
            self._connections = [(c, owner) for c, owner in self._connections if c is not conn]
        self._local.conn = None

    # --- leases ------------------------------------------------------------
    def begin_lease(self, blobs: Collection[str], ttl: float) -> str:
        lease = uuid.uuid4().hex
        expires = time.time() + ttl
        host, pid = socket.gethostname(), os.getpid()
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO leases (lease, blob, host, pid, expires_at) VALUES (?, ?, ?, ?, ?)",
                [(lease, blob, host, pid, expires) for blob in blobs],
            )
        return lease

    def release_lease(self, lease: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE lease = ?", (lease,))

    # --- versions ------------------------------------------------------------
    def add_versions(self, versions: Sequence[NewVersion], lease: str | None = None) -> list[VersionRecord]:
        if not versions:
            return []
        created = time.time()
        added: list[tuple[NewVersion, int, int]] = []  # (new version, its number, its row id)
        with self._write() as conn:
            for new in versions:
                conn.execute("INSERT OR IGNORE INTO names (name, next_version) VALUES (?, 1)", (new.name,))
                (number,) = conn.execute("SELECT next_version FROM names WHERE name = ?", (new.name,)).fetchone()
                conn.execute("UPDATE names SET next_version = ? WHERE name = ?", (number + 1, new.name))
                cursor = conn.execute(
                    f"INSERT INTO versions ({VERSION_COLUMNS}) VALUES ({', '.join('?' * len(VERSION_COLUMNS_LIST))})",
                    version_row(new, number, created),
                )
                conn.executemany(
                    "INSERT INTO files (version_id, path, blob, size) VALUES (?, ?, ?, ?)",
                    [(cursor.lastrowid, f.path, f.blob, f.size) for f in new.files],
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO tags (name, tag, version) VALUES (?, ?, ?)",
                    [(new.name, tag, number) for tag in new.tags],
                )
                added.append((new, number, int(cursor.lastrowid or 0)))
            if lease is not None:
                conn.execute("DELETE FROM leases WHERE lease = ?", (lease,))
            # A later version of the same import may have taken a tag over: read tags back at the end.
            final_tags = {
                (new.name, number): tuple(sorted(t for (t,) in conn.execute(
                    "SELECT tag FROM tags WHERE name = ? AND version = ?", (new.name, number))))
                for new, number, _ in added
            }
        return [
            VersionRecord(new.name, number, created, new.summary, new.base, dict(new.metadata),
                          final_tags[(new.name, number)], row_id)
            for new, number, row_id in added
        ]

    def resolve(self, name: str, selector: int | str) -> VersionRecord:
        conn = self._connection()
        if isinstance(selector, int):
            rows = conn.execute(SELECT_VERSIONS + " WHERE name = ? AND version = ?", (name, selector)).fetchall()
            what = f"{name}@{selector}"
        elif selector == "latest":
            rows = conn.execute(SELECT_VERSIONS + " WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)).fetchall()
            what = name
        else:
            rows = conn.execute(
                SELECT_VERSIONS + " WHERE name = ? AND version = (SELECT version FROM tags WHERE name = ? AND tag = ?)",
                (name, name, selector),
            ).fetchall()
            what = f"{name}@{selector}"
        if not rows:
            raise AdapterNotInStoreError(_not_found(conn, name, what))
        return self._records(conn, rows)[0]

    def files(self, record: VersionRecord) -> list[StoredFile]:
        rows = self._connection().execute(
            "SELECT path, blob, size FROM files WHERE version_id = ? ORDER BY path", (record.id,)
        ).fetchall()
        return [StoredFile(*row) for row in rows]

    def list_versions(self, name=None, base=None, tag=None, latest_only=False) -> list[VersionRecord]:
        clauses, params = [], []
        if name:
            clauses.append("name GLOB ?" if any(c in name for c in "*?[") else "name = ?")
            params.append(name)
        if base:
            clauses.append("(base_name = ? OR substr(base_fingerprint, 1, length(?)) = ?)")
            params += [base, base, base]
        if tag:
            clauses.append("EXISTS (SELECT 1 FROM tags t WHERE t.name = v.name AND t.version = v.version AND t.tag = ?)")
            params.append(tag)
        if latest_only:
            clauses.append("version = (SELECT MAX(version) FROM versions w WHERE w.name = v.name)")
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        conn = self._connection()
        rows = conn.execute(SELECT_VERSIONS + where + " ORDER BY name, version", params).fetchall()
        return self._records(conn, rows)

    def remove(self, name: str, version: int | None = None) -> list[VersionRecord]:
        with self._write() as conn:
            if version is None:
                rows = conn.execute(SELECT_VERSIONS + " WHERE name = ?", (name,)).fetchall()
            else:
                rows = conn.execute(SELECT_VERSIONS + " WHERE name = ? AND version = ?", (name, version)).fetchall()
            if not rows:
                raise AdapterNotInStoreError(_not_found(conn, name, name if version is None else f"{name}@{version}"))
            records = self._records(conn, rows)
            for record in records:
                conn.execute("DELETE FROM files WHERE version_id = ?", (record.id,))
                conn.execute("DELETE FROM versions WHERE id = ?", (record.id,))
                conn.execute("DELETE FROM tags WHERE name = ? AND version = ?", (record.name, record.version))
        return records

    # --- tags ------------------------------------------------------------
    def set_tag(self, name: str, tag: str, version: int) -> None:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone() is None:
                raise AdapterNotInStoreError(_not_found(conn, name, f"{name}@{version}"))
            conn.execute("INSERT OR REPLACE INTO tags (name, tag, version) VALUES (?, ?, ?)", (name, tag, version))

    def remove_tag(self, name: str, tag: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM tags WHERE name = ? AND tag = ?", (name, tag)).rowcount > 0

    # --- blobs ------------------------------------------------------------
    def references(self) -> dict[str, list[tuple[str, str]]]:
        refs: dict[str, list[tuple[str, str]]] = {}
        rows = self._connection().execute(
            "SELECT f.blob, v.name, v.version, f.path FROM files f JOIN versions v ON v.id = f.version_id"
            " ORDER BY v.name, v.version, f.path"
        )
        for blob, name, version, path in rows:
            refs.setdefault(blob, []).append((f"{name}@{version}", path))
        return refs

    def collect(self, candidates: Iterable[str], delete: Callable[[str], None]) -> list[str]:
        candidates = list(candidates)
        if not candidates:
            return []
        deleted = []
        host, now = socket.gethostname(), time.time()
        with self._write() as conn:
            # Leases whose holder has exited or whose time is up protect nothing any more.
            for lease, lease_host, pid, expires in conn.execute(
                "SELECT DISTINCT lease, host, pid, expires_at FROM leases"
            ).fetchall():
                if expires < now or (lease_host == host and not _pid_alive(pid)):
                    conn.execute("DELETE FROM leases WHERE lease = ?", (lease,))
            for blob in candidates:
                referenced = conn.execute("SELECT 1 FROM files WHERE blob = ? LIMIT 1", (blob,)).fetchone()
                leased = conn.execute("SELECT 1 FROM leases WHERE blob = ? LIMIT 1", (blob,)).fetchone()
                if referenced is None and leased is None:
                    delete(blob)
                    deleted.append(blob)
        return deleted

    # --- bases ------------------------------------------------------------
    def record_base(self, base: BaseRef, parameter_bytes: int) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO bases (fingerprint, name, architecture, parameter_bytes) VALUES (?, ?, ?, ?)",
                (base.fingerprint, base.name, base.architecture, parameter_bytes),
            )

    def base_sizes(self) -> dict[str, int]:
        return dict(self._connection().execute("SELECT fingerprint, parameter_bytes FROM bases"))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())

    # --- rows -> records -------------------------------------------------
    def _records(self, conn: sqlite3.Connection, rows: list[tuple]) -> list[VersionRecord]:
        if not rows:
            return []
        if len(rows) == 1:
            tag_rows = conn.execute("SELECT name, version, tag FROM tags WHERE name = ?", (rows[0][1],))
        else:
            tag_rows = conn.execute("SELECT name, version, tag FROM tags")
        return build_records(rows, tag_rows)


def build_records(rows: Iterable[tuple], tag_rows: Iterable[tuple]) -> list[VersionRecord]:
    """Records from `SELECT_VERSIONS` rows and (name, version, tag) rows; shared by every StoreIndex on SQL."""
    tags: dict[tuple[str, int], list[str]] = {}
    for tag_name, tag_version, tag in tag_rows:
        tags.setdefault((tag_name, tag_version), []).append(tag)
    parsed: dict[str, object] = {}  # targets/adapters repeat across rows; parse each text once

    def cached(text: str):
        if text not in parsed:
            parsed[text] = json.loads(text)
        value = parsed[text]
        return list(value) if isinstance(value, list) else value

    with _gc_paused():
        return [_record(row, cached, tags) for row in rows]


def _record(row: tuple, cached, tags: dict[tuple[str, int], list[str]]) -> VersionRecord:
    (vid, name, version, created, method, rank, alpha, targets, count, size, adapters,
     base_name, base_fp, base_arch, metadata) = row
    summary = AdapterSummary(method, rank, alpha, cached(targets), count, size, cached(adapters))
    base = BaseRef(base_name or "", base_fp, base_arch or "") if base_fp else None
    return VersionRecord(
        name, version, created, summary, base, json.loads(metadata),
        tuple(sorted(tags.get((name, version), ()))), vid,
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building 10k records sets off full cyclic collections that find nothing (records hold
    no cycles) and cost half the time of `ls`; pause the collector while building them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# The columns a new version row is written with, in the order version_row gives its values
# (both indexes, SQLite and PostgreSQL, write versions through these two).
VERSION_COLUMNS_LIST = ("name", "version", "created_at", "method", "rank", "alpha", "targets", "parameter_count",
                        "bytes", "adapters", "base_name", "base_fingerprint", "base_architecture", "metadata")
VERSION_COLUMNS = ", ".join(VERSION_COLUMNS_LIST)


def version_row(new: NewVersion, number: int, created: float) -> tuple:
    """The values of a new version's row, in VERSION_COLUMNS order."""
    summary, base = new.summary, new.base
    return (
        new.name, number, created, summary.method, summary.rank, summary.alpha,
        json.dumps(summary.targets), summary.parameter_count, summary.bytes,
        json.dumps(summary.adapters),
        base.name if base else None, base.fingerprint if base else None,
        base.architecture if base else None, json.dumps(dict(new.metadata), sort_keys=True),
    )


SELECT_VERSIONS = (
    "SELECT id, name, version, created_at, method, rank, alpha, targets, parameter_count, bytes, adapters,"
    " base_name, base_fingerprint, base_architecture, metadata FROM versions v"
)


def _not_found(conn: sqlite3.Connection, name: str, what: str) -> str:
    versions = [v for (v,) in conn.execute("SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))]
    tags = [t for (t,) in conn.execute("SELECT tag FROM tags WHERE name = ? ORDER BY tag", (name,))]
    return not_found_message(name, what, versions, tags)


def not_found_message(name: str, what: str, versions: list[int], tags: list[str]) -> str:
    """What to say when `what` (a ref of `name`) is not stored, listing what is."""
    if not versions:
        return f"no adapter named {name!r} in the store; `adapterkit store ls` lists what is there"
    known = ", ".join(f"@{v}" for v in versions[-10:]) + (f"; tags: {', '.join(tags)}" if tags else "")
    return f"{what} is not in the store; {name} has versions {known}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) holds nothing either.
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, IndexError):
        return True
