"""StoreIndex on PostgreSQL (psycopg 3), for a store that replicas on many hosts share.

The tables are SQLiteIndex's. Blobs live on a path every host reaches (a
LocalBlobStore on shared storage, or any BlobStore); the index is the only
shared state that needs transactions.

Leases without process ids. A put leases its blobs on its own database session
and a lease lives while that session does: `collect` drops leases whose session
is gone from `pg_stat_activity` (matched by backend pid *and* start time, so a
reused pid is not mistaken for the holder) or whose time is up. Both are the
server's facts, so they hold whichever host the put and the gc run on; times
come from the server's clock, never a host's. `begin_lease` and `collect` take
one transaction-level advisory lock, so a lease cannot appear between gc's check
of a blob and its deletion (SQLite gets the same from its single writer).
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from adapterkit.store.errors import AdapterNotInStoreError, StoreError
from adapterkit.store.index import (
    SELECT_VERSIONS,
    VERSION_COLUMNS,
    VERSION_COLUMNS_LIST,
    NewVersion,
    StoredFile,
    VersionRecord,
    build_records,
    not_found_message,
    version_row,
)
from adapterkit.store.summary import BaseRef

_SCHEMA_VERSION = 1
# Any constant both begin_lease and collect agree on; "adapterkit" as ASCII in a bigint.
_LEASE_LOCK = 0x61646170746572
# Every transaction that writes versions, files or tags takes this lock first (and before _LEASE_LOCK),
# so writers run one at a time as on SQLite: a rm racing an import's foreign-key checks deadlocked.
_WRITE_LOCK = _LEASE_LOCK + 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS adapterkit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY, next_version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    method TEXT NOT NULL,
    rank BIGINT,
    alpha DOUBLE PRECISION,
    targets TEXT NOT NULL,
    parameter_count BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    adapters TEXT NOT NULL,
    base_name TEXT,
    base_fingerprint TEXT,
    base_architecture TEXT,
    metadata TEXT NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX IF NOT EXISTS versions_base ON versions (base_fingerprint);
CREATE INDEX IF NOT EXISTS versions_base_name ON versions (base_name);
CREATE TABLE IF NOT EXISTS files (
    version_id BIGINT NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    blob TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (version_id, path)
);
CREATE INDEX IF NOT EXISTS files_blob ON files (blob);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (name, tag)
);
CREATE TABLE IF NOT EXISTS leases (
    lease TEXT NOT NULL,
    blob TEXT NOT NULL,
    backend_pid INTEGER NOT NULL,
    backend_start TIMESTAMPTZ NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (lease, blob)
);
CREATE INDEX IF NOT EXISTS leases_blob ON leases (blob);
CREATE TABLE IF NOT EXISTS bases (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    architecture TEXT NOT NULL,
    parameter_bytes BIGINT NOT NULL
);
"""
_TABLES = ("names", "versions", "files", "tags", "leases", "bases", "adapterkit_meta")
_NOW = "extract(epoch from clock_timestamp())::float8"  # the server's clock, in seconds


def is_postgres_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


