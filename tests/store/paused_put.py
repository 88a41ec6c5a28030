"""A `put` that stops between writing its blobs and committing its version, for crash tests.

Run as a script in a child process the test kills:

    python paused_put.py STORE_ROOT FOLDER NAME MARKER

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


class PausedIndex(SQLiteIndex):
    def __init__(self, path: Path, marker: Path) -> None:
        super().__init__(path)
        self.marker = marker

    def add_versions(self, versions, lease=None):
        self.marker.touch()  # the blobs are on disk, the version is not
        sys.stdin.read()  # blocks until the test kills us (or dies and closes the pipe)
        os._exit(3)


def main() -> None:
    root, folder, name, marker = sys.argv[1:5]
    index = PausedIndex(Path(root) / "index.sqlite", Path(marker))
    AdapterStore(root, index=index).put(folder, name)


if __name__ == "__main__":
    main()
