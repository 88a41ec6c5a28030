"""A throwaway PostgreSQL server for the store tests: initdb + pg_ctl in a temporary folder.

It listens on a unix socket in that folder only (no TCP port to collide with), with fsync
off (the tests check behaviour, not durability). Found through PATH, or Debian's
/usr/lib/postgresql/<version>/bin. Run as root (CI, containers), the server runs as the
`postgres` user (or `nobody`): initdb and postgres refuse to run as root.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


class PostgresServer:
    def __init__(self) -> None:
        self.initdb, self.pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        self.base: Path | None = None

    def missing(self) -> str | None:
        """Why no server can start here, in words; None when one can."""
        if not self.initdb or not self.pg_ctl:
            return "PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed; pip install 'psycopg[binary]'"
        if os.geteuid() == 0 and self._unprivileged_user() is None:
            return "running as root and no 'postgres' or 'nobody' user to run the server as"
        return None

    @staticmethod
    def _unprivileged_user() -> pwd.struct_passwd | None:
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        return None

    def _run(self, *argv: str) -> None:
        user = self._unprivileged_user() if os.geteuid() == 0 else None

        def drop_privileges() -> None:
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       preexec_fn=drop_privileges, cwd="/", timeout=120)

    def start(self) -> str:
        """Start the server; returns a URL for its `postgres` database."""
        self.base = Path(tempfile.mkdtemp(prefix="adapterkit-pg-"))
        if os.geteuid() == 0:
            user = self._unprivileged_user()
            assert user is not None
            os.chown(self.base, user.pw_uid, user.pw_gid)
        data = self.base / "data"
        assert self.initdb and self.pg_ctl
        self._run(self.initdb, "-D", str(data), "-U", "adapterkit", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        options = f"-k {self.base} -c listen_addresses='' -F -c full_page_writes=off -c max_connections=200"
        self._run(self.pg_ctl, "-D", str(data), "-o", options, "-l", str(self.base / "log"), "-w", "-t", "120", "start")
        return f"postgresql://adapterkit@/postgres?host={quote(str(self.base), safe='')}"

    def stop(self) -> None:
        if self.base is None:
            return
        try:
            self._run(self.pg_ctl, "-D", str(self.base / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None


def url_for_folder(server_url: str, folder: str | os.PathLike[str]) -> str:
    """A URL whose tables live in a schema of their own, the same for the same folder: every test
    store gets a fresh, empty index, and reopening a folder reopens its index."""
    import psycopg

    schema = "s_" + hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:20]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    return f"{server_url}&options={quote(f'-csearch_path={schema}', safe='')}"
