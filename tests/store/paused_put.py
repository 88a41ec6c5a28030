"""A `put` that stops between writing its blobs and committing its version, for crash tests.

Run as a script in a child process the test kills:

    python paused_put.py STORE_ROOT FOLDER NAME MARKER [POSTGRES_URL]

The fault is injected here, not in the product: the index's commit is wrapped so
that it creates MARKER and then blocks reading stdin. The test SIGKILLs the
process there. If the test dies first, stdin closes and the put exits without
committing, so an orphaned child can never record the version.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from adapterkit.store import AdapterStore, SQLiteIndex
from adapterkit.store.postgres_index import PostgresIndex


def paused(index_class: type, marker: Path) -> type:
    class PausedIndex(index_class):  # type: ignore[misc, valid-type]
        def add_versions(self, versions, lease=None):
            marker.touch()  # the blobs are on disk, the version is not
            sys.stdin.read()  # blocks until the test kills us (or dies and closes the pipe)
            os._exit(3)

    return PausedIndex


def main() -> None:
    root, folder, name, marker = sys.argv[1:5]
    url = sys.argv[5] if len(sys.argv) > 5 else None
    if url:
        store = AdapterStore(url, index=paused(PostgresIndex, Path(marker))(url), blobs=Path(root) / "blobs")
    else:
        store = AdapterStore(root, index=paused(SQLiteIndex, Path(marker))(Path(root) / "index.sqlite"))
    store.put(folder, name)


if __name__ == "__main__":
    main()