class PostgresIndex:
    """StoreIndex in a PostgreSQL database (its tables in the connection's current schema)."""

    def __init__(self, url: str, connect_timeout_s: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "a postgresql:// store needs psycopg 3: pip install 'adapterkit[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._local = threading.local()  # one connection per thread, and per process after fork
        conn = self._connection()
        found = self._recorded_schema(conn)
        if found is None:
            with conn.transaction():
                # DDL runs under the writers' lock: CREATE INDEX IF NOT EXISTS takes a SHARE lock on its
                # table even when the index exists, and holding that across tables while a writer held
                # another deadlocked. Two first openings at once serialize here too.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                conn.execute(_SCHEMA)
                conn.execute("INSERT INTO adapterkit_meta VALUES ('schema', %s) ON CONFLICT DO NOTHING",
                             (str(_SCHEMA_VERSION),))
                found = self._recorded_schema(conn) or str(_SCHEMA_VERSION)
        if int(found) > _SCHEMA_VERSION:
            raise StoreError(f"the index at {self.describe()} was written by a newer adapterkit "
                             f"(schema {found}); upgrade adapterkit")

    @staticmethod
    def _recorded_schema(conn) -> str | None:
        """The schema version the database records, or None before the tables exist.

        The meta row is written in the transaction that creates every table, so once it is there
        later openings run no DDL at all and take no table locks."""
        (exists,) = conn.execute("SELECT to_regclass('adapterkit_meta') IS NOT NULL").fetchone()
        if not exists:
            return None
        row = conn.execute("SELECT value FROM adapterkit_meta WHERE key = 'schema'").fetchone()
        return None if row is None else row[0]

    def describe(self) -> str:
        """The URL without its password, for messages."""
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", self.url)

    # --- connection and transactions -------------------------------------
    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid() or conn.closed:
            # A connection must not cross fork(); the child opens its own (psycopg leaves the
            # parent's socket alone in a child).
            try:
                conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=int(self.connect_timeout_s))
            except self._psycopg.OperationalError as exc:
                raise StoreError(f"cannot reach the store index at {self.describe()}: "
                                 f"{' '.join(str(exc).split())}") from None
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    # --- leases ------------------------------------------------------------
    def begin_lease(self, blobs: Collection[str], ttl: float) -> str:
        lease = uuid.uuid4().hex
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LEASE_LOCK,))
            with conn.cursor() as cur:
                # backend_start is NOT NULL: a server that hides this session's start fails here, loudly,
                # rather than granting leases gc could not tell alive.
                cur.executemany(
                    "INSERT INTO leases (lease, blob, backend_pid, backend_start, expires_at)"
                    " VALUES (%s, %s, pg_backend_pid(),"
                    " (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()), " + _NOW + " + %s)"
                    " ON CONFLICT DO NOTHING",
                    [(lease, blob, ttl) for blob in blobs],
                )
        return lease

    def release_lease(self, lease: str) -> None:
        self._connection().execute("DELETE FROM leases WHERE lease = %s", (lease,))

    # --- versions ------------------------------------------------------------
    def add_versions(self, versions: Sequence[NewVersion], lease: str | None = None) -> list[VersionRecord]:
        if not versions:
            return []
        conn = self._connection()
        added: list[tuple[NewVersion, int, int]] = []
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            (created,) = conn.execute("SELECT " + _NOW).fetchone()
            # Lock every name in one order first: two imports of overlapping names cannot deadlock.
            next_number = {}
            for name in sorted({v.name for v in versions}):
                conn.execute("INSERT INTO names (name, next_version) VALUES (%s, 1) ON CONFLICT DO NOTHING", (name,))
                (next_number[name],) = conn.execute(
                    "SELECT next_version FROM names WHERE name = %s FOR UPDATE", (name,)).fetchone()
            for new in versions:
                number = next_number[new.name]
                next_number[new.name] = number + 1
                (row_id,) = conn.execute(
                    f"INSERT INTO versions ({VERSION_COLUMNS})"
                    f" VALUES ({', '.join(['%s'] * len(VERSION_COLUMNS_LIST))}) RETURNING id",
                    version_row(new, number, created),
                ).fetchone()
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO files (version_id, path, blob, size) VALUES (%s, %s, %s, %s)",
                                    [(row_id, f.path, f.blob, f.size) for f in new.files])
                    cur.executemany(
                        "INSERT INTO tags (name, tag, version) VALUES (%s, %s, %s)"
                        " ON CONFLICT (name, tag) DO UPDATE SET version = EXCLUDED.version",
                        [(new.name, tag, number) for tag in new.tags])
                added.append((new, number, row_id))
            for name, number in next_number.items():
                conn.execute("UPDATE names SET next_version = %s WHERE name = %s", (number, name))
            if lease is not None:
                conn.execute("DELETE FROM leases WHERE lease = %s", (lease,))
            final_tags = {
                (new.name, number): tuple(sorted(t for (t,) in conn.execute(
                    "SELECT tag FROM tags WHERE name = %s AND version = %s", (new.name, number))))
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
            rows = conn.execute(SELECT_VERSIONS + " WHERE name = %s AND version = %s", (name, selector)).fetchall()
            what = f"{name}@{selector}"
        elif selector == "latest":
            rows = conn.execute(SELECT_VERSIONS + " WHERE name = %s ORDER BY version DESC LIMIT 1", (name,)).fetchall()
            what = name
        else:
            rows = conn.execute(
                SELECT_VERSIONS + " WHERE name = %s AND version = (SELECT version FROM tags WHERE name = %s AND tag = %s)",
                (name, name, selector),
            ).fetchall()
            what = f"{name}@{selector}"
        if not rows:
            raise AdapterNotInStoreError(self._not_found(conn, name, what))
        return self._records(conn, rows)[0]

    def files(self, record: VersionRecord) -> list[StoredFile]:
        rows = self._connection().execute(
            "SELECT path, blob, size FROM files WHERE version_id = %s ORDER BY path", (record.id,)
        ).fetchall()
        return [StoredFile(*row) for row in rows]

    def list_versions(self, name=None, base=None, tag=None, latest_only=False) -> list[VersionRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        if name:
            if any(c in name for c in "*?["):
                clauses.append("name ~ %s")
                params.append(_glob_to_regex(name))
            else:
                clauses.append("name = %s")
                params.append(name)
        if base:
            clauses.append("(base_name = %s OR starts_with(base_fingerprint, %s))")
            params += [base, base]
        if tag:
            clauses.append("EXISTS (SELECT 1 FROM tags t WHERE t.name = v.name AND t.version = v.version AND t.tag = %s)")
            params.append(tag)
        if latest_only:
            clauses.append("version = (SELECT MAX(version) FROM versions w WHERE w.name = v.name)")
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        conn = self._connection()
        rows = conn.execute(SELECT_VERSIONS + where + " ORDER BY name COLLATE \"C\", version", params).fetchall()
        return self._records(conn, rows)

    def remove(self, name: str, version: int | None = None) -> list[VersionRecord]:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            if version is None:
                rows = conn.execute(SELECT_VERSIONS + " WHERE name = %s FOR UPDATE", (name,)).fetchall()
            else:
                rows = conn.execute(SELECT_VERSIONS + " WHERE name = %s AND version = %s FOR UPDATE", (name, version)).fetchall()
            if not rows:
                raise AdapterNotInStoreError(self._not_found(conn, name, name if version is None else f"{name}@{version}"))
            records = self._records(conn, rows)
            for record in records:
                conn.execute("DELETE FROM files WHERE version_id = %s", (record.id,))
                conn.execute("DELETE FROM versions WHERE id = %s", (record.id,))
                conn.execute("DELETE FROM tags WHERE name = %s AND version = %s", (record.name, record.version))
        return records

    # --- tags ------------------------------------------------------------
    def set_tag(self, name: str, tag: str, version: int) -> None:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            found = conn.execute("SELECT 1 FROM versions WHERE name = %s AND version = %s FOR SHARE",
                                 (name, version)).fetchone()
            if found is None:
                raise AdapterNotInStoreError(self._not_found(conn, name, f"{name}@{version}"))
            conn.execute("INSERT INTO tags (name, tag, version) VALUES (%s, %s, %s)"
                         " ON CONFLICT (name, tag) DO UPDATE SET version = EXCLUDED.version", (name, tag, version))

    def remove_tag(self, name: str, tag: str) -> bool:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            cursor = conn.execute("DELETE FROM tags WHERE name = %s AND tag = %s", (name, tag))
        return cursor.rowcount > 0

    # --- blobs ------------------------------------------------------------
    def references(self) -> dict[str, list[tuple[str, str]]]:
        refs: dict[str, list[tuple[str, str]]] = {}
        rows = self._connection().execute(
            "SELECT f.blob, v.name, v.version, f.path FROM files f JOIN versions v ON v.id = f.version_id"
            " ORDER BY v.name COLLATE \"C\", v.version, f.path COLLATE \"C\""
        ).fetchall()
        for blob, name, version, path in rows:
            refs.setdefault(blob, []).append((f"{name}@{version}", path))
        return refs

    def collect(self, candidates: Iterable[str], delete: Callable[[str], None]) -> list[str]:
        candidates = list(candidates)
        if not candidates:
            return []
        deleted = []
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LEASE_LOCK,))
            # A lease whose session has ended, or whose time is up, protects nothing any more.
            conn.execute(
                "DELETE FROM leases l WHERE l.expires_at < " + _NOW + " OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a"
                " WHERE a.pid = l.backend_pid AND a.backend_start = l.backend_start)"
            )
            for blob in candidates:
                busy = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM files WHERE blob = %s) OR EXISTS (SELECT 1 FROM leases WHERE blob = %s)",
                    (blob, blob),
                ).fetchone()[0]
                if not busy:
                    delete(blob)
                    deleted.append(blob)
        return deleted

    # --- bases ------------------------------------------------------------
    def record_base(self, base: BaseRef, parameter_bytes: int) -> None:
        self._connection().execute(
            "INSERT INTO bases (fingerprint, name, architecture, parameter_bytes) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (fingerprint) DO UPDATE SET name = EXCLUDED.name, architecture = EXCLUDED.architecture,"
            " parameter_bytes = EXCLUDED.parameter_bytes",
            (base.fingerprint, base.name, base.architecture, parameter_bytes),
        )

    def base_sizes(self) -> dict[str, int]:
        return dict(self._connection().execute("SELECT fingerprint, parameter_bytes FROM bases").fetchall())

    def size_bytes(self) -> int:
        (total,) = self._connection().execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " WHERE c.relkind = 'r' AND c.relname = ANY(%s) AND pg_table_is_visible(c.oid)", (list(_TABLES),)
        ).fetchone()
        return int(total)

    # --- rows -> records -------------------------------------------------
    def _records(self, conn, rows: list[tuple]) -> list[VersionRecord]:
        if not rows:
            return []
        if len(rows) == 1:
            tag_rows = conn.execute("SELECT name, version, tag FROM tags WHERE name = %s", (rows[0][1],)).fetchall()
        else:
            tag_rows = conn.execute("SELECT name, version, tag FROM tags").fetchall()
        return build_records(rows, tag_rows)

    def _not_found(self, conn, name: str, what: str) -> str:
        versions = [v for (v,) in conn.execute("SELECT version FROM versions WHERE name = %s ORDER BY version",
                                               (name,)).fetchall()]
        tags = [t for (t,) in conn.execute("SELECT tag FROM tags WHERE name = %s ORDER BY tag", (name,)).fetchall()]
        return not_found_message(name, what, versions, tags)


def _glob_to_regex(pattern: str) -> str:
    """A shell glob (`*`, `?`, `[...]`, as SQLite's GLOB reads it) as an anchored PostgreSQL regex."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + 1 + (pattern[i + 1:i + 2] == "^")
            j += pattern[j:j + 1] == "]"  # a leading ']' is a member, not the end
            end = pattern.find("]", j)
            if end < 0:
                out.append(re.escape(c))
            else:
                out.append("[" + pattern[i + 1:end].replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + "$"
